"""Tests of :class:`allq.server.timer.DeadlineTimer`: one delayed call drives every deadline."""

import random

import pytest
from twisted.internet.task import Clock

from allq.core.queue import Queue, QueueConfig
from allq.server.timer import DeadlineTimer


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue() -> Queue:
    return Queue(QueueConfig(expired_limit=3))


@pytest.fixture
def timer(queue, clock) -> DeadlineTimer:
    timer = DeadlineTimer(queue, clock)
    timer.startService()
    yield timer
    if timer.running:
        timer.stopService()


def counts(queue: Queue, tube: str = "t") -> dict:
    (stats,) = [s for s in queue.tube_stats(0) if s.tube == tube]
    return {"ready": stats.ready, "reserved": stats.reserved,
            "delayed": stats.delayed, "buried": stats.buried}


def test_a_delayed_job_becomes_ready_exactly_when_due(queue, clock, timer):
    """A job put with delay=10 is still delayed at 9.5 s and ready at 10 s."""
    queue.put("t", "x", now=clock.seconds(), delay=10)
    timer.poke()
    clock.advance(9.5)
    assert counts(queue)["delayed"] == 1
    clock.advance(0.5)
    assert counts(queue) == {"ready": 1, "reserved": 0, "delayed": 0, "buried": 0}
    assert clock.getDelayedCalls() == []


def test_a_reserved_job_expires_at_its_ttl_and_is_buried_after_the_third_expiry(
    queue, clock, timer
):
    """A reserved job goes back to ready at each ttl and is buried at its 3rd expiry."""
    job = queue.put("t", "x", now=clock.seconds(), ttl=5)
    for expiry in (1, 2):
        assert queue.get("t", now=clock.seconds()) == [job]
        timer.poke()
        clock.advance(4.5)
        assert counts(queue)["reserved"] == 1
        clock.advance(0.5)
        assert (counts(queue)["ready"], job.expireds) == (1, expiry)
    assert queue.get("t", now=clock.seconds()) == [job]
    timer.poke()
    clock.advance(5)
    assert counts(queue) == {"ready": 0, "reserved": 0, "delayed": 0, "buried": 1}
    assert queue.peek("t", buried=True) is job


def test_poke_rearms_for_a_nearer_deadline_only(queue, clock, timer):
    """poke moves the one call earlier for a nearer deadline and leaves it for a later one."""
    queue.put("t", "late", now=0, delay=100)
    timer.poke()
    assert [call.getTime() for call in clock.getDelayedCalls()] == [100]
    queue.put("t", "soon", now=0, delay=10)
    timer.poke()
    assert [call.getTime() for call in clock.getDelayedCalls()] == [10]
    queue.put("t", "later", now=0, delay=50)
    timer.poke()
    assert [call.getTime() for call in clock.getDelayedCalls()] == [10]


def test_never_more_than_one_delayed_call_with_many_jobs(queue, clock, timer):
    """1000 jobs with varied delays and ttls all run off one delayed call at a time."""
    rng = random.Random(20240501)
    for number in range(1000):
        queue.put("t", str(number), now=clock.seconds(), delay=rng.uniform(0, 60), ttl=30)
        timer.poke()
        assert len(clock.getDelayedCalls()) <= 1
        if number % 7 == 0:
            clock.advance(rng.uniform(0, 3))
            queue.get("t", now=clock.seconds(), count=rng.randint(1, 3))
            timer.poke()
            assert len(clock.getDelayedCalls()) <= 1
    while queue.next_deadline() is not None:
        assert len(clock.getDelayedCalls()) == 1
        clock.advance(clock.getDelayedCalls()[0].getTime() - clock.seconds())
    assert counts(queue)["delayed"] == counts(queue)["reserved"] == 0
    assert clock.getDelayedCalls() == []


def test_start_service_arms_for_existing_deadlines(queue, clock):
    """A timer started over a queue that already has deadlines arms one call for the earliest."""
    queue.put("t", "a", now=0, delay=20)
    queue.put("t", "b", now=0, delay=5)
    timer = DeadlineTimer(queue, clock)
    timer.startService()
    assert [call.getTime() for call in clock.getDelayedCalls()] == [5]
    timer.stopService()


def test_stop_service_leaves_no_delayed_calls(queue, clock, timer):
    """stopService cancels the armed call."""
    queue.put("t", "x", now=0, delay=10)
    timer.poke()
    assert len(clock.getDelayedCalls()) == 1
    timer.stopService()
    assert clock.getDelayedCalls() == []


def test_poke_while_stopped_does_nothing(queue, clock):
    """poke on a timer that never started, or was stopped, schedules nothing."""
    timer = DeadlineTimer(queue, clock)
    queue.put("t", "x", now=0, delay=10)
    timer.poke()
    assert clock.getDelayedCalls() == []
    timer.startService()
    timer.stopService()
    queue.put("t", "y", now=0, delay=1)
    timer.poke()
    assert clock.getDelayedCalls() == []
    clock.advance(20)
    assert counts(queue)["delayed"] == 2
