"""``Queue.restore(..., reserved_until=...)``: a promoted replica's reserved jobs
stay reserved until their deadline (docs/replication.md)."""

import pytest

from allq.core.job import Job, JobState
from allq.errors import BadRequest

from queues import T0, counts, make_queue, zero_counts


def _reserved_job(job_id: int = 7, **fields) -> Job:
    return Job(id=job_id, tube="t", body="b", priority=10, ttl=30.0, expired_limit=3,
               created=T0 - 10, state=JobState.RESERVED, deadline=T0 + 20, **fields)


def test_reserved_until_keeps_the_job_reserved():
    """A reserved job restored with reserved_until is reserved, not ready, until then."""
    q = make_queue()
    job = q.restore(_reserved_job(), now=T0, reserved_until=T0 + 20)
    assert job.state is JobState.RESERVED
    assert counts(q) == zero_counts(reserved=1)
    assert q.get("t", now=T0) == []
    assert q.next_deadline() == T0 + 20


def test_restored_reservation_can_be_done():
    """The original worker's done finishes a job restored reserved."""
    q = make_queue()
    q.restore(_reserved_job(), now=T0, reserved_until=T0 + 20)
    q.done(7, now=T0 + 1)
    assert len(q) == 0
    assert counts(q) == zero_counts()
    assert q.next_deadline() is None or q.expire(T0 + 100) == []


def test_restored_reservation_can_be_touched_and_released():
    """touch renews a restored reservation; release makes the job ready."""
    q = make_queue()
    q.restore(_reserved_job(), now=T0, reserved_until=T0 + 20)
    q.touch(7, now=T0 + 5)
    assert q.job(7).deadline == T0 + 35
    q.release(7, now=T0 + 6)
    assert counts(q) == zero_counts(ready=1)
    assert [job.id for job in q.get("t", now=T0 + 6)] == [7]


def test_restored_reservation_expires_after_its_deadline():
    """The job comes back (as a ttl expiry) once its deadline passes."""
    q = make_queue()
    q.restore(_reserved_job(), now=T0, reserved_until=T0 + 20)
    assert q.expire(T0 + 19) == []
    (event,) = q.expire(T0 + 20)
    assert event.kind == "expired"
    job = q.job(7)
    assert (job.state, job.expireds) == (JobState.READY, 1)
    assert counts(q) == zero_counts(ready=1)


def test_restored_reservation_holds_its_concurrency_slot():
    """A restored reservation counts against its concurrency key's limit."""
    q = make_queue()
    q.restore(_reserved_job(), now=T0, reserved_until=T0 + 20, concurrency_key="k")
    q.put("t", "other", now=T0, concurrency_key="k")
    assert q.get("t", now=T0) == []
    q.done(7, now=T0 + 1)
    assert len(q.get("t", now=T0 + 1)) == 1


def test_without_reserved_until_a_reserved_job_is_ready():
    """Without reserved_until a reserved job is restored ready (a restart)."""
    q = make_queue()
    q.restore(_reserved_job(), now=T0)
    assert counts(q) == zero_counts(ready=1)


def test_reserved_until_refused_for_a_job_that_is_not_reserved():
    """reserved_until names a reservation: any other state is refused."""
    q = make_queue()
    job = Job(id=8, tube="t", body="b", priority=1, ttl=30.0, expired_limit=3,
              created=T0, state=JobState.READY)
    with pytest.raises(BadRequest, match="only a reserved job"):
        q.restore(job, now=T0, reserved_until=T0 + 5)
    assert len(q) == 0
