"""REST errors: bad input, error statuses (404/405/409/503/504/500), the JSON helpers."""

import json
from io import BytesIO

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from allq.client.http import json_response, read_json
from allq.client.rest import DEFAULT_MAX_BODY, RestApi
from allq.client.rest_requests import parse_bool
from allq.vocabulary import MAX_WAIT
from allq.errors import BadRequest, Timeout, TooLarge

from rest_case import MAX_BODY, MAX_JOB_SIZE, REQUEST_TIMEOUT, RestTestCase, q


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
                if bad == "nope" and path == "/set_children_started":
                    continue  # a parent's caller-chosen id (404 when none has it)
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
        self.stub = self.serve(api)
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
        self.assertEqual(body, b'{"body":"\\ud800"}\n')

    def test_parse_bool(self):
        """parse_bool accepts the six spellings in any case and nothing else."""
        self.assertTrue(parse_bool("x", "yEs"))
        self.assertFalse(parse_bool("x", "No"))
        with self.assertRaises(BadRequest):
            parse_bool("x", "none")

    def test_default_max_body(self):
        """The default cap is 2 MiB plus slack for the JSON envelope."""
        self.assertGreater(DEFAULT_MAX_BODY, 2 * 1024 * 1024)
