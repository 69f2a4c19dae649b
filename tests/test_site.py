"""allq.client.site: the channel that writes each response head in one piece."""

import re

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource

from allq.client.site import OneWriteHTTPChannel, build_site

REQUEST = b"GET /anything HTTP/1.1\r\nHost: localhost:8090\r\n\r\n"


class Hello(Resource):
    isLeaf = True

    def render(self, request):
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"x-two", b"a")
        request.responseHeaders.addRawHeader(b"x-two", b"b")
        return b'{"hello":1}'


class RecordingTransport(StringTransport):
    """Counts the writes that reach the transport."""

    def __init__(self):
        super().__init__()
        self.writes = 0

    def write(self, data):
        self.writes += 1
        super().write(data)

    def writeSequence(self, data):
        self.writes += 1
        super().writeSequence(data)


def serve(channel_class, requests=REQUEST):
    site = build_site(Hello(), None, None)
    site.protocol = channel_class
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 9))
    transport = RecordingTransport()
    channel.makeConnection(transport)
    channel.dataReceived(requests)
    channel.connectionLost(None)
    return transport


def without_date(raw: bytes) -> bytes:
    return re.sub(rb"Date: [^\r]*\r\n", b"", raw)


class OneWriteChannelTests(SynchronousTestCase):
    def test_the_site_uses_it(self):
        self.assertIs(build_site(Hello(), None, None).protocol, OneWriteHTTPChannel)

    def test_same_bytes_as_twisted_writes(self):
        ours = serve(OneWriteHTTPChannel)
        theirs = serve(HTTPChannel)
        self.assertEqual(without_date(ours.value()), without_date(theirs.value()))
        self.assertTrue(ours.value().startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertIn(b"X-Two: a\r\nX-Two: b\r\n", ours.value())
        self.assertTrue(ours.value().endswith(b'\r\n\r\n{"hello":1}'))

    def test_head_and_body_are_two_writes(self):
        self.assertEqual(serve(OneWriteHTTPChannel).writes, 2)

    def test_keep_alive_requests_each_answered(self):
        value = serve(OneWriteHTTPChannel, REQUEST * 3).value()
        self.assertEqual(value.count(b"HTTP/1.1 200 OK\r\n"), 3)
        self.assertEqual(value.count(b'{"hello":1}'), 3)


# -- the client's request class ------------------------------------------------------

from twisted.internet.error import ConnectionDone  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402
from twisted.web.server import NOT_DONE_YET  # noqa: E402
from twisted.web.test.requesthelper import DummyRequest  # noqa: E402

from allq.client.graceful import InFlight  # noqa: E402
from allq.client.http_request import when_done  # noqa: E402


class Later(Resource):
    """Answers nothing until the test says so; records end hooks."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests = []
        self.ends = []

    def render(self, request):
        self.requests.append(request)
        when_done(request, self.ends.append)
        return NOT_DONE_YET


class ClientRequestTests(SynchronousTestCase):
    def setUp(self):
        self.in_flight = InFlight()
        self.resource = Later()
        site = build_site(self.resource, None, None)
        site.requestFactory = self.in_flight.request_factory()
        self.channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 9))
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)

    def test_counted_while_in_flight_and_hooks_see_completion(self):
        self.channel.dataReceived(REQUEST)
        self.assertEqual(self.in_flight.count, 1)
        [request] = self.resource.requests
        request.write(b"{}")
        request.finish()
        self.assertEqual((self.in_flight.count, self.resource.ends), (0, [True]))

    def test_a_lost_client_ends_the_request_once(self):
        self.channel.dataReceived(REQUEST)
        self.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual((self.in_flight.count, self.resource.ends), (0, [False]))

    def test_a_request_lost_before_processing_is_not_counted(self):
        self.channel.dataReceived(b"POST /job HTTP/1.1\r\nContent-Length: 10\r\n\r\n{")
        self.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual((self.in_flight.count, self.resource.requests), (0, []))

    def test_no_form_parsing(self):
        self.channel.dataReceived(
            b"POST /x HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 3\r\n\r\na=1")
        [request] = self.resource.requests
        self.assertEqual(request.args, {})

    def test_when_done_falls_back_to_notify_finish(self):
        ends = []
        request = DummyRequest([b""])
        when_done(request, ends.append)
        request.finish()
        other = DummyRequest([b""])
        when_done(other, ends.append)
        other.processingFailed(Failure(ConnectionDone()))
        self.assertEqual(ends, [True, False])
