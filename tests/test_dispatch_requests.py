"""Tests of :class:`allq.server.dispatch.Dispatcher`: each action's request and reply.

Put (with ``delay`` or ``run_at``), get, done, delete, bury, kick, touch,
release, peek, clear, stats and ping: what they do and the shape of their
replies. Harness: :mod:`dispatchers`.
"""

import pytest

from allq import __version__

from dispatchers import SERVER_ID, T0, Harness, counts


@pytest.fixture
def h() -> Harness:
    return Harness()


# -- happy paths and reply shapes -------------------------------------------------


def test_put_replies_with_the_request_id_and_a_server_prefixed_job_id(h):
    """put answers ``{"id": <request id>, "result": {"job_id": "<server_id>,<n>"}}``."""
    request = h.request("put", tube="t", body="hello")
    reply = h.dispatcher.handle(request)
    job = h.queue.peek("t")
    assert reply == {"id": request["id"], "result": {"job_id": f"{SERVER_ID},{job.id}"}}


def test_get_returns_the_whole_job(h):
    """get reserves the best job and replies with every job field."""
    job_id = h.put("hello", priority=2, ttl=30)
    assert h.ok("get", tube="t") == {
        "jobs": [
            {
                "job_id": job_id,
                "tube": "t",
                "body": "hello",
                "priority": 2,
                "ttl": 30,
                "expireds": 0,
                "releases": 0,
            }
        ]
    }
    assert h.counts() == counts(reserved=1)


def test_get_of_an_unknown_tube_returns_no_jobs(h):
    """get on a tube nobody used replies with an empty list, not an error."""
    assert h.ok("get", tube="nothing-here") == {"jobs": []}


def test_get_with_count_and_delete_hands_out_and_removes_jobs(h):
    """get count=2 delete=true returns two jobs in order and leaves only the third."""
    ids = [h.put(body) for body in ("a", "b", "c")]
    jobs = h.ok("get", tube="t", count=2, delete=True)["jobs"]
    assert [job["job_id"] for job in jobs] == ids[:2]
    assert len(h.queue) == 1
    assert h.counts() == counts(ready=1)


def test_done_finishes_a_reserved_job(h):
    """done on a reserved job replies with its id and removes it."""
    job_id = h.put()
    h.reserve()
    assert h.ok("done", job_id=job_id) == {"job_id": job_id}
    assert len(h.queue) == 0


def test_done_on_a_ready_job_is_wrong_state(h):
    """done on a job that is not reserved replies with code wrong_state."""
    job_id = h.put()
    assert h.error("done", job_id=job_id)["code"] == "wrong_state"


def test_delete_removes_a_ready_job(h):
    """delete on a ready job replies with its id and removes it."""
    job_id = h.put()
    assert h.ok("delete", job_id=job_id) == {"job_id": job_id}
    assert len(h.queue) == 0


def test_bury_and_kick(h):
    """bury moves a reserved job to buried; kick makes it ready again."""
    job_id = h.put()
    h.reserve()
    assert h.ok("bury", job_id=job_id) == {"job_id": job_id}
    assert h.counts() == counts(buried=1)
    assert h.ok("kick", job_id=job_id) == {"job_id": job_id}
    assert h.counts() == counts(ready=1)


def test_touch_restarts_the_ttl(h):
    """touch on a reserved job restarts its ttl from the clock's now."""
    job_id = h.put(ttl=10)
    h.reserve()
    h.clock.advance(6)
    assert h.ok("touch", job_id=job_id) == {"job_id": job_id}
    assert h.queue.next_deadline() == T0 + 16


def test_release_with_delay_delays_the_job(h):
    """release delay=5 makes the job delayed until the clock reaches its deadline."""
    job_id = h.put()
    h.reserve()
    assert h.ok("release", job_id=job_id, delay=5) == {"job_id": job_id}
    assert h.counts() == counts(delayed=1)
    assert h.ok("get", tube="t") == {"jobs": []}
    h.clock.advance(5)
    h.queue.expire(h.clock.seconds())
    (job,) = h.ok("get", tube="t")["jobs"]
    assert (job["job_id"], job["releases"]) == (job_id, 1)


def test_kick_tube_kicks_the_oldest_buried_jobs(h):
    """kick_tube replies with the kicked ids, oldest buried first, up to count."""
    ids = [h.put(body) for body in ("a", "b", "c")]
    for job_id in ids:
        h.reserve()
        h.ok("bury", job_id=job_id)
    assert h.ok("kick_tube", tube="t", count=2) == {"job_ids": ids[:2]}
    assert h.counts() == counts(ready=2, buried=1)


def test_peek_ready_buried_and_offset(h):
    """peek shows the job at an offset of the ready or buried line, or null past the end."""
    first, second = h.put("a"), h.put("b")
    assert h.ok("peek", tube="t")["job"]["job_id"] == first
    assert h.ok("peek", tube="t", offset=1)["job"]["job_id"] == second
    assert h.ok("peek", tube="t", offset=2) == {"job": None}
    assert h.ok("peek", tube="t", buried=True) == {"job": None}
    h.reserve()
    h.ok("bury", job_id=first)
    assert h.ok("peek", tube="t", buried=True)["job"]["job_id"] == first
    assert h.counts() == counts(ready=1, buried=1)


def test_clear_replies_with_the_number_dropped(h):
    """clear drops the tube's jobs in the given state and says how many."""
    h.put("a")
    h.put("b", delay=30)
    assert h.ok("clear", tube="t", state="delayed") == {"cleared": 1}
    assert h.ok("clear", tube="t") == {"cleared": 1}
    assert len(h.queue) == 0


def test_stats_reports_global_counters_and_tubes(h):
    """stats replies with server id, version, global counters and per-tube counts."""
    h.put("a", tube="a")
    h.put("b", tube="b")
    h.reserve("b")
    h.clock.advance(2.5)
    result = h.ok("stats")
    assert result["server_id"] == SERVER_ID
    assert result["version"] == __version__
    assert result["global"] == {
        "action_count": 4,
        "job_put": 2,
        "job_get": 1,
        "uptime": 2.5,
        "jobs": 2,
        "draining": False,
        "max_jobs": None,
        "disk_full": False,
        "events": 0,
        "events_unmatched": 0,
        "schedule_failures": 0,
    }
    assert [(t["tube"], t["ready"], t["reserved"]) for t in result["tubes"]] == [
        ("a", 1, 0),
        ("b", 0, 1),
    ]
    assert set(result["tubes"][0]) == {
        "tube", "ready", "reserved", "delayed", "buried", "parents", "tps", "avg",
        "throttle_size", "paused", "draining", "fair", "max_size", "expired_total", "buried_total",
        "pause_time_left", "concurrency",
    }


def test_ping_replies_with_the_server_id(h):
    """ping replies with this server's id."""
    assert h.ok("ping") == {"server_id": SERVER_ID}


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
