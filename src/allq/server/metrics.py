"""A server's own Prometheus endpoint (``twistd allq-server --metrics ENDPOINT``).

Off by default. When configured it serves, on its own plain-HTTP endpoint (keep
it on loopback or a private interface: it has no authentication and shows tube
names), ``GET /metrics`` in Prometheus text format (OpenMetrics on request):

* the queue's figures under the same names the client exports for every server
  (:mod:`allq.stats_metrics`: ``allq_tube_jobs{state=...}``, ``allq_tube_*``,
  ``allq_server_*``), labelled with this server's id;
* ``allq_server_build_info``, ``allq_server_disk_full`` (1 while the data
  directory is full and the server refuses changes) and the process's CPU,
  memory and file descriptors.

The figures are read from the in-memory queue at scrape time, as the wire
``stats`` action reads them: a walk over the tubes, no I/O, no waiting. Every
per-tube field the core's :class:`allq.core.queue.TubeStats` grows (for example
``expired_total``) is passed through, so the exposition follows the core.
This module reads the queue and never changes it.
"""

from collections.abc import Callable, Iterator

import attrs
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import Site

from allq import __version__
from allq.core.queue import Queue
from allq.server.replication import STATES
from allq.stats_metrics import stats_families

#: An example ``--metrics`` value: loopback only.
EXAMPLE_ENDPOINT = "tcp:9555:interface=127.0.0.1"


class ServerMetrics:
    """The server's metrics registry.

    :param queue: the queue to describe.
    :param clock: gives ``now`` for throughput and uptime.
    :param server_id: returns this server's id (``None`` until it is known).
    :param process: also export the process's CPU, memory and file descriptors.
    :param disk_full: whether the data directory is full (``allq_server_disk_full``).
    """

    def __init__(self, queue: Queue, clock: IReactorTime,
                 server_id: Callable[[], str | None], *, process: bool = True,
                 disk_full: Callable[[], bool] = lambda: False,
                 replication: Callable[[], dict] | None = None) -> None:
        self._queue = queue
        self._replication = replication
        self._disk_full = disk_full
        self._clock = clock
        self._server_id = server_id
        self.registry = CollectorRegistry()
        self.registry.register(_QueueCollector(self))
        if process:
            ProcessCollector(registry=self.registry)

    def stats(self) -> dict:
        """The queue's figures in the wire ``stats`` shape (what a client fetches)."""
        now = self._clock.seconds()
        totals = self._queue.global_stats(now)
        return {
            "server_id": self._server_id() or "",
            "global": {
                "action_count": totals.action_count,
                "job_put": totals.job_put,
                "job_get": totals.job_get,
                "uptime": totals.uptime,
                "jobs": len(self._queue),
                "draining": totals.draining,
                "max_jobs": totals.max_jobs,
                "disk_full": self._disk_full(),
            },
            "tubes": [
                {**attrs.asdict(tube), "throttle_size": tube.throttle}
                for tube in self._queue.tube_stats(now)
            ],
        }

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The registry in the format ``accept`` asks for; the body and its content type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def _collect(self) -> Iterator[Metric]:
        yield from stats_families([self.stats()])
        info = GaugeMetricFamily("allq_server_build_info", "This server's version.",
                                 labels=["version", "server"])
        info.add_metric([__version__, self._server_id() or ""], 1)
        yield info
        if self._replication is not None:
            yield from replication_families(self._replication(), self._server_id() or "")


def replication_families(section: dict, server: str) -> Iterator[Metric]:
    """A replicating primary's figures (its ``stats`` ``replication`` section)."""
    state = GaugeMetricFamily("allq_replication_state",
                              "1 for the replication state this primary is in.",
                              labels=["server", "state"])
    for name in STATES:
        state.add_metric([server, name], 1 if section["state"] == name else 0)
    yield state
    for name, kind, text in (
            ("lag_records", GaugeMetricFamily, "Records sent to the backup, not yet acknowledged."),
            ("lag_seconds", GaugeMetricFamily, "Age of the oldest unacknowledged message."),
            ("records_sent", CounterMetricFamily, "Records streamed to the backup."),
            ("resyncs", CounterMetricFamily, "Re-syncs of the backup after the first sync."),
            ("alone_changes", CounterMetricFamily,
             "Reads whose changes were acknowledged without the backup.")):
        family = kind(f"allq_replication_{name}", text, labels=["server"])
        family.add_metric([server], section[name])
        yield family


class _QueueCollector:
    """Registry adapter for :meth:`ServerMetrics._collect`."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics._collect()


class ServerMetricsResource(Resource):
    """``GET /metrics`` (and ``/``) with the server's metrics; 404 elsewhere, 405 for
    other methods. Plain text errors: this endpoint serves scrapers, not the API."""

    isLeaf = True

    def __init__(self, metrics: ServerMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def render(self, request: IRequest) -> bytes:
        request.setHeader(b"cache-control", b"no-store")
        if request.postpath not in ([b"metrics"], [b""]):
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"not found: metrics are at /metrics\n"
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, HEAD")
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"method not allowed: use GET\n"
        accept = request.getHeader(b"accept")
        body, content_type = self._metrics.exposition(
            None if accept is None else accept.decode("latin-1"))
        request.setHeader(b"content-type", content_type.encode("ascii"))
        return body


class _QuietSite(Site):
    """No access log line per scrape."""

    def log(self, request) -> None:
        pass


def metrics_site(metrics: ServerMetrics) -> Site:
    """The HTTP site for the ``--metrics`` endpoint."""
    site = _QuietSite(ServerMetricsResource(metrics))
    site.noisy = False
    return site
