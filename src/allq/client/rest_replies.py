"""The shapes of REST answers: federation records into AllQueue's JSON.

Pure functions from :mod:`allq.client.records` (and outcomes) to the JSON
objects AllQueue's REST clients parse (``ALLQ-REFERENCE.md`` §9.2), so the
Ruby ``allq_rest`` clients keep working. Nothing here reads a request or
writes a response.
"""

from collections.abc import Sequence

from allq.client.http import error_body
from allq.wire.bodies import encode_body
from allq.client.records import DuplicateJobId, FetchedJob, ServerStats
from allq.errors import AllQError


def rest_job(job: FetchedJob) -> dict:
    """A job in AllQueue's REST ``JobResponse`` shape, plus ``error`` (the last
    error a bury recorded) when the job has one; a binary body (not UTF-8 text)
    comes as ``body_base64`` beside ``"body_encoding": "base64"``."""
    reply: dict = {"id": job.job_id}
    if type(job.body) is bytes:
        reply["body_base64"], reply["body_encoding"] = encode_body(job.body)
    else:
        reply["body"] = job.body
    reply.update(tube=job.tube, expireds=job.expireds, releases=job.releases,
                 # What a worker needs to touch the job in time, and a dump to put it again.
                 ttl=job.ttl, priority=job.priority)
    if job.error is not None:
        reply["error"] = job.error
    return reply


def rest_stats(server: ServerStats) -> dict:
    """One server's stats in AllQueue's REST ``StatsResults`` shape."""
    tubes = []
    for tube in server.tubes:
        entry = {
            "tube": tube.tube,
            "ready": tube.ready,
            "reserved": tube.reserved,
            "delayed": tube.delayed,
            "buried": tube.buried,
            "parents": tube.parents,
        }
        if tube.throttle_size is not None:
            entry["throttle_size"] = _int_if_whole(tube.throttle_size)
        entry["avg"] = round(tube.avg, 2)
        entry["tps"] = round(tube.tps, 2)
        entry["paused"] = tube.paused
        entry["draining"] = tube.draining
        entry["fair"] = tube.fair
        entry["max_size"] = tube.max_size
        entry["concurrency"] = tube.concurrency
        tubes.append(entry)
    totals = server.totals
    return {
        "server_name": f"{server.server_id},{server.address}",
        "action_count": int(totals["action_count"]),
        "job_put": int(totals["job_put"]),
        "job_get": int(totals["job_get"]),
        "draining": bool(totals.get("draining", False)),
        "disk_full": bool(totals.get("disk_full", False)),
        "events": int(totals.get("events", 0)),
        "events_unmatched": int(totals.get("events_unmatched", 0)),
        "schedule_failures": int(totals.get("schedule_failures", 0)),
        "stats": tubes,
        # Replication (docs/replication.md): a primary's and a backup's sections, as sent.
        **{name: server.reply[name] for name in ("replication", "replicas")
           if name in server.reply},
    }


def _int_if_whole(value: float) -> int | float:
    """A throttle share: AllQueue showed whole numbers; a split may be fractional."""
    value = float(value)
    return int(value) if value.is_integer() else value


def batch_reply(outcomes: Sequence[str | AllQError], action: str) -> tuple[dict, int]:
    """A batch's answer and HTTP status: 200 with every job id when each job
    succeeded; otherwise the first failure's status and error, with ``job_ids``
    (``null`` where that job failed) and an ``errors`` entry per failed job, so a
    caller knows exactly what was done.

    :param outcomes: per job, its id or the :class:`AllQError` it failed with.
    """
    job_ids: list[str | None] = []
    errors: list[dict] = []
    duplicates: list[int] = []
    first: AllQError | None = None
    for index, outcome in enumerate(outcomes):
        if not isinstance(outcome, AllQError):
            job_ids.append(outcome)
            if isinstance(outcome, DuplicateJobId):
                duplicates.append(index)
            continue
        job_ids.append(None)
        first = first or outcome
        errors.append({"index": index, **error_body(outcome)})
    # Jobs a unique_key found live (their ids are the existing jobs'), by index.
    marked = {"duplicates": duplicates} if duplicates else {}
    if first is None:
        return {"action": action, "job_ids": job_ids, **marked}, 200
    return ({**error_body(first), "action": action, "job_ids": job_ids, "errors": errors,
             **marked}, first.http_status)
