"""Tests of the operator-feature actions through :class:`allq.server.dispatch.Dispatcher`.

``put`` with ``run_at``/``shard_key``/``parent_id``, ``put_parent``,
``set_children_started``, ``throttle``, ``pause``/``unpause``,
``drain``/``undrain``, ``fair`` and ``max_size``: their reply shapes, job id
prefixes, error codes and what ``stats`` shows. A real
:class:`~allq.core.queue.Queue` and a :class:`task.Clock`; requests are plain
decoded-JSON values, exactly what the protocol hands the dispatcher.
"""

import pytest

from allq.core.queue import QueueConfig
from tests.test_dispatch import SERVER_ID, T0
from tests.test_dispatch import Harness as BaseHarness


class Harness(BaseHarness):
    """The dispatcher harness of ``test_dispatch``, with helpers for parents and stats."""

    def put_parent(self, body: str = "p", tube: str = "t", **params: object) -> str:
        return self.ok("put_parent", tube=tube, body=body, **params)["job_id"]

    def get(self, tube: str = "t", **params: object) -> list[dict]:
        return self.ok("get", tube=tube, **params)["jobs"]

    def tube_stats(self, tube: str = "t") -> dict:
        (stats,) = [s for s in self.ok("stats")["tubes"] if s["tube"] == tube]
        return stats

    def counts(self, tube: str = "t") -> dict:
        stats = self.tube_stats(tube)
        return {k: stats[k] for k in ("ready", "reserved", "delayed", "buried", "parents")}


@pytest.fixture
def h() -> Harness:
    return Harness()


def counts(**nonzero: int) -> dict:
    return {"ready": 0, "reserved": 0, "delayed": 0, "buried": 0, "parents": 0, **nonzero}


def number(job_id: str) -> int:
    server_id, _, n = job_id.partition(",")
    assert server_id == SERVER_ID
    return int(n)


# -- put: run_at, shard_key, parent_id ------------------------------------------------


def test_put_with_run_at_is_delayed_until_then(h):
    """put with run_at replies a job id and the job is delayed until that unix time."""
    job_id = h.put(run_at=T0 + 30)
    assert h.counts() == counts(delayed=1)
    h.clock.advance(30)
    h.queue.expire(h.clock.seconds())
    assert [j["job_id"] for j in h.get()] == [job_id]


def test_put_with_both_delay_and_run_at_is_a_bad_request(h):
    """delay and run_at together get bad_request naming run_at."""
    error = h.error("put", tube="t", body="x", delay=5, run_at=T0 + 10)
    assert error["code"] == "bad_request"
    assert "run_at" in error["message"]
    assert len(h.queue) == 0


def test_put_to_a_fair_tube_needs_a_shard_key(h):
    """A fair tube refuses a put without shard_key and round-robins the keys it gets."""
    error = h.error("put", tube="fq-t", body="x")
    assert error["code"] == "bad_request"
    assert "shard_key" in error["message"]
    a1, a2 = h.put("a1", "fq-t", shard_key="A"), h.put("a2", "fq-t", shard_key="A")
    b1 = h.put("b1", "fq-t", shard_key="B")
    assert h.ok("peek", tube="fq-t")["job"]["job_id"] == a1
    assert [j["job_id"] for j in h.get("fq-t", count=3)] == [a1, b1, a2]


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


def test_repeated_put_parent_idempotency_key_returns_the_first_parent(h):
    """A put_parent retried with the same idempotency_key stores one parent and replies its id."""
    first = h.put_parent(limit=1, idempotency_key="k-1")
    again = h.put_parent(limit=1, idempotency_key="k-1")
    assert again == first
    assert h.counts() == counts(parents=1)
    assert len(h.queue) == 1
    other = h.put_parent(limit=1, idempotency_key="k-2")
    assert other != first


def test_idempotent_retry_succeeds_after_drain_started(h):
    """A retry of a put that was stored before the server began draining still gets its id."""
    first = h.put(idempotency_key="k")
    parent = h.put_parent(idempotency_key="kp")
    h.ok("drain")
    assert h.put(idempotency_key="k") == first
    assert h.put_parent(idempotency_key="kp") == parent
    assert h.error("put", tube="t", body="x", idempotency_key="new")["code"] == "draining"
    assert len(h.queue) == 2


# -- throttle, pause ------------------------------------------------------------------


def test_throttle_replies_and_shows_in_stats(h):
    """throttle replies {"tube", "tps"}; stats throttle_size is the rate or null."""
    assert h.ok("throttle", tube="t", tps=2.5) == {"tube": "t", "tps": 2.5}
    assert h.tube_stats()["throttle_size"] == 2.5
    assert h.ok("throttle", tube="t", tps=0) == {"tube": "t", "tps": None}
    assert h.tube_stats()["throttle_size"] is None
    h.ok("throttle", tube="t", tps=3)
    assert h.ok("throttle", tube="t") == {"tube": "t", "tps": None}
    assert h.ok("throttle", tube="t", tps=-1) == {"tube": "t", "tps": None}


def test_throttle_caps_gets(h):
    """With tps 2, a get for 10 hands out 2; a second later 2 more."""
    for _ in range(10):
        h.put()
    h.ok("throttle", tube="t", tps=2)
    assert len(h.get(count=10)) == 2
    assert h.get(count=10) == []
    h.clock.advance(1)
    assert len(h.get(count=10)) == 2


def test_throttle_on_a_missing_tube_creates_it(h):
    """throttle on a tube that does not exist yet makes it show in stats."""
    h.ok("throttle", tube="new", tps=4)
    assert h.tube_stats("new")["throttle_size"] == 4


def test_pause_and_unpause_reply_and_show_in_stats(h):
    """pause/unpause reply {"tube", "paused"}; a paused tube hands out nothing."""
    h.put()
    assert h.ok("pause", tube="t") == {"tube": "t", "paused": True}
    assert h.tube_stats()["paused"] is True
    assert h.get() == []
    assert h.ok("peek", tube="t")["job"] is not None
    assert h.ok("unpause", tube="t") == {"tube": "t", "paused": False}
    assert h.tube_stats()["paused"] is False
    assert len(h.get()) == 1


def test_pause_of_a_missing_tube_creates_it_paused(h):
    """pause creates the tube, so the next put lands paused (FIX 62)."""
    h.ok("pause", tube="later")
    h.put(tube="later")
    assert h.get("later") == []
    assert h.tube_stats("later")["paused"] is True


# -- drain ------------------------------------------------------------------------------


def test_server_drain_replies_and_refuses_puts(h):
    """drain without tube replies {"draining": true}; puts get "draining"; gets still work."""
    job_id = h.put()
    assert h.ok("drain") == {"draining": True}
    assert h.ok("stats")["global"]["draining"] is True
    for action, params in (("put", {}), ("put_parent", {}), ("put", {"tube": "other"})):
        error = h.error(action, **{"tube": "t", "body": "x", **params})
        assert error["code"] == "draining"
    (job,) = h.get()
    assert h.ok("done", job_id=job["job_id"]) == {"job_id": job_id}
    assert h.ok("undrain") == {"draining": False}
    assert h.ok("stats")["global"]["draining"] is False
    h.put()


def test_tube_drain_replies_and_refuses_puts_to_that_tube(h):
    """drain with a tube replies {"tube", "draining"}; only that tube refuses puts."""
    assert h.ok("drain", tube="t") == {"tube": "t", "draining": True}
    assert h.tube_stats()["draining"] is True
    assert h.ok("stats")["global"]["draining"] is False
    assert h.error("put", tube="t", body="x")["code"] == "draining"
    h.put(tube="other")
    assert h.ok("undrain", tube="t") == {"tube": "t", "draining": False}
    assert h.tube_stats()["draining"] is False
    h.put()


def test_child_puts_are_accepted_while_draining(h):
    """A child of a parent held by a draining server is still accepted; plain puts are not."""
    parent = h.put_parent(limit=1)
    h.ok("drain")
    assert h.error("put", tube="c", body="x")["code"] == "draining"
    h.ok("put", tube="c", body="x", parent_id=parent)
    assert h.queue.parent_info(number(parent)).children_put == 1



# -- fair ---------------------------------------------------------------------------


def test_fair_replies_and_shows_in_stats(h):
    """fair replies {"tube", "fair"} with the policy in force; stats show it."""
    assert h.ok("fair", tube="t", policy="weighted") == {"tube": "t", "fair": "weighted"}
    assert h.tube_stats()["fair"] == "weighted"
    assert h.ok("fair", tube="t", policy="round_robin") == {"tube": "t", "fair": "round_robin"}
    assert h.ok("fair", tube="t", policy="off") == {"tube": "t", "fair": None}
    assert h.tube_stats()["fair"] is None


def test_fair_default_follows_the_name_convention(h):
    """policy "default" makes fq- tubes round robin and other tubes plain."""
    assert h.ok("fair", tube="fq-x", policy="off") == {"tube": "fq-x", "fair": None}
    h.put(tube="fq-x")  # no shard_key needed while off
    assert h.ok("fair", tube="fq-x", policy="default") == {"tube": "fq-x", "fair": "round_robin"}
    assert h.ok("fair", tube="plain", policy="default") == {"tube": "plain", "fair": None}
    assert h.tube_stats("fq-x")["ready"] == 1


def test_fair_with_an_unknown_policy_is_a_bad_request(h):
    """An unknown fair policy gets bad_request."""
    error = h.error("fair", tube="t", policy="bogus")
    assert error["code"] == "bad_request"
    assert "policy" in error["message"]


# -- max_size, max_jobs ------------------------------------------------------------------


def test_max_size_replies_and_bounds_the_tube(h):
    """max_size replies {"tube", "max_size"}; the put beyond it gets "full"."""
    assert h.ok("max_size", tube="t", max_size=2) == {"tube": "t", "max_size": 2}
    assert h.tube_stats()["max_size"] == 2
    h.put()
    h.put()
    error = h.error("put", tube="t", body="x")
    assert error["code"] == "full"
    assert h.error("put_parent", tube="t", body="p")["code"] == "full"
    h.get(delete=True)
    h.put()  # room again
    assert h.error("put", tube="t", body="x")["code"] == "full"
    assert h.ok("max_size", tube="t") == {"tube": "t", "max_size": None}
    assert h.tube_stats()["max_size"] is None
    h.put()


def test_server_max_jobs_shows_in_stats_and_refuses_puts():
    """QueueConfig(max_jobs) shows as global max_jobs; the put beyond it gets "full"."""
    h = Harness(QueueConfig(max_jobs=2))
    h.put(tube="a")
    h.put(tube="b")
    assert h.error("put", tube="c", body="x")["code"] == "full"
    assert h.ok("stats")["global"]["max_jobs"] == 2
    assert h.ok("stats")["global"]["jobs"] == 2


# -- stats ------------------------------------------------------------------------------


def test_stats_show_every_setting_of_a_tube(h):
    """stats report throttle_size, paused, draining, fair, max_size and parents per tube."""
    h.put_parent(tube="fq-t", shard_key="k")
    h.ok("throttle", tube="fq-t", tps=7)
    h.ok("pause", tube="fq-t")
    h.ok("drain", tube="fq-t")
    h.ok("max_size", tube="fq-t", max_size=100)
    h.put(tube="plain")
    assert h.tube_stats("fq-t") == {
        "tube": "fq-t", "ready": 0, "reserved": 0, "delayed": 0, "buried": 0, "parents": 1,
        "tps": 0.0, "avg": 0.0, "throttle_size": 7, "paused": True, "draining": True,
        "fair": "round_robin", "max_size": 100, "expired_total": 0, "buried_total": 0,
    }
    plain = h.tube_stats("plain")
    assert (plain["throttle_size"], plain["paused"], plain["draining"], plain["fair"],
            plain["max_size"], plain["parents"]) == (None, False, False, None, None, 0)
    assert h.ok("stats")["global"]["draining"] is False
    assert h.ok("stats")["global"]["max_jobs"] is None


# -- ill-typed params -------------------------------------------------------------------


@pytest.mark.parametrize(
    "action, params, named",
    [
        ("put", {"tube": "t", "body": "x", "run_at": "soon"}, "run_at"),
        ("put", {"tube": "t", "body": "x", "run_at": -5}, "run_at"),
        ("put", {"tube": "t", "body": "x", "shard_key": 5}, "shard_key"),
        ("put", {"tube": "t", "body": "x", "parent_id": 5}, "parent_id"),
        ("put_parent", {"tube": "t"}, "body"),
        ("put_parent", {"tube": "t", "body": "p", "limit": 1.5}, "limit"),
        ("put_parent", {"tube": "t", "body": "p", "limit": -1}, "limit"),
        ("put_parent", {"tube": "t", "body": "p", "timeout": "60"}, "timeout"),
        ("put_parent", {"tube": "t", "body": "p", "timeout": 0}, "timeout"),
        ("put_parent", {"tube": "t", "body": "p", "run_on_timeout": "true"}, "run_on_timeout"),
        ("put_parent", {"tube": "t", "body": "p", "delay": 5}, "delay"),
        ("set_children_started", {}, "job_id"),
        ("set_children_started", {"job_id": 7}, "job_id"),
        ("throttle", {"tps": 5}, "tube"),
        ("throttle", {"tube": "t", "tps": "5"}, "tps"),
        ("throttle", {"tube": "t", "tps": True}, "tps"),
        ("pause", {}, "tube"),
        ("unpause", {"tube": 5}, "tube"),
        ("pause", {"tube": "bad tube"}, "tube"),
        ("drain", {"tube": 5}, "tube"),
        ("undrain", {"tube": ["t"]}, "tube"),
        ("fair", {"tube": "t"}, "policy"),
        ("fair", {"tube": "t", "policy": 1}, "policy"),
        ("max_size", {"tube": "t", "max_size": "3"}, "max_size"),
        ("max_size", {"tube": "t", "max_size": 0}, "max_size"),
        ("max_size", {"tube": "t", "max_size": 2.5}, "max_size"),
    ],
)
def test_ill_typed_feature_params_are_bad_requests(h, action, params, named):
    """A missing, ill-typed, out-of-range or unknown param of a new action gets bad_request."""
    error = h.error(action, **params)
    assert error["code"] == "bad_request"
    assert named in error["message"]
    assert len(h.queue) == 0
