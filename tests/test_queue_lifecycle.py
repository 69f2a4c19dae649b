"""Tests of a job's life in the queue core (:mod:`allq.core.queue`).

Put, ordering (priority, then FIFO), get, done, delete, release, bury, touch
and kick. The core is pure: time is a number passed as ``now=``.
"""

import pytest

from allq.core.job import JobState
from allq.core.queue import DEFAULT_EXPIRED_LIMIT, DEFAULT_PRIORITY, DEFAULT_TTL, Event, Queue
from allq.errors import NotFound, WrongState
from allq.vocabulary import MAX_COUNT, MAX_PRIORITY

from queues import T0, counts, job_in_state, make_queue, reserve_one, stats, zero_counts


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
