"""Tests of the queue core's operator settings (:mod:`allq.core.queue`).

Throttle, pause, drain (a tube's or the whole server's) and bounded tubes
(``max_size`` and the server's ``max_jobs``). Time is a number passed as
``now=``; the throttle is also driven from :class:`twisted.internet.task.Clock`.
"""

import math

import pytest
from twisted.internet.task import Clock

from allq.core.job import JobState
from allq.core.queue import Event
from allq.errors import BadRequest, Draining, QueueFull

from queues import T0, counts, fill, finish, make_queue, poll, reserve_one, stats, zero_counts


# -- throttle -------------------------------------------------------------------


def test_throttle_caps_immediate_gets_at_the_rate():
    """With tps 11, 10,000 immediate gets on 10,000 ready jobs hand out exactly 11."""
    q = make_queue()
    fill(q, 10_000)
    q.set_throttle("t", 11, now=T0)
    assert len(poll(q, 10_000)) == 11
    assert counts(q) == zero_counts(ready=10_000 - 11, reserved=11)


def test_throttle_refills_at_the_rate():
    """One second after a full burst the rate is available again, and no more."""
    q = make_queue()
    fill(q, 100)
    q.set_throttle("t", 11, now=T0)
    assert len(poll(q, 100)) == 11
    assert len(poll(q, 100, now=T0 + 1)) == 11
    assert len(poll(q, 100, now=T0 + 1)) == 0
    assert len(poll(q, 100, now=T0 + 5)) == 11


@pytest.mark.parametrize("tps", [11, 3, 2.5, 1])
def test_no_one_second_window_exceeds_the_rate(tps):
    """Polled every 10 ms, no one-second window hands out more than ceil(tps) jobs."""
    q = make_queue()
    fill(q, 1000)
    q.set_throttle("t", tps, now=T0)
    times = []
    for step in range(500):
        now = T0 + step / 100
        times += [now] * len(q.get("t", now=now, count=100))
    window_max = max(sum(1 for t in times if start <= t < start + 1) for start in times)
    assert window_max <= math.ceil(tps)
    assert len(times) >= tps * 4.5  # and the long-run rate is tps


def test_throttle_count_is_capped_too():
    """A get asking for many jobs receives at most what the throttle allows."""
    q = make_queue()
    fill(q, 50)
    q.set_throttle("t", 4, now=T0)
    assert len(q.get("t", now=T0, count=20)) == 4
    assert q.get("t", now=T0, count=20) == []
    assert len(q.get("t", now=T0 + 1, count=20)) == 4


def test_fractional_throttle_hands_out_one_job_every_three_seconds():
    """tps 1/3 hands out one job, then the next only after three more seconds."""
    q = make_queue()
    fill(q, 10)
    q.set_throttle("t", 1 / 3, now=T0)
    handed = [step for step in range(10) if poll(q, 5, now=T0 + step)]
    assert handed == [0, 3, 6, 9]


@pytest.mark.parametrize("tps", [0, None, -1, -0.5])
def test_throttle_zero_none_or_negative_removes_it(tps):
    """Setting tps 0, None or a negative number removes the throttle."""
    q = make_queue()
    fill(q, 10_000)
    q.set_throttle("t", 11, now=T0)
    assert len(poll(q, 10_000)) == 11
    tube = q.set_throttle("t", tps, now=T0)
    assert tube.throttle is None
    assert stats(q).throttle is None
    assert len(poll(q, 10_000)) == 10_000 - 11


def test_gets_beyond_the_cap_see_an_empty_tube():
    """Past the throttle a get returns no job and raises nothing."""
    q = make_queue()
    fill(q, 3)
    q.set_throttle("t", 1, now=T0)
    assert len(q.get("t", now=T0)) == 1
    assert q.get("t", now=T0) == []
    assert q.get("t", now=T0, count=3, delete=True) == []


def test_empty_polls_do_not_use_up_the_throttle():
    """Only jobs handed out count against the throttle, not empty polls (FIX of AllQ)."""
    q = make_queue()
    q.set_throttle("t", 2, now=T0)
    assert poll(q, 5) == []
    fill(q, 5)
    assert len(poll(q, 5)) == 2


def test_a_get_finding_fewer_jobs_than_asked_uses_only_what_it_took():
    """A get for more jobs than are ready takes throttle budget only for those it got."""
    q = make_queue()
    q.set_throttle("t", 5, now=T0)
    fill(q, 2)
    assert len(q.get("t", now=T0, count=5)) == 2
    fill(q, 5)
    assert len(q.get("t", now=T0, count=5)) == 3


def test_throttle_shows_in_stats():
    """Tube stats report the throttle rate, fractional ones included."""
    q = make_queue()
    q.put("t", "x", now=T0)
    assert stats(q).throttle is None
    q.set_throttle("t", 2.5, now=T0)
    assert stats(q).throttle == 2.5


def test_throttle_on_a_missing_tube_creates_it():
    """Throttling a tube that does not exist creates it with the throttle set."""
    q = make_queue()
    q.set_throttle("new", 3, now=T0)
    assert q.tube_names() == ["new"]
    assert stats(q, "new").throttle == 3
    fill(q, 5, tube="new")
    assert len(poll(q, 5, tube="new")) == 3


@pytest.mark.parametrize("tps", ["2", True, float("nan"), float("inf"), [1]])
def test_throttle_rejects_non_numbers(tps):
    """A tps that is not a finite number is a BadRequest."""
    q = make_queue()
    with pytest.raises(BadRequest, match="tps"):
        q.set_throttle("t", tps, now=T0)


def test_throttle_driven_by_a_clock_polling_every_10ms():
    """tps 3 polled every 10 ms for 2.5 s hands out 9: 3 per started second (case 53)."""
    clock = Clock()
    clock.advance(T0)
    q = make_queue()
    fill(q, 100, now=clock.seconds())
    q.set_throttle("t", 3, now=clock.seconds())
    handed = []
    for _ in range(250):
        handed += q.get("t", now=clock.seconds())
        clock.advance(0.01)
    assert len(handed) == 9


# -- pause ----------------------------------------------------------------------


def test_paused_tube_hands_out_nothing_until_unpaused():
    """10,000 gets on a paused tube serve none; after unpause they serve all 10,000."""
    q = make_queue()
    fill(q, 10_000)
    q.set_paused("t", True)
    assert poll(q, 10_000) == []
    assert stats(q).paused is True
    q.set_paused("t", False)
    assert stats(q).paused is False
    assert len(poll(q, 10_000)) == 10_000


def test_paused_tube_still_takes_puts_and_peeks():
    """Puts and peeks work while a tube is paused."""
    q = make_queue()
    q.set_paused("t", True)
    job = q.put("t", "x", now=T0)
    assert q.peek("t") is job
    assert counts(q) == zero_counts(ready=1)


def test_paused_tube_still_kicks_releases_and_expires():
    """Kick, release and ttl expiry move jobs on a paused tube; gets still serve none."""
    q = make_queue()
    released, expiring, buried = fill(q, 3, ttl=10)
    for job in (released, expiring, buried):
        assert reserve_one(q) is job
    delayed = q.put("t", "d", now=T0, delay=5)
    q.bury(buried.id, now=T0)
    q.set_paused("t", True)

    q.release(released.id, now=T0)
    q.kick(buried.id, now=T0)
    assert q.expire(T0 + 10) == [
        Event("matured", delayed.id, "t"),
        Event("expired", expiring.id, "t"),
    ]
    assert counts(q) == zero_counts(ready=4)
    assert q.get("t", now=T0 + 10, count=10) == []
    q.set_paused("t", False)
    assert len(q.get("t", now=T0 + 10, count=10)) == 4


def test_pausing_a_missing_tube_creates_it_and_later_puts_stay_paused():
    """Pause creates the tube, so a put that follows lands in a paused tube (FIX 62)."""
    q = make_queue()
    q.set_paused("later", True)
    assert q.tube_names() == ["later"]
    q.put("later", "x", now=T0)
    assert q.get("later", now=T0) == []
    assert stats(q, "later").paused is True


def test_clear_works_on_a_paused_tube():
    """clear removes the ready jobs of a paused tube (FIX 63)."""
    q = make_queue()
    fill(q, 5)
    q.set_paused("t", True)
    assert q.clear("t") == 5
    assert len(q) == 0
    assert counts(q) == zero_counts()


def test_clear_works_on_a_throttled_tube_and_leaves_the_budget():
    """clear removes every ready job of a throttled tube without using its budget."""
    q = make_queue()
    fill(q, 5)
    q.set_throttle("t", 2, now=T0)
    assert q.clear("t") == 5
    fill(q, 5)
    assert len(poll(q, 5)) == 2


# -- drain ------------------------------------------------------------------------


def test_draining_server_refuses_puts_but_serves_and_finishes():
    """A draining server raises Draining on put; get and done still work."""
    q = make_queue()
    job = q.put("t", "x", now=T0)
    q.set_draining(True)
    with pytest.raises(Draining) as caught:
        q.put("t", "y", now=T0)
    assert caught.value.code == "draining"
    assert len(q) == 1
    assert q.global_stats(T0).draining is True
    finish(q, job)
    assert len(q) == 0


def test_draining_tube_refuses_puts_to_itself_only():
    """A draining tube refuses puts; other tubes take them; get and done still work."""
    q = make_queue()
    job = q.put("t", "x", now=T0)
    q.set_tube_draining("t", True)
    with pytest.raises(Draining, match="t"):
        q.put("t", "y", now=T0)
    q.put("other", "z", now=T0)
    assert stats(q).draining is True
    assert stats(q, "other").draining is False
    finish(q, job)
    assert counts(q) == zero_counts()


def test_undrain_restores_puts():
    """After undrain, server or tube, puts are accepted again."""
    q = make_queue()
    q.set_draining(True)
    q.set_tube_draining("t", True)
    q.set_draining(False)
    with pytest.raises(Draining):
        q.put("t", "x", now=T0)
    q.set_tube_draining("t", False)
    q.put("t", "x", now=T0)
    assert q.global_stats(T0).draining is False
    assert counts(q) == zero_counts(ready=1)


@pytest.mark.parametrize("drain", ["server", "tube"])
def test_draining_refuses_new_parents_but_lets_children_finish_workflows(drain):
    """While draining, new parents are refused but children of a parent held here
    are accepted: they can live on no other server."""
    q = make_queue()
    parent = q.put_parent("t", "p", now=T0, limit=2)
    if drain == "server":
        q.set_draining(True)
    else:
        q.set_tube_draining("t", True)
    with pytest.raises(Draining):
        q.put_parent("t", "p2", now=T0)
    with pytest.raises(Draining):
        q.put("t", "plain", now=T0)
    q.put("t", "child", now=T0, parent_id=parent.id)
    assert q.parent_info(parent.id).children_put == 1
    assert len(q) == 2


# -- bounded tubes ---------------------------------------------------------------


def test_max_size_refuses_the_put_beyond_it():
    """With max_size 3 the fourth put raises QueueFull (code "full")."""
    q = make_queue()
    q.set_max_size("t", 3)
    fill(q, 3)
    with pytest.raises(QueueFull) as caught:
        q.put("t", "x", now=T0)
    assert caught.value.code == "full"
    assert len(q) == 3
    assert q.global_stats(T0).job_put == 3
    assert stats(q).max_size == 3


def test_max_size_counts_every_state_and_frees_room_on_done():
    """Reserved, delayed, buried and waiting jobs take room; a done job frees it."""
    q = make_queue()
    q.set_max_size("t", 4)
    reserved = q.put("t", "r", now=T0)
    reserve_one(q)
    q.put("t", "d", now=T0, delay=10)
    q.put_parent("t", "p", now=T0)
    buried = q.put("t", "b", now=T0)
    q.bury(reserve_one(q).id, now=T0)
    assert buried.state is JobState.BURIED
    with pytest.raises(QueueFull):
        q.put("t", "x", now=T0)
    q.done(reserved.id, now=T0)
    q.put("t", "x", now=T0)
    with pytest.raises(QueueFull):
        q.put("t", "y", now=T0)


def test_max_size_only_bounds_its_own_tube():
    """A full tube does not stop puts to other tubes."""
    q = make_queue()
    q.set_max_size("t", 1)
    q.put("t", "x", now=T0)
    q.put("u", "x", now=T0)
    with pytest.raises(QueueFull):
        q.put("t", "y", now=T0)


def test_lowering_max_size_drops_nothing():
    """Setting max_size below the current size keeps every job and refuses new ones."""
    q = make_queue()
    fill(q, 5)
    q.set_max_size("t", 2)
    assert counts(q) == zero_counts(ready=5)
    with pytest.raises(QueueFull):
        q.put("t", "x", now=T0)
    for _ in range(3):
        q.done(reserve_one(q).id, now=T0)
    with pytest.raises(QueueFull):
        q.put("t", "x", now=T0)
    q.done(reserve_one(q).id, now=T0)
    q.put("t", "x", now=T0)


def test_max_size_none_unbounds_the_tube():
    """max_size None removes the bound."""
    q = make_queue()
    q.set_max_size("t", 1)
    q.put("t", "x", now=T0)
    q.set_max_size("t", None)
    fill(q, 10)
    assert stats(q).max_size is None


@pytest.mark.parametrize("max_size", [0, -1, 1.5, "3", True])
def test_bad_max_size_is_rejected(max_size):
    """max_size must be a positive integer (or None)."""
    q = make_queue()
    with pytest.raises(BadRequest, match="max_size"):
        q.set_max_size("t", max_size)


def test_server_max_jobs_bounds_all_tubes_together():
    """QueueConfig(max_jobs=3) refuses the fourth job in any tube until one is done."""
    q = make_queue(max_jobs=3)
    first = q.put("a", "x", now=T0)
    q.put("b", "x", now=T0, delay=60)
    q.put_parent("c", "p", now=T0)
    with pytest.raises(QueueFull) as caught:
        q.put("d", "x", now=T0)
    assert caught.value.code == "full"
    with pytest.raises(QueueFull):
        q.put_parent("d", "x", now=T0)
    assert len(q) == 3
    assert q.global_stats(T0).max_jobs == 3
    finish(q, first)
    q.put("d", "x", now=T0)
