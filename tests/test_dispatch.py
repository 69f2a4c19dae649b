"""Tests of :class:`allq.server.dispatch.Dispatcher`: requests in, replies out.

A real :class:`~allq.core.queue.Queue` and a :class:`task.Clock`; requests are
plain decoded-JSON values, exactly what the protocol hands the dispatcher.
"""

import pytest
from twisted.internet.task import Clock

from allq import __version__
from allq.core.queue import Queue, QueueConfig
from allq.server.dispatch import Dispatcher

SERVER_ID = "srv1"
T0 = 1000.0


class Harness:
    """A dispatcher over a fresh queue, plus helpers that build requests."""

    def __init__(self, config: QueueConfig = QueueConfig()) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.queue = Queue(config, started=T0)
        self.dispatcher = Dispatcher(self.queue, self.clock, lambda: SERVER_ID)
        self._next_id = 0

    def request(self, action: str, **params: object) -> dict:
        self._next_id += 1
        return {"id": self._next_id, "action": action, "params": params}

    def reply(self, action: str, **params: object) -> dict:
        request = self.request(action, **params)
        reply = self.dispatcher.handle(request)
        assert reply["id"] == request["id"]
        return reply

    def ok(self, action: str, **params: object) -> dict:
        reply = self.reply(action, **params)
        assert "error" not in reply, reply
        return reply["result"]

    def error(self, action: str, **params: object) -> dict:
        reply = self.reply(action, **params)
        assert "result" not in reply, reply
        return reply["error"]

    def put(self, body: str = "x", tube: str = "t", **params: object) -> str:
        return self.ok("put", tube=tube, body=body, **params)["job_id"]

    def reserve(self, tube: str = "t") -> str:
        (job,) = self.ok("get", tube=tube)["jobs"]
        return job["job_id"]

    def counts(self, tube: str = "t") -> dict:
        (stats,) = [s for s in self.ok("stats")["tubes"] if s["tube"] == tube]
        return {k: stats[k] for k in ("ready", "reserved", "delayed", "buried")}


@pytest.fixture
def h() -> Harness:
    return Harness()


def counts(**nonzero: int) -> dict:
    return {"ready": 0, "reserved": 0, "delayed": 0, "buried": 0, **nonzero}


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
    }
    assert [(t["tube"], t["ready"], t["reserved"]) for t in result["tubes"]] == [
        ("a", 1, 0),
        ("b", 0, 1),
    ]
    assert set(result["tubes"][0]) == {
        "tube", "ready", "reserved", "delayed", "buried", "parents", "tps", "avg",
        "throttle_size", "paused", "draining", "fair", "max_size", "expired_total", "buried_total",
    }


def test_ping_replies_with_the_server_id(h):
    """ping replies with this server's id."""
    assert h.ok("ping") == {"server_id": SERVER_ID}


# -- job ids ----------------------------------------------------------------------


def test_a_bare_job_number_is_accepted(h):
    """A job id without the server prefix names a job of this server."""
    job_id = h.put()
    h.reserve()
    number = job_id.split(",")[1]
    assert h.ok("done", job_id=number) == {"job_id": job_id}


def test_another_servers_job_id_is_not_found(h):
    """A job id with another server's prefix gets not_found, even if the number exists."""
    number = h.put().split(",")[1]
    error = h.error("delete", job_id=f"other,{number}")
    assert error["code"] == "not_found"
    assert len(h.queue) == 1


def test_an_unknown_job_number_is_not_found(h):
    """A well-formed id of a job that does not exist gets not_found."""
    assert h.error("kick", job_id=f"{SERVER_ID},999999")["code"] == "not_found"


@pytest.mark.parametrize("job_id", ["", "abc", "srv1,", ",5", "srv1,5,6", "srv 1,5", "5.0", "-5"])
def test_a_malformed_job_id_is_a_bad_request(h, job_id):
    """A job id that is not ``[<server_id>,]<number>`` gets bad_request naming job_id."""
    error = h.error("done", job_id=job_id)
    assert error["code"] == "bad_request"
    assert "job_id" in error["message"]


# -- idempotency ------------------------------------------------------------------


def test_a_repeated_idempotency_key_returns_the_first_job(h):
    """The same idempotency_key twice gives the same job id and stores one job."""
    first = h.put("a", idempotency_key="k1")
    again = h.put("a", idempotency_key="k1")
    other = h.put("a", idempotency_key="k2")
    assert again == first
    assert other != first
    assert len(h.queue) == 2


# -- bad requests -----------------------------------------------------------------


def test_an_unknown_action_echoes_the_id(h):
    """An unknown action gets code unknown_action under the request's own id."""
    reply = h.dispatcher.handle({"id": 42, "action": "explode", "params": {}})
    assert reply["id"] == 42
    assert reply["error"]["code"] == "unknown_action"
    assert "explode" in reply["error"]["message"]


@pytest.mark.parametrize(
    "action, params, named",
    [
        ("put", {"tube": "t"}, "body"),
        ("put", {"body": "x"}, "tube"),
        ("put", {"tube": "t", "body": 5}, "body"),
        ("put", {"tube": "t", "body": "x", "priority": "1"}, "priority"),
        ("put", {"tube": "t", "body": "x", "priority": True}, "priority"),
        ("put", {"tube": "t", "body": "x", "priority": -1}, "priority"),
        ("put", {"tube": "t", "body": "x", "ttl": 0}, "ttl"),
        ("put", {"tube": "t", "body": "x", "colour": "red"}, "colour"),
        ("get", {"tube": "t", "count": 1.5}, "count"),
        ("get", {"tube": "t", "delete": "yes"}, "delete"),
        ("release", {"job_id": "1", "delay": "soon"}, "delay"),
        ("peek", {"tube": "t", "offset": -1}, "offset"),
        ("done", {}, "job_id"),
        ("done", {"job_id": 7}, "job_id"),
    ],
)
def test_missing_ill_typed_or_unknown_params_name_the_param(h, action, params, named):
    """A missing, ill-typed, out-of-range or unknown param gets bad_request naming it."""
    error = h.error(action, **params)
    assert error["code"] == "bad_request"
    assert named in error["message"]


def test_params_that_are_not_an_object_are_a_bad_request(h):
    """params must be a JSON object."""
    reply = h.dispatcher.handle({"id": 3, "action": "ping", "params": [1]})
    assert (reply["id"], reply["error"]["code"]) == (3, "bad_request")
    assert "params" in reply["error"]["message"]


@pytest.mark.parametrize(
    "request_",
    ["ping", 7, None, ["nested"], {"action": "ping"}, {"id": "1", "action": "ping"},
     {"id": True, "action": "ping"}, {"id": 1.0, "action": "ping"}],
)
def test_a_request_without_a_readable_id_gets_an_error_with_id_null(h, request_):
    """A non-object request, or one whose id is not an integer, gets an error reply with id null."""
    reply = h.dispatcher.handle(request_)
    assert reply["id"] is None
    assert reply["error"]["code"] == "bad_request"


def test_a_lone_surrogate_body_is_refused(h):
    """A body that is not encodable as UTF-8 is refused at put, so no get can fail on it."""
    error = h.error("put", tube="t", body="\ud800")
    assert error["code"] == "bad_request"
    assert "body" in error["message"]
    assert len(h.queue) == 0


# -- batches and counting ---------------------------------------------------------


def test_a_batch_gets_its_replies_in_order_and_one_bad_request_spoils_nothing(h):
    """A list of requests gets the list of replies in order; a bad one errs alone."""
    frame = [
        h.request("put", tube="t", body="a"),
        h.request("put", tube="t"),
        "not a request",
        h.request("ping"),
    ]
    replies = h.dispatcher.handle_frame(frame)
    expected_ids = [frame[0]["id"], frame[1]["id"], None, frame[3]["id"]]
    assert [reply["id"] for reply in replies] == expected_ids
    assert "result" in replies[0] and "result" in replies[3]
    assert replies[1]["error"]["code"] == replies[2]["error"]["code"] == "bad_request"
    assert len(h.queue) == 1


def test_a_single_request_frame_gets_a_single_reply(h):
    """handle_frame on one object returns one reply object, not a list."""
    assert h.dispatcher.handle_frame(h.request("ping"))["result"] == {"server_id": SERVER_ID}


def test_action_count_counts_every_request(h):
    """Every request counts, good or bad, alone or in a batch."""
    h.reply("ping")
    h.reply("explode")
    h.dispatcher.handle("garbage")
    h.dispatcher.handle_frame([h.request("ping"), h.request("ping")])
    assert h.queue.action_count == 5
    assert h.ok("stats")["global"]["action_count"] == 6
