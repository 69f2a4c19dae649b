"""Tests of parent jobs (workflows): :mod:`allq.core.parents` and the queue around it.

The :class:`~allq.core.parents.Parents` book on its own first, then parents
and children through :class:`~allq.core.queue.Queue`: starting, counting,
``set_children_started``, timeouts, deleting and clearing.
"""

import pytest
from twisted.internet.task import Clock

from allq.core.job import JobState
from allq.core.parents import ParentInfo, Parents
from allq.core.queue import Event
from allq.errors import BadRequest, NotFound, WrongState

from queues import SingleTimer, T0, counts, fill, finish, make_queue, reserve_one, zero_counts


# -- the Parents book -----------------------------------------------------------------


def test_parent_info_checked_keeps_good_values():
    """timeout, run_on_timeout and an optional limit (0 allowed) pass through; counts start at 0."""
    info = ParentInfo.checked(30, True, None)
    assert (info.timeout, info.run_on_timeout, info.limit, info.children_put,
            info.children_done) == (30, True, None, 0, 0)
    assert ParentInfo.checked(0.5, False, 0).limit == 0


@pytest.mark.parametrize("timeout, run_on_timeout, limit, named", [
    (0, False, None, "timeout"),
    (-1, False, None, "timeout"),
    ("10", False, None, "timeout"),
    (10, "yes", None, "run_on_timeout"),
    (10, 1, None, "run_on_timeout"),
    (10, False, -1, "limit"),
    (10, False, True, "limit"),
    (10, False, 1.5, "limit"),
])
def test_parent_info_checked_refuses_bad_values(timeout, run_on_timeout, limit, named):
    with pytest.raises(BadRequest, match=named):
        ParentInfo.checked(timeout, run_on_timeout, limit)


@pytest.mark.parametrize("limit, done, complete", [
    (None, 0, False), (None, 5, False), (0, 0, True), (2, 1, False), (2, 2, True), (2, 3, True),
])
def test_parent_info_is_complete_once_limit_children_are_done(limit, done, complete):
    assert ParentInfo(10, False, limit, children_done=done).complete is complete


def test_parents_counts_children_of_the_parents_it_holds():
    """Puts and finishes count toward the parent; the info is shared, not copied."""
    book = Parents()
    info = ParentInfo(10, False, 2)
    book.add(7, info)
    assert (len(book), book.info(7), book.info(8)) == (1, info, None)
    book.check_child(7)
    book.child_put(7)
    book.child_put(7)
    assert book.child_finished(7) is info
    assert (info.children_put, info.children_done, info.complete) == (2, 1, False)
    assert book.child_finished(7).complete


def test_parents_refuses_children_of_jobs_it_does_not_hold():
    book = Parents()
    with pytest.raises(WrongState, match="job 3 is not a parent waiting for children"):
        book.check_child(3)


def test_a_finish_for_a_parent_no_longer_held_counts_for_nothing():
    book = Parents()
    book.add(7, ParentInfo(10, False, 1))
    book.remove(7)
    assert book.child_finished(7) is None
    assert len(book) == 0


def test_children_started_fixes_the_limit_at_the_children_put():
    book = Parents()
    info = ParentInfo(10, False)
    book.add(7, info)
    book.child_put(7)
    book.child_finished(7)
    assert not info.complete  # no limit yet
    assert book.children_started(7) is info
    assert (info.limit, info.complete) == (1, True)
    assert book.children_started(8) is None


@pytest.mark.parametrize("run_on_timeout", [True, False])
def test_time_out_forgets_the_parent_and_says_whether_it_runs(run_on_timeout):
    book = Parents()
    book.add(7, ParentInfo(10, run_on_timeout, 3))
    assert book.time_out(7).run_on_timeout is run_on_timeout
    assert book.info(7) is None


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


# -- noop parents and caller-chosen ids (AllQueue's workflow joins) ----------------------


def test_noop_parent_never_runs_and_counts_for_its_own_parent():
    """Case 79: a noop mid-parent (limit 2, child of TOP) whose 2 children are done
    never appears in ready; TOP (limit 1) becomes ready (§6 "Start")."""
    q = make_queue()
    top = q.put_parent("top", "top", now=T0, limit=1)
    mid = q.put_parent("mid", "join", now=T0, limit=2, parent_id=top.id, noop=True)
    kids = [q.put("work", f"k{i}", now=T0, parent_id=mid.id) for i in range(2)]
    for kid in kids:
        [got] = q.get("work", now=T0)
        q.done(got.id, now=T0)
    assert q.get("mid", now=T0) == []
    assert mid.state is JobState.DELETED and q.parent_info(mid.id) is None
    [ready] = q.get("top", now=T0)
    assert ready.id == top.id
    assert counts(q, "mid") == zero_counts()


def test_noop_parent_started_by_set_children_started_or_timeout():
    """A noop parent finishes (never runs) whichever way it starts: all children
    done at set_children_started, or its timeout with run_on_timeout; without
    run_on_timeout it is buried, as any parent."""
    q = make_queue()
    top = q.put_parent("top", "top", now=T0, limit=3)
    now_done = q.put_parent("n", "a", now=T0, parent_id=top.id, noop=True)
    q.set_children_started(now_done.id, now=T0)  # no children: starts at once
    timed = q.put_parent("n", "b", now=T0, parent_id=top.id, noop=True, timeout=5,
                         run_on_timeout=True)
    buried = q.put_parent("n", "c", now=T0, parent_id=top.id, noop=True, timeout=5)
    events = q.expire(T0 + 6)
    assert {(e.kind, e.job_id) for e in events} == {("parent_timeout", timed.id),
                                                    ("parent_buried", buried.id)}
    assert now_done.state is timed.state is JobState.DELETED
    assert buried.state is JobState.BURIED
    assert q.parent_info(top.id).children_done == 2
    assert q.get("n", now=T0 + 6) == []


def test_caller_chosen_ids_name_waiting_parents():
    """An alias names its parent while it waits, is unique among waiting parents,
    and is free again once the parent starts."""
    q = make_queue()
    parent = q.put_parent("p", "x", now=T0, alias="flow-1")
    assert q.parent_by_alias("flow-1") is parent
    assert q.parent_info(parent.id).alias == "flow-1"
    with pytest.raises(WrongState, match="flow-1"):
        q.put_parent("p", "again", now=T0, alias="flow-1")
    assert len(q) == 1  # the refused parent stored nothing
    q.set_children_started(parent.id, now=T0)
    assert q.parent_by_alias("flow-1") is None
    again = q.put_parent("p", "again", now=T0, alias="flow-1")
    assert q.parent_by_alias("flow-1") is again
    q.delete(again.id, now=T0)
    assert q.parent_by_alias("flow-1") is None


@pytest.mark.parametrize("alias", ["", "123", "a,1", "has space", "x" * 201, 7])
def test_bad_caller_chosen_ids_are_refused(alias):
    """Not digits only (a job number), no comma (a job id), bounded."""
    with pytest.raises(BadRequest, match="id"):
        make_queue().put_parent("p", "x", now=T0, alias=alias)
