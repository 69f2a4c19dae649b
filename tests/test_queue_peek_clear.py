"""Tests of looking into a tube and emptying it (:mod:`allq.core.queue`): peek and clear.
"""

import pytest

from allq.core.job import JobState
from allq.errors import BadRequest, NotFound

from queues import T0, counts, fill_every_state, job_in_state, make_queue, reserve_one, zero_counts


# -- peek ---------------------------------------------------------------------


def test_peek_ready_does_not_reserve():
    """peek shows the next job to be served without reserving it."""
    q = make_queue()
    q.put("t", "later", now=T0, priority=9)
    best = q.put("t", "best", now=T0, priority=1)
    assert q.peek("t") is best
    assert best.state is JobState.READY
    assert counts(q) == zero_counts(ready=2)
    assert q.global_stats(T0).job_get == 0
    assert reserve_one(q) is best


def test_peek_with_offset():
    """peek(offset=k) shows the job k places from the front, or None past the end."""
    q = make_queue()
    jobs = [q.put("t", str(n), now=T0, priority=3 - n) for n in range(3)]
    assert [q.peek("t", offset=k) for k in range(4)] == [jobs[2], jobs[1], jobs[0], None]


def test_peek_skips_deleted_and_reserved_jobs():
    """peek never shows a job that was deleted or reserved."""
    q = make_queue()
    a, b, c = (q.put("t", n, now=T0) for n in "abc")
    assert reserve_one(q) is a
    q.delete(b.id, now=T0)
    assert q.peek("t") is c
    assert q.peek("t", offset=1) is None


def test_peek_buried():
    """peek(buried=True) shows buried jobs oldest first."""
    q = make_queue()
    first = job_in_state(q, "buried")
    second = job_in_state(q, "buried")
    assert q.peek("t") is None
    assert q.peek("t", buried=True) is first
    assert q.peek("t", buried=True, offset=1) is second
    assert q.peek("t", buried=True, offset=2) is None


def test_peek_unknown_tube_is_none():
    """peek on an unknown tube returns None."""
    assert make_queue().peek("nothing") is None


def test_peek_negative_offset_is_bad_request():
    """A negative peek offset is rejected."""
    with pytest.raises(BadRequest, match="offset"):
        make_queue().peek("t", offset=-1)


# -- clear --------------------------------------------------------------------


@pytest.mark.parametrize("state", ["ready", "delayed", "reserved", "buried"])
def test_clear_one_state(state):
    """clear(state=s) drops that state's jobs of that tube only."""
    q = make_queue()
    jobs = fill_every_state(q, "t")
    fill_every_state(q, "other")
    assert q.clear("t", state=state) == 1
    assert jobs[state].state is JobState.DELETED
    states = ("ready", "reserved", "delayed", "buried")
    assert counts(q, "t") == zero_counts(**{s: 0 if s == state else 1 for s in states})
    assert counts(q, "other") == zero_counts(ready=1, delayed=1, reserved=1, buried=1)
    assert len(q) == 7
    with pytest.raises(NotFound):
        q.job(jobs[state].id)
    # A cleared job's deadline is gone: the sweep never touches it.
    events = q.expire(T0 + 100_000)
    assert jobs[state].id not in {event.job_id for event in events}


def test_clear_all():
    """clear(state='all') drops every job of the tube and leaves other tubes alone."""
    q = make_queue()
    fill_every_state(q, "t")
    others = fill_every_state(q, "other")
    assert q.clear("t") == 4
    assert counts(q, "t") == zero_counts()
    assert counts(q, "other") == zero_counts(ready=1, delayed=1, reserved=1, buried=1)
    assert len(q) == 4
    assert q.next_deadline() == min(others["delayed"].deadline, others["reserved"].deadline)
    assert q.get("t", now=T0) == []
    assert q.peek("other") is others["ready"]


def test_clear_finds_every_scheduled_job_among_many():
    """Delayed and reserved jobs of a tube, interleaved with other tubes' jobs, are
    all dropped by a clear of their state, and nothing else is."""
    q = make_queue()
    delayed, reserved = [], []
    for i in range(20):
        delayed.append(q.put("t", f"d{i}", now=T0, delay=100))
        q.put("other", f"o{i}", now=T0, delay=100)
        q.put("t2", f"r{i}", now=T0)
        reserved.append(q.put("t", f"r{i}", now=T0))
        assert reserve_one(q, "t") is reserved[-1]
    assert q.clear("t", state="delayed") == 20
    assert q.clear("t", state="delayed") == 0
    assert counts(q, "t") == zero_counts(reserved=20)
    assert q.clear("t", state="reserved") == 20
    assert all(job.state is JobState.DELETED for job in delayed + reserved)
    assert counts(q, "t") == zero_counts()
    assert counts(q, "other") == zero_counts(delayed=20)
    assert counts(q, "t2") == zero_counts(ready=20)


def test_clear_unknown_tube_is_zero():
    """clear of a tube that was never used drops nothing."""
    assert make_queue().clear("nothing") == 0


def test_clear_parents_is_accepted():
    """'parents' is a valid clear state (nothing to drop without parent jobs)."""
    q = make_queue()
    q.put("t", "x", now=T0)
    assert q.clear("t", state="parents") == 0
    assert counts(q) == zero_counts(ready=1)


def test_clear_unknown_state_is_bad_request():
    """clear with an unknown state is rejected with the allowed values."""
    q = make_queue()
    q.put("t", "x", now=T0)
    with pytest.raises(BadRequest, match="ready, delayed, buried, reserved"):
        q.clear("t", state="everything")
    assert counts(q) == zero_counts(ready=1)
