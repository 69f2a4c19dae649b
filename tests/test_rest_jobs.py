"""REST job routes: put and get, long polls, job actions, run_at and shard_key, the fast router."""

import json

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from allq.core.queue import DEFAULT_PRIORITY

from allq.client.rest import RestApi
from memory_servers import FLUSH_STEP, result_with_flush, start_federation
from rest_case import ADDRESS, FeatureTestCase, RestTestCase, q, served_operations


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
        """GET /job answers {"id","body","tube","expireds","releases","ttl",
        "priority"} with int counters."""
        job_id = self.put()
        reply = self.ok("GET", "/job?tube=t")
        self.assertEqual(reply, {"id": job_id, "body": "hello", "tube": "t",
                                 "expireds": 0, "releases": 0, "ttl": 3600, "priority": 5})
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
            {"id": job_id, "body": "hello", "tube": "t", "expireds": 0, "releases": 0,
             "ttl": 3600, "priority": 5}]})

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


class RouterTests(RestTestCase):
    """The job routes served without Klein behave as the Klein routes do."""

    def test_fast_routes_are_klein_routes(self):
        fast = {(path.decode(), method.decode().lower())
                for method, path in self.api.fast_routes()}
        self.assertLessEqual(fast, served_operations())
        self.assertEqual(len(fast), 6)

    def test_each_fast_route_answers_exactly_as_its_klein_route(self):
        """The same requests, one federation served by the fast router and a twin
        served by Klein alone: same statuses, headers and bodies, errors included."""
        requests = [
            ("POST", "/job", {"json": {"tube": "t", "body": "a", "priority": 3}}),
            ("POST", "/job", {"json": {"tube": "bad tube"}}),
            ("POST", "/job", {"data": b"{not json", "headers": {"content-type": "application/json"}}),
            ("POST", "/multiple_job", {"json": {"tube": "t", "jobs": [{"body": "b"}, {"body": "c"}]}}),
            ("POST", "/multiple_job", {"json": {"jobs": []}}),
            ("GET", "/job?tube=t", {}),
            ("GET", "/job?tube=t&delete=maybe", {}),
            ("GET", "/multiple_job?tube=t&count=5", {}),
            ("GET", "/multiple_job?tube=t&count=0", {}),
            ("DELETE", "/job?job_id=" + q("yaReodaVXJ,1"), {}),
            ("DELETE", "/job?job_id=nope", {}),
            ("DELETE", "/multiple_job", {"json": {"job_ids": ["yaReodaVXJ,2", "yaReodaVXJ,99"]}}),
            ("DELETE", "/multiple_job", {"json": {"job_ids": "all"}}),
        ]

        def answers(resource):
            clock = Clock()
            federation, _ = start_federation(clock, [ADDRESS])
            self.addCleanup(federation.stopService)
            api = RestApi(federation, clock)
            stub = StubTreq(resource(api))
            replies = []
            for method, path, kwargs in requests:
                d = stub.request(method, "http://allq.test" + path, **kwargs)
                d.addCallback(lambda r: r.content().addCallback(
                    lambda body, r=r: (r.code, r.headers.getRawHeaders(b"content-type"),
                                       r.headers.getRawHeaders(b"content-length"), body)))
                replies.append(result_with_flush(self, stub, clock, d))
            return replies

        fast = answers(lambda api: api.resource())
        klein = answers(lambda api: api.app.resource())
        self.assertEqual([code for code, *_ in fast],
                         [200, 400, 400, 200, 400, 200, 400, 200, 400, 200, 400, 404, 400])
        self.assertEqual(fast, klein)

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


class TrailingSlashTests(RestTestCase):
    """Every route answers with trailing slashes as without (AllQueue ignored '/')."""

    def test_every_route_takes_a_trailing_slash(self):
        """For each served (path, method), ``path/`` reaches the same route (never a
        404 or a redirect), fast routes and Klein routes alike."""
        for path, method in sorted(served_operations()):
            if path == "/openapi.json":
                continue
            reply = self.call(method.upper(), path + "/")
            self.assertNotIn(reply.code, (301, 308, 404, 405), (method, path, reply.json))

    def test_slashed_paths_answer_as_plain_ones(self):
        """The job cycle and stats with slashes, and ``//`` endings too."""
        job_id = self.ok("POST", "/job/", json={"tube": "t", "body": "x"})["job_id"]
        self.assertEqual(self.ok("GET", "/job//?tube=t")["id"], job_id)
        self.assertEqual(self.ok("DELETE", "/job/?job_id=" + q(job_id))["action"], "delete")
        self.assertEqual(len(self.ok("GET", "/stats/")), 1)
        self.assertEqual(self.ok("GET", "/openapi.json/")["openapi"][:2], "3.")
        self.error(404, "not_found", "GET", "/nope/")
