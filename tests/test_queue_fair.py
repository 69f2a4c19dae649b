"""Tests of fair queuing in the queue core (:mod:`allq.core.queue`, :mod:`allq.core.ready`).

Tubes named by the fair convention, shard keys, round robin and weighted
lines, and switching a tube's policy.
"""

import pytest

from allq.core.queue import Queue
from allq.errors import BadRequest

from queues import T0, fill, make_queue, poll, reserve_one, stats


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
