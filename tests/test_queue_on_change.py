"""Tests of the queue core's ``on_change`` hook (:mod:`allq.core.queue`), which the journal uses.
"""

import pytest

from allq.core.job import JobState
from allq.core.queue import Queue, QueueConfig
from allq.errors import BadRequest, Draining, NotFound

from queues import T0, finish, reserve_one


# -- the change hook -----------------------------------------------------------------


def recording_queue() -> tuple[Queue, list]:
    calls: list = []

    def on_change(kind, subject):
        if kind == "job":
            calls.append(("job", subject.id, subject.state))
        elif kind == "tube":
            calls.append(("tube", subject.name))
        else:
            calls.append((kind, subject.draining))

    return Queue(QueueConfig(), started=T0, on_change=on_change), calls


def test_on_change_sees_every_transition_of_one_jobs_life():
    """put, reserve, release, reserve, bury, kick, reserve, expire, delete each call the hook."""
    q, calls = recording_queue()
    job = q.put("t", "x", now=T0, ttl=10)
    reserve_one(q)
    q.release(job.id, now=T0)
    reserve_one(q)
    q.bury(job.id, now=T0)
    q.kick(job.id, now=T0)
    reserve_one(q)
    q.expire(T0 + 10)
    q.delete(job.id, now=T0 + 10)
    s = JobState
    assert calls == [("job", job.id, state) for state in (
        s.READY, s.RESERVED, s.READY, s.RESERVED, s.BURIED, s.READY, s.RESERVED, s.READY,
        s.DELETED)]


def test_on_change_sees_delay_maturing_and_done():
    """A delayed put, its maturing, reserve and done each call the hook."""
    q, calls = recording_queue()
    job = q.put("t", "x", now=T0, delay=5)
    q.expire(T0 + 5)
    finish(q, job, now=T0 + 5)
    assert calls == [("job", job.id, state) for state in (
        JobState.DELAYED, JobState.READY, JobState.RESERVED, JobState.DELETED)]


def test_on_change_sees_parents_start_and_time_out():
    """A parent's put, its child's progress and its start (or timeout) call the hook."""
    q, calls = recording_queue()
    parent = q.put_parent("t", "p", now=T0, limit=1)
    child = q.put("c", "c", now=T0, parent_id=parent.id)
    q.get("c", now=T0, delete=True)
    s = JobState
    assert calls == [
        ("job", parent.id, s.WAITING),
        ("job", child.id, s.READY),
        ("job", child.id, s.DELETED),
        ("job", parent.id, s.WAITING),  # one more child finished
        ("job", parent.id, s.READY),  # started
    ]
    calls.clear()
    timed_out = q.put_parent("t", "p2", now=T0, timeout=1)
    q.set_children_started(timed_out.id, now=T0)  # no children: starts at once
    buried = q.put_parent("t", "p3", now=T0, timeout=1)
    q.expire(T0 + 1)
    assert calls[-3:] == [("job", timed_out.id, s.READY),
                          ("job", buried.id, s.WAITING),
                          ("job", buried.id, s.BURIED)]


def test_on_change_sees_tube_settings_and_drain():
    """Throttle, pause, tube drain, fair and max_size changes call the hook with the tube."""
    q, calls = recording_queue()
    q.set_throttle("t", 5, now=T0)
    q.set_paused("t", True)
    q.set_tube_draining("t", True)
    q.set_fair("t", "weighted")
    q.set_max_size("t", 10)
    q.set_draining(True)
    assert calls == [("tube", "t")] * 5 + [("server", True)]


def test_on_change_is_not_called_for_refused_requests():
    """A refused put or an invalid setting calls no hook."""
    q, calls = recording_queue()
    q.set_draining(True)
    calls.clear()
    with pytest.raises(Draining):
        q.put("t", "x", now=T0)
    with pytest.raises(BadRequest):
        q.set_fair("t", "bogus")
    with pytest.raises(NotFound):
        q.put("t", "x", now=T0, parent_id=5)
    assert calls == []
