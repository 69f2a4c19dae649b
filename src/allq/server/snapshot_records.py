"""The records that describe a whole queue: what a snapshot file and a replica's
initial sync are made of.

Pure builders over the live queue (no I/O, no clock), shared by the journal's
compaction (:mod:`allq.server.journal`, ``snapshot.<G>`` files) and the
primary's stream to its backup (:mod:`allq.server.replication`), so both say
the same thing in the same record format (:mod:`allq.server.records`).
"""

from collections.abc import Iterable

from allq.core.job import Job, JobState
from allq.server.records import (
    concurrency_record,
    error_record,
    frame,
    has_settings,
    job_record,
    keys_record,
    schedule_record,
    tube_record,
)

_DELETED = JobState.DELETED
_WAITING = JobState.WAITING
_RESERVED = JobState.RESERVED


def reservation_record(job: Job) -> list:
    """The stream-only ``r`` record: ``job`` is reserved until its deadline. Never
    written to disk (a restart gives reserved jobs back anyway); a promoted replica
    gives the job back after its ttl, not at once."""
    return ["r", job.id, job.deadline]


def job_lines(queue, jobs: Iterable[Job], *, reservations: bool = False) -> list[bytes]:
    """The framed records of ``jobs`` (a copy of the live list, walked in chunks):
    each job whole, its keys and last error; jobs deleted since the copy are skipped.

    :param reservations: also an ``r`` record after each reserved job (the stream).
    """
    lines = []
    for job in jobs:
        state = job.state
        if state is _DELETED:
            continue  # gone since the copy; the records after it say so
        info = queue.parent_info(job.id) if state is _WAITING else None
        lines.append(frame(job_record(job, info)))
        keys = queue.job_keys(job.id)
        if keys is not None:
            lines.append(frame(keys_record(job.id, keys)))
        error = queue.last_error(job.id)
        if error is not None:
            lines.append(frame(error_record(job.id, error)))
        if reservations and state is _RESERVED:
            lines.append(frame(reservation_record(job)))
    return lines


def settings_lines(queue, keys=None, schedules=None, interests=None) -> list[bytes]:
    """The framed records of everything but the jobs: tube settings, concurrency
    limits, the drain flag, idempotency keys, schedules and interests."""
    lines = [frame(tube_record(queue.tube(name))) for name in queue.tube_names()
             if has_settings(queue.tube(name))]
    lines += [frame(concurrency_record(name, limit))
              for name, limit in queue.concurrency_limits().items()]
    lines.append(frame(["S", bool(queue.draining)]))
    if keys is not None:
        lines += [frame(["k", key, job_id, expires])
                  for key, job_id, expires in keys.entries()]
    if schedules is not None:
        lines += [frame(schedule_record(schedule.spec.name, schedule))
                  for schedule in schedules.all()]
    if interests is not None:
        lines += [frame(["i", *entry.record()]) for entry in interests.entries()]
    return lines
