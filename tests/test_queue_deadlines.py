"""Tests of the queue core's deadlines (:mod:`allq.core.queue`, :mod:`allq.core.deadlines`).

Ttl expiry, ``run_at``, :meth:`~allq.core.queue.Queue.next_deadline` and the
deadline heap's size. Time is a number passed as ``now=``; the last tests drive
a :class:`~allq.core.queue.Queue` from :class:`twisted.internet.task.Clock`
with the single re-armed deadline timer the server uses.
"""

import pytest
from twisted.internet.task import Clock

from allq.core import deadlines
from allq.core.job import JobState
from allq.core.queue import DEFAULT_TTL, Event
from allq.errors import BadRequest

from queues import SingleTimer, T0, counts, make_queue, reserve_one, zero_counts


# -- touch --------------------------------------------------------------------


def test_touch_many_times_does_not_grow_the_deadline_heap():
    """10,000 touches of one job keep the deadline heap small (lazy entries compacted)."""
    bound = 2 * 1 + deadlines._COMPACT_SLACK + 1
    for same_time in (False, True):
        q = make_queue()
        job = q.put("t", "x", now=T0, ttl=10)
        reserve_one(q)
        for n in range(10_000):
            q.touch(job.id, now=T0 if same_time else T0 + n / 100)
            assert len(q._deadlines._heap) <= bound
        assert len(q._deadlines) == 1
        assert q.next_deadline() == job.deadline


def test_reserving_again_and_again_does_not_grow_the_deadline_heap():
    """Reserve/release cycles at one instant keep the deadline heap small."""
    q = make_queue(expired_limit=2**31)
    job = q.put("t", "x", now=T0)
    for _ in range(5_000):
        reserve_one(q)
        q.release(job.id, now=T0)
    assert len(q._deadlines._heap) <= deadlines._COMPACT_SLACK + 1
    assert q.next_deadline() is None


# -- ttl expiry ---------------------------------------------------------------


def test_ttl_expiry_makes_the_job_ready_with_same_priority():
    """An expired job is ready again with expireds+1 and its own priority."""
    q = make_queue()
    early = q.put("t", "put earlier, prio 4", now=T0, priority=4)
    job = q.put("t", "prio 2", now=T0 + 1, priority=2)
    assert reserve_one(q, now=T0 + 1) is job  # prio 2 wins over the earlier prio 4
    assert q.expire(job.deadline) == [Event("expired", job.id, "t")]
    assert (job.state, job.expireds, job.priority) == (JobState.READY, 1, 2)
    assert (job.deadline, job.reserved_at) == (None, None)
    assert counts(q) == zero_counts(ready=2)
    assert q.get("t", now=T0 + DEFAULT_TTL + 2, count=2) == [job, early]


def test_third_expiry_buries_with_default_limit():
    """With the default limit 3 a job expires twice back to ready and is buried on the 3rd."""
    q = make_queue()
    job = q.put("t", "x", now=T0, ttl=5)
    now = T0
    kinds = []
    for _ in range(3):
        reserve_one(q, now=now)
        now = job.deadline
        kinds += [event.kind for event in q.expire(now)]
    assert kinds == ["expired", "expired", "buried"]
    assert (job.state, job.expireds) == (JobState.BURIED, 3)
    assert counts(q) == zero_counts(buried=1)
    assert q.next_deadline() is None


@pytest.mark.parametrize("limit", [1, 2, 5])
def test_per_job_expired_limit(limit):
    """A job's own expired_limit decides on which expiry it is buried."""
    q = make_queue()
    job = q.put("t", "x", now=T0, ttl=1, expired_limit=limit)
    now = T0
    for n in range(1, limit + 1):
        reserve_one(q, now=now)
        now += 1
        (event,) = q.expire(now)
        assert event.kind == ("buried" if n == limit else "expired")
    assert job.state is JobState.BURIED


def test_expire_returns_events_in_deadline_order():
    """One sweep applies every due deadline, earliest first, and reports each one."""
    q = make_queue()
    reserved = q.put("t", "r", now=T0, ttl=3)
    reserve_one(q)
    delayed = q.put("t", "d", now=T0, delay=2)
    later = q.put("t", "later", now=T0, delay=100)
    assert q.expire(T0 + 5) == [
        Event("matured", delayed.id, "t"),
        Event("expired", reserved.id, "t"),
    ]
    assert later.state is JobState.DELAYED
    assert q.next_deadline() == T0 + 100


def test_expire_with_nothing_due_does_nothing():
    """expire before any deadline changes nothing."""
    q = make_queue()
    q.put("t", "x", now=T0, delay=10)
    assert q.expire(T0) == []
    assert counts(q) == zero_counts(delayed=1)


# -- next_deadline ------------------------------------------------------------


def test_next_deadline_of_an_empty_queue_is_none():
    """With no delayed or reserved job there is no deadline."""
    q = make_queue()
    assert q.next_deadline() is None
    q.put("t", "ready", now=T0)
    assert q.next_deadline() is None


def test_next_deadline_is_the_earliest_delayed_or_reserved_deadline():
    """next_deadline is the earliest of all delay and ttl deadlines, and follows changes."""
    q = make_queue()
    delayed = q.put("t", "d", now=T0, delay=50)
    assert q.next_deadline() == T0 + 50
    reserved = q.put("r", "r", now=T0, ttl=30)
    reserve_one(q, "r")
    assert q.next_deadline() == T0 + 30
    q.touch(reserved.id, now=T0 + 40)
    assert q.next_deadline() == T0 + 50
    q.kick(delayed.id, now=T0 + 41)
    assert q.next_deadline() == T0 + 70
    q.done(reserved.id, now=T0 + 42)
    assert q.next_deadline() is None


# -- driving the core from a Clock --------------------------------------------


def test_clock_driven_delay_and_ttl():
    """Advancing a Clock to next_deadline and calling expire moves jobs on time."""
    clock = Clock()
    clock.advance(T0)
    q = make_queue()
    delayed = q.put("t", "d", now=clock.seconds(), delay=10)
    assert q.next_deadline() == clock.seconds() + 10

    clock.advance(q.next_deadline() - clock.seconds())
    assert q.expire(clock.seconds()) == [Event("matured", delayed.id, "t")]
    assert q.get("t", now=clock.seconds()) == [delayed]

    assert q.next_deadline() == clock.seconds() + DEFAULT_TTL
    clock.advance(DEFAULT_TTL - 1)
    q.touch(delayed.id, now=clock.seconds())
    clock.advance(1)
    assert q.expire(clock.seconds()) == []  # the old deadline passed harmlessly
    clock.advance(q.next_deadline() - clock.seconds())
    assert q.expire(clock.seconds()) == [Event("expired", delayed.id, "t")]
    assert q.next_deadline() is None


def test_single_timer_buries_after_three_expiries():
    """One re-armed timer drives three ttl expiries to burial, with never more than one call."""
    clock = Clock()
    q = make_queue()
    timer = SingleTimer(q, clock)
    job = q.put("t", "x", now=clock.seconds(), ttl=5)
    other = q.put("u", "y", now=clock.seconds(), delay=12)
    timer.rearm()
    for _ in range(3):
        reserve_one(q, now=clock.seconds())
        timer.rearm()
        assert len(clock.getDelayedCalls()) == 1
        clock.advance(5)
    assert [(e.kind, e.job_id) for e in timer.events] == [
        ("expired", job.id),
        ("expired", job.id),
        ("matured", other.id),
        ("buried", job.id),
    ]
    assert job.state is JobState.BURIED
    assert other.state is JobState.READY
    assert clock.seconds() == 15
    # Nothing left to wait for: the timer leaves no call behind.
    assert clock.getDelayedCalls() == []


# -- run_at ------------------------------------------------------------------------


def test_run_at_delays_until_that_time():
    """A job put with run_at is delayed until that unix time."""
    q = make_queue()
    job = q.put("t", "x", now=T0, run_at=T0 + 30)
    assert job.state is JobState.DELAYED
    assert q.next_deadline() == T0 + 30
    assert q.expire(T0 + 29.9) == []
    assert q.expire(T0 + 30) == [Event("matured", job.id, "t")]
    assert q.get("t", now=T0 + 30) == [job]


@pytest.mark.parametrize("run_at", [T0, T0 - 1, 0])
def test_run_at_now_or_in_the_past_is_ready_at_once(run_at):
    """A run_at that is not in the future makes the job ready at once."""
    q = make_queue()
    job = q.put("t", "x", now=T0, run_at=run_at)
    assert job.state is JobState.READY
    assert q.next_deadline() is None


def test_delay_and_run_at_together_is_a_bad_request():
    """Giving both delay and run_at is a BadRequest; nothing is stored."""
    q = make_queue()
    with pytest.raises(BadRequest, match="run_at"):
        q.put("t", "x", now=T0, delay=5, run_at=T0 + 10)
    assert len(q) == 0


@pytest.mark.parametrize("run_at", [-1, "soon", float("nan"), True])
def test_bad_run_at_is_rejected(run_at):
    """run_at must be a finite, non-negative number."""
    q = make_queue()
    with pytest.raises(BadRequest, match="run_at"):
        q.put("t", "x", now=T0, run_at=run_at)
