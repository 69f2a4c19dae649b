"""Prometheus metric families from servers' ``stats`` replies, for both daemons.

One translation of the wire ``stats`` shape (``allq.server.dispatch``
``_do_stats``: ``server_id``, ``global`` counters, per-tube counts) into
Prometheus families, so the client's ``GET /metrics`` (fed by a periodic stats
snapshot of every server) and a server's own ``--metrics`` endpoint name the same
things the same way. Every family is labelled by ``server`` (the server id);
per-tube families also by ``tube``.

Pure: builds metric objects from plain dicts. No reactor, no I/O, no registry:
callers yield these from a custom collector's ``collect()``.

Optional fields are exported only when a server sends them, so older servers
and newer ones can be scraped together: ``expired_total`` and ``buried_total``
per tube (cumulative ttl expiries, and jobs that became buried, since the
server started), ``throttle_size`` and ``max_size`` per tube, ``max_jobs`` and
``disk_full`` per server.
"""

from collections.abc import Iterable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

#: Per-tube counts, in the order the dashboard shows them; ``parents`` are
#: parent jobs waiting for their children.
TUBE_STATES = ("ready", "reserved", "delayed", "buried", "parents")

#: Optional cumulative per-tube counters a server may send: field → (family, help).
TUBE_COUNTERS = {
    "expired_total": (
        "allq_tube_expired",
        "Reserved jobs whose ttl elapsed, since the server started."),
    "buried_total": (
        "allq_tube_buried",
        "Jobs that became buried (bury, last allowed expiry, parent timeout), "
        "since the server started."),
}


def stats_families(servers: Iterable[Mapping]) -> Iterator[Metric]:
    """Metric families describing the given servers' stats.

    :param servers: ``stats`` replies, each with ``server_id``, ``global`` and
        ``tubes`` as the server sends them. Malformed entries raise ``KeyError``
        or ``ValueError``; the callers only pass what a server answered.
    :returns: one family per metric name (families with no sample are still
        yielded, so the names are always described).
    """
    jobs = GaugeMetricFamily(
        "allq_tube_jobs", "Jobs in a tube, by state.", labels=["server", "tube", "state"])
    tps = GaugeMetricFamily(
        "allq_tube_completed_per_second",
        "Jobs finished per second in a tube, over the last minute.", labels=["server", "tube"])
    avg = GaugeMetricFamily(
        "allq_tube_processing_seconds_average",
        "Mean time from reservation to finish of a tube's recent jobs.",
        labels=["server", "tube"])
    paused = GaugeMetricFamily(
        "allq_tube_paused", "1 when the tube hands out no jobs.", labels=["server", "tube"])
    draining = GaugeMetricFamily(
        "allq_tube_draining", "1 when the tube takes no new jobs.", labels=["server", "tube"])
    throttle = GaugeMetricFamily(
        "allq_tube_throttle_per_second",
        "A throttled tube's share of jobs per second on this server.", labels=["server", "tube"])
    max_size = GaugeMetricFamily(
        "allq_tube_max_size", "A bounded tube's maximum jobs on this server.",
        labels=["server", "tube"])
    counters = {
        field: CounterMetricFamily(name, help_text, labels=["server", "tube"])
        for field, (name, help_text) in TUBE_COUNTERS.items()
    }
    held = GaugeMetricFamily("allq_server_jobs", "Jobs the server holds.", labels=["server"])
    max_jobs = GaugeMetricFamily(
        "allq_server_max_jobs", "The most jobs the server may hold.", labels=["server"])
    put = CounterMetricFamily(
        "allq_server_jobs_put", "Jobs stored, since the server started.", labels=["server"])
    got = CounterMetricFamily(
        "allq_server_jobs_get", "Jobs handed out, since the server started.", labels=["server"])
    actions = CounterMetricFamily(
        "allq_server_actions", "Requests handled, since the server started.", labels=["server"])
    uptime = GaugeMetricFamily(
        "allq_server_uptime_seconds", "Seconds since the server started.", labels=["server"])
    server_draining = GaugeMetricFamily(
        "allq_server_draining", "1 when the server takes no new jobs.", labels=["server"])
    disk_full = GaugeMetricFamily(
        "allq_server_disk_full",
        "1 while the server's data directory is full: it takes no changes.",
        labels=["server"])

    for server in servers:
        server_id = str(server["server_id"])
        totals = server["global"]
        held.add_metric([server_id], float(totals.get("jobs", 0)))
        if totals.get("max_jobs") is not None:
            max_jobs.add_metric([server_id], float(totals["max_jobs"]))
        put.add_metric([server_id], float(totals["job_put"]))
        got.add_metric([server_id], float(totals["job_get"]))
        actions.add_metric([server_id], float(totals["action_count"]))
        uptime.add_metric([server_id], float(totals.get("uptime", 0)))
        server_draining.add_metric([server_id], float(bool(totals.get("draining", False))))
        if totals.get("disk_full") is not None:
            disk_full.add_metric([server_id], float(bool(totals["disk_full"])))
        for tube in server["tubes"]:
            labels = [server_id, str(tube["tube"])]
            for state in TUBE_STATES:
                jobs.add_metric([*labels, state], float(tube[state]))
            tps.add_metric(labels, float(tube["tps"]))
            avg.add_metric(labels, float(tube["avg"]))
            paused.add_metric(labels, float(bool(tube.get("paused", False))))
            draining.add_metric(labels, float(bool(tube.get("draining", False))))
            if tube.get("throttle_size") is not None:
                throttle.add_metric(labels, float(tube["throttle_size"]))
            if tube.get("max_size") is not None:
                max_size.add_metric(labels, float(tube["max_size"]))
            for field, family in counters.items():
                if tube.get(field) is not None:
                    family.add_metric(labels, float(tube[field]))

    yield from (jobs, tps, avg, paused, draining, throttle, max_size, *counters.values(),
                held, max_jobs, put, got, actions, uptime, server_draining, disk_full)


#: A primary's replication states (docs/replication.md), each a sample of
#: ``allq_replication_state`` (1 for the current one).
REPLICATION_STATES = ("connecting", "syncing", "streaming", "alone", "refusing", "fenced")


def replication_families(servers: Iterable[Mapping]) -> Iterator[Metric]:
    """Metric families of the primaries' ``replication`` stats sections
    (servers without one, or an older server, add no sample).

    :param servers: ``stats`` replies, as for :func:`stats_families`.
    """
    lag_records = GaugeMetricFamily(
        "allq_replication_lag_records",
        "Records a primary sent its backup that the backup has not acknowledged yet.",
        labels=["server"])
    lag_seconds = GaugeMetricFamily(
        "allq_replication_lag_seconds",
        "Age of the oldest record a primary's backup has not acknowledged.",
        labels=["server"])
    state = GaugeMetricFamily(
        "allq_replication_state",
        "1 for a primary's replication state (connecting, syncing, streaming, alone, "
        "refusing, fenced), 0 for the others.", labels=["server", "state"])
    for server in servers:
        section = server.get("replication")
        if not isinstance(section, Mapping):
            continue
        server_id = str(server["server_id"])
        if isinstance(section.get("lag_records"), (int, float)):
            lag_records.add_metric([server_id], float(section["lag_records"]))
        if isinstance(section.get("lag_seconds"), (int, float)):
            lag_seconds.add_metric([server_id], float(section["lag_seconds"]))
        current = str(section.get("state"))
        for name in dict.fromkeys((*REPLICATION_STATES, current)):
            state.add_metric([server_id, name], float(name == current))
    yield from (lag_records, lag_seconds, state)
