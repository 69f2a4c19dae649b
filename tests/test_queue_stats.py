"""Tests of the queue core's figures (:mod:`allq.core.queue`): tube and global stats.
"""

import pytest

from allq.core.queue import GlobalStats, TubeStats
from allq.errors import BadRequest

from queues import T0, fill_every_state, job_in_state, make_queue, stats


# -- stats --------------------------------------------------------------------


def test_tube_stats_counts_per_tube():
    """tube_stats reports each tube's counts, sorted by tube name."""
    q = make_queue()
    fill_every_state(q, "b")
    q.put("a", "x", now=T0)
    q.put("a", "y", now=T0, delay=1)
    assert q.tube_stats(T0) == [
        TubeStats("a", ready=1, reserved=0, delayed=1, buried=0, parents=0, tps=0.0, avg=0.0),
        TubeStats("b", ready=1, reserved=1, delayed=1, buried=1, parents=0, tps=0.0, avg=0.0,
                  buried_total=1),
    ]
    assert q.tube_names() == ["a", "b"]


def test_tps_and_avg():
    """tps counts finished jobs per second over a minute; avg is their mean reservation time."""
    q = make_queue()
    a = q.put("t", "a", now=T0)
    b = q.put("t", "b", now=T0)
    q.get("t", now=T0, count=2)
    q.done(a.id, now=T0 + 2)
    q.done(b.id, now=T0 + 4)
    s = stats(q, now=T0 + 4)
    assert s.tps == pytest.approx(2 / 60)
    assert s.avg == pytest.approx(3.0)


def test_tps_forgets_completions_older_than_a_minute():
    """Completions drop out of tps after 60 seconds; avg keeps them."""
    q = make_queue()
    job = job_in_state(q, "reserved")
    q.done(job.id, now=T0 + 1)
    assert stats(q, now=T0 + 60).tps == pytest.approx(1 / 60)
    assert stats(q, now=T0 + 61).tps == 0.0
    assert stats(q, now=T0 + 61).avg == pytest.approx(1.0)


def test_touch_resets_the_avg_start():
    """avg measures from the last touch, not from the reservation."""
    q = make_queue()
    job = job_in_state(q, "reserved")
    q.touch(job.id, now=T0 + 10)
    q.done(job.id, now=T0 + 12)
    assert stats(q, now=T0 + 12).avg == pytest.approx(2.0)


def test_global_stats():
    """job_put counts puts, job_get counts delivered jobs only, uptime runs from start."""
    q = make_queue()
    for n in range(3):
        q.put("t", str(n), now=T0)
    q.get("t", now=T0, count=2)
    q.get("empty", now=T0)
    q.get("t", now=T0, count=5)
    q.get("t", now=T0, count=5)
    assert q.global_stats(T0 + 42) == GlobalStats(
        action_count=0, job_put=3, job_get=3, uptime=42.0
    )


def test_rejected_put_counts_nothing():
    """A rejected put leaves no job behind, uses no id and does not count."""
    q = make_queue()
    with pytest.raises(BadRequest):
        q.put("t", "x", now=T0, delay=-1)
    assert len(q) == 0
    assert q.global_stats(T0).job_put == 0
    assert q.put("t", "x", now=T0).id == 1
