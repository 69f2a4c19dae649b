"""Tests of unique keys and concurrency keys in the queue core (:mod:`allq.core.keys`)."""

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from allq.core.job import JobState
from allq.errors import BadRequest, WrongState
from allq.vocabulary import MAX_CONCURRENCY, MAX_JOB_KEY_LENGTH

from queues import T0, counts, make_queue, zero_counts


# -- unique keys ---------------------------------------------------------------


@pytest.mark.parametrize("state", ["ready", "delayed", "reserved", "buried"])
def test_a_unique_key_names_its_live_job_in_every_state(state):
    q = make_queue()
    job = q.put("t", "x", now=T0, unique_key="u1", delay=10 if state == "delayed" else 0)
    if state in ("reserved", "buried"):
        q.get("t", now=T0)
    if state == "buried":
        q.bury(job.id, now=T0)
    assert job.state.value == state
    assert q.unique_job("t", "u1") is job
    with pytest.raises(WrongState):
        q.put("t", "y", now=T0, unique_key="u1")
    assert len(q) == 1


@pytest.mark.parametrize("finish", ["done", "delete", "get_delete", "clear"])
def test_a_unique_key_is_free_again_once_its_job_is_gone(finish):
    q = make_queue()
    job = q.put("t", "x", now=T0, unique_key="u1")
    if finish == "done":
        q.get("t", now=T0)
        q.done(job.id, now=T0)
    elif finish == "delete":
        q.delete(job.id, now=T0)
    elif finish == "get_delete":
        q.get("t", now=T0, delete=True)
    else:
        q.clear("t")
    assert q.unique_job("t", "u1") is None
    assert q.keyed_jobs() == 0
    again = q.put("t", "y", now=T0, unique_key="u1")
    assert q.unique_job("t", "u1") is again


def test_unique_keys_are_per_tube():
    q = make_queue()
    a = q.put("a", "x", now=T0, unique_key="k")
    b = q.put("b", "x", now=T0, unique_key="k")
    assert q.unique_job("a", "k") is a and q.unique_job("b", "k") is b


@pytest.mark.parametrize("bad", ["", "x" * (MAX_JOB_KEY_LENGTH + 1), "a\nb", 5, ["k"]])
@pytest.mark.parametrize("field", ["unique_key", "concurrency_key"])
def test_a_bad_key_is_refused_and_nothing_is_stored(field, bad):
    q = make_queue()
    with pytest.raises(BadRequest, match=field):
        q.put("t", "x", now=T0, **{field: bad})
    assert len(q) == 0 and q.keyed_jobs() == 0


def test_plain_jobs_are_not_indexed():
    q = make_queue()
    q.put("t", "x", now=T0)
    assert q.keyed_jobs() == 0
    assert q.job_keys(1) is None


# -- concurrency keys ------------------------------------------------------------


def test_one_job_of_a_key_at_a_time_by_default_in_put_order():
    q = make_queue()
    a1 = q.put("t", "a1", now=T0, concurrency_key="a")
    a2 = q.put("t", "a2", now=T0, concurrency_key="a")
    b1 = q.put("t", "b1", now=T0, concurrency_key="b")
    a3 = q.put("t", "a3", now=T0, concurrency_key="a")
    assert counts(q) == zero_counts(ready=4)
    assert q.get("t", now=T0, count=10) == [a1, b1]
    assert counts(q) == zero_counts(ready=2, reserved=2)
    assert q.get("t", now=T0) == []
    q.done(a1.id, now=T0)
    assert q.get("t", now=T0, count=10) == [a2]
    q.done(a2.id, now=T0)
    assert q.get("t", now=T0, count=10) == [a3]


@pytest.mark.parametrize("free", ["done", "delete", "bury", "release", "expire"])
def test_every_way_out_of_reserved_frees_the_slot(free):
    q = make_queue()
    first = q.put("t", "1", now=T0, concurrency_key="k", ttl=5, expired_limit=10)
    second = q.put("t", "2", now=T0, concurrency_key="k")
    assert q.get("t", now=T0) == [first]
    assert q.get("t", now=T0) == []
    if free == "expire":
        q.expire(T0 + 5)
    elif free == "release":
        q.release(first.id, now=T0)
    else:
        getattr(q, free)(first.id, now=T0)
    # A released or expired job is the key's oldest ready one: it goes again first.
    following = first if free in ("release", "expire") else second
    assert q.get("t", now=T0 + 5) == [following]
    assert q.get("t", now=T0 + 5) == []


def test_a_key_keeps_its_put_order_through_releases():
    q = make_queue()
    first = q.put("t", "1", now=T0, concurrency_key="k")
    second = q.put("t", "2", now=T0, concurrency_key="k")
    q.get("t", now=T0)
    third = q.put("t", "3", now=T0, concurrency_key="k")
    q.release(first.id, now=T0)
    order = []
    for _ in range(3):
        (job,) = q.get("t", now=T0, count=5)
        order.append(job)
        q.done(job.id, now=T0)
    assert order == [first, second, third]


def test_a_tube_limit_of_two_and_raising_it_lines_held_jobs_up():
    q = make_queue()
    jobs = [q.put("t", str(i), now=T0, concurrency_key="k") for i in range(5)]
    q.set_concurrency("t", 2)
    assert q.get("t", now=T0, count=10) == jobs[:2]
    q.set_concurrency("t", 4)
    assert q.get("t", now=T0, count=10) == jobs[2:4]
    q.set_concurrency("t", 1)  # a cut lets the reserved ones finish
    assert q.get("t", now=T0, count=10) == []
    for job in jobs[:3]:
        q.done(job.id, now=T0)
    assert q.get("t", now=T0) == []
    q.done(jobs[3].id, now=T0)
    assert q.get("t", now=T0) == [jobs[4]]
    assert q.concurrency("t") == 1 and q.concurrency_limits() == {}


def test_a_cut_limit_holds_jobs_already_in_line():
    q = make_queue()
    q.set_concurrency("t", 2)
    a = q.put("t", "a", now=T0, concurrency_key="k")
    b = q.put("t", "b", now=T0, concurrency_key="k")
    q.set_concurrency("t", 1)
    assert q.get("t", now=T0, count=2) == [a]
    assert counts(q) == zero_counts(ready=1, reserved=1)
    q.done(a.id, now=T0)
    assert q.get("t", now=T0, count=2) == [b]


@pytest.mark.parametrize("bad", [0, -1, MAX_CONCURRENCY + 1, 1.5, True, "2", None])
def test_a_bad_limit_is_refused(bad):
    q = make_queue()
    with pytest.raises(BadRequest, match="limit"):
        q.set_concurrency("t", bad)


def test_held_jobs_are_ready_and_cleared_with_the_ready_ones():
    q = make_queue()
    running = q.put("t", "1", now=T0, concurrency_key="k")
    q.put("t", "2", now=T0, concurrency_key="k")
    q.put("t", "3", now=T0, concurrency_key="k")
    q.get("t", now=T0)
    assert q.clear("t", state="ready") == 2
    assert counts(q) == zero_counts(reserved=1)
    q.done(running.id, now=T0)
    assert q.keyed_jobs() == 0
    assert q._keyed._groups == {}


def test_reserving_a_held_job_by_id_and_deleting_one():
    q = make_queue()
    a = q.put("t", "1", now=T0, concurrency_key="k")
    b = q.put("t", "2", now=T0, concurrency_key="k")
    c = q.put("t", "3", now=T0, concurrency_key="k")
    q.get("t", now=T0)
    q.delete(b.id, now=T0)  # held
    q.reserve_job(c.id, now=T0)  # held: an explicit reserve passes the limit
    assert counts(q) == zero_counts(reserved=2)
    q.done(a.id, now=T0)
    q.done(c.id, now=T0)
    assert q.keyed_jobs() == 0 and q._keyed._groups == {}


def test_restored_keys_hold_again():
    q = make_queue()
    a = q.put("t", "1", now=T0, concurrency_key="k", unique_key="u")
    b = q.put("t", "2", now=T0, concurrency_key="k")
    q.get("t", now=T0)
    fresh = make_queue()
    fresh.restore_concurrency("t", 1)
    for job in (a, b):
        fresh.restore(job, now=T0, unique_key=q.job_keys(job.id)[0],
                      concurrency_key=q.job_keys(job.id)[1])
    assert fresh.unique_job("t", "u") is a
    assert fresh.get("t", now=T0, count=5) == [a]  # the reserved one came back ready, first


# -- the model ------------------------------------------------------------------


class KeyedQueueModel(RuleBasedStateMachine):
    """Random puts, gets and finishes against a model: never more than the limit
    of a key reserved, no two live jobs with one unique key, and every ready job
    of a key with a free slot can be taken."""

    def __init__(self) -> None:
        super().__init__()
        self.q = make_queue()
        self.now = T0
        self.limit = 1
        self.unique: dict[str, int] = {}

    @rule(key=st.sampled_from("abc"), unique=st.none() | st.sampled_from("uvw"),
          priority=st.integers(0, 2))
    def put(self, key, unique, priority):
        if unique is not None and unique in self.unique:
            with pytest.raises(WrongState):
                self.q.put("t", "x", now=self.now, concurrency_key=key, unique_key=unique)
            return
        job = self.q.put("t", "x", now=self.now, concurrency_key=key, unique_key=unique,
                         priority=priority, ttl=10)
        if unique is not None:
            self.unique[unique] = job.id

    def _reserved(self) -> dict[str, int]:
        reserved: dict[str, int] = {}
        for job in self.q.live_jobs():
            if job.state is JobState.RESERVED:
                key = self.q.job_keys(job.id)[1]
                reserved[key] = reserved.get(key, 0) + 1
        return reserved

    @rule(count=st.integers(1, 4))
    def get(self, count):
        before = self._reserved()
        self.q.get("t", now=self.now, count=count)
        for key, now_reserved in self._reserved().items():
            assert now_reserved <= max(before.get(key, 0), self.limit)

    @rule(data=st.data(), how=st.sampled_from(["done", "release", "bury", "delete", "kick"]))
    def act(self, data, how):
        live = self.q.live_jobs()
        if not live:
            return
        job = data.draw(st.sampled_from(live))
        wanted = JobState.BURIED if how == "kick" else JobState.RESERVED
        if how == "delete" or job.state is wanted:
            getattr(self.q, how)(job.id, now=self.now)

    @rule(limit=st.integers(1, 3))
    def set_limit(self, limit):
        self.q.set_concurrency("t", limit)
        self.limit = limit

    @rule()
    def time_passes(self):
        self.now += 11
        self.q.expire(self.now)

    @invariant()
    def keys_hold(self):
        live = {job.id: job for job in self.q.live_jobs()}
        self.unique = {u: i for u, i in self.unique.items() if i in live}
        reserved: dict[str, int] = {}
        for job in live.values():
            key = self.q.job_keys(job.id)[1]
            if job.state is JobState.RESERVED:
                reserved[key] = reserved.get(key, 0) + 1
        for key, job_id in self.unique.items():
            assert self.q.unique_job("t", key) is live[job_id]
        tube = self.q.tube("t")
        if tube is not None:
            ready = [j for j in live.values() if j.state is JobState.READY]
            assert tube.ready_count == len(ready)
            # As many of a key's ready jobs as it has free slots are in the line.
            lined = [j.id for j in tube.iter_ready()]
            for key in "abc":
                of_key = [j for j in ready if self.q.job_keys(j.id)[1] == key]
                free = max(self.limit - reserved.get(key, 0), 0)
                in_line = sum(j.id in lined for j in of_key)
                assert in_line >= min(free, len(of_key))
        assert self.q.keyed_jobs() == len(live)

    def teardown(self):
        # Draining it all: every job comes out, never over the limit at once.
        for _ in range(200):
            self.q.get("t", now=self.now, count=10)
            for job in self.q.live_jobs():
                if job.state in (JobState.BURIED, JobState.DELAYED):
                    self.q.delete(job.id, now=self.now)
                elif job.state is JobState.RESERVED:
                    self.q.done(job.id, now=self.now)
            if not len(self.q):
                break
        assert len(self.q) == 0
        assert self.q._keyed._groups == {} and self.q.keyed_jobs() == 0


KeyedQueueModel.TestCase.settings = settings(max_examples=40, stateful_step_count=25,
                                             deadline=None)
test_keyed_queue_model = KeyedQueueModel.TestCase
