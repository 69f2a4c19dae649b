"""Tests of the operator settings through :class:`allq.server.dispatch.Dispatcher`.

``throttle``, ``pause``/``unpause``, ``drain``/``undrain``, ``fair`` (and the
shard key it needs), ``max_size`` and the server's ``max_jobs``: their replies,
error codes and what ``stats`` shows. Harness: :mod:`dispatchers`.
"""

import pytest

from allq.core.queue import QueueConfig

from dispatchers import Harness, number


@pytest.fixture
def h() -> Harness:
    return Harness()


# -- put: run_at, shard_key, parent_id ------------------------------------------------


def test_put_to_a_fair_tube_needs_a_shard_key(h):
    """A fair tube refuses a put without shard_key and round-robins the keys it gets."""
    error = h.error("put", tube="fq-t", body="x")
    assert error["code"] == "bad_request"
    assert "shard_key" in error["message"]
    a1, a2 = h.put("a1", "fq-t", shard_key="A"), h.put("a2", "fq-t", shard_key="A")
    b1 = h.put("b1", "fq-t", shard_key="B")
    assert h.ok("peek", tube="fq-t")["job"]["job_id"] == a1
    assert [j["job_id"] for j in h.get("fq-t", count=3)] == [a1, b1, a2]


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
        "pause_time_left": 0.0, "concurrency": 1,
    }
    plain = h.tube_stats("plain")
    assert (plain["throttle_size"], plain["paused"], plain["draining"], plain["fair"],
            plain["max_size"], plain["parents"]) == (None, False, False, None, None, 0)
    assert h.ok("stats")["global"]["draining"] is False
    assert h.ok("stats")["global"]["max_jobs"] is None
