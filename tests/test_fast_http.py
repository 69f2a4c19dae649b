"""The client's httptools protocol (allq.client.fast_http) byte by byte.

The REST suites run every test over both HTTP paths through StubTreq (see
``rest_case.py``); these tests drive the protocol itself over a
``StringTransport`` (and once over real loopback TCP): keep-alive, pipelining
in order, requests cut into pieces, the fallback to twisted.web per request and
for good after an upgrade, malformed and oversize requests, a client that goes
away, the in-flight count, the latency metric and the access log. The REST
facade behind it is the real one over an in-memory federation on a Clock.
"""

import json
import os
import re
import shutil
import tempfile

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site

from allq.client.dashboard import Dashboard
from allq.client.fast_http import MAX_PIPELINED, FastHTTPFactory, http_factory
from allq.client.graceful import InFlight
from allq.client.metrics import ClientMetrics
from allq.client.rest import RestApi
from allq.client.site import build_site
from allq.client.tap import QuietSite

from memory_servers import local_addresses, start_federation

MAX_BODY = 4096
PEER = IPv4Address("TCP", "127.0.0.1", 40000)


def request(method, path, body=None, headers=(), version=b"1.1"):
    """One request's bytes (a JSON body with its type and length)."""
    lines = [b"%s %s HTTP/%s" % (method, path, version), b"Host: localhost"]
    if body is not None:
        data = json.dumps(body).encode()
        lines += [b"Content-Type: application/json", b"Content-Length: %d" % len(data)]
    lines += list(headers)
    return b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if body is None else data)


def responses(data):
    """The responses in ``data``: ``(status, {lower name: value}, body)``, in order."""
    found = []

    class Reader:
        def on_message_begin(self):
            self.headers, self.body = {}, b""

        def on_header(self, name, value):
            self.headers[name.lower()] = value

        def on_body(self, body):
            self.body += body

        def on_message_complete(self):
            found.append((parser.get_status_code(), self.headers, self.body))

    parser = httptools.HttpResponseParser(Reader())
    parser.feed_data(data)
    return found


class Served:
    """The real REST facade over an in-memory server, its site, and the factory."""

    def __init__(self, *, metrics=False, site_class=QuietSite, http_parser="httptools",
                 dashboard=False):
        self.clock = Clock()
        self.federation, [self.link] = start_federation(self.clock, local_addresses(1, 7711))
        self.api = RestApi(self.federation, self.clock, max_body=MAX_BODY,
                           request_timeout=30.0)
        self.metrics = ClientMetrics(self.clock, process=False) if metrics else None
        self.site = build_site(self.api.resource(), self.metrics,
                               Dashboard() if dashboard else None, site_class=site_class)
        self.site.reactor = self.clock
        self.in_flight = InFlight()
        self.site.requestFactory = self.in_flight.request_factory(MAX_BODY)
        self.factory = http_factory(self.site, self.api.fast_routes(), http_parser)

    def connect(self):
        protocol = self.factory.buildProtocol(PEER)
        transport = StringTransport(peerAddress=PEER)
        protocol.makeConnection(transport)
        return protocol, transport

    def stop(self):
        self.federation.stopService()


class FastHTTPTestCase(SynchronousTestCase):
    def setUp(self):
        self.served = Served()
        self.addCleanup(self.served.stop)

    def tearDown(self):
        self.assertEqual(self.served.clock.getDelayedCalls(), [])
        self.assertEqual(self.served.in_flight.count, 0)

    def exchange(self, data, pieces=1):
        """Send ``data`` (in ``pieces`` parts) on a new connection; the responses."""
        protocol, transport = self.served.connect()
        size = max(1, -(-len(data) // pieces))
        for start in range(0, len(data), size):
            protocol.dataReceived(data[start:start + size])
        self.protocol, self.transport = protocol, transport
        return responses(transport.value())


class KeepAliveAndPipeliningTests(FastHTTPTestCase):
    def test_pipelined_requests_are_answered_in_order_one_at_a_time(self):
        """A put, a get and a delete sent at once: the get sees the put before it
        (twisted.web's order), the delete the job the get reserved."""
        replies = self.exchange(request(b"POST", b"/job", {"tube": "t", "body": "x"})
                                + request(b"GET", b"/job?tube=t"))
        self.assertEqual([code for code, _, _ in replies], [200, 200])
        job_id = json.loads(replies[0][2])["job_id"]
        self.assertEqual(json.loads(replies[1][2])["id"], job_id)
        self.protocol.dataReceived(request(b"DELETE", b"/job?job_id=" + job_id.replace(
            ",", "%2C").encode()))
        [*_, (code, headers, body)] = responses(self.transport.value())
        self.assertEqual((code, json.loads(body)), (200, {"action": "delete", "job_id": job_id}))
        self.assertEqual(headers[b"content-type"], b"application/json")
        self.assertFalse(self.transport.disconnecting)  # keep-alive

    def test_a_request_in_pieces_is_answered_as_a_whole(self):
        data = (request(b"POST", b"/job", {"tube": "t", "body": "x" * 300})
                + request(b"GET", b"/multiple_job?tube=t&count=5"))
        answers = []
        for pieces in (1, 7, len(data)):
            self.served = Served()  # a fresh server each time: the same job ids
            self.addCleanup(self.served.stop)
            answers.append([(code, body) for code, _, body in self.exchange(data, pieces)])
        self.assertEqual(len(answers[0]), 2)
        self.assertEqual(answers[1], answers[0])
        self.assertEqual(answers[2], answers[0])

    def test_other_routes_go_to_twisted_web_in_the_same_order(self):
        """/health (Klein), another method of a job route (405 there), a chunked put
        and an Expect: 100-continue put, between fast calls on one connection."""
        chunked = (b"POST /job HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json"
                   b"\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"e\r\n{\"tube\":\"t\",\"b\r\nd\r\nody\":\"chunk\"}\r\n0\r\n\r\n")
        replies = self.exchange(
            request(b"GET", b"/job?tube=t") + request(b"GET", b"/health")
            + request(b"PATCH", b"/job?tube=t") + chunked
            + request(b"POST", b"/job", {"tube": "t", "body": "go on"},
                      headers=[b"Expect: 100-continue"])
            + request(b"GET", b"/multiple_job?tube=t&count=5"))
        codes = [code for code, _, _ in replies]
        self.assertEqual(codes, [200, 200, 405, 200, 100, 200, 200], replies)
        self.assertEqual(json.loads(replies[1][2])["up"], 1)
        self.assertEqual(replies[2][1][b"allow"], b"DELETE, GET, POST")
        bodies = [job["body"] for job in json.loads(replies[6][2])["jobs"]]
        self.assertEqual(bodies, ["chunk", "go on"])
        self.assertFalse(self.transport.disconnecting)

    def test_head_of_a_job_route_is_twisted_webs_405_without_a_body(self):
        protocol, transport = self.served.connect()  # (a HEAD answer's length has no body)
        protocol.dataReceived(request(b"HEAD", b"/job?tube=t") + request(b"GET", b"/job?tube=t"))
        head, _, rest = transport.value().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 405 "), head)
        self.assertIn(b"Allow: DELETE, GET, POST", head)
        self.assertEqual([code for code, _, _ in responses(rest)], [200])
        self.assertEqual(self.served.link.requests[0][0], "get")  # the GET, not the HEAD

    def test_answers_are_those_of_twisted_web(self):
        """Fast route or not, error or not: the same bytes as twisted.web alone
        (but for the Date header)."""
        data = (request(b"POST", b"/job", {"tube": "t", "body": "x"})
                + request(b"POST", b"/job", {"tube": "t", "body": "x"},
                          headers=[b"Origin: http://evil.example"])
                + request(b"POST", b"/job", {"tube": "t"})
                + request(b"GET", b"/job?tube=t&count=x&wait=nope")
                + request(b"GET", b"/job", headers=[b"Host: evil.example"])
                + request(b"GET", b"/multiple_job?tube=t&count=3")
                + request(b"PUT", b"/job") + request(b"GET", b"/nowhere")
                + request(b"GET", b"/job?tube=t", version=b"1.0"))

        def answer(parser):
            served = Served(http_parser=parser)
            protocol, transport = served.connect()
            protocol.dataReceived(data)
            served.stop()
            return re.sub(rb"Date: [^\r]*\r\n", b"", transport.value()), transport.disconnecting

        fast, twisted = answer("httptools"), answer("twisted")
        self.assertEqual(fast, twisted)
        self.assertEqual(len(responses(fast[0])), 9)


class ClosingTests(FastHTTPTestCase):
    def test_http_1_0_is_answered_in_kind_and_closed(self):
        [(code, headers, _)] = self.exchange(request(b"GET", b"/job?tube=t", version=b"1.0")
                                             + request(b"GET", b"/job?tube=t"))
        self.assertEqual(code, 200)
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.0 200 OK\r\n"))
        self.assertNotIn(b"connection", headers)
        self.assertTrue(self.transport.disconnecting)

    def test_connection_close_is_said_and_done(self):
        [(_, headers, _)] = self.exchange(
            request(b"GET", b"/job?tube=t", headers=[b"Connection: close"])
            + request(b"GET", b"/job?tube=t"))
        self.assertEqual(headers[b"connection"], b"close")
        self.assertTrue(self.transport.disconnecting)

    def test_a_fallback_request_that_closes_closes_the_connection(self):
        replies = self.exchange(request(b"GET", b"/health", headers=[b"Connection: close"])
                                + request(b"GET", b"/job?tube=t"))
        self.assertEqual([code for code, _, _ in replies], [200])
        self.assertTrue(self.transport.disconnecting)


class BadRequestTests(FastHTTPTestCase):
    def assert_refused(self, replies, status, error, answered_before=0):
        self.assertEqual(len(replies), answered_before + 1, replies)
        code, headers, body = replies[-1]
        self.assertEqual((code, json.loads(body)["error"]), (status, error))
        self.assertEqual(headers[b"content-type"], b"application/json")
        self.assertEqual(headers[b"connection"], b"close")
        self.assertTrue(self.transport.disconnecting)

    def test_a_malformed_request_is_a_json_400_after_the_answers_before_it(self):
        for garbage in [b"GARBAGE\r\n\r\n", b"GET /job HTTP/9.9\r\n\r\n",
                        b"GET /job HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                        b"GET /job HTTP/1.1\r\nBad Header\r\n\r\n",
                        b"POST /job HTTP/1.1\r\nContent-Length: 2\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n"]:
            self.setUp()
            replies = self.exchange(request(b"GET", b"/job?tube=t") + garbage
                                    + request(b"GET", b"/job?tube=t"))
            self.assert_refused(replies, 400, "bad_request", answered_before=1)
            self.assertIn("malformed", json.loads(replies[-1][2])["detail"])

    def test_a_broken_chunked_body_drops_its_request(self):
        """The chunked request was already handed to twisted.web: it ends unanswered
        (nothing reached the queue), the connection gets the 400."""
        replies = self.exchange(b"POST /job HTTP/1.1\r\nHost: localhost\r\n"
                                b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n")
        self.assert_refused(replies, 400, "bad_request")
        self.assertEqual(self.served.link.requests, [])

    def test_a_declared_body_over_the_limit_is_413_before_it_is_read(self):
        replies = self.exchange(request(b"GET", b"/job?tube=t")
                                + b"POST /job HTTP/1.1\r\nHost: localhost\r\n"
                                  b"Content-Length: 1073741824\r\n\r\n" + b"x" * 100)
        self.assert_refused(replies, 413, "too_large", answered_before=1)
        self.protocol.dataReceived(b"x" * 10_000)  # dropped
        self.assertEqual([action for action, _ in self.served.link.requests], ["get"])

    def test_a_fallback_route_keeps_twisted_webs_early_413(self):
        replies = self.exchange(b"POST /throttle HTTP/1.1\r\nHost: localhost\r\n"
                                b"Content-Length: 1073741824\r\n\r\n")
        self.assert_refused(replies, 413, "too_large")

    def test_a_head_over_the_limit_is_400(self):
        replies = self.exchange(b"GET /job?tube=" + b"t" * 20_000 + b" HTTP/1.1\r\n\r\n",
                                pieces=10)
        self.assert_refused(replies, 400, "bad_request")
        self.assertIn("larger than 16384", json.loads(replies[0][2])["detail"])

    def test_a_header_that_never_ends_is_400_while_its_buffer_is_small(self):
        """httptools keeps a header until it ends: reading stops within the limit
        and one read's worth."""
        protocol, self.transport = self.served.connect()
        protocol.dataReceived(b"GET /job?tube=t HTTP/1.1\r\nX-Long: ")
        reads = 0
        while not self.transport.disconnecting and reads < 100:
            protocol.dataReceived(b"a" * 8192)
            reads += 1
        self.assertLessEqual(reads * 8192, 16384 + 65536 + 8192)
        self.assert_refused(responses(self.transport.value()), 400, "bad_request")

    def test_too_many_headers_is_400(self):
        headers = [b"X-%d: 1" % n for n in range(600)]
        replies = self.exchange(request(b"GET", b"/job?tube=t", headers=headers))
        self.assert_refused(replies, 400, "bad_request")
        self.assertIn("at most 500 headers", json.loads(replies[0][2])["detail"])


class HandOverTests(FastHTTPTestCase):
    def test_an_upgrade_hands_the_rest_of_the_connection_to_twisted_web(self):
        """After an Upgrade request, every byte is twisted.web's: a fast route is
        still answered, and garbage gets twisted.web's bare 400, not the JSON one."""
        replies = self.exchange(
            request(b"GET", b"/job?tube=t")
            + request(b"GET", b"/job?tube=t", headers=[b"Connection: upgrade",
                                                        b"Upgrade: websocket"])
            + request(b"GET", b"/job?tube=t"))
        self.assertEqual([code for code, _, _ in replies], [200, 200, 200])
        self.protocol.dataReceived(b"GARBAGE\r\n\r\n")
        self.assertTrue(self.transport.value().endswith(b"HTTP/1.1 400 Bad Request\r\n\r\n"))
        self.assertTrue(self.transport.disconnecting)
        self.protocol.connectionLost()


class LifecycleTests(FastHTTPTestCase):
    def test_a_client_that_goes_away_cancels_the_federation_call(self):
        self.served.link.hang = True
        self.exchange(request(b"GET", b"/job?tube=t"))
        self.assertEqual(self.served.in_flight.count, 1)
        self.assertNotEqual(self.served.clock.getDelayedCalls(), [])  # the 504 timer
        self.protocol.connectionLost()
        self.assertEqual(self.served.in_flight.count, 0)
        # tearDown: nothing scheduled is left, the call was cancelled

    def test_a_waiting_pipelined_request_never_starts_after_the_client_left(self):
        self.served.link.hang = True
        self.exchange(request(b"GET", b"/job?tube=t") + request(b"GET", b"/job?tube=u"))
        self.assertEqual(len(self.served.link.requests), 1)
        self.protocol.connectionLost()
        self.assertEqual(len(self.served.link.requests), 1)

    def test_a_full_write_buffer_holds_the_next_answer_and_many_waiting_pause_reading(self):
        protocol, transport = self.served.connect()
        protocol.pauseProducing()  # the transport's buffer is full
        protocol.dataReceived(request(b"GET", b"/job?tube=t") * (MAX_PIPELINED + 2))
        self.assertEqual(transport.value(), b"")
        self.assertEqual(transport.producerState, "paused")
        protocol.resumeProducing()
        self.assertEqual(len(responses(transport.value())), MAX_PIPELINED + 2)
        self.assertEqual(transport.producerState, "producing")
        protocol.connectionLost()


class SiteResourceTests(SynchronousTestCase):
    def test_the_dashboard_and_metrics_answer_as_over_twisted_web(self):
        """/, /static/*, /metrics (and its HEAD and 405) pass through unchanged."""
        data = (request(b"GET", b"/") + request(b"GET", b"/static/dashboard.js")
                + request(b"GET", b"/static/nothing.js") + request(b"POST", b"/metrics")
                + request(b"GET", b"/metrics", headers=[b"Connection: close"]))

        def answer(parser):
            served = Served(http_parser=parser, metrics=True, dashboard=True)
            protocol, transport = served.connect()
            protocol.dataReceived(data)
            served.stop()
            # (the exposition is compared by its type: its counters include this very
            # request's path, which the two paths time alike but not byte for byte)
            return [(code, headers.get(b"content-type"), None if code == 200 and
                     headers.get(b"content-type", b"").startswith(b"text/plain") else body)
                    for code, headers, body in responses(transport.value())]

        fast = answer("httptools")
        self.assertEqual(fast, answer("twisted"))
        self.assertEqual([code for code, _, _ in fast], [200, 200, 404, 405, 200])


class ObservedTests(SynchronousTestCase):
    def test_the_latency_metric_counts_fast_requests(self):
        served = Served(metrics=True)
        self.addCleanup(served.stop)
        protocol, _ = served.connect()
        protocol.dataReceived(request(b"POST", b"/job", {"tube": "t", "body": "x"})
                              + request(b"GET", b"/job?tube=t&wait=x"))
        text = served.metrics.exposition()[0].decode()
        for labels in ['method="POST",route="/job",status="2xx"',
                       'method="GET",route="/job",status="4xx"']:
            self.assertIn(f"allq_client_request_duration_seconds_count{{{labels}}} 1.0", text)
        protocol.connectionLost()

    def test_the_access_log_has_a_line_per_fast_request(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "access.log")
        served = Served(site_class=lambda root: Site(root, logPath=path))
        self.addCleanup(served.stop)
        served.factory.doStart()
        protocol, _ = served.connect()
        protocol.dataReceived(request(b"GET", b"/job?tube=t", headers=[b"User-Agent: probe"])
                              + request(b"GET", b"/health"))
        protocol.connectionLost()
        served.factory.doStop()
        with open(path) as log:
            lines = log.read().splitlines()
        self.assertEqual(len(lines), 2)
        self.assertRegex(lines[0], r'^"127\.0\.0\.1" - - \[.*\] "GET /job\?tube=t HTTP/1\.1" '
                                   r'200 3 "-" "probe"$')
        self.assertIn('"GET /health HTTP/1.1" 200', lines[1])

    def test_the_factory_is_fast_only_when_asked(self):
        served = Served(http_parser="twisted")
        self.addCleanup(served.stop)
        self.assertIs(served.factory, served.site)
        self.assertIsInstance(Served().factory, FastHTTPFactory)
        with pytest.raises(ValueError, match="unknown HTTP parser"):
            http_factory(served.site, [], "llhttp")


# -- real loopback TCP ------------------------------------------------------------------


class _Collect(Protocol):
    def __init__(self, expected):
        self.data = b""
        self.expected = expected
        self.done = Deferred()

    def dataReceived(self, data):
        self.data += data
        if len(responses(self.data)) >= self.expected and not self.done.called:
            self.done.callback(self.data)

    def connectionLost(self, reason):
        if not self.done.called:
            self.done.callback(self.data)


@pytest_twisted.ensureDeferred
async def test_pipelined_requests_over_loopback_tcp():
    """Pipelined puts, gets and a fallback route over a real socket, answered in order
    on one keep-alive connection."""
    federation, _ = start_federation(reactor, local_addresses(1, 7711))
    api = RestApi(federation, reactor, max_body=MAX_BODY)
    site = build_site(api.resource(), None, None, site_class=QuietSite)
    site.requestFactory = InFlight().request_factory(MAX_BODY)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        FastHTTPFactory(site, api.fast_routes()))
    client = _Collect(expected=7)
    try:
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
                              client)
        data = (request(b"POST", b"/job", {"tube": "t", "body": "a"})
                + request(b"POST", b"/job", {"tube": "t", "body": "b"})
                + request(b"GET", b"/health") + request(b"GET", b"/multiple_job?tube=t&count=9")
                + request(b"GET", b"/job?tube=t") + request(b"PUT", b"/job")
                + request(b"GET", b"/job?tube=t", headers=[b"Connection: close"]))
        for start in range(0, len(data), 100):  # in pieces
            client.transport.write(data[start:start + 100])
        got = responses(await client.done.addTimeout(10, reactor))
    finally:
        client.transport.loseConnection()
        await port.stopListening()
        federation.stopService()
    assert [code for code, _, _ in got] == [200, 200, 200, 200, 200, 405, 200]
    assert [job["body"] for job in json.loads(got[3][2])["jobs"]] == ["a", "b"]
    assert got[6][1][b"connection"] == b"close"


# -- any split, any bytes ---------------------------------------------------------------

_STREAM = (request(b"POST", b"/job", {"tube": "t", "body": "x" * 50})
           + request(b"GET", b"/health")
           + b"POST /job HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n1b\r\n{\"tube\":\"t\",\"body\":\"chunk\"}\r\n"
             b"0\r\n\r\n"
           + request(b"GET", b"/multiple_job?tube=t&count=5")
           + request(b"DELETE", b"/job?job_id=nope"))


def _answers(pieces):
    served = Served()
    try:
        protocol, transport = served.connect()
        for piece in pieces:
            protocol.dataReceived(piece)
        protocol.connectionLost()
        assert served.clock.getDelayedCalls() == []
        return re.sub(rb"Date: [^\r]*\r\n", b"", transport.value())
    finally:
        served.stop()


_WHOLE = None


@settings(max_examples=50, deadline=None, database=None)
@given(st.lists(st.integers(1, len(_STREAM)), max_size=20))
def test_any_split_of_a_pipelined_stream_gets_the_same_answers(cuts):
    global _WHOLE
    if _WHOLE is None:
        _WHOLE = _answers([_STREAM])
        assert [code for code, _, _ in responses(_WHOLE)] == [200, 200, 200, 200, 400]
    bounds = [0, *sorted(cuts), len(_STREAM)]
    assert _answers([_STREAM[a:b] for a, b in zip(bounds, bounds[1:])]) == _WHOLE


@settings(max_examples=80, deadline=None, database=None)
@given(st.binary(max_size=200), st.sampled_from([b"", b"GET ", b"POST /job HTTP/1.1\r\n",
                                                   b"GET /job?tube=t HTTP/1.1\r\nHost: x"]))
def test_any_bytes_after_a_request_leave_its_answer_and_nothing_pending(garbage, prefix):
    """Whatever follows a good request: its answer first, then only whole answers
    (a JSON 400 for what cannot be read); nothing raised, nothing left scheduled."""
    data = _answers([request(b"GET", b"/job?tube=t") + prefix + garbage])
    found = responses(data)
    assert found[0][0] == 200
    for code, headers, body in found[1:]:
        if code == 400 and b"connection" in headers:
            assert json.loads(body)["error"] == "bad_request"
