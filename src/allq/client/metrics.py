"""Prometheus metrics of ``twistd allq-client``, served at ``GET /metrics``.

Responsibilities, each a small piece the service assembly wires together:

* :class:`ClientMetrics` owns one :class:`CollectorRegistry` (never the
  process-global one) with what this client sees itself: jobs by tube and action,
  errors and retries by operation, and HTTP request latency; and, through a custom
  collector, what it last heard from the servers (queue depths and server
  counters, :mod:`allq.stats_metrics`) plus each server's up/down from
  ``federation.health()``.
* :class:`JobCounter` observes the federation (:mod:`allq.client.observers`)
  and counts what went through it.
* :class:`StatsRefresher` is the service that fetches the servers' stats every
  few seconds into the snapshot that scrapes read.
* The HTTP side (request timing, the ``/metrics`` resource) is
  :mod:`allq.client.metrics_http`.

A scrape never waits on the network: it reads the last snapshot and the
federation's in-memory health. Nothing here blocks the reactor or decides
anything about jobs.
"""

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource

from allq import __version__
from allq.client.metrics_http import MetricsResource, RouteNames, TimedResource
from allq.client.observers import FederationObserver
from allq.client.records import FetchedJob, ServerStats
from allq.errors import AllQError
from allq.stats_metrics import replication_families, stats_families

SECONDS = 1.0
#: How often the servers' stats are fetched for ``/metrics``.
DEFAULT_STATS_INTERVAL = 5 * SECONDS
#: How long one stats fetch may take before it is given up (and retried next time).
DEFAULT_STATS_TIMEOUT = 10 * SECONDS
#: How many job ids (→ tube) are remembered to label job actions by tube.
REMEMBERED_JOBS = 16384
#: Request latency buckets: fast job calls up to the 60 s long poll.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0, 60.0)
#: Job actions after which the job is gone.
_FINISHING = frozenset({"done", "delete"})


class Recorder(Protocol):
    """What :class:`InstrumentedFederation` reports to (:class:`ClientMetrics` is one)."""

    def count_jobs(self, action: str, tube: str, count: int = 1) -> None: ...

    def count_error(self, operation: str, code: str, count: int = 1) -> None: ...

    def count_retry(self, operation: str, address: str | None = None,
                    count: int = 1) -> None: ...


class ClientMetrics:
    """The client's metrics registry and what feeds it.

    :param clock: times request latency and the age of the stats snapshot.
    :param health: returns ``federation.health()``'s report; read at each scrape.
    :param process: also export the process's CPU, memory and file descriptors.
    """

    _log = Logger()

    def __init__(self, clock: IReactorTime, *, health: Callable[[], Mapping] | None = None,
                 process: bool = True) -> None:
        self._clock = clock
        self._health = health
        #: ``() -> (processes running, worker restarts so far)`` with ``--workers``.
        self.workers: Callable[[], tuple[int, int]] | None = None
        self._snapshot: list[Mapping] = []
        self._snapshot_at: float | None = None
        self._refresh_failures = 0
        self.registry = CollectorRegistry()
        self._jobs = Counter(
            "allq_client_jobs",
            "Jobs handled through this client, by tube and action (put, put_parent, get, "
            "done, delete, touch, release, bury, kick, set_children_started, clear; event: "
            "one per copy of an event; event_unmatched: events no tube wanted, tube empty).",
            ["tube", "action"], registry=self.registry)
        self._errors = Counter(
            "allq_client_operation_errors",
            "Federation operations that failed, by operation and error code.",
            ["operation", "error"], registry=self.registry)
        self._retries = Counter(
            "allq_client_retries",
            "Operations tried again after a transient failure, by operation and the "
            "server that failed (empty: no server was reachable).",
            ["operation", "server"], registry=self.registry)
        self._latency = Histogram(
            "allq_client_request_duration_seconds",
            "REST requests, from routing to the last byte written, by method, route and "
            "status class (aborted: the caller went away first).",
            ["method", "route", "status"], buckets=LATENCY_BUCKETS, registry=self.registry)
        # The labelled children of the hot metrics, by label values: ``labels()``
        # validates and locks on every call, a noticeable cost per request.
        self._job_counters: dict[tuple[str, str], Any] = {}
        self._latencies: dict[tuple[str, str, str], Any] = {}
        self.registry.register(_SnapshotCollector(self))
        if process:
            ProcessCollector(registry=self.registry)

    # -- recording -------------------------------------------------------------

    def count_jobs(self, action: str, tube: str, count: int = 1) -> None:
        """Count ``count`` jobs of ``tube`` (``""``: unknown) that went through ``action``."""
        if count > 0:
            key = (tube, action)
            child = self._job_counters.get(key)
            if child is None:
                child = self._job_counters[key] = self._jobs.labels(tube=tube, action=action)
            child.inc(count)

    def count_error(self, operation: str, code: str, count: int = 1) -> None:
        """Count ``count`` failed federation operations by their error code."""
        self._errors.labels(operation=operation, error=code).inc(count)

    def count_retry(self, operation: str, address: str | None = None,
                    count: int = 1) -> None:
        """Count ``count`` retries of ``operation`` after ``address`` (or no server)
        failed; the federation's ``on_retry`` hook."""
        self._retries.labels(operation=operation, server=address or "").inc(count)

    def observe_request(self, method: str, route: str, status: str, seconds: float) -> None:
        """Record one finished REST request."""
        key = (method, route, status)
        child = self._latencies.get(key)
        if child is None:
            child = self._latencies[key] = self._latency.labels(
                method=method, route=route, status=status)
        child.observe(max(seconds, 0.0))

    def update_stats(self, servers: Iterable[ServerStats]) -> None:
        """Replace the stats snapshot with the servers' latest replies."""
        self._snapshot = [server.reply for server in servers]
        self._snapshot_at = self._clock.seconds()

    def stats_failed(self) -> None:
        """A stats fetch failed: drop the snapshot (its depths are no longer known)."""
        self._snapshot = []
        self._refresh_failures += 1

    # -- reading ---------------------------------------------------------------

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The registry in the text format the ``Accept`` header asks for
        (Prometheus text by default, OpenMetrics on request).

        :returns: the body and its content type.
        """
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def resource(self) -> IResource:
        """The ``/metrics`` resource."""
        return MetricsResource(self)

    def instrument(self, resource: IResource, routes: RouteNames) -> IResource:
        """``resource`` with each request's latency observed (see :class:`TimedResource`)."""
        return TimedResource(resource, self, routes, self._clock)

    def _collect_snapshot(self) -> Iterator[Metric]:
        yield from stats_families(self._snapshot)
        yield from replication_families(self._snapshot)
        age = GaugeMetricFamily(
            "allq_client_stats_age_seconds",
            "Seconds since the servers' stats (allq_tube_*, allq_server_*) were fetched.")
        if self._snapshot_at is not None:
            age.add_metric([], max(self._clock.seconds() - self._snapshot_at, 0.0))
        yield age
        yield CounterMetricFamily(
            "allq_client_stats_refresh_failures",
            "Stats fetches that failed (no server answered, or too slow).",
            value=self._refresh_failures)
        info = GaugeMetricFamily("allq_client_build_info", "This client's version.",
                                 labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        up = GaugeMetricFamily(
            "allq_client_server_up", "1 when this client has a working link to the server.",
            labels=["address", "server"])
        draining = GaugeMetricFamily(
            "allq_client_server_draining", "1 when this client places no new jobs on the server.",
            labels=["address", "server"])
        failovers = CounterMetricFamily(
            "allq_failovers", "Servers whose backup this client promoted to serve their "
            "jobs (docs/replication.md).")
        if self._health is not None:
            health = self._health()
            for server in health["servers"]:
                labels = [str(server["address"]), str(server.get("server_id") or "")]
                up.add_metric(labels, float(bool(server["up"])))
                draining.add_metric(labels, float(bool(server.get("draining", False))))
            failovers.add_metric([], float(len(health.get("failovers", ()))))
        yield up
        yield draining
        yield failovers
        if self.workers is not None:
            running, restarts = self.workers()
            yield GaugeMetricFamily(
                "allq_client_processes", "Client processes serving the HTTP port "
                "(the primary and its --workers).", value=running)
            yield CounterMetricFamily(
                "allq_client_worker_restarts", "Worker processes started again after "
                "they exited.", value=restarts)


class _SnapshotCollector:
    """Registry adapter: the snapshot, health and bookkeeping families."""

    def __init__(self, metrics: ClientMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics._collect_snapshot()


# -- the federation, counted --------------------------------------------------------


class JobCounter(FederationObserver):
    """Counts what goes through the federation into a :class:`Recorder`: jobs by
    tube and action once they succeed, every :class:`AllQError` by operation and
    code, and every retry.

    Job actions carry only a job id; their tube comes from a bounded memory of
    the ids this client put or handed out (``""`` when unknown).

    :param recorder: where the counts go (:class:`ClientMetrics`, or a worker's
        :class:`allq.client.workers.WorkerMetrics`).
    :param remembered: how many job ids (→ tube) to remember for job actions.
    """

    def __init__(self, recorder: Recorder, *, remembered: int = REMEMBERED_JOBS) -> None:
        self._recorder = recorder
        self._remembered = remembered
        self._tubes: OrderedDict[str, str] = OrderedDict()

    def stored(self, action: str, tube: str, job_id: str, address: str) -> None:
        self._recorder.count_jobs(action, tube)
        self._remember(job_id, tube)

    def got(self, tube: str, jobs: Sequence[FetchedJob], deleted: bool) -> None:
        self._recorder.count_jobs("get", tube, len(jobs))
        if deleted:
            self._recorder.count_jobs("delete", tube, len(jobs))
        else:
            for job in jobs:
                self._remember(job.job_id, job.tube)

    def acted(self, action: str, job_id: str, address: str) -> None:
        self._recorder.count_jobs(action, self._tubes.get(job_id, ""))
        if action in _FINISHING:
            self._tubes.pop(job_id, None)

    def counted(self, action: str, tube: str, count: int) -> None:
        self._recorder.count_jobs(action, tube, count)

    def failed(self, operation: str, code: str, count: int = 1) -> None:
        self._recorder.count_error(operation, code, count)

    def retried(self, operation: str, address: str | None) -> None:
        self._recorder.count_retry(operation, address)

    def _remember(self, job_id: str, tube: str) -> None:
        self._tubes[job_id] = tube
        self._tubes.move_to_end(job_id)
        while len(self._tubes) > self._remembered:
            self._tubes.popitem(last=False)


# -- the stats snapshot -------------------------------------------------------------


class StatsRefresher(Service):
    """Fetches every server's stats into :meth:`ClientMetrics.update_stats`, every
    ``interval`` seconds, one fetch at a time.

    A fetch that fails or takes longer than ``timeout`` empties the snapshot until
    the next one succeeds; failures are logged once per outage, not per try.
    Stopping cancels a fetch in flight and leaves no timer behind.

    :param federation: has ``async stats() -> list[ServerStats]``.
    :param metrics: receives the snapshots.
    :param clock: schedules the fetches.
    """

    _log = Logger()

    def __init__(self, federation: Any, metrics: ClientMetrics, clock: IReactorTime, *,
                 interval: float = DEFAULT_STATS_INTERVAL,
                 timeout: float = DEFAULT_STATS_TIMEOUT) -> None:
        self._federation = federation
        self._metrics = metrics
        self._clock = clock
        self._interval = interval
        self._timeout = timeout
        self._loop: LoopingCall | None = None
        self._stopped: Deferred | None = None
        self._in_flight: Deferred | None = None
        self._failing = False

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self._refresh)
        self._loop.clock = self._clock
        self._stopped = self._loop.start(self._interval, now=True)

    def stopService(self) -> Deferred | None:
        super().stopService()
        loop, stopped, self._loop, self._stopped = self._loop, self._stopped, None, None
        if loop is not None and loop.running:
            loop.stop()
        if self._in_flight is not None:
            self._in_flight.cancel()
        return stopped

    def _refresh(self) -> Deferred:
        d = ensureDeferred(self._federation.stats())
        d.addTimeout(self._timeout, self._clock)
        self._in_flight = d
        d.addCallbacks(self._fetched, self._failed)
        d.addBoth(self._settled)
        return d

    def _fetched(self, servers: list[dict]) -> None:
        self._metrics.update_stats(servers)
        if self._failing:
            self._failing = False
            self._log.info("server stats for /metrics are available again")

    def _failed(self, failure: Failure) -> None:
        if failure.check(CancelledError) and not self.running:
            return  # stopping
        self._metrics.stats_failed()
        if failure.check(AllQError, DeferredTimeoutError, CancelledError):
            if not self._failing:
                self._failing = True
                self._log.info("server stats for /metrics unavailable: {error}",
                               error=failure.getErrorMessage())
            return
        # A bug, not an outage: say so loudly, and keep refreshing (STYLE §9.4).
        self._log.failure("fetching server stats for /metrics failed", failure)

    def _settled(self, result: None) -> None:
        self._in_flight = None
