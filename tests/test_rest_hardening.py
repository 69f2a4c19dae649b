"""What the red-team run of issue 10 found in the REST API, kept fixed: DNS
rebinding, cross-site requests, bodies read whole before their size was checked,
huge numbers, and a put answered 503 although it may have been stored."""

import json

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from allq.client.graceful import InFlight
from allq.client.http_guard import HostGuard, parse_allowed_hosts
from allq.client.fast_http import http_factory
from allq.client.site import build_site

from rest_case import RestTestCase, q


class Hello(Resource):
    isLeaf = True

    def render(self, request):
        request.setHeader(b"content-type", b"application/json")
        return b'{"hello":1}'


# -- Host and Origin ------------------------------------------------------------------


class GuardTests(SynchronousTestCase):
    def serve(self, guard=HostGuard(), host="localhost:8090", origin=None):
        """One raw HTTP request through the whole site: (status, JSON body)."""
        site = build_site(Hello(), None, None, guard=guard)
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 9))
        transport = StringTransport()
        channel.makeConnection(transport)
        head = b"GET /x HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
        if origin is not None:
            head += b"Origin: " + origin.encode() + b"\r\n"
        channel.dataReceived(head + b"\r\n")
        channel.connectionLost(None)
        status, _, body = transport.value().partition(b"\r\n\r\n")
        return int(status.split(b" ")[1]), json.loads(body)

    def test_loopback_names_and_addresses_are_served(self):
        for host in ("localhost", "localhost:8090", "127.0.0.1:8090", "127.0.0.9",
                     "[::1]:8090", "api.localhost:1"):
            self.assertEqual(self.serve(host=host), (200, {"hello": 1}), host)

    def test_a_rebound_name_is_misdirected(self):
        """DNS rebinding: a page's own name pointing at 127.0.0.1 gets 421, JSON."""
        for host in ("evil.example:8090", "evil.example", "127.0.0.1.evil.example",
                     "localhost.evil.example", "10.0.0.5:8090", "bad host", "[::1"):
            code, body = self.serve(host=host)
            self.assertEqual(code, 421, host)
            self.assertEqual(body["error"], "misdirected_request")
            self.assertIn("--allowed-hosts", body["detail"])

    def test_allowed_hosts_are_served(self):
        guard = HostGuard(parse_allowed_hosts("allq-client, 10.0.0.5"))
        self.assertEqual(self.serve(guard, host="allq-client:8090")[0], 200)
        self.assertEqual(self.serve(guard, host="10.0.0.5")[0], 200)
        self.assertEqual(self.serve(guard, host="other:8090")[0], 421)

    def test_a_cross_site_page_is_forbidden(self):
        """A browser marks a page's request with Origin: only allowed hosts pass."""
        code, body = self.serve(origin="https://evil.example")
        self.assertEqual((code, body["error"]), (403, "forbidden"))
        self.assertEqual(self.serve(origin="null")[0], 403)
        self.assertEqual(self.serve(origin="http://localhost:8090")[0], 200)  # the dashboard

    def test_allowed_hosts_option_is_checked(self):
        for bad in ("a:80", "a/b", "a b", "http://x", "x?y"):
            with self.assertRaises(ValueError):
                parse_allowed_hosts(bad)
        self.assertEqual(parse_allowed_hosts(" A ,[fd00::1],, ::1"), {"a", "fd00::1", "::1"})


# -- bodies: JSON only, and never larger than allowed --------------------------------


class ContentTypeTests(RestTestCase):
    def test_a_json_body_must_say_it_is_json(self):
        """text/plain and form bodies (what a page may send without asking) are 415."""
        # (multipart is refused the same way; StubTreq's own request class would
        # parse it as a form before the API sees it, the client's does not)
        for content_type in ("text/plain", "application/x-www-form-urlencoded",
                             "application/xml"):
            reply = self.call("POST", "/job", data=b'{"tube":"t","body":"x"}',
                              headers={"content-type": content_type})
            self.assert_error(reply, 415, "unsupported_media_type")
            self.assertIn("application/json", reply.json["detail"])
        self.assertEqual(self.sent(), [])
        for content_type in ("application/json", "application/json; charset=utf-8",
                             "application/vnd.allq+json"):
            reply = self.call("POST", "/job", data=b'{"tube":"t","body":"x"}',
                              headers={"content-type": content_type})
            self.assertEqual(reply.code, 200, content_type)

    def test_add_server_with_a_form_body_is_refused(self):
        reply = self.call("POST", "/add_server", data=b'{"server_url":"h:1"}',
                          headers={"content-type": "text/plain"})
        self.assert_error(reply, 415, "unsupported_media_type")
        self.assertEqual(len(self.federation.links()), 1)


def raw_site(max_body, http_parser="twisted"):
    """A site whose requests take at most ``max_body`` bytes, and a connection to it
    (read by twisted.web, or by the httptools protocol serving ``POST /job``)."""
    site = build_site(Hello(), None, None)
    site.requestFactory = InFlight().request_factory(max_body)
    factory = http_factory(site, [(b"POST", b"/job")], http_parser)
    channel = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 9))
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


class EarlyTooLargeTests(SynchronousTestCase):
    http_parser = "twisted"

    def test_a_declared_length_over_the_limit_is_answered_before_the_body(self):
        channel, transport = raw_site(1000, self.http_parser)
        channel.dataReceived(b"POST /job HTTP/1.1\r\nHost: localhost\r\n"
                             b"Content-Length: 1073741824\r\n\r\n" + b"x" * 100)
        head, _, body = transport.value().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 413 "), head)
        self.assertEqual(json.loads(body)["error"], "too_large")
        self.assertTrue(transport.disconnecting)
        channel.dataReceived(b"x" * 10_000)  # whatever still arrives is dropped
        channel.connectionLost(None)

    def test_a_chunked_body_is_cut_at_the_limit(self):
        channel, transport = raw_site(1000, self.http_parser)
        channel.dataReceived(b"POST /job HTTP/1.1\r\nHost: localhost\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")
        for _ in range(5):
            channel.dataReceived(b"190\r\n" + b"x" * 400 + b"\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertTrue(transport.disconnecting)
        channel.connectionLost(None)

    def test_a_body_within_the_limit_is_served(self):
        channel, transport = raw_site(1000, self.http_parser)
        channel.dataReceived(b"POST /job HTTP/1.1\r\nHost: localhost\r\n"
                             b"Content-Length: 11\r\n\r\n{\"tube\":1}\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "), transport.value())
        self.assertFalse(transport.disconnecting)
        channel.connectionLost(None)


class EarlyTooLargeOverHttptoolsTests(EarlyTooLargeTests):
    """The same over the httptools protocol (a chunked body goes to twisted.web)."""

    http_parser = "httptools"


# -- numbers --------------------------------------------------------------------------


HUGE = [10**309, -(10**309), 10**4000]


class HugeNumberTests(RestTestCase):
    def test_every_number_field_answers_400_never_500(self):
        """Integers beyond a float's range (and past Python's digit limit) in every
        number field of every body are a 400 naming the field; nothing is sent."""
        fields = ["ttl", "delay", "run_at", "priority", "expired_limit"]
        for value in HUGE:
            text = str(value) if abs(value) < 10**4000 else "1" + "0" * 4000
            for field in fields:
                reply = self.call("POST", "/job", data=(
                    '{"tube":"t","body":"x","%s":%s}' % (field, text)).encode(),
                    headers={"content-type": "application/json"})
                self.assertEqual(reply.code, 400, (field, reply.json))
            for field in ("timeout", "limit"):
                reply = self.call("POST", "/parent_job", data=(
                    '{"tube":"t","body":"x","%s":%s}' % (field, text)).encode(),
                    headers={"content-type": "application/json"})
                self.assertEqual(reply.code, 400, (field, reply.json))
            reply = self.call("POST", "/throttle", data=(
                '{"tube":"t","tps":%s}' % text).encode(),
                headers={"content-type": "application/json"})
            self.assertEqual(reply.code, 400, reply.json)
            for path in (f"/job?tube=t&wait={text}", f"/multiple_job?tube=t&count={text}",
                         f"/release?job_id={q('a,1')}&delay={text}",
                         f"/peek?tube=t&offset={text}", f"/kick?tube=t&count={text}",
                         f"/max_size?tube=t&max_size={text}"):
                method = "GET" if path.startswith(("/job", "/multiple", "/peek")) else "PUT"
                self.assertEqual(self.call(method, path).code, 400, path)
        self.assertEqual(self.sent(), [])
        self.assertEqual(self.ok("GET", "/health")["up"], 1)


# -- a put whose outcome is unknown ----------------------------------------------------


class UnknownOutcomeTests(RestTestCase):
    def test_a_put_whose_server_stops_answering_is_504_with_the_key(self):
        """The server stored the job but its answer never came: 504 outcome_unknown
        with the key; the retry with that key returns the same job, never a second."""
        link = self.link()
        link.lose_next = 1  # applied, then the reply is lost and the link goes down
        reply = self.call("POST", "/job", json={"tube": "t", "body": "once"})
        self.assertEqual(reply.code, 504, reply.json)
        self.assertEqual(reply.json["error"], "outcome_unknown")
        key = reply.json["idempotency_key"]
        self.assertTrue(key.startswith(link.server_id + ":"))
        self.assertIn(key, reply.json["detail"])
        self.assertEqual(len(link.queue), 1)
        # While that server is down, the retry waits for it rather than storing
        # the job on another server.
        self.error(503, "unavailable", "POST", "/job",
                   json={"tube": "t", "body": "once", "idempotency_key": key})
        link.up = True
        retried = self.ok("POST", "/job",
                          json={"tube": "t", "body": "once", "idempotency_key": key})
        self.assertEqual(len(link.queue), 1)
        self.assertEqual(self.stored(retried["job_id"]).body, "once")

    def test_the_key_goes_to_its_server_even_with_others_up(self):
        links = self.federate(3)
        for link in links:
            link.fail_next(None)
        owner = links[1]
        job = owner.call("put", tube="t", body="x", idempotency_key="abc")
        for _ in range(4):
            reply = self.ok("POST", "/job", json={"tube": "t", "body": "x",
                                                  "idempotency_key": f"{owner.server_id}:abc"})
            self.assertEqual(reply["job_id"], job["job_id"])
        self.assertEqual([len(link.queue) for link in links], [0, 1, 0])

    def test_a_refusing_server_did_not_store_it_so_another_may(self):
        links = self.federate(2)
        links[0].queue.set_draining(True)
        reply = self.ok("POST", "/job", json={"tube": "t", "body": "x",
                                              "idempotency_key": f"{links[0].server_id}:k1"})
        self.assertTrue(reply["job_id"].startswith(links[1].server_id))

    def test_a_key_of_your_own_is_a_plain_key(self):
        first = self.ok("POST", "/job", json={"tube": "t", "body": "x",
                                              "idempotency_key": "order-42"})
        again = self.ok("POST", "/job", json={"tube": "t", "body": "x",
                                              "idempotency_key": "order-42"})
        self.assertEqual(first, again)
        self.assertEqual(len(self.link().queue), 1)

    def test_bad_keys_are_refused(self):
        for key in ("", "has space", "x" * 201, 5, "é"):
            self.error(400, "bad_request", "POST", "/job",
                       json={"tube": "t", "body": "x", "idempotency_key": key})
        self.error(400, "bad_request", "POST", "/parent_job",
                   json={"tube": "t", "body": "x", "idempotency_key": "k"})
        self.error(400, "bad_request", "POST", "/multiple_job",
                   json={"idempotency_key": "k", "jobs": [{"tube": "t"}]})
        self.assertEqual(self.sent(), [])

    def test_a_batch_job_may_carry_its_own_key(self):
        reply = self.ok("POST", "/multiple_job", json={"tube": "t", "jobs": [
            {"body": "a", "idempotency_key": "k-a"}, {"body": "b", "idempotency_key": "k-a"}]})
        self.assertEqual(reply["job_ids"][0], reply["job_ids"][1])


# -- what the new user's run found in the answers ------------------------------------


class AnswerShapeTests(RestTestCase):
    def test_replies_end_with_a_newline(self):
        """curl's output ends its line, so the shell prompt starts on its own."""
        for method, path in (("GET", "/health"), ("GET", "/job?tube=t"), ("GET", "/nope")):
            response = self.result_of_with_flush(self.stub.request(method, "http://allq.test" + path))
            body = self.result_of_with_flush(response.content())
            self.assertTrue(body.endswith(b"}\n"), body)

    def test_not_found_names_the_job_as_it_was_sent(self):
        job_id = f"{self.link().server_id},424242"
        reply = self.error(404, "not_found", "DELETE", f"/job?job_id={q(job_id)}")
        self.assertIn(job_id, reply["detail"])
        parent = f"{self.link().server_id},777"
        reply = self.error(404, "not_found", "POST", "/job",
                           json={"tube": "t", "body": "x", "parent_id": parent})
        self.assertIn(parent, reply["detail"])

    def test_removing_a_throttle_does_not_say_true(self):
        """AllQueue's "value": "true" means a throttle is set; removing one says "false"."""
        self.assertEqual(self.ok("POST", "/throttle", json={"tube": "t", "tps": 5})["value"],
                         "true")
        for tps in (None, 0, -1, "0"):
            reply = self.ok("POST", "/throttle", json={"tube": "t", "tps": tps})
            self.assertEqual((reply["value"], reply["tps"]), ("false", None), tps)

    def test_a_put_without_body_stores_an_empty_body(self):
        """AllQueue's default body is "": kept so its clients work (the README says so)."""
        job_id = self.ok("POST", "/job", json={"tube": "t"})["job_id"]
        self.assertEqual(self.stored(job_id).body, "")
        self.assertEqual(self.ok("GET", "/job?tube=t")["body"], "")
