"""Helpers for the backup's tests: jobs and streamed journal lines, built with
:mod:`allq.server.records` as a primary would."""

from allq.core.job import Job, JobState
from allq.server.records import frame, job_record, state_record

T0 = 1_000_000.0


def job(job_id: int, state: JobState = JobState.READY, deadline: float | None = None,
        tube: str = "t", body: str = "b", ttl: float = 30.0, **fields) -> Job:
    return Job(id=job_id, tube=tube, body=body, priority=10, ttl=ttl, expired_limit=3,
               created=T0, state=state, deadline=deadline, **fields)


def put(job_id: int, **fields) -> list:
    """A ``j`` record of a ready job."""
    return job_record(job(job_id, **fields), None)


def state(job_id: int, state_: JobState, deadline: float | None = None, **fields) -> list:
    """An ``s`` record."""
    return state_record(job(job_id, state=state_, deadline=deadline, **fields), None)


def lines(*records: list) -> str:
    """Journal lines as ``replica_records`` carries them."""
    return b"".join(frame(record) for record in records).decode("ascii")
