"""The REST facade (allq.client.rest) through StubTreq against the real federation.

The facade talks to a real :class:`allq.client.federation.Federation` whose
server links are :class:`memory_servers.MemoryLink` objects: real queues and
dispatchers in memory, with switches for a network that fails. Assertions about
what the facade asked of the federation are made on the wire requests the
servers received.
"""

import json
import os
from io import BytesIO
from urllib.parse import quote

import attrs
import pytest
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from allq.client.rest import (
    DEFAULT_MAX_BODY,
    MAX_WAIT,
    JOB_ID,
    RestApi,
    json_response,
    parse_bool,
    read_json,
)
from allq.core.queue import DEFAULT_PRIORITY, QueueConfig
from allq.vocabulary import MAX_COUNT
from allq.errors import BadRequest, Timeout, TooLarge, Unavailable

from memory_servers import FLUSH_STEP, local_addresses, result_with_flush, start_federation

MAX_BODY = 4096
MAX_JOB_SIZE = 1024
REQUEST_TIMEOUT = 30.0
#: Seconds a put or get retries with no server reachable before its 503 (default 5).
RETRY_BUDGET = 1.0
ADDRESS = "127.0.0.1:7711"


@attrs.frozen
class Reply:
    """One HTTP response, its body decoded as JSON."""

    code: int
    content_type: list
    headers: object
    json: object


class RestTestCase(SynchronousTestCase):
    """Shared setup: a clock, a real federation over one in-memory server, the
    facade under StubTreq."""

    def setUp(self):
        self.clock = Clock()
        self.federation = None
        self.federate(1)
        self.addCleanup(lambda: self.federation.stopService())

    def federate(self, count):
        """Serve over a new federation of ``count`` in-memory servers (7711, 7712, ...)
        instead of the current one; the links, in order."""
        if self.federation is not None:
            self.federation.stopService()
        self.federation, self.links = start_federation(
            self.clock, local_addresses(count, 7711),
            config=QueueConfig(max_job_size=MAX_JOB_SIZE), retry_budget=RETRY_BUDGET)
        self.api = RestApi(
            self.federation, self.clock, max_body=MAX_BODY, request_timeout=REQUEST_TIMEOUT)
        self.stub = StubTreq(self.api.resource())
        return list(self.links)

    @pytest.fixture(autouse=True)
    def _logged(self, observe_errors):
        """Gives tests the conftest's list of logged failures (to accept expected ones)."""
        self.logged = observe_errors

    def tearDown(self):
        # Every request above has ended: nothing may stay scheduled (STYLE rule 20),
        # not even a federation retry or long-poll timer.
        self.assertEqual(self.clock.getDelayedCalls(), [])

    # -- helpers -----------------------------------------------------------------

    def start(self, method, path, **kwargs):
        """Send a request; a Deferred firing with a :class:`Reply` (needs flushing)."""
        d = self.stub.request(method, "http://allq.test" + path, **kwargs)

        def read(response):
            def decode(body):
                return Reply(response.code, response.headers.getRawHeaders(b"content-type"),
                             response.headers, json.loads(body) if body else None)
            return response.content().addCallback(decode)

        return d.addCallback(read)

    def result_of_with_flush(self, d, step=FLUSH_STEP, limit=10_000):
        """Alternate ``stub.flush()`` and ``clock.advance(step)`` until ``d`` fires."""
        return result_with_flush(self, self.stub, self.clock, d, step, limit)

    def call(self, method, path, **kwargs):
        """Send a request and wait (on the clock) for its :class:`Reply`."""
        return self.result_of_with_flush(self.start(method, path, **kwargs))

    def ok(self, method, path, **kwargs):
        """Send a request that must succeed; its JSON body."""
        reply = self.call(method, path, **kwargs)
        self.assertEqual(reply.code, 200, reply.json)
        self.assertEqual(reply.content_type, [b"application/json"])
        return reply.json

    def assert_error(self, reply, status, code=None):
        """``reply`` is a JSON error with that status (and error code)."""
        self.assertEqual(reply.code, status, reply.json)
        self.assertEqual(reply.content_type, [b"application/json"])
        self.assertEqual(set(reply.json), {"error", "detail"})
        self.assertIsInstance(reply.json["detail"], str)
        if code is not None:
            self.assertEqual(reply.json["error"], code, reply.json)

    def error(self, status, code, method, path, **kwargs):
        """Send a request that must fail with ``status`` and error ``code``."""
        reply = self.call(method, path, **kwargs)
        self.assert_error(reply, status, code)
        return reply.json

    def put(self, tube="t", body="hello", **fields):
        """Put a job over REST; its id."""
        return self.ok("POST", "/job", json={"tube": tube, "body": body, **fields})["job_id"]

    def tube_stats(self, tube="t"):
        """The REST stats entry of ``tube`` on the only server."""
        [server] = self.ok("GET", "/stats")
        return {t["tube"]: t for t in server["stats"]}[tube]

    def stored(self, job_id):
        """The core's job record for a REST job id (single-server tests)."""
        return self.link().queue.job(int(job_id.split(",")[1]))

    # -- the in-memory servers ---------------------------------------------------

    def link(self, index=0):
        """The ``index``-th server link the federation made."""
        return self.links[index]

    def sent(self):
        """``(action, params)`` of every wire request any server received, link by link."""
        return [request for link in self.links for request in link.requests]

    def set_up(self, up):
        """Every server link up (or down: no server reachable)."""
        for link in self.links:
            link.up = up

    def hang(self):
        """Every server link takes requests and never answers them."""
        for link in self.links:
            link.hang = True


def q(job_id):
    """Percent-encode a job id for a query string."""
    return quote(job_id, safe="")


# -- put / get ---------------------------------------------------------------------


class PutGetTests(RestTestCase):
    """POST /job, GET /job, GET /multiple_job."""

    def test_put_answers_action_and_job_id(self):
        """POST /job answers {"action": "put", "job_id": "<server_id>,<n>"}."""
        reply = self.ok("POST", "/job", json={"tube": "t", "body": "hello", "ttl": 60,
                                              "delay": 0, "priority": 5})
        self.assertEqual(set(reply), {"action", "job_id"})
        self.assertEqual(reply["action"], "put")
        self.assertRegex(reply["job_id"], f"^{self.link().server_id},[0-9]+$")
        self.assertEqual(self.tube_stats()["ready"], 1)

    def test_put_passes_every_field(self):
        """ttl, delay, priority and expired_limit reach the federation as numbers."""
        self.put(ttl=30, delay=2, priority=3, expired_limit=4)
        action, params = self.sent()[-1]
        self.assertIsInstance(params.pop("idempotency_key"), str)
        self.assertEqual((action, params), (
            "put",
            {"tube": "t", "body": "hello", "priority": 3, "ttl": 30, "delay": 2,
             "expired_limit": 4, "run_at": None, "shard_key": None, "parent_id": None}))

    def test_put_accepts_numeric_strings(self):
        """Old Ruby clients send "5": ttl, delay, priority and expired_limit may be strings."""
        job_id = self.put(ttl="30", delay="0", priority="3", expired_limit="2")
        job = self.stored(job_id)
        self.assertEqual((job.priority, job.ttl, job.expired_limit), (3, 30, 2))

    def test_put_null_fields_take_defaults(self):
        """priority null (AllQueue: an error, FIX 5), ttl null, delay null → server defaults."""
        job = self.stored(self.put(priority=None, ttl=None, delay=None))
        self.assertEqual(job.priority, DEFAULT_PRIORITY)
        self.assertEqual(job.ttl, 3600)

    def test_non_ascii_body_round_trips(self):
        """A non-ASCII body comes back unchanged (UTF-8 JSON both ways)."""
        self.put(body="h\u00e9llo \u2713 \U0001f600")
        self.assertEqual(self.ok("GET", "/job?tube=t")["body"], "h\u00e9llo \u2713 \U0001f600")

    def test_put_without_body_stores_empty_string(self):
        """A missing body is "" as in AllQueue."""
        job_id = self.ok("POST", "/job", json={"tube": "t"})["job_id"]
        self.assertEqual(self.stored(job_id).body, "")

    def test_put_with_delay_is_ready_later(self):
        """A job put with delay 3 is not handed out before 3 s have passed."""
        self.put(delay=3)
        self.assertEqual(self.ok("GET", "/job?tube=t"), {})
        self.clock.advance(3)
        self.assertEqual(self.ok("GET", "/job?tube=t")["body"], "hello")

    def test_get_answers_rest_job_shape(self):
        """GET /job answers {"id","body","tube","expireds","releases"} with int counters."""
        job_id = self.put()
        reply = self.ok("GET", "/job?tube=t")
        self.assertEqual(reply, {"id": job_id, "body": "hello", "tube": "t",
                                 "expireds": 0, "releases": 0})
        self.assertEqual(self.tube_stats()["reserved"], 1)

    def test_get_accepts_tube_name_alias(self):
        """tube_name works like tube."""
        job_id = self.put()
        self.assertEqual(self.ok("GET", "/job?tube_name=t")["id"], job_id)

    def test_get_with_no_ready_job_answers_empty_object(self):
        """GET /job on an empty or unknown tube answers {}."""
        self.assertEqual(self.ok("GET", "/job?tube=empty"), {})

    def test_get_delete_true_takes_the_job(self):
        """delete=true hands the job out and removes it (nothing reserved)."""
        self.put()
        self.assertEqual(self.ok("GET", "/job?tube=t&delete=true")["body"], "hello")
        stats = self.tube_stats()
        self.assertEqual((stats["ready"], stats["reserved"]), (0, 0))

    def test_get_delete_false_only_reserves(self):
        """delete=false reserves the job (AllQueue deleted it anyway; FIX 7)."""
        self.put()
        self.ok("GET", "/job?tube=t&delete=false")
        self.assertEqual(self.tube_stats()["reserved"], 1)

    def test_boolean_spellings(self):
        """true/false/1/0/yes/no in any case are booleans."""
        for text, expected in [("TRUE", True), ("1", True), ("Yes", True),
                               ("False", False), ("0", False), ("NO", False)]:
            self.ok("GET", f"/job?tube=t&delete={text}")
            action, params = self.sent()[-1]
            self.assertEqual((action, params["delete"]), ("get", expected), text)

    def test_multiple_job(self):
        """6 puts; count=4 gives 4 jobs (2 stay ready); the next count=4 gives 2."""
        for n in range(6):
            self.put(body=f"job{n}")
        jobs = self.ok("GET", "/multiple_job?tube=t&count=4")["jobs"]
        self.assertEqual([job["body"] for job in jobs], ["job0", "job1", "job2", "job3"])
        self.assertEqual(self.tube_stats()["ready"], 2)
        for job in jobs:
            self.ok("DELETE", f"/job?job_id={q(job['id'])}")
        self.assertEqual(self.tube_stats()["reserved"], 0)
        self.assertEqual(len(self.ok("GET", "/multiple_job?tube=t&count=4")["jobs"]), 2)

    def test_multiple_job_count_one_is_a_list(self):
        """count=1 answers {"jobs": [job]} in the REST shape (AllQueue: the raw reply)."""
        job_id = self.put()
        self.assertEqual(self.ok("GET", "/multiple_job?tube=t&count=1"), {"jobs": [
            {"id": job_id, "body": "hello", "tube": "t", "expireds": 0, "releases": 0}]})

    def test_multiple_job_count_defaults_to_one(self):
        """Without count, one job is handed out."""
        self.put()
        self.put()
        self.assertEqual(len(self.ok("GET", "/multiple_job?tube=t")["jobs"]), 1)

    def test_multiple_job_with_delete(self):
        """delete=true on /multiple_job removes the jobs handed out."""
        self.put()
        self.ok("GET", "/multiple_job?tube=t&count=5&delete=yes")
        self.assertEqual(self.tube_stats()["reserved"], 0)

    def test_multiple_job_empty(self):
        """No ready jobs: {"jobs": []}."""
        self.assertEqual(self.ok("GET", "/multiple_job?tube=t&count=3"), {"jobs": []})


# -- long poll ---------------------------------------------------------------------


class LongPollTests(RestTestCase):
    """GET /job and /multiple_job with wait."""

    def test_long_poll_answers_as_soon_as_a_job_is_put(self):
        """A waiting GET answers within one poll interval of a put."""
        d = self.start("GET", "/job?tube=t&wait=10")
        for _ in range(20):
            self.stub.flush()
            self.clock.advance(FLUSH_STEP)
        self.assertNoResult(d)
        job_id = self.put()
        started = self.clock.seconds()
        reply = self.result_of_with_flush(d)
        self.assertEqual(reply.json["id"], job_id)
        self.assertLessEqual(self.clock.seconds() - started, 2 * FLUSH_STEP)

    def test_long_poll_answers_empty_after_wait(self):
        """With nothing put, a wait=2 GET answers {} after 2 seconds, not before."""
        d = self.start("GET", "/job?tube=t&wait=2")
        self.stub.flush()
        self.clock.advance(1.9)
        self.stub.flush()
        self.assertNoResult(d)
        self.clock.advance(0.1)
        reply = self.result_of_with_flush(d)
        self.assertEqual((reply.code, reply.json), (200, {}))

    def test_multiple_job_long_poll(self):
        """/multiple_job waits too and answers with the jobs that arrived."""
        d = self.start("GET", "/multiple_job?tube=t&count=3&wait=5")
        self.stub.flush()
        self.clock.advance(1)
        self.stub.flush()
        self.assertNoResult(d)
        self.put(body="late")
        reply = self.result_of_with_flush(d)
        self.assertEqual([job["body"] for job in reply.json["jobs"]], ["late"])

    def test_multiple_job_long_poll_gives_up_with_empty_list(self):
        """A long poll on /multiple_job that finds nothing answers {"jobs": []}."""
        reply = self.call("GET", "/multiple_job?tube=t&wait=1.5")
        self.assertEqual(reply.json, {"jobs": []})
        self.assertAlmostEqual(self.clock.seconds(), 1.5, delta=2 * FLUSH_STEP)

    def test_wait_zero_answers_at_once(self):
        """wait=0 answers without the clock moving."""
        self.ok("GET", "/job?tube=t&wait=0")
        self.assertEqual(self.clock.seconds(), 0)


# -- job actions -------------------------------------------------------------------


class JobActionTests(RestTestCase):
    """DELETE /job, PUT /touch /release /bury /kick /set_children_started, GET /peek."""

    def reserve(self, **fields):
        """Put and reserve one job; its id."""
        self.put(**fields)
        return self.ok("GET", "/job?tube=t")["id"]

    def test_delete_finishes_a_reserved_job(self):
        """DELETE /job of a reserved job answers {"action":"delete","job_id"}; nothing left."""
        job_id = self.reserve()
        self.assertEqual(self.ok("DELETE", f"/job?job_id={q(job_id)}"),
                         {"action": "delete", "job_id": job_id})
        self.assertEqual(self.tube_stats()["reserved"], 0)

    def test_delete_ready_job_with_tube(self):
        """DELETE /job of a peeked ready job (with tube) succeeds and removes it (FIX 50)."""
        self.put()
        job_id = self.ok("GET", "/peek?tube=t")["id"]
        self.assertEqual(self.ok("DELETE", f"/job?job_id={q(job_id)}&tube=t")["job_id"], job_id)
        self.assertEqual(self.tube_stats()["ready"], 0)

    def test_touch_restarts_ttl(self):
        """A touched job stays reserved past its original ttl."""
        job_id = self.reserve(ttl=10)
        self.clock.advance(8)
        self.assertEqual(self.ok("PUT", f"/touch?job_id={q(job_id)}"),
                         {"action": "touch", "job_id": job_id})
        self.clock.advance(8)
        self.assertEqual(self.tube_stats()["reserved"], 1)

    def test_release_counts_releases(self):
        """Each release makes the job ready again with releases + 1."""
        job_id = self.reserve()
        for n in range(1, 3):
            self.assertEqual(self.ok("PUT", f"/release?job_id={q(job_id)}"),
                             {"action": "release", "job_id": job_id})
            self.assertEqual(self.tube_stats()["ready"], 1)
            self.assertEqual(self.ok("GET", "/job?tube=t")["releases"], n)

    def test_release_with_delay(self):
        """release with delay=2 makes the job delayed, then ready after 2 s."""
        job_id = self.reserve()
        self.ok("PUT", f"/release?job_id={q(job_id)}&delay=2")
        self.assertEqual(self.tube_stats()["delayed"], 1)
        self.clock.advance(2)
        self.assertEqual(self.ok("GET", "/job?tube=t")["id"], job_id)

    def test_bury_then_peek_buried(self):
        """A buried job shows in stats and in peek with buried=true."""
        self.assertEqual(self.ok("GET", "/peek?tube=t&buried=true"), {})
        job_id = self.reserve()
        self.assertEqual(self.ok("PUT", f"/bury?job_id={q(job_id)}"),
                         {"action": "bury", "job_id": job_id})
        stats = self.tube_stats()
        self.assertEqual((stats["buried"], stats["ready"], stats["reserved"]), (1, 0, 0))
        self.assertEqual(self.ok("GET", "/peek?tube=t&buried=true")["id"], job_id)

    def test_kick_tube(self):
        """PUT /kick?tube= kicks up to count buried jobs and lists their ids (FIX 44)."""
        ids = [self.reserve(body=f"b{n}") for n in range(3)]
        for job_id in ids:
            self.ok("PUT", f"/bury?job_id={q(job_id)}")
        self.assertEqual(self.ok("PUT", "/kick?tube=t"), {"action": "kick", "job_ids": ids[:1]})
        self.assertEqual(self.ok("PUT", "/kick?tube=t&count=5"),
                         {"action": "kick", "job_ids": ids[1:]})
        self.assertEqual(self.tube_stats()["ready"], 3)
        self.assertEqual(self.ok("PUT", "/kick?tube=t"), {"action": "kick", "job_ids": []})

    def test_kick_job_id(self):
        """PUT /kick?job_id= kicks that job."""
        job_id = self.reserve()
        self.ok("PUT", f"/bury?job_id={q(job_id)}")
        self.assertEqual(self.ok("PUT", f"/kick?job_id={q(job_id)}&tube=t"),
                         {"action": "kick", "job_id": job_id})
        self.assertEqual(self.tube_stats()["ready"], 1)

    def test_peek_does_not_reserve(self):
        """peek answers the next ready job by priority and leaves it ready; offset skips."""
        self.put(body="later", priority=7)
        self.put(body="first", priority=2)
        self.assertEqual(self.ok("GET", "/peek?tube=t")["body"], "first")
        self.assertEqual(self.ok("GET", "/peek?tube=t&offset=1")["body"], "later")
        self.assertEqual(self.ok("GET", "/peek?tube=t&offset=2"), {})
        self.assertEqual(self.tube_stats()["ready"], 2)

    def test_peek_with_no_jobs(self):
        """peek on an empty tube answers {}."""
        self.assertEqual(self.ok("GET", "/peek?tube=nothing"), {})


# -- tubes, throttle, parents --------------------------------------------------------


class TubeTests(RestTestCase):
    """DELETE /tube, POST /throttle, POST /parent_job and the later-feature fields."""

    def test_clear_tube(self):
        """Clearing alt_tube drops its ready, reserved and buried jobs, not alt_tube2's."""
        for tube in ("alt_tube", "alt_tube2"):
            self.put(tube)
            self.put(tube)
            self.ok("GET", f"/job?tube={tube}")
        self.put("alt_tube")
        job_id = self.ok("GET", "/job?tube=alt_tube")["id"]
        self.ok("PUT", f"/bury?job_id={q(job_id)}")
        self.assertEqual(self.ok("DELETE", "/tube?tube=alt_tube"),
                         {"action": "clear", "cleared": 3})
        gone = self.tube_stats("alt_tube")
        self.assertEqual((gone["ready"], gone["reserved"], gone["buried"]), (0, 0, 0))
        kept = self.tube_stats("alt_tube2")
        self.assertEqual((kept["ready"], kept["reserved"]), (1, 1))

    def test_clear_one_cache_type(self):
        """cache_type=ready drops only ready jobs."""
        self.put()
        self.put()
        self.ok("GET", "/job?tube=t")
        self.assertEqual(self.ok("DELETE", "/tube?tube=t&cache_type=ready")["cleared"], 1)
        self.assertEqual(self.tube_stats()["reserved"], 1)

    def test_put_with_blank_parent_id_is_a_plain_put(self):
        """parent_id "" or null and shard_key "" or null mean "none", as in AllQueue."""
        self.put(parent_id="", shard_key=None)
        self.put(parent_id=None, shard_key="")
        self.assertEqual([(a, p["parent_id"], p["shard_key"]) for a, p in self.sent()],
                         [("put", None, None), ("put", None, None)])
        self.assertEqual(self.tube_stats()["ready"], 2)

    def test_put_with_non_string_parent_id(self):
        """parent_id must be a string shaped like a job id."""
        self.error(400, "bad_request", "POST", "/job", json={"tube": "t", "parent_id": 5})
        self.error(400, "bad_request", "POST", "/job", json={"tube": "t", "parent_id": "x"})
        self.assertEqual(self.sent(), [])


# -- the features of issue 4 ---------------------------------------------------------


class FeatureTestCase(RestTestCase):
    """Helpers for tests that want several servers."""

    def holder(self, job_id):
        """The server link whose id prefixes ``job_id``."""
        return next(s for s in self.links if job_id.startswith(s.server_id + ","))

    def all_tubes(self, tube):
        """``tube``'s REST stats entry on every server that has it."""
        return [t for server in self.ok("GET", "/stats") for t in server["stats"]
                if t["tube"] == tube]


class RunAtShardKeyTests(FeatureTestCase):
    """POST /job with run_at, shard_key and expired_limit."""

    def test_run_at_is_an_absolute_time(self):
        """run_at (unix seconds, as couchqueue's runAt) makes the job ready at that time."""
        self.clock.advance(1_000)
        self.put(run_at=1_005)
        self.assertEqual(self.tube_stats()["delayed"], 1)
        self.clock.advance(4.9)
        self.assertEqual(self.ok("GET", "/job?tube=t"), {})
        self.clock.advance(0.1)
        self.assertEqual(self.ok("GET", "/job?tube=t")["body"], "hello")

    def test_run_at_of_today(self):
        """run_at works with real unix times (about 1.7e9 seconds, beyond any delay)."""
        now = 1_763_900_000.25
        self.clock.advance(now)
        self.put(run_at=now + 2)
        self.assertEqual(self.ok("GET", "/job?tube=t"), {})
        self.clock.advance(2)
        self.assertEqual(self.ok("GET", "/job?tube=t")["body"], "hello")

    def test_run_at_in_the_past_is_ready_at_once(self):
        """A run_at that has passed means ready now; a numeric string is accepted."""
        self.clock.advance(1_000)
        self.put(run_at="10.5")
        self.assertEqual(self.ok("GET", "/job?tube=t")["body"], "hello")

    def test_bad_run_at(self):
        """run_at must be a number of seconds, not with a delay, not absurdly far."""
        for fields in [{"run_at": "soon"}, {"run_at": -1}, {"run_at": True},
                       {"run_at": 2**41}, {"run_at": 5, "delay": 3}]:
            self.error(400, "bad_request", "POST", "/job",
                       json={"tube": "t", "body": "x", **fields})
        self.assertEqual(self.sent(), [])
        self.put(run_at=5, delay=0)  # delay 0 is no delay

    def test_expired_limit_passes_through(self):
        """expired_limit reaches the server's job."""
        self.assertEqual(self.stored(self.put(expired_limit=1)).expired_limit, 1)

    def test_shard_key_in_a_fair_tube(self):
        """A fair (fq-) tube takes puts with a shard_key; without one the server's 400."""
        self.put("fq-t", "a", shard_key="customer-1")
        detail = self.error(400, "bad_request", "POST", "/job",
                            json={"tube": "fq-t", "body": "x"})["detail"]
        self.assertIn("shard_key", detail)
        self.error(400, "bad_request", "POST", "/job",
                   json={"tube": "fq-t", "body": "x", "shard_key": "bad key!"})
        self.error(400, "bad_request", "POST", "/job",
                   json={"tube": "fq-t", "body": "x", "shard_key": 5})
        self.assertEqual(self.tube_stats("fq-t")["ready"], 1)

    def test_fair_tube_serves_keys_in_turn(self):
        """50 jobs of key A, then 3 of key B: B's jobs come out among the first 6 gets."""
        for n in range(50):
            self.put("fq-t", f"a{n}", shard_key="A")
        for n in range(3):
            self.put("fq-t", f"b{n}", shard_key="B")
        bodies = [self.ok("GET", "/job?tube=fq-t&delete=true")["body"] for _ in range(6)]
        self.assertEqual(sorted(b for b in bodies if b.startswith("b")), ["b0", "b1", "b2"])


class WorkflowTests(FeatureTestCase):
    """POST /parent_job, PUT /set_children_started and puts with parent_id."""

    def parent(self, **fields):
        """Put a parent job; its id."""
        reply = self.ok("POST", "/parent_job", json={"tube": "flow", "body": "p", **fields})
        return reply["job_id"]

    def test_parent_job_reply_and_defaults(self):
        """POST /parent_job answers {"action": "set_parent", "job_id", "job"}; timeout
        defaults to 3600 and run_on_timeout to false."""
        reply = self.ok("POST", "/parent_job", json={"tube": "flow", "body": "p", "limit": 2})
        job_id = reply["job_id"]
        self.assertEqual(reply, {"action": "set_parent", "job_id": job_id, "job": {
            "job_id": job_id, "tube": "flow", "body": "p", "expireds": 0, "releases": 0}})
        action, params = self.sent()[-1]
        self.assertEqual(action, "put_parent")
        self.assertEqual(params["timeout"], 3600)
        self.assertIs(params["run_on_timeout"], False)
        stats = self.tube_stats("flow")
        self.assertEqual((stats["parents"], stats["ready"]), (1, 0))

    def test_parent_runs_after_its_children(self):
        """A parent with limit 2 becomes gettable once both children are done."""
        parent = self.parent(limit=2, timeout=60, run_on_timeout="false", priority=1)
        children = [self.put("work", f"c{n}", parent_id=parent) for n in range(2)]
        for _ in children:
            job = self.ok("GET", "/job?tube=work")
            self.assertEqual(self.ok("GET", "/job?tube=flow"), {})
            self.ok("DELETE", f"/job?job_id={q(job['id'])}")
        self.assertEqual(self.ok("GET", "/job?tube=flow")["id"], parent)

    def test_set_children_started(self):
        """Without a limit the parent waits for set_children_started, then for the rest."""
        parent = self.parent()
        self.put("work", "c1", parent_id=parent)
        job = self.ok("GET", "/job?tube=work")
        self.ok("DELETE", f"/job?job_id={q(job['id'])}")
        self.put("work", "c2", parent_id=parent)
        self.assertEqual(self.ok("PUT", f"/set_children_started?job_id={q(parent)}"),
                         {"action": "set_children_started", "job_id": parent})
        self.assertEqual(self.ok("GET", "/job?tube=flow"), {})
        job = self.ok("GET", "/job?tube=work")
        self.ok("DELETE", f"/job?job_id={q(job['id'])}")
        self.assertEqual(self.ok("GET", "/job?tube=flow")["id"], parent)

    def test_set_children_started_errors(self):
        """Unknown job 404, not a waiting parent 409, malformed id 400."""
        server_id = self.link().server_id
        self.error(404, "not_found", "PUT", f"/set_children_started?job_id={server_id},999")
        self.error(409, "wrong_state", "PUT", f"/set_children_started?job_id={q(self.put())}")
        self.error(400, "bad_request", "PUT", "/set_children_started?job_id=nope")

    def test_child_of_a_missing_parent_is_404_and_stores_nothing(self):
        """A child naming a missing parent answers 404 and nothing is enqueued (FIX 9)."""
        server_id = self.link().server_id
        self.error(404, "not_found", "POST", "/job",
                   json={"tube": "work", "body": "c", "parent_id": f"{server_id},999"})
        self.error(404, "not_found", "POST", "/job",
                   json={"tube": "work", "body": "c", "parent_id": "elsewhere,1"})
        self.assertEqual(len(self.link().queue), 0)

    def test_child_of_a_started_parent_is_409(self):
        """A child of a parent that no longer waits answers 409."""
        parent = self.parent(limit=0)
        self.error(409, "wrong_state", "POST", "/job",
                   json={"tube": "work", "body": "c", "parent_id": parent})

    def test_children_and_nested_parents_go_to_the_parents_server(self):
        """On three servers, children and a nested parent land on the parent's server."""
        self.federate(3)
        parents = [self.parent(limit=3) for _ in range(3)]
        self.assertEqual(len({self.holder(p).address for p in parents}), 3)  # round robin
        for parent in parents:
            home = self.holder(parent)
            for n in range(2):
                self.assertIs(self.holder(self.put("work", f"c{n}", parent_id=parent)), home)
            nested = self.parent(parent_id=parent, limit=0)
            self.assertIs(self.holder(nested), home)

    def test_child_of_a_parent_on_a_down_server_is_503(self):
        """The parent's server is down: 503, and no other server takes the child."""
        servers = self.federate(2)
        parent = self.parent(limit=1)
        self.holder(parent).up = False
        self.error(503, "unavailable", "POST", "/job",
                   json={"tube": "work", "body": "c", "parent_id": parent})
        self.assertEqual(sum(len(s.queue) for s in servers), 1)

    def test_bad_parent_jobs(self):
        """Bad parent bodies answer 400; noop and a caller-chosen id are not supported."""
        good = {"tube": "t", "body": "p", "ttl": 10, "delay": 0, "priority": 5, "limit": 2,
                "timeout": 3600, "run_on_timeout": True, "noop": "false", "shard_key": None,
                "id": None}
        self.parent(**good)
        for fields in [{"limit": "many"}, {"limit": -1}, {"run_on_timeout": "maybe"},
                       {"body": 1}, {"timeout": 0}, {"timeout": "x"}, {"delay": 5},
                       {"run_at": 5}, {"parent_id": "x"}, {"colour": "red"}]:
            self.error(400, "bad_request", "POST", "/parent_job", json={**good, **fields})
        self.error(400, "not_supported", "POST", "/parent_job", json={**good, "noop": True})
        self.error(400, "not_supported", "POST", "/parent_job", json={**good, "id": "7"})
        self.error(404, "not_found", "POST", "/parent_job",
                   json={**good, "parent_id": "elsewhere,1"})


class ThrottleTests(FeatureTestCase):
    """POST /throttle."""

    def test_throttle_reply_and_stats(self):
        """The reply keeps AllQueue's "value": "true"; stats show throttle_size."""
        self.put()
        self.assertEqual(self.ok("POST", "/throttle", json={"tube": "t", "tps": 5}), {
            "action": "throttle", "value": "true", "tube": "t", "tps": 5, "servers": 1})
        self.assertEqual(self.tube_stats()["throttle_size"], 5)

    def test_throttle_is_split_over_servers(self):
        """tps 1 over 3 servers: each gets 1/3 (AllQueue truncated to 0, removing it)."""
        self.federate(3)
        reply = self.ok("POST", "/throttle", json={"tube": "t", "tps": "1"})
        self.assertEqual((reply["tps"], reply["servers"]), (1, 3))
        sizes = [t["throttle_size"] for t in self.all_tubes("t")]
        self.assertEqual(len(sizes), 3)
        self.assertAlmostEqual(sum(sizes), 1)
        for size in sizes:
            self.assertAlmostEqual(size, 1 / 3)

    def test_throttle_caps_gets(self):
        """tps 2 with 20 ready jobs: one second of tight polling yields about 2."""
        for n in range(20):
            self.put(body=str(n))
        self.ok("POST", "/throttle", json={"tube": "t", "tps": 2})
        got = 0
        for _ in range(10):
            got += len(self.ok("GET", "/multiple_job?tube=t&count=20")["jobs"])
            self.clock.advance(0.1)
        self.assertLessEqual(got, 2 + 2)
        self.assertGreaterEqual(got, 2)

    def test_throttle_removed_by_null_or_zero(self):
        """tps null, 0 or negative removes the throttle (reply tps null)."""
        for tps in (None, 0, -3):
            self.ok("POST", "/throttle", json={"tube": "t", "tps": 4})
            reply = self.ok("POST", "/throttle", json={"tube": "t", "tps": tps})
            self.assertIsNone(reply["tps"])
            self.assertNotIn("throttle_size", self.tube_stats())

    def test_bad_throttle(self):
        """A missing or non-numeric tps, a bad tube or an unknown field answer 400."""
        for body in [{"tube": "t"}, {"tube": "t", "tps": "x"}, {"tube": "t", "tps": True},
                     {"tube": "bad tube", "tps": 1}, {"tps": 1},
                     {"tube": "t", "tps": 1, "burst": 2}]:
            self.error(400, "bad_request", "POST", "/throttle", json=body)
        self.error(400, "bad_request", "POST", "/throttle", data=b'{"tube": "t", "tps": NaN}')
        self.assertEqual(self.sent(), [])

    def test_throttle_with_no_server(self):
        """No server reachable: 503."""
        self.set_up(False)
        self.error(503, "unavailable", "POST", "/throttle", json={"tube": "t", "tps": 1})


class TubeSettingTests(FeatureTestCase):
    """PUT /pause, /unpause, /drain?tube=, /undrain?tube=, /fair, /max_size."""

    def test_pause_and_unpause_every_server(self):
        """pause reaches every server (FIX 13): no job is handed out; unpause resumes."""
        self.federate(3)
        for n in range(3):
            self.put(body=str(n))
        self.assertEqual(self.ok("PUT", "/pause?tube=t"),
                         {"action": "pause", "tube": "t", "servers": 3})
        self.assertEqual([t["paused"] for t in self.all_tubes("t")], [True] * 3)
        self.assertEqual(self.ok("GET", "/multiple_job?tube=t&count=10"), {"jobs": []})
        self.put(body="while paused")  # puts are still taken
        self.assertEqual(self.ok("PUT", "/unpause?tube_name=t"),
                         {"action": "unpause", "tube": "t", "servers": 3})
        self.assertEqual(len(self.ok("GET", "/multiple_job?tube=t&count=10")["jobs"]), 4)

    def test_tube_drain(self):
        """A drained tube refuses puts (503 draining) and still hands out its jobs."""
        job_id = self.put()
        self.assertEqual(self.ok("PUT", "/drain?tube=t"),
                         {"action": "drain", "tube": "t", "servers": 1})
        self.assertTrue(self.tube_stats()["draining"])
        self.error(503, "draining", "POST", "/job", json={"tube": "t", "body": "x"})
        self.put("other")  # other tubes are not affected
        self.assertEqual(self.ok("GET", "/job?tube=t")["id"], job_id)
        self.assertEqual(self.ok("PUT", "/undrain?tube=t"),
                         {"action": "undrain", "tube": "t", "servers": 1})
        self.put()

    def test_drain_with_both_tube_and_server(self):
        """PUT /drain takes tube or server_id, not both."""
        self.error(400, "bad_request", "PUT", f"/drain?tube=t&server_id={ADDRESS}")
        self.error(400, "bad_request", "PUT", "/drain?tube=bad%20tube")

    def test_fair_policy(self):
        """PUT /fair sets the policy everywhere; a fair tube needs shard_key; off undoes it."""
        self.federate(2)
        self.assertEqual(self.ok("PUT", "/fair?tube=orders&policy=weighted"),
                         {"action": "fair", "tube": "orders", "policy": "weighted",
                          "servers": 2})
        self.assertEqual([t["fair"] for t in self.all_tubes("orders")], ["weighted"] * 2)
        self.error(400, "bad_request", "POST", "/job", json={"tube": "orders", "body": "x"})
        self.put("orders", shard_key="k")
        self.ok("PUT", "/fair?tube=fq-x&policy=off")
        self.put("fq-x")
        self.ok("PUT", "/fair?tube=fq-x&policy=default")
        self.assertEqual([t["fair"] for t in self.all_tubes("fq-x")], ["round_robin"] * 2)

    def test_bad_fair(self):
        """A missing or unknown policy, or no tube, answers 400."""
        for path in ["/fair?tube=t", "/fair?tube=t&policy=lottery", "/fair?policy=off"]:
            self.error(400, "bad_request", "PUT", path)
        self.assertEqual(self.sent(), [])

    def test_bounded_tube(self):
        """max_size 2 on one server: two puts, then 507 full with a JSON body."""
        self.assertEqual(self.ok("PUT", "/max_size?tube=t&max_size=2"),
                         {"action": "max_size", "tube": "t", "max_size": 2, "servers": 1})
        self.assertEqual(self.tube_stats()["max_size"], 2)
        self.put()
        self.put()
        self.error(507, "full", "POST", "/job", json={"tube": "t", "body": "x"})
        self.assertEqual(self.tube_stats()["ready"], 2)
        self.assertEqual(self.ok("PUT", "/max_size?tube=t&max_size=")["max_size"], None)
        self.put()

    def test_bounded_tube_is_per_server(self):
        """max_size 2 on three servers: six puts fit (a full server is skipped), the
        seventh answers 507."""
        servers = self.federate(3)
        self.ok("PUT", "/max_size?tube=t&max_size=2")
        self.ok("PUT", "/max_size?tube=t")  # absent: unbounded...
        self.ok("PUT", "/max_size?tube=t&max_size=2")  # ...and bounded again
        servers[0].call("put", tube="t", body="filler")  # put by another client
        for _ in range(5):
            self.put()
        self.assertEqual([len(s.queue) for s in servers], [2, 2, 2])
        self.error(507, "full", "POST", "/job", json={"tube": "t", "body": "x"})

    def test_bad_max_size(self):
        """max_size must be an integer from 1."""
        for value in ["0", "-1", "x", "1.5", str(2**41)]:
            self.error(400, "bad_request", "PUT", f"/max_size?tube=t&max_size={value}")
        self.error(400, "bad_request", "PUT", "/max_size?max_size=3")

    def test_settings_with_no_server(self):
        """No server reachable: 503 for every tube setting."""
        self.set_up(False)
        for path in ["/pause?tube=t", "/unpause?tube=t", "/drain?tube=t", "/undrain?tube=t",
                     "/fair?tube=t&policy=off", "/max_size?tube=t&max_size=1"]:
            self.error(503, "unavailable", "PUT", path)


class ServerDrainTests(FeatureTestCase):
    """PUT /drain?server_id= and /undrain?server_id= over several servers."""

    def test_puts_avoid_a_drained_server(self):
        """After draining one of three servers every put goes to the other two; its jobs
        can still be got; undrain brings it back."""
        servers = self.federate(3)
        held = [self.put(body=str(n)) for n in range(3)]
        drained = self.holder(held[0])
        reply = self.ok("PUT", f"/drain?server_id={drained.server_id}")
        self.assertEqual(reply["notified"], True)
        self.assertTrue(drained.queue.draining)
        for _ in range(6):
            self.assertIsNot(self.holder(self.put()), drained)
        got = [self.ok("GET", "/job?tube=t&delete=true")["id"] for _ in range(9)]
        self.assertIn(held[0], got)
        self.assertEqual(self.ok("PUT", f"/undrain?server_id={drained.address}"), {
            "action": "undrain", "server_id": drained.address, "draining": False,
            "notified": True})
        self.assertEqual(len({self.holder(self.put()).address for _ in range(3)}), 3)
        self.assertEqual(len(servers), 3)

    def test_every_server_draining_is_503(self):
        """When every server is draining a put answers 503 draining with a JSON body."""
        servers = self.federate(2)
        servers[0].call("drain")  # drained by another client
        self.ok("PUT", f"/drain?server_id={servers[1].address}")
        self.error(503, "draining", "POST", "/job", json={"tube": "t", "body": "x"})
        self.error(503, "draining", "POST", "/parent_job", json={"tube": "t", "body": "x"})

    def test_draining_a_down_server(self):
        """A down server is drained here at once and is told later (notified false)."""
        servers = self.federate(2)
        servers[0].up = False
        reply = self.ok("PUT", f"/drain?server_id={servers[0].address}")
        self.assertEqual((reply["draining"], reply["notified"]), (True, False))
        self.assertTrue(servers[0].draining)


# -- stats and admin ---------------------------------------------------------------


class AdminTests(RestTestCase):
    """GET /stats, GET /health, PUT /update_servers, PUT /drain, POST /add_server."""

    def test_stats_shape(self):
        """/stats lists servers as "<id>,<host>:<port>" with int counters and 2-decimal floats."""
        self.put()
        self.ok("GET", "/job?tube=t")
        [server] = self.ok("GET", "/stats")
        self.assertEqual(server["server_name"], f"{self.link().server_id},{ADDRESS}")
        self.assertEqual(set(server), {"server_name", "action_count", "job_put", "job_get",
                                       "draining", "stats"})
        self.assertGreater(server["action_count"], 1)
        self.assertEqual((server["job_put"], server["job_get"]), (1, 1))
        self.assertIs(server["draining"], False)
        self.assertEqual(server["stats"], [{"tube": "t", "ready": 0, "reserved": 1,
                                            "delayed": 0, "buried": 0, "parents": 0,
                                            "avg": 0.0, "tps": 0.0, "paused": False,
                                            "draining": False, "fair": None,
                                            "max_size": None}])

    def test_stats_rounds_figures(self):
        """avg and tps are rounded to 2 decimals."""
        for _ in range(3):
            self.put()
        for seconds in (1, 1, 2):
            job_id = self.ok("GET", "/job?tube=t")["id"]
            self.clock.advance(seconds)
            self.ok("DELETE", f"/job?job_id={q(job_id)}")
        stats = self.tube_stats()
        self.assertEqual(stats["avg"], round(stats["avg"], 2))
        self.assertGreater(stats["avg"], 0)

    def test_stats_of_two_servers(self):
        """/stats has one entry per reachable server."""
        self.ok("POST", "/add_server", json={"server_url": "127.0.0.1:7712"})
        names = [s["server_name"] for s in self.ok("GET", "/stats")]
        self.assertEqual([n.split(",")[1] for n in names], [ADDRESS, "127.0.0.1:7712"])

    def test_health_up(self):
        """/health answers 200 with the federation's report when a server is up, and
        the pid of the process that answered."""
        self.assertEqual(self.ok("GET", "/health"), {
            "servers": [{"address": ADDRESS, "server_id": self.link().server_id,
                         "up": True, "draining": False}],
            "up": 1, "total": 1, "pid": os.getpid()})

    def test_health_down(self):
        """/health answers 503 with the same body when no server is up."""
        self.set_up(False)
        reply = self.call("GET", "/health")
        self.assertEqual(reply.code, 503)
        self.assertEqual(reply.content_type, [b"application/json"])
        self.assertEqual((reply.json["up"], reply.json["servers"][0]["up"]), (0, False))

    def test_update_servers(self):
        """PUT /update_servers replaces the set of servers and answers {}."""
        self.assertEqual(
            self.ok("PUT", "/update_servers?server_urls=127.0.0.1:7712,%20127.0.0.1:7713"), {})
        self.assertEqual([s["address"] for s in self.federation.health()["servers"]],
                         ["127.0.0.1:7712", "127.0.0.1:7713"])

    def test_update_servers_rejects_bad_lists(self):
        """Missing, empty or malformed server_urls answer 400 and change nothing."""
        self.error(400, "bad_request", "PUT", "/update_servers")
        self.error(400, "bad_request", "PUT", "/update_servers?server_urls=")
        self.error(400, "bad_request", "PUT", "/update_servers?server_urls=nohost")
        self.error(400, "bad_request", "PUT", "/update_servers?server_urls=h:1,h:99999")
        self.assertEqual([link.address for link in self.federation.links()], [ADDRESS])

    def test_drain_by_id_and_address(self):
        """PUT /drain accepts a server id or host:port; the server itself drains too."""
        server_id = self.link().server_id
        self.assertEqual(self.ok("PUT", f"/drain?server_id={server_id}"),
                         {"action": "drain", "server_id": server_id, "draining": True,
                          "notified": True})
        self.assertEqual(self.ok("PUT", f"/drain?server_id={ADDRESS}")["server_id"], ADDRESS)
        self.assertTrue(self.link().draining)
        self.assertTrue(self.link().queue.draining)
        self.assertTrue(self.ok("GET", "/stats")[0]["draining"])

    def test_drain_unknown_server(self):
        """Draining an unknown server answers 404; no server_id (nor tube) answers 400."""
        self.error(404, "not_found", "PUT", "/drain?server_id=nope")
        self.error(404, "not_found", "PUT", "/undrain?server_id=nope")
        self.error(400, "bad_request", "PUT", "/drain")
        self.error(400, "bad_request", "PUT", "/drain?server_id=")
        self.error(400, "bad_request", "PUT", "/undrain")

    def test_add_server_by_body_and_query(self):
        """POST /add_server takes {"server_url"} or ?server_url= and answers {"server_url"}."""
        self.assertEqual(self.ok("POST", "/add_server", json={"server_url": "10.0.0.1:7711"}),
                         {"server_url": "10.0.0.1:7711"})
        self.assertEqual(self.ok("POST", "/add_server?server_url=10.0.0.2:7711"),
                         {"server_url": "10.0.0.2:7711"})
        self.assertEqual(len(self.federation.links()), 3)

    def test_add_server_rejects_bad_input(self):
        """A malformed address, a missing one or a non-string one answers 400."""
        self.error(400, "bad_request", "POST", "/add_server", json={"server_url": "nope"})
        self.error(400, "bad_request", "POST", "/add_server")
        self.error(400, "bad_request", "POST", "/add_server", json={"server_url": 7711})
        self.error(400, "bad_request", "POST", "/add_server", json={"url": "h:1"})


# -- bad input ---------------------------------------------------------------------


class BadInputTests(RestTestCase):
    """Every kind of bad input is a JSON 400 (or 413), and the daemon keeps serving."""

    def test_missing_tube(self):
        """Routes that need a tube answer 400 without one (AllQueue: empty 200)."""
        for method, path in [("GET", "/job"), ("GET", "/multiple_job?count=2"),
                             ("GET", "/peek"), ("DELETE", "/tube"), ("PUT", "/kick"),
                             ("PUT", "/kick?count=2")]:
            self.error(400, "bad_request", method, path)
        self.error(400, "bad_request", "POST", "/job", json={"body": "x"})

    def test_bad_tube(self):
        """Tube names outside the allowed alphabet or length answer 400."""
        for tube in ["bad%20tube", "-dash", "x" * 201, "", "%22quote"]:
            self.error(400, "bad_request", "GET", f"/job?tube={tube}")
            self.error(400, "bad_request", "GET", f"/peek?tube_name={tube}")
        self.error(400, "bad_request", "POST", "/job", json={"tube": "a b", "body": "x"})
        self.error(400, "bad_request", "POST", "/job", json={"tube": 5, "body": "x"})
        self.error(400, "bad_request", "DELETE", "/job?job_id=abc,1&tube=a%20b")

    def test_bad_job_id(self):
        """Missing or malformed job ids answer 400 on every job route."""
        for path in ["/touch", "/release", "/bury", "/set_children_started"]:
            self.error(400, "bad_request", "PUT", path)
            for bad in ["nope", "abc,", ",1", "abc,1x", "a%2Fb,1", "abc,1,2"]:
                self.error(400, "bad_request", "PUT", f"{path}?job_id={bad}")
        self.error(400, "bad_request", "DELETE", "/job")
        self.error(400, "bad_request", "DELETE", "/job?job_id=abc")
        self.error(400, "bad_request", "PUT", "/kick?job_id=abc")

    def test_bad_boolean(self):
        """delete and buried accept only true/false/1/0/yes/no."""
        for value in ["maybe", "", "2", "truee", "on"]:
            self.error(400, "bad_request", "GET", f"/job?tube=t&delete={value}")
            self.error(400, "bad_request", "GET", f"/peek?tube=t&buried={value}")
        self.error(400, "bad_request", "GET", "/multiple_job?tube=t&delete=nope")

    def test_bad_count(self):
        """count must be an integer from 1 to 1000."""
        for value in ["0", "1001", "-1", "abc", "1.5", ""]:
            self.error(400, "bad_request", "GET", f"/multiple_job?tube=t&count={value}")
        self.error(400, "bad_request", "PUT", "/kick?tube=t&count=0")
        self.ok("GET", "/multiple_job?tube=t&count=1000")

    def test_bad_wait_offset_delay_cache_type(self):
        """wait (0..60), offset, release delay and cache_type are checked."""
        for value in ["-1", str(int(MAX_WAIT) + 1), "soon", "nan", "1e3"]:
            self.error(400, "bad_request", "GET", f"/job?tube=t&wait={value}")
        self.error(400, "bad_request", "GET", "/peek?tube=t&offset=-1")
        self.error(400, "bad_request", "GET", "/peek?tube=t&offset=x")
        self.error(400, "bad_request", "PUT", "/release?job_id=abc,1&delay=-2")
        self.error(400, "bad_request", "DELETE", "/tube?tube=t&cache_type=everything")
        self.error(400, "bad_request", "DELETE", "/tube?tube=t&cache_type=")

    def test_repeated_parameter(self):
        """A parameter given twice answers 400 rather than picking one."""
        self.error(400, "bad_request", "GET", "/job?tube=a&tube=b")

    def test_invalid_json(self):
        """A body that is not JSON, or not an object, answers 400."""
        for data in [b"", b"{", b"not json", b"[1, 2]", b'"text"', b"null",
                     b'{"tube": NaN}', b"\xff\xfe", b"[" * 100_000]:
            self.error(400, "bad_request", "POST", "/job", data=data[:MAX_BODY])

    def test_deeply_nested_json(self):
        """JSON nested deeper than the parser allows answers 400, not 500."""
        api = RestApi(self.federation, self.clock, max_body=1_000_000)
        self.stub = StubTreq(api.resource())
        self.error(400, "bad_request", "POST", "/job", data=b"[" * 200_000)

    def test_non_string_body(self):
        """A job body that is not a string answers 400 (AllQueue stored Crystal hash text)."""
        for body in [{"a": 1}, 5, ["x"], True]:
            self.error(400, "bad_request", "POST", "/job", json={"tube": "t", "body": body})

    def test_lone_surrogate_in_body(self):
        """A body with a lone surrogate escape answers 400 (it has no UTF-8 form)."""
        self.error(400, "bad_request", "POST", "/job", data=b'{"tube": "t", "body": "\\ud800"}')
        self.assertEqual(self.sent(), [])

    def test_bad_numbers_in_put(self):
        """ttl, delay, priority and expired_limit must be in range and of the right type."""
        bad = [{"ttl": 0}, {"ttl": "1.5x"}, {"ttl": True}, {"ttl": -1}, {"delay": -1},
               {"delay": "soon"}, {"priority": 1.5}, {"priority": "high"}, {"priority": -1},
               {"priority": 2**32}, {"expired_limit": 0}, {"ttl": 1e400}, {"ttl": "9" * 3000}]
        for fields in bad:
            self.error(400, "bad_request", "POST", "/job",
                       json={"tube": "t", "body": "x", **fields})

    def test_unknown_field(self):
        """A NewJob field this API does not know answers 400 (catches typos)."""
        self.error(400, "bad_request", "POST", "/job",
                   json={"tube": "t", "body": "x", "priorty": 1})

    def test_oversized_request_body(self):
        """A body over max_body answers 413 before it is parsed."""
        data = json.dumps({"tube": "t", "body": "x" * MAX_BODY}).encode()
        self.error(413, "too_large", "POST", "/job", data=data)
        self.error(413, "too_large", "POST", "/throttle", data=data)
        self.error(413, "too_large", "POST", "/parent_job", data=data)
        self.error(413, "too_large", "POST", "/add_server", data=data)
        self.assertEqual(self.sent(), [])

    def test_oversized_job(self):
        """A job body over the servers' max_job_size answers 413 from the federation."""
        self.error(413, "too_large", "POST", "/job",
                   json={"tube": "t", "body": "x" * (MAX_JOB_SIZE + 1)})

    def test_non_utf8_url(self):
        """A path or query that is not UTF-8 answers a JSON 400."""
        self.error(400, "bad_request", "GET", "/%FF")
        self.error(400, "bad_request", "GET", "/job?tube=%FF")

    def test_daemon_keeps_serving_after_bad_requests(self):
        """After a burst of bad requests, a put and a get still work."""
        for method, path, kwargs in [
            ("POST", "/job", {"data": b"{"}),
            ("POST", "/job", {"data": b"x" * (MAX_BODY + 1)}),
            ("GET", "/job?tube=-", {}),
            ("PUT", "/touch?job_id=%00", {}),
            ("GET", "/nope", {}),
            ("PATCH", "/job", {}),
            ("GET", "/%FF", {}),
            ("PUT", "/touch?job_id=abc,1", {}),
        ]:
            self.assertGreaterEqual(self.call(method, path, **kwargs).code, 400)
        job_id = self.put()
        self.assertEqual(self.ok("GET", "/job?tube=t")["id"], job_id)


# -- routing, state and federation errors ------------------------------------------------


class ErrorStatusTests(RestTestCase):
    """404, 405, 409, 503, 504 and 500, all as JSON."""

    def test_unknown_job(self):
        """A well-formed id of no live job answers 404 (AllQueue: success)."""
        server_id = self.link().server_id
        for path in ["/touch", "/release", "/bury", "/kick"]:
            self.error(404, "not_found", "PUT", f"{path}?job_id={server_id},999")
        self.error(404, "not_found", "DELETE", f"/job?job_id={server_id},999")

    def test_job_of_unknown_server(self):
        """A job id naming no known server answers 404."""
        self.error(404, "not_found", "PUT", "/touch?job_id=unknown,1")

    def test_unknown_route(self):
        """An unknown path answers a JSON 404 (AllQueue: empty 200)."""
        self.error(404, "not_found", "GET", "/nope")
        self.error(404, "not_found", "POST", "/job/extra")
        self.error(404, "not_found", "GET", "/")

    def test_wrong_method(self):
        """A known path with another method answers a JSON 405 with an Allow header."""
        reply = self.call("PATCH", "/job")
        self.assert_error(reply, 405, "method_not_allowed")
        self.assertEqual(reply.headers.getRawHeaders(b"allow"), [b"DELETE, GET, POST"])
        self.error(405, "method_not_allowed", "GET", "/touch?job_id=abc,1")
        self.error(405, "method_not_allowed", "POST", "/stats")

    def test_head_is_not_served(self):
        """HEAD /job is refused: it would reserve a job and drop its body."""
        self.put()
        reply = self.call("HEAD", "/job?tube=t")
        self.assertEqual(reply.code, 405)
        self.assertEqual(self.tube_stats()["ready"], 1)

    def test_wrong_state(self):
        """Touching, burying or releasing a job that is not reserved answers 409."""
        job_id = self.put()
        for path in ["/touch", "/bury", "/release"]:
            self.error(409, "wrong_state", "PUT", f"{path}?job_id={q(job_id)}")
        self.error(409, "wrong_state", "PUT", f"/kick?job_id={q(job_id)}")

    def test_no_server_reachable(self):
        """With no server reachable, federated routes answer 503."""
        self.set_up(False)
        self.error(503, "unavailable", "POST", "/job", json={"tube": "t", "body": "x"})
        self.error(503, "unavailable", "GET", "/job?tube=t")
        self.error(503, "unavailable", "GET", "/job?tube=t&wait=5")
        self.error(503, "unavailable", "GET", "/multiple_job?tube=t&count=2")
        self.error(503, "unavailable", "GET", "/peek?tube=t")
        self.error(503, "unavailable", "DELETE", "/tube?tube=t")
        self.error(503, "unavailable", "GET", "/stats")
        self.set_up(True)
        self.put()

    @pytest.mark.xfail(strict=True, reason=(
        "Federation.kick_tube skips every server that is not up and answers [] when "
        "none is: a kick with no server reachable looks like 'nothing was buried'"))
    def test_kick_with_no_server_reachable(self):
        """With no server reachable, PUT /kick?tube= answers 503 too (part of
        test_no_server_reachable against the fake federation)."""
        self.set_up(False)
        self.error(503, "unavailable", "PUT", "/kick?tube=t")

    def test_job_server_down(self):
        """An action on a job whose server is down answers 503."""
        job_id = self.put()
        self.link().up = False
        self.error(503, "unavailable", "PUT", f"/touch?job_id={q(job_id)}")

    def test_federation_timeout(self):
        """A Timeout from the federation answers 504 (a job action whose server did
        not answer in time is not retried: its outcome is unknown)."""
        self.put()
        job_id = self.ok("GET", "/job?tube=t")["id"]
        self.link().fail_next(Timeout("no reply from 127.0.0.1:7711 in 10 s"))
        self.error(504, "timeout", "PUT", f"/touch?job_id={q(job_id)}")
        self.assertEqual(self.sent()[-1], ("touch", {"job_id": job_id}))

    def test_get_from_a_server_that_timed_out_is_retried(self):
        """A get whose server did not answer in time is retried (after a backoff on
        the clock) rather than answered 504: a get may always be tried again."""
        job_id = self.put()
        self.link().fail_next(Timeout("no reply from 127.0.0.1:7711 in 10 s"))
        self.assertEqual(self.ok("GET", "/job?tube=t")["id"], job_id)
        self.assertEqual([action for action, _ in self.sent()], ["put", "get", "get"])
        self.assertGreater(self.clock.seconds(), 0)

    def test_hung_federation_call_times_out(self):
        """A federation call that never answers ends as 504 after request_timeout."""
        self.hang()
        d = self.start("GET", "/stats")
        self.stub.flush()
        self.clock.advance(REQUEST_TIMEOUT - 0.01)
        self.stub.flush()
        self.assertNoResult(d)
        self.clock.advance(0.01)
        self.assert_error(self.result_of_with_flush(d), 504, "timeout")

    def test_hung_long_poll_gets_its_wait_on_top(self):
        """A hung long poll is given request_timeout plus its wait before the 504."""
        self.hang()
        d = self.start("GET", "/job?tube=t&wait=20")
        self.stub.flush()
        self.clock.advance(REQUEST_TIMEOUT + 19)
        self.stub.flush()
        self.assertNoResult(d)
        self.clock.advance(1)
        self.assert_error(self.result_of_with_flush(d), 504, "timeout")

    def test_unexpected_error_is_a_logged_json_500(self):
        """A bug answers a JSON 500 without details and logs the failure."""
        self.link().fail_next(ZeroDivisionError("secret internals"))
        reply = self.call("GET", "/stats")
        self.assert_error(reply, 500, "internal_error")
        self.assertNotIn("secret", reply.json["detail"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        logged = [e.get("log_failure") or e.get("failure") for e in self.logged]
        self.assertTrue(logged and all(f.check(ZeroDivisionError) for f in logged))
        self.logged.clear()
        self.ok("GET", "/stats")


# -- batches -----------------------------------------------------------------------


class BatchTests(RestTestCase):
    """POST /multiple_job (batch put) and DELETE /multiple_job (batch delete)."""

    def put_batch(self, jobs, **defaults):
        return self.call("POST", "/multiple_job", json={"jobs": jobs, **defaults})

    def allow_big_bodies(self):
        """Serve with a body limit that lets a batch of over MAX_COUNT entries in."""
        api = RestApi(self.federation, self.clock, max_body=1_000_000, request_timeout=REQUEST_TIMEOUT)
        self.stub = StubTreq(api.resource())

    def test_batch_put_answers_every_id_in_order(self):
        reply = self.put_batch([{"tube": "t", "body": f"job {n}"} for n in range(5)])
        self.assertEqual(reply.code, 200, reply.json)
        self.assertEqual(reply.json["action"], "put")
        job_ids = reply.json["job_ids"]
        self.assertEqual(len(set(job_ids)), 5)
        got = self.ok("GET", "/multiple_job?tube=t&count=10")["jobs"]
        self.assertEqual([job["id"] for job in got], job_ids)
        self.assertEqual([job["body"] for job in got], [f"job {n}" for n in range(5)])

    def test_top_level_fields_are_defaults_a_job_may_override(self):
        reply = self.put_batch([{"body": "a"}, {"body": "b", "tube": "other", "priority": 1}],
                               tube="t", priority=7)
        first, second = reply.json["job_ids"]
        self.assertEqual(self.stored(first).tube, "t")
        self.assertEqual(self.stored(first).priority, 7)
        self.assertEqual(self.stored(second).tube, "other")
        self.assertEqual(self.stored(second).priority, 1)

    def test_one_bad_job_rejects_the_batch_before_anything_is_stored(self):
        reply = self.put_batch([{"tube": "t", "body": "fine"}, {"tube": "t", "ttl": -1}])
        self.assert_error(reply, 400, "bad_request")
        self.assertIn("jobs[1]", reply.json["detail"])
        self.assertEqual(self.sent(), [])

    def test_malformed_batch_puts(self):
        self.allow_big_bodies()
        for body, words in [
            ({}, "jobs must be a list"),
            ({"jobs": []}, "jobs must be a list"),
            ({"jobs": "x"}, "jobs must be a list"),
            ({"jobs": [{"tube": "t"}] * (MAX_COUNT + 1)}, "jobs must be a list"),
            ({"jobs": ["x"]}, "jobs[0] must be a JSON object"),
            ({"jobs": [{"tube": "t"}], "body": "shared"}, "unknown field 'body'"),
            ({"jobs": [{"tube": "t"}], "colour": 1}, "unknown field 'colour'"),
            ({"jobs": [{"tube": "t", "colour": 1}]}, "jobs[0]: unknown field"),
            ({"jobs": [{"body": "no tube"}]}, "jobs[0]: "),
        ]:
            reply = self.call("POST", "/multiple_job", json=body)
            self.assert_error(reply, 400, "bad_request")
            self.assertIn(words, reply.json["detail"])
        self.error(400, "bad_request", "POST", "/multiple_job", data=b"[1, 2]")
        self.error(400, "bad_request", "POST", "/multiple_job", data=b"{nope")
        self.error(413, "too_large", "POST", "/multiple_job",
                   json={"jobs": [{"tube": "t", "body": "x" * 1_000_000}]})
        self.assertEqual(self.sent(), [])

    def test_a_job_the_server_refuses_fails_alone(self):
        """A body over the servers' job size limit fails that job (413), not the batch."""
        reply = self.put_batch([{"tube": "t", "body": "ok"},
                                {"tube": "t", "body": "x" * (MAX_JOB_SIZE + 1)}])
        self.assertEqual(reply.code, 413, reply.json)
        self.assertEqual(reply.json["error"], "too_large")
        stored, refused = reply.json["job_ids"]
        self.assertIsNone(refused)
        self.assertEqual(self.stored(stored).body, "ok")

    def test_partly_failed_put_names_what_was_stored(self):
        """A failed job gives the answer its status; the stored ones keep their ids."""
        link = self.link()
        link.fail_next(None)  # the first put goes through, the second fails
        link.fail_next(Unavailable("no server reachable"))
        link.hold = True
        d = self.start("POST", "/multiple_job",
                       json={"jobs": [{"tube": "t", "body": str(n)} for n in range(3)]})
        self.stub.flush()
        # The server answers the frame, then goes away for longer than the retry
        # budget: the second job's retries find no server.
        link.up = False
        link.release_held()
        reply = self.result_of_with_flush(d)
        self.assertEqual(reply.code, 503, reply.json)
        self.assertEqual(reply.json["error"], "unavailable")
        self.assertEqual(reply.json["action"], "put")
        ids = reply.json["job_ids"]
        self.assertEqual(len(ids), 3)
        self.assertEqual(ids[1], None)
        [error] = reply.json["errors"]
        self.assertEqual(error["index"], 1)
        self.assertEqual(error["error"], "unavailable")
        for job_id in ids:
            if job_id is not None:
                self.assertEqual(self.stored(job_id).tube, "t")

    def test_batch_delete(self):
        job_ids = self.put_batch([{"tube": "t", "body": str(n)} for n in range(4)]).json["job_ids"]
        self.ok("GET", "/multiple_job?tube=t&count=2")  # two reserved, two ready
        reply = self.call("DELETE", "/multiple_job", json={"job_ids": job_ids})
        self.assertEqual(reply.code, 200, reply.json)
        self.assertEqual(reply.json, {"action": "delete", "job_ids": job_ids})
        stats = self.tube_stats()
        self.assertEqual((stats["ready"], stats["reserved"]), (0, 0))

    def test_partly_failed_delete_names_what_was_deleted(self):
        [job_id] = self.put_batch([{"tube": "t"}]).json["job_ids"]
        unknown = job_id.split(",")[0] + ",1"
        reply = self.call("DELETE", "/multiple_job", json={"job_ids": [job_id, unknown]})
        self.assertEqual(reply.code, 404, reply.json)
        self.assertEqual(reply.json["job_ids"], [job_id, None])
        self.assertEqual([e["index"] for e in reply.json["errors"]], [1])
        self.assertEqual(self.tube_stats()["ready"], 0)

    def test_malformed_batch_deletes(self):
        self.allow_big_bodies()
        for body, words in [
            ({}, "job_ids must be a list"),
            ({"job_ids": []}, "job_ids must be a list"),
            ({"job_ids": "a,1"}, "job_ids must be a list"),
            ({"job_ids": ["a,1"] * (MAX_COUNT + 1)}, "job_ids must be a list"),
            ({"job_ids": ["a,1", "nope"]}, "job_ids[1] must look like"),
            ({"job_ids": ["a,1", 5]}, "job_ids[1] must look like"),
            ({"job_ids": ["a,1"], "tube": "t"}, "unknown field 'tube'"),
        ]:
            reply = self.call("DELETE", "/multiple_job", json=body)
            self.assert_error(reply, 400, "bad_request")
            self.assertIn(words, reply.json["detail"])
        self.error(400, "bad_request", "DELETE", "/multiple_job")  # no body at all
        self.assertEqual(self.sent(), [])


class RouterTests(RestTestCase):
    """The job routes served without Klein behave as the Klein routes do."""

    def test_fast_routes_are_klein_routes(self):
        from allq.client.rest import _Router

        fast = {(path.decode(), method.decode().lower()) for method, path in _Router._FAST}
        self.assertLessEqual(fast, served_operations())
        self.assertEqual(len(fast), 6)

    def test_answers_carry_a_content_length(self):
        """No chunked framing: the length is known before the body is written."""
        from twisted.web.server import NOT_DONE_YET

        self.put()
        request = DummyRequest([b"job"])
        request.method, request.path = b"GET", b"/job"
        request.args = {b"tube": [b"t"]}
        self.assertEqual(self.api.resource().render(request), NOT_DONE_YET)
        self.assertEqual(request.finished, 1)
        body = b"".join(request.written)
        self.assertEqual(json.loads(body)["body"], "hello")
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-length"),
                         [b"%d" % len(body)])

    def test_a_client_that_goes_away_cancels_its_long_poll(self):
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure
        from twisted.web.server import NOT_DONE_YET

        request = DummyRequest([b"job"])
        request.method, request.path = b"GET", b"/job"
        request.args = {b"tube": [b"t"], b"wait": [b"20"]}
        self.assertEqual(self.api.resource().render(request), NOT_DONE_YET)
        self.clock.advance(1)
        request.processingFailed(Failure(ConnectionDone()))
        self.assertEqual(request.written, [])
        self.clock.advance(30)  # nothing left to fire: tearDown checks the clock
        self.put()
        self.assertEqual(self.tube_stats()["ready"], 1)  # no waiter took it

    def test_a_route_that_raises_answers_its_error(self):
        """Errors raised before any Deferred exists are answered like later ones."""
        self.error(400, "bad_request", "GET", "/job")
        self.error(400, "bad_request", "DELETE", "/job?job_id=nope")


# -- OpenAPI -----------------------------------------------------------------------


def served_operations():
    """(path, method) of every route registered on the Klein app."""
    return {
        (rule.rule, method.lower())
        for rule in RestApi.app.url_map.iter_rules()
        for method in rule.methods
    }


def documented_operations(document):
    """(path, method) of every operation in an OpenAPI document."""
    methods = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
    return {
        (path, method)
        for path, item in document["paths"].items()
        for method in item
        if method in methods
    }


class OpenApiTests(RestTestCase):
    """GET /openapi.json describes exactly what is served."""

    def document(self):
        """The served document."""
        return self.ok("GET", "/openapi.json")

    def test_routes_and_document_agree(self):
        """Every Klein route+method is documented and every documented one is served."""
        document = self.document()
        self.assertEqual(documented_operations(document), served_operations())
        self.assertEqual(len(served_operations()), 26)

    def test_document_header(self):
        """It is an OpenAPI 3.1 document with unique operation ids."""
        document = self.document()
        self.assertEqual(document["openapi"], "3.1.0")
        ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
        self.assertEqual(len(ids), len(set(ids)))

    def test_every_ref_resolves(self):
        """Every $ref points at a component that exists."""
        document = self.document()

        def walk(node):
            if isinstance(node, dict):
                if "$ref" in node:
                    target = document
                    for part in node["$ref"].removeprefix("#/").split("/"):
                        self.assertIn(part, target, node["$ref"])
                        target = target[part]
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(document)

    def test_error_responses_are_documented(self):
        """Every operation documents 500; those taking input document 400."""
        document = self.document()
        for path, item in document["paths"].items():
            for method, op in item.items():
                self.assertIn("500", op["responses"], (path, method))
                if op["parameters"] or "requestBody" in op:
                    self.assertIn("400", op["responses"], (path, method))

    def test_documented_limits_are_the_enforced_ones(self):
        """The document states this facade's max_body and the job id pattern it checks."""
        document = self.document()
        self.assertIn(str(MAX_BODY), document["paths"]["/job"]["post"]["summary"])
        pattern = document["components"]["parameters"]["job_id"]["schema"]["pattern"]
        self.assertEqual(pattern, f"^{JOB_ID.pattern}$")

    def test_parameters_per_path(self):
        """The documented query parameters of GET /job and PUT /kick are the accepted ones."""
        document = self.document()
        params = document["components"]["parameters"]

        def names(path, method):
            refs = document["paths"][path][method]["parameters"]
            return {params[r["$ref"].rsplit("/", 1)[1]]["name"] for r in refs}

        self.assertEqual(names("/job", "get"), {"tube", "tube_name", "delete", "wait"})
        self.assertEqual(names("/kick", "put"), {"job_id", "tube", "tube_name", "count"})
        self.assertEqual(names("/release", "put"), {"job_id", "delay"})
        self.assertEqual(names("/drain", "put"), {"tube", "tube_name", "server_id"})
        self.assertEqual(names("/undrain", "put"), {"tube", "tube_name", "server_id"})
        self.assertEqual(names("/fair", "put"), {"tube", "tube_name", "policy"})
        self.assertEqual(names("/max_size", "put"), {"tube", "tube_name", "max_size"})
        self.assertEqual(names("/pause", "put"), {"tube", "tube_name"})

    def test_new_fields_and_errors_are_documented(self):
        """NewJob documents run_at, parent_id and shard_key; puts document 404 and 507."""
        document = self.document()
        fields = document["components"]["schemas"]["NewJob"]["properties"]
        self.assertLessEqual({"run_at", "parent_id", "shard_key", "expired_limit"}, set(fields))
        self.assertNotIn("not_supported", json.dumps(fields))
        for path in ("/job", "/parent_job"):
            self.assertLessEqual({"404", "503", "507"},
                                 set(document["paths"][path]["post"]["responses"]))


# -- helpers -----------------------------------------------------------------------


class HelperTests(SynchronousTestCase):
    """json_response, read_json and parse_bool on their own."""

    def request(self, data, length=True):
        """A DummyRequest carrying ``data`` as its body."""
        request = DummyRequest([b"job"])
        request.content = BytesIO(data)
        if length:
            request.requestHeaders.setRawHeaders(b"content-length", [str(len(data)).encode()])
        return request

    def test_json_response(self):
        """json_response sets the status and content type and encodes UTF-8 JSON."""
        request = DummyRequest([b""])
        body = json_response(request, {"a": "é"}, 201)
        self.assertEqual(request.responseCode, 201)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"),
                         [b"application/json"])
        self.assertEqual(json.loads(body), {"a": "é"})

    def test_read_json_without_content_length(self):
        """The cap holds when no Content-Length says how big the body is."""
        with self.assertRaises(TooLarge):
            read_json(self.request(b'{"a": "' + b"x" * 100 + b'"}', length=False), 50)
        self.assertEqual(read_json(self.request(b'{"a": 1}', length=False), 50), {"a": 1})

    def test_read_json_refuses_by_content_length(self):
        """A Content-Length over the cap is refused before reading; a bad one is a 400."""
        request = self.request(b"{}")
        request.requestHeaders.setRawHeaders(b"content-length", [b"999999"])
        with self.assertRaises(TooLarge):
            read_json(request, 1000)
        request.requestHeaders.setRawHeaders(b"content-length", [b"ten"])
        with self.assertRaises(BadRequest):
            read_json(request, 1000)

    def test_json_response_escapes_lone_surrogates(self):
        """A lone surrogate in a reply is sent as a JSON escape instead of failing."""
        body = json_response(DummyRequest([b""]), {"body": "\ud800"})
        self.assertEqual(body, b'{"body":"\\ud800"}')

    def test_parse_bool(self):
        """parse_bool accepts the six spellings in any case and nothing else."""
        self.assertTrue(parse_bool("x", "yEs"))
        self.assertFalse(parse_bool("x", "No"))
        with self.assertRaises(BadRequest):
            parse_bool("x", "none")

    def test_default_max_body(self):
        """The default cap is 2 MiB plus slack for the JSON envelope."""
        self.assertGreater(DEFAULT_MAX_BODY, 2 * 1024 * 1024)
