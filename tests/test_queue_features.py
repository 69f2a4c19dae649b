"""Tests of the queue core's operator features (:mod:`allq.core.queue`).

Throttle, pause, drain, bounded tubes, fair queuing, ``run_at``, parent jobs
(workflow) and the ``on_change`` hook. The core is pure, so time is a number
passed as ``now=``; a few tests drive it from :class:`twisted.internet.task.Clock`
with the single re-armed deadline timer the server uses.
"""

import math

import pytest
from twisted.internet.task import Clock

from allq.core.job import JobState
from allq.core.queue import Event, Queue, QueueConfig
from allq.errors import BadRequest, Draining, NotFound, QueueFull, WrongState

from queues import T0, SingleTimer, counts, make_queue, reserve_one, stats, zero_counts

def fill(q: Queue, n: int, tube: str = "t", now: float = T0, **kwargs) -> list:
    return [q.put(tube, f"job-{i}", now=now, **kwargs) for i in range(n)]


def poll(q: Queue, times: int, tube: str = "t", now: float = T0) -> list:
    """``times`` single gets at the same instant; the jobs handed out."""
    jobs = []
    for _ in range(times):
        jobs += q.get(tube, now=now)
    return jobs


def finish(q: Queue, job, now: float = T0) -> None:
    """Reserve ``job`` (it must be next in its tube) and mark it done."""
    assert reserve_one(q, job.tube, now=now) is job
    q.done(job.id, now=now)


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


# -- fair queuing ------------------------------------------------------------------


def test_fq_prefix_tubes_are_round_robin_by_default():
    """A tube named fq-... is fair (round robin); other tubes are not."""
    q = make_queue()
    q.put("fq-jobs", "x", now=T0, shard_key="a")
    q.put("jobs", "x", now=T0)
    assert stats(q, "fq-jobs").fair == "round_robin"
    assert stats(q, "jobs").fair is None


def test_fair_suffix_mode():
    """With fair_suffix "-fair", jobs-fair is fair and fq-x is a plain tube."""
    q = make_queue(fair_suffix="-fair")
    q.put("jobs-fair", "x", now=T0, shard_key="a")
    q.put("fq-x", "x", now=T0)
    assert stats(q, "jobs-fair").fair == "round_robin"
    assert stats(q, "fq-x").fair is None


def test_put_without_shard_key_to_a_fair_tube_is_a_bad_request():
    """A fair tube requires a shard_key; the refused put stores nothing."""
    q = make_queue()
    with pytest.raises(BadRequest, match="shard_key"):
        q.put("fq-x", "x", now=T0)
    assert len(q) == 0
    assert q.global_stats(T0).job_put == 0


@pytest.mark.parametrize("key", ["", "bad key!", "x" * 201, 5])
def test_bad_shard_keys_are_rejected(key):
    """A shard_key must be 1-200 allowed characters."""
    q = make_queue()
    with pytest.raises(BadRequest, match="shard_key"):
        q.put("fq-x", "x", now=T0, shard_key=key)


def test_plain_tubes_ignore_shard_key():
    """A non-fair tube accepts a shard_key and stays plain FIFO."""
    q = make_queue()
    a1 = q.put("t", "a1", now=T0, shard_key="a")
    a2 = q.put("t", "a2", now=T0, shard_key="a")
    b1 = q.put("t", "b1", now=T0, shard_key="b")
    assert q.get("t", now=T0, count=3) == [a1, a2, b1]


def test_a_flood_of_one_key_does_not_starve_another():
    """10,000 jobs of key A then 10 of key B: all of B comes out within the first 20 gets."""
    q = make_queue()
    fill(q, 10_000, tube="fq-t", shard_key="A")
    fill(q, 10, tube="fq-t", shard_key="B")
    first = poll(q, 20, tube="fq-t")
    assert [j.shard_key for j in first].count("B") == 10


def test_three_keys_interleave():
    """Keys A, B and C with several jobs each come out A, B, C, A, B, C, ..."""
    q = make_queue()
    for key in "ABC":
        fill(q, 3, tube="fq-t", shard_key=key)
    keys = [j.shard_key for j in q.get("fq-t", now=T0, count=9)]
    assert "".join(keys) == "ABCABCABC"


def test_priority_is_respected_within_a_key():
    """Within one key the lower priority number goes first; keys still alternate."""
    q = make_queue()
    a_low = q.put("fq-t", "a-low", now=T0, shard_key="A", priority=9)
    b = q.put("fq-t", "b", now=T0, shard_key="B")
    a_high = q.put("fq-t", "a-high", now=T0, shard_key="A", priority=1)
    assert q.get("fq-t", now=T0, count=3) == [a_high, b, a_low]


def test_released_job_rejoins_its_key():
    """A released job of a fair tube goes back to the end of its own key's line."""
    q = make_queue()
    a1, a2 = fill(q, 2, tube="fq-t", shard_key="A")
    b1 = q.put("fq-t", "b1", now=T0, shard_key="B")
    assert reserve_one(q, "fq-t") is a1
    q.release(a1.id, now=T0)
    assert q.get("fq-t", now=T0, count=3) == [b1, a2, a1]


def test_throttle_and_pause_apply_to_every_key_of_a_fair_tube():
    """Throttle and pause on a fair tube limit all its keys together (FIX 93)."""
    q = make_queue()
    for key in "ABC":
        fill(q, 5, tube="fq-t", shard_key=key)
    q.set_throttle("fq-t", 2, now=T0)
    assert [j.shard_key for j in poll(q, 10, tube="fq-t")] == ["A", "B"]
    q.set_paused("fq-t", True)
    assert poll(q, 10, tube="fq-t", now=T0 + 5) == []
    assert q.clear("fq-t") == 15  # 13 ready and 2 reserved


@pytest.mark.parametrize("policy", [None, "weighted"])  # None: the fq- default
def test_peek_on_a_fair_tube_returns_the_next_get(policy):
    """peek on a fair tube (either policy) always shows what the next get hands out."""
    q = make_queue()
    if policy is not None:
        q.set_fair("fq-t", policy)
    for key, n in (("A", 4), ("B", 1), ("C", 2)):
        fill(q, n, tube="fq-t", shard_key=key)
    while True:
        peeked = q.peek("fq-t")
        got = q.get("fq-t", now=T0)
        assert got == ([] if peeked is None else [peeked])
        if peeked is None:
            break


def test_switching_to_weighted_keeps_every_ready_job():
    """set_fair(tube, "weighted") on a tube with ready jobs keeps all of them."""
    q = make_queue()
    jobs = fill(q, 5, tube="fq-t", shard_key="A") + fill(q, 5, tube="fq-t", shard_key="B")
    q.delete(jobs[0].id, now=T0)
    q.set_fair("fq-t", "weighted")
    assert stats(q, "fq-t").fair == "weighted"
    assert stats(q, "fq-t").ready == 9
    got = q.get("fq-t", now=T0, count=20)
    assert sorted(j.id for j in got) == sorted(j.id for j in jobs[1:])


def run_workers(q: Queue, tube: str, cost: dict[str, float], turns: int, now: float):
    """One worker: get, spend the key's cost in time, done. Returns keys served."""
    served = []
    for _ in range(turns):
        (job,) = q.get(tube, now=now)
        now += cost[job.shard_key]
        q.done(job.id, now=now)
        served.append(job.shard_key)
    return served, now


def test_weighted_gives_slow_keys_fewer_turns():
    """Key A's jobs take 10 s, B's 1 s: B gets about ten times A's turns while both wait."""
    q = make_queue()
    q.set_fair("fq-t", "weighted")
    fill(q, 1000, tube="fq-t", shard_key="A")
    fill(q, 1000, tube="fq-t", shard_key="B")
    served, _ = run_workers(q, "fq-t", {"A": 10.0, "B": 1.0}, 550, T0)
    late = served[50:]  # after the first few turns have taught it the costs
    ratio = late.count("B") / late.count("A")
    assert 5 <= ratio <= 20, ratio


def test_round_robin_ignores_processing_time():
    """Round robin gives slow and fast keys the same number of turns."""
    q = make_queue()
    fill(q, 100, tube="fq-t", shard_key="A")
    fill(q, 100, tube="fq-t", shard_key="B")
    served, _ = run_workers(q, "fq-t", {"A": 10.0, "B": 1.0}, 100, T0)
    assert served.count("A") == served.count("B") == 50


@pytest.mark.parametrize("policy", ["round_robin", "weighted"])
def test_a_late_key_is_neither_starved_nor_given_a_burst(policy):
    """A key that appears after a long run gets its share at once, but no more."""
    q = make_queue()
    q.set_fair("fq-t", policy)
    fill(q, 500, tube="fq-t", shard_key="A")
    fill(q, 500, tube="fq-t", shard_key="B")
    _, now = run_workers(q, "fq-t", {"A": 1.0, "B": 1.0}, 300, T0)
    fill(q, 100, tube="fq-t", shard_key="C", now=now)
    served, _ = run_workers(q, "fq-t", {"A": 1.0, "B": 1.0, "C": 1.0}, 30, now)
    assert "C" in served[:3]
    assert 7 <= served.count("C") <= 13, served


def test_fair_off_makes_an_fq_tube_plain_fifo():
    """set_fair(tube, "off") makes an fq- tube plain: no shard_key needed, FIFO by priority."""
    # Jobs already ready keep the order the fair line would have served them in.
    q = make_queue()
    a1, a2 = fill(q, 2, tube="fq-t", shard_key="A")
    b1 = q.put("fq-t", "b", now=T0, shard_key="B")
    q.set_fair("fq-t", "off")
    assert stats(q, "fq-t").fair is None
    assert stats(q, "fq-t").ready == 3
    plain = q.put("fq-t", "no key", now=T0)
    a3, a4 = fill(q, 2, tube="fq-t", shard_key="A")
    b2 = q.put("fq-t", "b2", now=T0, shard_key="B")
    urgent = q.put("fq-t", "urgent", now=T0, shard_key="B", priority=1)
    assert q.get("fq-t", now=T0, count=10) == [urgent, a1, b1, a2, plain, a3, a4, b2]


def test_fair_none_restores_the_name_convention():
    """set_fair(tube, None) makes an fq- tube round robin and a plain tube plain again."""
    q = make_queue()
    q.set_fair("fq-t", "off")
    q.set_fair("fq-t", None)
    assert stats(q, "fq-t").fair == "round_robin"
    with pytest.raises(BadRequest):
        q.put("fq-t", "x", now=T0)
    q.set_fair("plain", "round_robin")
    assert stats(q, "plain").fair == "round_robin"
    q.set_fair("plain", None)
    assert stats(q, "plain").fair is None


def test_fair_on_a_plain_tube_requires_shard_keys():
    """A plain tube made fair needs shard keys from then on and round-robins them."""
    q = make_queue()
    q.set_fair("t", "round_robin")
    with pytest.raises(BadRequest, match="shard_key"):
        q.put("t", "x", now=T0)
    a1, a2 = fill(q, 2, shard_key="A")
    b1 = q.put("t", "b", now=T0, shard_key="B")
    assert q.get("t", now=T0, count=3) == [a1, b1, a2]


@pytest.mark.parametrize("policy", ["bogus", "default", "", "ROUND_ROBIN", 1])
def test_bad_fair_policy_is_a_bad_request(policy):
    """An unknown fair policy is a BadRequest and changes nothing."""
    q = make_queue()
    with pytest.raises(BadRequest, match="fair policy"):
        q.set_fair("t", policy)


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


# -- parents (workflow) --------------------------------------------------------------


def test_simple_parent_starts_when_its_child_is_done():
    """Parent (limit 1) + one child: parents 1 until the child's done makes it ready (case 67)."""
    q = make_queue()
    parent = q.put_parent("t", "parent", now=T0, limit=1)
    assert parent.state is JobState.WAITING
    child = q.put("t", "child", now=T0, parent_id=parent.id)
    assert child.parent_id == parent.id
    assert counts(q) == zero_counts(ready=1, parents=1)
    assert reserve_one(q) is child
    assert counts(q) == zero_counts(reserved=1, parents=1)
    q.done(child.id, now=T0)
    assert counts(q) == zero_counts(ready=1)
    assert reserve_one(q) is parent


def test_waiting_parent_is_not_served_or_peeked():
    """A waiting parent is neither handed out nor visible to peek."""
    q = make_queue()
    q.put_parent("t", "parent", now=T0, limit=1)
    assert q.get("t", now=T0) == []
    assert q.peek("t") is None


def test_compound_parents():
    """Top P2 (limit 1) ← mid P1 (limit 1) ← child C: each finish starts the next (case 68)."""
    q = make_queue()
    top = q.put_parent("t", "P2", now=T0, limit=1)
    mid = q.put_parent("t", "P1", now=T0, limit=1, parent_id=top.id)
    child = q.put("t", "C", now=T0, parent_id=mid.id)
    assert counts(q) == zero_counts(ready=1, parents=2)
    finish(q, child)
    assert counts(q) == zero_counts(ready=1, parents=1)
    finish(q, mid)
    assert counts(q) == zero_counts(ready=1)
    finish(q, top)
    assert len(q) == 0


def test_parent_and_children_in_different_tubes():
    """A child in another tube starts its parent in the parent's own tube (case 69)."""
    q = make_queue()
    parent = q.put_parent("some_other_tube", "p", now=T0, limit=1)
    child = q.put("test", "c", now=T0, parent_id=parent.id)
    assert counts(q, "some_other_tube") == zero_counts(parents=1)
    finish(q, child)
    assert counts(q, "some_other_tube") == zero_counts(ready=1)
    assert counts(q, "test") == zero_counts()


def test_unknown_count_waits_for_set_children_started():
    """Without a limit the parent waits; set_children_started fixes it at the count (case 70)."""
    q = make_queue()
    parent = q.put_parent("t", "p", now=T0)
    first = q.put("t", "c1", now=T0, parent_id=parent.id)
    finish(q, first)
    assert parent.state is JobState.WAITING
    second = q.put("t", "c2", now=T0, parent_id=parent.id)
    q.set_children_started(parent.id, now=T0)
    assert q.parent_info(parent.id).limit == 2
    assert parent.state is JobState.WAITING
    finish(q, second)
    assert parent.state is JobState.READY


def test_set_children_started_starts_at_once_when_all_are_done():
    """If every child put is already finished, set_children_started starts the parent (FIX 10)."""
    q = make_queue()
    parent = q.put_parent("t", "p", now=T0)
    for child in [q.put("t", f"c{i}", now=T0, parent_id=parent.id) for i in range(2)]:
        finish(q, child)
    assert counts(q) == zero_counts(parents=1)
    q.set_children_started(parent.id, now=T0)
    assert counts(q) == zero_counts(ready=1)
    assert q.parent_info(parent.id) is None


def test_set_children_started_with_no_children_starts_at_once():
    """With no child put, set_children_started starts the parent at once (FIX 80)."""
    q = make_queue()
    parent = q.put_parent("t", "p", now=T0)
    q.set_children_started(parent.id, now=T0)
    assert parent.state is JobState.READY
    assert q.next_deadline() is None


def test_set_children_started_on_unknown_or_non_parent_jobs():
    """set_children_started: unknown id → NotFound; a plain or started job → WrongState."""
    q = make_queue()
    plain = q.put("t", "x", now=T0)
    started = q.put_parent("t", "p", now=T0, limit=0)
    with pytest.raises(NotFound):
        q.set_children_started(999, now=T0)
    with pytest.raises(WrongState):
        q.set_children_started(plain.id, now=T0)
    with pytest.raises(WrongState):
        q.set_children_started(started.id, now=T0)


def test_child_bury_does_not_count():
    """Burying a child does not finish it for its parent (FIX 75)."""
    q = make_queue()
    parent = q.put_parent("t", "p", now=T0, limit=1)
    child = q.put("t", "c", now=T0, parent_id=parent.id)
    q.bury(reserve_one(q).id, now=T0)
    assert parent.state is JobState.WAITING
    assert q.parent_info(parent.id).children_done == 0
    q.kick(child.id, now=T0)
    finish(q, child)
    assert parent.state is JobState.READY


def test_child_ttl_expiry_does_not_count():
    """A child's ttl expiry (to ready or to buried) does not finish it (FIX 76)."""
    q = make_queue()
    parent = q.put_parent("t", "p", now=T0, limit=1)
    child = q.put("t", "c", now=T0, parent_id=parent.id, ttl=10, expired_limit=2)
    reserve_one(q)
    assert q.expire(T0 + 10) == [Event("expired", child.id, "t")]
    reserve_one(q, now=T0 + 10)
    assert q.expire(T0 + 20) == [Event("buried", child.id, "t")]
    assert parent.state is JobState.WAITING
    assert q.parent_info(parent.id).children_done == 0


def test_child_release_does_not_count():
    """Releasing a child does not finish it (case 77)."""
    q = make_queue()
    parent = q.put_parent("t", "p", now=T0, limit=1)
    child = q.put("t", "c", now=T0, parent_id=parent.id)
    reserve_one(q)
    q.release(child.id, now=T0)
    q.release(reserve_one(q).id, now=T0, delay=5)
    assert parent.state is JobState.WAITING
    assert q.parent_info(parent.id).children_done == 0


def test_child_get_with_delete_counts():
    """Taking a child with delete finishes it (case 78)."""
    q = make_queue()
    parent = q.put_parent("t", "p", now=T0, limit=1)
    child = q.put("t", "c", now=T0, parent_id=parent.id)
    assert q.get("t", now=T0, delete=True) == [child]
    assert parent.state is JobState.READY


@pytest.mark.parametrize("state", ["ready", "reserved", "delayed", "buried"])
def test_child_delete_counts(state):
    """Deleting a child in any state finishes it for its parent."""
    q = make_queue()
    parent = q.put_parent("t", "p", now=T0, limit=1)
    child = q.put("t", "c", now=T0, parent_id=parent.id, delay=30 if state == "delayed" else 0)
    if state in ("reserved", "buried"):
        reserve_one(q)
    if state == "buried":
        q.bury(child.id, now=T0)
    assert child.state is JobState[state.upper()]
    q.delete(child.id, now=T0)
    assert parent.state is JobState.READY


def test_child_of_a_missing_parent_is_refused_and_nothing_is_stored():
    """A child put naming an unknown parent raises NotFound and enqueues nothing (FIX 82)."""
    q = make_queue()
    q.put("t", "x", now=T0)
    before = (len(q), q.tube_stats(T0), q.global_stats(T0))
    with pytest.raises(NotFound, match="parent"):
        q.put("t", "child", now=T0, parent_id=999)
    with pytest.raises(NotFound, match="parent"):
        q.put_parent("t", "mid", now=T0, parent_id=999)
    with pytest.raises(NotFound):
        q.put("new-tube", "child", now=T0, parent_id=999)
    assert (len(q), q.tube_stats(T0), q.global_stats(T0)) == before
    assert q.put("t", "y", now=T0).id == 2  # no id was used up


def test_child_of_a_started_parent_is_wrong_state():
    """A child put naming a parent that already started raises WrongState."""
    q = make_queue()
    parent = q.put_parent("t", "p", now=T0, limit=0)
    plain = q.put("t", "x", now=T0)
    for parent_id in (parent.id, plain.id):
        with pytest.raises(WrongState):
            q.put("t", "c", now=T0, parent_id=parent_id)
    assert len(q) == 2


def test_finishes_after_the_parent_started_are_ignored():
    """Children finishing after their parent started change nothing."""
    q = make_queue()
    parent = q.put_parent("p", "p", now=T0, limit=1)
    first, second = fill(q, 2, parent_id=parent.id)
    finish(q, first)
    assert parent.state is JobState.READY
    finish(q, second)
    assert parent.state is JobState.READY
    assert counts(q, "p") == zero_counts(ready=1)


def test_parent_timeout_with_run_on_timeout_becomes_ready():
    """A parent that times out with run_on_timeout becomes ready (Clock-driven, case 73)."""
    clock = Clock()
    clock.advance(T0)
    q = make_queue()
    timer = SingleTimer(q, clock)
    parent = q.put_parent("t", "p", now=clock.seconds(), timeout=2, run_on_timeout=True, limit=2)
    q.put("u", "c", now=clock.seconds(), parent_id=parent.id)
    timer.rearm()
    clock.advance(1.9)
    assert parent.state is JobState.WAITING
    clock.advance(0.1)
    assert timer.events == [Event("parent_timeout", parent.id, "t")]
    assert counts(q) == zero_counts(ready=1)
    assert clock.getDelayedCalls() == []


def test_parent_timeout_without_run_on_timeout_is_buried():
    """A parent that times out without run_on_timeout is buried and can be kicked (case 74)."""
    clock = Clock()
    clock.advance(T0)
    q = make_queue()
    timer = SingleTimer(q, clock)
    parent = q.put_parent("t", "p", now=clock.seconds(), timeout=1)
    timer.rearm()
    clock.advance(1)
    assert timer.events == [Event("parent_buried", parent.id, "t")]
    assert counts(q) == zero_counts(buried=1)
    assert clock.getDelayedCalls() == []
    assert q.peek("t", buried=True) is parent
    q.kick(parent.id, now=clock.seconds())
    assert reserve_one(q, now=clock.seconds()) is parent


def test_started_parent_has_no_timeout_left():
    """A parent started by its children is not buried later by its old timeout."""
    q = make_queue()
    parent = q.put_parent("t", "p", now=T0, timeout=5, limit=1)
    finish(q, q.put("t", "c", now=T0, parent_id=parent.id))
    assert q.expire(T0 + 10) == []
    assert parent.state is JobState.READY


def test_started_parent_keeps_its_priority():
    """A priority-1 parent started after a priority-5 job is ready is served first (FIX 81)."""
    q = make_queue()
    parent = q.put_parent("t", "p", now=T0, limit=1, priority=1)
    child = q.put("c", "c", now=T0, parent_id=parent.id)
    waiting = q.put("t", "x", now=T0, priority=5)
    finish(q, child)
    assert q.get("t", now=T0, count=2) == [parent, waiting]


def test_parent_timeout_keeps_its_priority():
    """A parent readied by its timeout keeps its own priority."""
    q = make_queue()
    other = q.put("t", "x", now=T0, priority=5)
    parent = q.put_parent("t", "p", now=T0, timeout=1, run_on_timeout=True, priority=2)
    q.expire(T0 + 1)
    assert q.get("t", now=T0 + 1, count=2) == [parent, other]


def test_deleting_a_waiting_parent():
    """A waiting parent can be deleted; its children then finish harmlessly."""
    q = make_queue()
    parent = q.put_parent("t", "p", now=T0, limit=1)
    child = q.put("t", "c", now=T0, parent_id=parent.id)
    q.delete(parent.id, now=T0)
    assert counts(q) == zero_counts(ready=1)
    assert q.parent_info(parent.id) is None
    assert q.next_deadline() is None
    finish(q, child)
    assert len(q) == 0
    with pytest.raises(NotFound):
        q.put("t", "late", now=T0, parent_id=parent.id)


def test_clear_parents():
    """clear(state="parents") drops only the waiting parents of the tube."""
    q = make_queue()
    parent = q.put_parent("t", "p", now=T0, limit=1)
    q.put("t", "c", now=T0, parent_id=parent.id)
    q.put_parent("u", "other", now=T0)
    assert q.clear("t", state="parents") == 1
    assert counts(q) == zero_counts(ready=1)
    assert counts(q, "u") == zero_counts(parents=1)
    assert q.parent_info(parent.id) is None


def test_clear_all_includes_parents():
    """clear(state="all") drops the tube's waiting parents too."""
    q = make_queue()
    q.put_parent("t", "p", now=T0)
    q.put("t", "x", now=T0)
    assert q.clear("t") == 2
    assert len(q) == 0
    assert q.next_deadline() is None


def test_limit_zero_starts_at_once():
    """A parent with limit 0 is ready as soon as it is put."""
    q = make_queue()
    parent = q.put_parent("t", "p", now=T0, limit=0)
    assert parent.state is JobState.READY
    assert counts(q) == zero_counts(ready=1)
    assert q.next_deadline() is None


def test_limit_counts_finished_children_not_children_put():
    """A limit-2 parent with three children starts after any two finish."""
    q = make_queue()
    parent = q.put_parent("p", "p", now=T0, limit=2)
    children = fill(q, 3, parent_id=parent.id)
    finish(q, children[0])
    assert parent.state is JobState.WAITING
    finish(q, children[1])
    assert parent.state is JobState.READY


@pytest.mark.parametrize(
    "params",
    [{"timeout": 0}, {"timeout": -1}, {"timeout": "1"}, {"run_on_timeout": "true"},
     {"limit": -1}, {"limit": 1.5}, {"limit": True}],
    ids=["timeout0", "timeout-", "timeout-str", "rot-str", "limit-", "limit-float", "limit-bool"],
)
def test_bad_parent_params_are_rejected(params):
    """Invalid timeout, run_on_timeout or limit is a BadRequest and stores nothing."""
    q = make_queue()
    with pytest.raises(BadRequest):
        q.put_parent("t", "p", now=T0, **params)
    assert len(q) == 0


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
