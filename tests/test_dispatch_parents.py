"""Tests of parent jobs through :class:`allq.server.dispatch.Dispatcher`.

Child puts naming their parent (prefixed or bare ids, errors), ``put_parent``
and ``set_children_started``. Harness: :mod:`dispatchers`.
"""

import pytest

from dispatchers import SERVER_ID, Harness, counts, number


@pytest.fixture
def h() -> Harness:
    return Harness()


# -- put: run_at, shard_key, parent_id ------------------------------------------------


def test_child_put_accepts_a_prefixed_or_bare_parent_id(h):
    """parent_id may be "<server_id>,<n>" or a bare number; both count toward the parent."""
    parent = h.put_parent(limit=2)
    h.put("c1", "c", parent_id=parent)
    h.put("c2", "c", parent_id=str(number(parent)))
    assert h.queue.parent_info(number(parent)).children_put == 2


def test_child_put_naming_another_servers_parent_is_not_found(h):
    """A parent_id of another server gets not_found and stores nothing."""
    error = h.error("put", tube="t", body="x", parent_id="srv2,1")
    assert error["code"] == "not_found"
    assert "srv2" in error["message"]
    assert len(h.queue) == 0


def test_child_put_naming_a_missing_parent_is_not_found(h):
    """An unknown parent_id gets not_found; nothing is enqueued and job_put is unchanged."""
    h.put()
    before = h.ok("stats")["global"]["job_put"]
    error = h.error("put", tube="t", body="child", parent_id=f"{SERVER_ID},999")
    assert error["code"] == "not_found"
    assert h.counts() == counts(ready=1)
    assert h.ok("stats")["global"]["job_put"] == before


def test_child_put_naming_a_started_parent_is_wrong_state(h):
    """A parent_id of a parent that already started (or a plain job) gets wrong_state."""
    started = h.put_parent(limit=0)
    plain = h.put()
    for parent_id in (started, plain):
        assert h.error("put", tube="t", body="c", parent_id=parent_id)["code"] == "wrong_state"
    assert h.counts() == counts(ready=2)


@pytest.mark.parametrize("parent_id", ["nope", "srv1,", "srv1,-3", "a,b,1"])
def test_malformed_parent_id_is_a_bad_request(h, parent_id):
    """A parent_id that is not "<server_id>,<n>" gets bad_request."""
    assert h.error("put", tube="t", body="x", parent_id=parent_id)["code"] == "bad_request"


# -- put_parent and set_children_started ------------------------------------------------


def test_put_parent_replies_a_server_prefixed_job_id(h):
    """put_parent replies {"job_id": "<server_id>,<n>"} and the parent waits in stats."""
    result = h.ok("put_parent", tube="t", body="p", limit=1, timeout=60,
                  run_on_timeout=True, priority=2, ttl=30)
    assert set(result) == {"job_id"}
    job = h.queue.job(number(result["job_id"]))
    assert (job.tube, job.body, job.priority, job.ttl) == ("t", "p", 2, 30)
    assert h.counts() == counts(parents=1)
    assert h.get() == []


def test_parent_starts_when_its_children_are_done(h):
    """A limit-1 parent becomes ready when its child is done, in its own tube."""
    parent = h.put_parent(tube="p", limit=1)
    child = h.put("c", "c", parent_id=parent)
    (job,) = h.get("c")
    assert job["job_id"] == child
    assert h.ok("done", job_id=child) == {"job_id": child}
    assert h.counts("p") == counts(ready=1)
    assert [j["job_id"] for j in h.get("p")] == [parent]


def test_nested_parent_via_put_parent_parent_id(h):
    """put_parent with parent_id nests: the mid parent's finish starts the top one."""
    top = h.put_parent(body="top", limit=1)
    mid = h.put_parent(body="mid", limit=1, parent_id=top)
    child = h.put("c", parent_id=mid)
    assert h.counts() == counts(ready=1, parents=2)
    for expected in (child, mid, top):
        (job,) = h.get()
        assert job["job_id"] == expected
        h.ok("done", job_id=expected)
    assert len(h.queue) == 0


def test_set_children_started_replies_and_starts_a_finished_parent(h):
    """set_children_started replies {"job_id"}; with every child done the parent starts."""
    parent = h.put_parent(tube="p")
    h.put("c", "c", parent_id=parent)
    h.get("c", delete=True)
    assert h.counts("p") == counts(parents=1)
    assert h.ok("set_children_started", job_id=parent) == {"job_id": parent}
    assert h.counts("p") == counts(ready=1)


def test_set_children_started_errors(h):
    """set_children_started: unknown id → not_found; not a waiting parent → wrong_state."""
    plain = h.put()
    assert h.error("set_children_started", job_id=f"{SERVER_ID},999")["code"] == "not_found"
    assert h.error("set_children_started", job_id=plain)["code"] == "wrong_state"
    assert h.error("set_children_started", job_id="srv2,1")["code"] == "not_found"


def test_noop_parent_and_find_parent_over_the_wire(h):
    """put_parent takes noop and alias; find_parent answers the aliased parent's
    id while it waits, not_found otherwise; a noop parent finishes, never ready."""
    parent = h.put_parent(tube="p", noop=True, alias="flow-1", limit=1)
    assert h.ok("find_parent", alias="flow-1") == {"job_id": parent}
    assert h.error("put_parent", tube="p", body="x", alias="flow-1")["code"] == "wrong_state"
    assert h.error("put_parent", tube="p", body="x", alias="1,2")["code"] == "bad_request"
    assert h.error("put_parent", tube="p", body="x", noop="yes")["code"] == "bad_request"
    h.put("c", "c", parent_id=parent)
    h.get("c", delete=True)
    assert h.counts("p") == counts()
    assert h.error("find_parent", alias="flow-1")["code"] == "not_found"
