"""Plain-example tests of the queue core (:mod:`allq.core.queue`).

The core is pure: time is a number passed as ``now=``. A few tests at the end
drive a :class:`~allq.core.queue.Queue` from :class:`twisted.internet.task.Clock`
the way the server's single deadline timer does.
"""

import math

import pytest
from twisted.internet.task import Clock

from allq.core import deadlines
from allq.core.job import JobState
from allq.vocabulary import MAX_COUNT, MAX_PRIORITY
from allq.core.queue import (
    DEFAULT_EXPIRED_LIMIT,
    DEFAULT_PRIORITY,
    DEFAULT_TTL,
    MIB,
    Event,
    GlobalStats,
    Queue,
    TubeStats,
)
from allq.errors import BadRequest, NotFound, TooLarge, WrongState

from queues import (
    T0,
    SingleTimer,
    counts,
    make_queue,
    reserve_one,
    stats,
    stats_or_none,
    zero_counts,
)

def job_in_state(q: Queue, state: str, tube: str = "t", now: float = T0, **kwargs):
    """Put a job into ``tube`` and bring it to ``state``; the tube must have no ready job."""
    assert stats_or_none(q, tube) is None or stats(q, tube).ready == 0
    delay = 50 if state == "delayed" else 0
    job = q.put(tube, f"{state}-job", now=now, delay=delay, **kwargs)
    if state in ("reserved", "buried"):
        assert reserve_one(q, tube, now=now) is job
    if state == "buried":
        q.bury(job.id, now=now)
    assert job.state is JobState[state.upper()]
    return job


# -- put ----------------------------------------------------------------------


def test_put_without_delay_is_ready():
    """A job put without a delay is ready at once and counted as ready."""
    q = make_queue()
    job = q.put("t", "hello", now=T0)
    assert job.state is JobState.READY
    assert counts(q) == zero_counts(ready=1)
    assert q.job(job.id) is job
    assert len(q) == 1


def test_put_applies_defaults():
    """A job put with no options gets the configured priority, ttl and expiry limit."""
    q = make_queue()
    job = q.put("t", "hello", now=T0)
    assert (job.priority, job.ttl, job.expired_limit) == (
        DEFAULT_PRIORITY,
        DEFAULT_TTL,
        DEFAULT_EXPIRED_LIMIT,
    )
    assert (job.tube, job.body, job.created) == ("t", "hello", T0)
    assert (job.expireds, job.releases, job.deadline, job.reserved_at) == (0, 0, None, None)


def test_put_uses_queue_config_defaults():
    """QueueConfig's default priority, ttl and expiry limit apply to new jobs."""
    q = make_queue(default_priority=9, default_ttl=7.5, expired_limit=2)
    job = q.put("t", "x", now=T0)
    assert (job.priority, job.ttl, job.expired_limit) == (9, 7.5, 2)


def test_job_ids_count_up_from_first_id():
    """Job ids start at ``first_id`` and increase by one per put, across tubes."""
    q = Queue(first_id=500)
    ids = [q.put(tube, "x", now=T0).id for tube in ("a", "b", "a")]
    assert ids == [500, 501, 502]


def test_put_with_delay_is_delayed_until_due():
    """A delayed job is not served before its deadline and is served once it is due."""
    q = make_queue()
    job = q.put("t", "later", now=T0, delay=10)
    assert job.state is JobState.DELAYED
    assert job.deadline == T0 + 10
    assert counts(q) == zero_counts(delayed=1)
    assert q.get("t", now=T0 + 5) == []
    assert q.expire(T0 + 9.999) == []
    assert q.expire(T0 + 10) == [Event("matured", job.id, "t")]
    assert counts(q) == zero_counts(ready=1)
    assert q.get("t", now=T0 + 10) == [job]


def test_put_with_zero_delay_is_ready():
    """A delay of 0 (int or float) means ready now."""
    q = make_queue()
    assert q.put("t", "a", now=T0, delay=0).state is JobState.READY
    assert q.put("t", "b", now=T0, delay=0.0).state is JobState.READY


def test_matured_jobs_join_behind_ready_jobs_of_their_priority():
    """A delayed job that matures queues behind jobs of equal priority already ready."""
    q = make_queue()
    delayed = q.put("t", "delayed", now=T0, delay=5)
    first = q.put("t", "first", now=T0 + 1)
    q.expire(T0 + 5)
    second = q.put("t", "second", now=T0 + 6)
    assert q.get("t", now=T0 + 6, count=3) == [first, delayed, second]


# -- ordering -----------------------------------------------------------------


def test_lower_priority_number_is_served_first():
    """The job with the lowest priority number is served first, whatever the put order."""
    q = make_queue()
    low = q.put("t", "low", now=T0, priority=10)
    high = q.put("t", "high", now=T0, priority=1)
    mid = q.put("t", "mid", now=T0, priority=5)
    assert q.get("t", now=T0, count=3) == [high, mid, low]


def test_equal_priorities_are_served_fifo():
    """Jobs of equal priority are served in the order they were put."""
    q = make_queue()
    jobs = [q.put("t", str(n), now=T0, priority=3) for n in range(5)]
    assert q.get("t", now=T0, count=5) == jobs


def test_priority_then_fifo_interleaved():
    """Interleaved puts come out by priority, and FIFO within each priority."""
    q = make_queue()
    a1 = q.put("t", "a1", now=T0, priority=2)
    b1 = q.put("t", "b1", now=T0, priority=1)
    a2 = q.put("t", "a2", now=T0, priority=2)
    b2 = q.put("t", "b2", now=T0, priority=1)
    assert q.get("t", now=T0, count=4) == [b1, b2, a1, a2]


def test_priority_zero_and_maximum():
    """Priority 0 is the most urgent and 2**32-1 the least; both are accepted."""
    q = make_queue()
    last = q.put("t", "last", now=T0, priority=MAX_PRIORITY)
    default = q.put("t", "default", now=T0)
    first = q.put("t", "first", now=T0, priority=0)
    assert q.get("t", now=T0, count=3) == [first, default, last]


# -- get ----------------------------------------------------------------------


def test_get_reserves_the_job():
    """A got job is reserved with a ttl deadline and counted as reserved."""
    q = make_queue()
    job = q.put("t", "x", now=T0, ttl=30)
    assert q.get("t", now=T0 + 1) == [job]
    assert job.state is JobState.RESERVED
    assert (job.reserved_at, job.deadline) == (T0 + 1, T0 + 31)
    assert counts(q) == zero_counts(reserved=1)
    assert q.get("t", now=T0 + 1) == []


def test_get_count_returns_up_to_count_jobs():
    """get(count=N) returns at most N jobs, best first, and fewer when fewer are ready."""
    q = make_queue()
    jobs = [q.put("t", str(n), now=T0, priority=n % 2) for n in range(5)]
    assert q.get("t", now=T0, count=3) == [jobs[0], jobs[2], jobs[4]]
    assert q.get("t", now=T0, count=3) == [jobs[1], jobs[3]]
    assert q.get("t", now=T0, count=3) == []
    assert counts(q) == zero_counts(reserved=5)


def test_get_max_count_is_accepted():
    """The largest allowed count is accepted."""
    q = make_queue()
    for n in range(3):
        q.put("t", str(n), now=T0)
    assert len(q.get("t", now=T0, count=MAX_COUNT)) == 3


def test_get_only_serves_the_named_tube():
    """get takes jobs from the named tube only."""
    q = make_queue()
    q.put("a", "in a", now=T0)
    b = q.put("b", "in b", now=T0)
    assert q.get("b", now=T0, count=5) == [b]
    assert counts(q, "a") == zero_counts(ready=1)


def test_get_from_unknown_tube_is_empty():
    """get from a tube that was never used returns no jobs and no error."""
    assert make_queue().get("nothing", now=T0) == []


def test_get_with_delete_removes_the_jobs():
    """get(delete=True) hands the jobs out and forgets them; they count in tps."""
    q = make_queue()
    jobs = [q.put("t", str(n), now=T0) for n in range(3)]
    assert q.get("t", now=T0, count=2, delete=True) == jobs[:2]
    assert all(job.state is JobState.DELETED for job in jobs[:2])
    with pytest.raises(NotFound):
        q.job(jobs[0].id)
    assert len(q) == 1
    assert counts(q) == zero_counts(ready=1)
    assert q.next_deadline() is None
    assert stats(q).tps == pytest.approx(2 / 60)
    assert q.global_stats(T0).job_get == 2


# -- done ---------------------------------------------------------------------


def test_done_removes_a_reserved_job():
    """done finishes a reserved job: it is gone, uncounted, and its deadline dropped."""
    q = make_queue()
    job = q.put("t", "x", now=T0)
    reserve_one(q)
    assert q.done(job.id, now=T0 + 2) is job
    assert job.state is JobState.DELETED
    assert counts(q) == zero_counts()
    assert len(q) == 0
    assert q.next_deadline() is None
    with pytest.raises(NotFound):
        q.job(job.id)
    with pytest.raises(NotFound):
        q.done(job.id, now=T0 + 2)


# -- delete -------------------------------------------------------------------


@pytest.mark.parametrize("state", ["ready", "delayed", "reserved", "buried"])
def test_delete_in_each_state(state):
    """delete removes a job in any state and leaves every counter at zero."""
    q = make_queue()
    job = job_in_state(q, state)
    assert q.delete(job.id, now=T0 + 1) is job
    assert job.state is JobState.DELETED
    assert counts(q) == zero_counts()
    assert len(q) == 0
    assert q.next_deadline() is None
    with pytest.raises(NotFound):
        q.job(job.id)
    # The deleted job can never come back: not by get, peek or a deadline.
    assert q.expire(T0 + 10_000) == []
    assert q.get("t", now=T0 + 10_000) == []
    assert q.peek("t") is None
    assert q.peek("t", buried=True) is None


def test_delete_leaves_other_jobs_in_order():
    """Deleting a ready job in the middle keeps the others' order and counts."""
    q = make_queue()
    a, b, c = (q.put("t", n, now=T0) for n in "abc")
    q.delete(b.id, now=T0)
    assert counts(q) == zero_counts(ready=2)
    assert b.body == ""  # its ready-line entry lingers until a get passes it; the body not
    assert q.get("t", now=T0, count=3) == [a, c]
    assert (a.body, c.body) == ("a", "c")


def test_delete_of_a_reserved_job_counts_as_finished():
    """Deleting a reserved job counts in the tube's tps, like done."""
    q = make_queue()
    job = job_in_state(q, "reserved")
    q.delete(job.id, now=T0 + 1)
    assert stats(q, now=T0 + 1).tps == pytest.approx(1 / 60)


def test_delete_of_a_ready_or_buried_job_does_not_count_as_finished():
    """Deleting a job nobody was working on does not count in tps."""
    q = make_queue()
    q.delete(job_in_state(q, "ready").id, now=T0)
    q.delete(job_in_state(q, "buried").id, now=T0)
    assert stats(q).tps == 0.0


# -- release ------------------------------------------------------------------


def test_release_makes_a_reserved_job_ready():
    """release gives a reserved job back: ready again, releases counted."""
    q = make_queue()
    job = job_in_state(q, "reserved")
    assert q.release(job.id, now=T0 + 1) is job
    assert job.state is JobState.READY
    assert (job.releases, job.deadline, job.reserved_at) == (1, None, None)
    assert counts(q) == zero_counts(ready=1)
    assert q.next_deadline() is None
    assert reserve_one(q, now=T0 + 2) is job


def test_release_with_delay_is_delayed_then_ready():
    """release(delay=d) makes the job delayed, and ready once d seconds passed."""
    q = make_queue()
    job = job_in_state(q, "reserved")
    q.release(job.id, now=T0 + 1, delay=20)
    assert job.state is JobState.DELAYED
    assert counts(q) == zero_counts(delayed=1)
    assert q.next_deadline() == T0 + 21
    assert q.get("t", now=T0 + 20) == []
    assert q.expire(T0 + 21) == [Event("matured", job.id, "t")]
    assert counts(q) == zero_counts(ready=1)
    assert reserve_one(q, now=T0 + 21) is job


def test_release_keeps_priority():
    """A released job keeps its priority: it is served before worse jobs put earlier."""
    q = make_queue()
    urgent = q.put("t", "urgent", now=T0, priority=2)
    assert reserve_one(q) is urgent
    lazy = q.put("t", "lazy", now=T0, priority=4)
    q.release(urgent.id, now=T0 + 1)
    assert urgent.priority == 2
    assert q.get("t", now=T0 + 1, count=2) == [urgent, lazy]


def test_seventh_release_buries_with_default_limit():
    """With the default expiry limit 3, the 7th release buries the job."""
    q = make_queue()
    job = q.put("t", "x", now=T0)
    for n in range(1, 7):
        reserve_one(q)
        q.release(job.id, now=T0)
        assert (job.state, job.releases) == (JobState.READY, n)
    reserve_one(q)
    q.release(job.id, now=T0)
    assert (job.state, job.releases) == (JobState.BURIED, 7)
    assert counts(q) == zero_counts(buried=1)


def test_third_release_buries_with_expired_limit_one():
    """With expired_limit 1, the 3rd release buries the job."""
    q = make_queue()
    job = q.put("t", "x", now=T0, expired_limit=1)
    for _ in range(2):
        reserve_one(q)
        q.release(job.id, now=T0)
        assert job.state is JobState.READY
    reserve_one(q)
    q.release(job.id, now=T0, delay=5)
    assert job.state is JobState.BURIED
    assert counts(q) == zero_counts(buried=1)
    assert q.next_deadline() is None


# -- bury ---------------------------------------------------------------------


def test_bury_moves_a_reserved_job_to_buried():
    """bury parks a reserved job: not served, no deadline, visible to peek(buried)."""
    q = make_queue()
    job = job_in_state(q, "reserved")
    assert q.bury(job.id, now=T0 + 1) is job
    assert job.state is JobState.BURIED
    assert (job.deadline, job.reserved_at) == (None, None)
    assert counts(q) == zero_counts(buried=1)
    assert q.next_deadline() is None
    assert q.get("t", now=T0 + 1) == []
    assert q.peek("t", buried=True) is job
    assert q.expire(T0 + 100_000) == []


# -- touch --------------------------------------------------------------------


def test_touch_extends_the_ttl():
    """touch restarts the ttl: not expired at the old deadline, expired at the new one."""
    q = make_queue()
    job = q.put("t", "x", now=T0, ttl=10)
    reserve_one(q, now=T0)
    assert q.touch(job.id, now=T0 + 8) is job
    assert job.deadline == T0 + 18
    assert q.next_deadline() == T0 + 18
    assert q.expire(T0 + 10) == []
    assert job.state is JobState.RESERVED
    assert q.expire(T0 + 17.999) == []
    assert q.expire(T0 + 18) == [Event("expired", job.id, "t")]
    assert job.state is JobState.READY


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


# -- kick ---------------------------------------------------------------------


def test_kick_a_buried_job():
    """kick makes a buried job ready, with its priority and fresh expireds/releases."""
    q = make_queue()
    job = q.put("t", "x", now=T0, ttl=1, priority=7)
    reserve_one(q)
    q.release(job.id, now=T0)
    for n in range(3):
        reserve_one(q, now=T0 + n)
        q.expire(T0 + n + 1)
    assert (job.state, job.expireds, job.releases) == (JobState.BURIED, 3, 1)
    assert q.kick(job.id, now=T0 + 10) is job
    assert (job.state, job.expireds, job.releases, job.priority) == (JobState.READY, 0, 0, 7)
    assert counts(q) == zero_counts(ready=1)
    reserve_one(q, now=T0 + 10)
    # Fresh counters: the next expiry returns it to ready instead of burying it.
    assert q.expire(T0 + 11)[0].kind == "expired"


def test_kick_a_delayed_job():
    """kick makes a delayed job ready at once and drops its deadline."""
    q = make_queue()
    job = q.put("t", "x", now=T0, delay=60)
    assert q.kick(job.id, now=T0) is job
    assert job.state is JobState.READY
    assert counts(q) == zero_counts(ready=1)
    assert q.next_deadline() is None
    assert q.expire(T0 + 60) == []


@pytest.mark.parametrize("state", ["ready", "reserved"])
def test_kick_of_a_ready_or_reserved_job_is_wrong_state(state):
    """Only buried and delayed jobs can be kicked."""
    q = make_queue()
    job = job_in_state(q, state)
    with pytest.raises(WrongState, match=f"is {state}"):
        q.kick(job.id, now=T0)
    assert job.state is JobState[state.upper()]


def test_kick_tube_kicks_oldest_buried_first():
    """kick_tube(count=N) kicks the N jobs buried longest ago, in burial order."""
    q = make_queue()
    jobs = [q.put("t", str(n), now=T0) for n in range(4)]
    assert q.get("t", now=T0, count=4) == jobs
    for index in (2, 0, 3, 1):
        q.bury(jobs[index].id, now=T0)
    assert q.kick_tube("t", now=T0, count=2) == [jobs[2], jobs[0]]
    assert counts(q) == zero_counts(ready=2, buried=2)
    assert q.kick_tube("t", now=T0, count=10) == [jobs[3], jobs[1]]
    assert counts(q) == zero_counts(ready=4)


def test_kick_tube_defaults_to_one():
    """kick_tube without a count kicks one job."""
    q = make_queue()
    first = job_in_state(q, "buried")
    job_in_state(q, "buried")
    assert q.kick_tube("t", now=T0) == [first]


def test_kick_tube_with_nothing_buried():
    """kick_tube with no buried job (or an unknown tube) returns an empty list."""
    q = make_queue()
    q.put("t", "x", now=T0)
    assert q.kick_tube("t", now=T0, count=5) == []
    assert q.kick_tube("unknown", now=T0, count=5) == []


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


def fill_every_state(q: Queue, tube: str) -> dict[str, object]:
    jobs = {state: job_in_state(q, state, tube) for state in ("reserved", "buried", "delayed")}
    jobs["ready"] = job_in_state(q, "ready", tube)
    return jobs


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


# -- unknown ids and wrong states -----------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda q: q.done(99, now=T0),
        lambda q: q.delete(99, now=T0),
        lambda q: q.release(99, now=T0),
        lambda q: q.bury(99, now=T0),
        lambda q: q.touch(99, now=T0),
        lambda q: q.kick(99, now=T0),
        lambda q: q.job(99),
    ],
    ids=["done", "delete", "release", "bury", "touch", "kick", "job"],
)
def test_unknown_job_id_is_not_found(call):
    """Every operation on an unknown job id raises NotFound naming the id."""
    q = make_queue()
    q.put("t", "x", now=T0)
    with pytest.raises(NotFound, match="job 99 not found"):
        call(q)


@pytest.mark.parametrize("action", ["done", "touch", "release", "bury"])
@pytest.mark.parametrize("state", ["ready", "delayed", "buried"])
def test_reserved_only_operations_on_other_states(action, state):
    """done/touch/release/bury of a job that is not reserved raises WrongState."""
    q = make_queue()
    job = job_in_state(q, state)
    with pytest.raises(WrongState, match=f"cannot {action} job {job.id}: it is {state}"):
        getattr(q, action)(job.id, now=T0)
    assert job.state is JobState[state.upper()]
    assert counts(q) == zero_counts(**{state: 1})


# -- input validation ---------------------------------------------------------

BAD_TUBES = ["", "a" * 201, "-leading-dash", "with space", "tab\there", "new\nline",
             "ünïcode", None, 5, b"bytes"]


@pytest.mark.parametrize("tube", BAD_TUBES)
def test_bad_tube_names_are_rejected(tube):
    """Tube names must be 1-200 safe characters, not starting with '-'."""
    q = make_queue()
    calls = [
        lambda: q.put(tube, "x", now=T0),
        lambda: q.get(tube, now=T0),
        lambda: q.peek(tube),
        lambda: q.clear(tube),
        lambda: q.kick_tube(tube, now=T0),
    ]
    for call in calls:
        with pytest.raises(BadRequest, match="tube must be 1-200 characters"):
            call()
    assert len(q) == 0


@pytest.mark.parametrize("tube", ["a", "a" * 200, "x-y", "A_b.c:d@e$f!g#h=i+j/k-", "0"])
def test_good_tube_names_are_accepted(tube):
    """Names of letters, digits and _.:@$!#=+/- up to 200 characters are valid."""
    q = make_queue()
    job = q.put(tube, "x", now=T0)
    assert q.peek(tube) is job


@pytest.mark.parametrize("body", [b"bytes", None, 5, ["x"]])
def test_non_string_body_is_rejected(body):
    """A job body must be a str."""
    with pytest.raises(BadRequest, match="body must be a string"):
        make_queue().put("t", body, now=T0)


def test_body_size_limit_ascii():
    """A body of exactly max_job_size bytes is accepted; one more byte is TooLarge."""
    q = make_queue(max_job_size=100)
    q.put("t", "a" * 100, now=T0)
    with pytest.raises(TooLarge, match="maximum job size of 100 bytes"):
        q.put("t", "a" * 101, now=T0)


@pytest.mark.parametrize(
    ("fits", "too_large"),
    [
        ("é" * 5, "é" * 5 + "a"),  # 2-byte characters: 10 bytes, then 11
        ("€" * 3 + "a", "€" * 3 + "é"),  # 3-byte characters: 10 bytes, then 11
        ("😀" * 2 + "ab", "😀" * 2 + "abc"),  # 4-byte characters: 10 bytes, then 11
    ],
)
def test_body_size_limit_counts_utf8_bytes(fits, too_large):
    """The size limit counts UTF-8 bytes, not characters, right at the limit."""
    q = make_queue(max_job_size=10)
    assert len(fits.encode()) == 10
    q.put("t", fits, now=T0)
    with pytest.raises(TooLarge):
        q.put("t", too_large, now=T0)


def test_body_size_limit_default_one_mib_multibyte():
    """With the default 1 MiB limit, 2-byte characters fit exactly up to 1 MiB."""
    q = make_queue()
    q.put("t", "é" * (MIB // 2), now=T0)
    with pytest.raises(TooLarge):
        q.put("t", "é" * (MIB // 2) + "a", now=T0)


def test_too_large_is_a_bad_request():
    """TooLarge is a kind of BadRequest, with its own code."""
    assert issubclass(TooLarge, BadRequest)
    assert (TooLarge.code, TooLarge.http_status) == ("too_large", 413)


@pytest.mark.parametrize("priority", [True, False, 1.0, -1, 2**32, "1"])
def test_bad_priority_is_rejected(priority):
    """Priorities must be ints from 0 to 2**32-1 (bools and floats are not ints here)."""
    q = make_queue()
    with pytest.raises(BadRequest, match="priority must be"):
        q.put("t", "x", now=T0, priority=priority)


@pytest.mark.parametrize("ttl", [0, 0.0, -1, math.nan, math.inf, -math.inf, "10", True, 1e12])
def test_bad_ttl_is_rejected(ttl):
    """A ttl must be a finite number of seconds greater than 0 and at most ten years."""
    with pytest.raises(BadRequest, match="ttl must be"):
        make_queue().put("t", "x", now=T0, ttl=ttl)


@pytest.mark.parametrize("delay", [-1, -0.5, math.nan, math.inf, "5", True])
def test_bad_delay_is_rejected(delay):
    """A put or release delay must be a finite number of seconds, 0 or more."""
    q = make_queue()
    with pytest.raises(BadRequest, match="delay must be"):
        q.put("t", "x", now=T0, delay=delay)
    job = job_in_state(q, "reserved")
    with pytest.raises(BadRequest, match="delay must be"):
        q.release(job.id, now=T0, delay=delay)
    assert job.state is JobState.RESERVED


@pytest.mark.parametrize("count", [0, -1, MAX_COUNT + 1, True, 1.0, "2"])
def test_bad_get_count_is_rejected(count):
    """get's count must be an int from 1 to 1000."""
    q = make_queue()
    q.put("t", "x", now=T0)
    with pytest.raises(BadRequest, match="count must be"):
        q.get("t", now=T0, count=count)
    assert counts(q) == zero_counts(ready=1)


@pytest.mark.parametrize("count", [0, True, "1"])
def test_bad_kick_tube_count_is_rejected(count):
    """kick_tube's count must be a positive int."""
    with pytest.raises(BadRequest, match="count must be"):
        make_queue().kick_tube("t", now=T0, count=count)


@pytest.mark.parametrize("limit", [0, -1, True, 1.5])
def test_bad_expired_limit_is_rejected(limit):
    """A job's expired_limit must be a positive int."""
    with pytest.raises(BadRequest, match="expired_limit must be"):
        make_queue().put("t", "x", now=T0, expired_limit=limit)


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
