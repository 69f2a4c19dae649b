"""The client's lean HTTP/1.1 server: the hot job routes without twisted.web's request objects.

twisted.web parses a request line by line in Python and builds a ``Request``,
two ``Headers`` and a ``BytesIO`` or temporary file per call: about 150 µs of
CPU a call, a third of what a ``/job`` call costs the client (this protocol:
about 50 µs). :class:`FastHTTPProtocol` reads requests with
``httptools`` (llhttp, the C parser under uvicorn) and serves the hot routes
(the REST facade's ``fast_routes()``: ``/job``, ``/multiple_job``) through the
site's own resource tree with a small request object, :class:`FastRequest`. So
the Host guard, the latency metric, the route and its error bodies, the
in-flight count (graceful shutdown) and the access log are the very code
twisted.web runs; only parsing and writing differ.

Everything else goes to twisted.web unchanged, **per request**: other routes
(dashboard, ``/metrics``, Klein), other methods (HEAD: 405 there), chunked
bodies, ``Expect: 100-continue`` and versions other than HTTP/1.0 and 1.1. Such
a request is written again, head and body as they arrive, into an
``HTTPChannel`` of the site made for it (:class:`_FallbackChannel`) whose
transport relays to the connection. Per request rather than per connection,
because clients open a connection with ``GET /health`` and then run the job
routes on it. An ``Upgrade``/``CONNECT`` request hands the whole connection,
and every byte after it, to its channel: what follows is no longer HTTP this
parser can read.

Requests are answered one at a time, in order, as twisted.web does: a
pipelined request is parsed ahead but starts only once the one before it has
been answered (a pipelined ``GET /job`` sees the ``POST /job`` before it).
Reading pauses while more than :data:`MAX_PIPELINED` requests wait, or while
the transport's write buffer is full.

Limits and errors match twisted.web's, with JSON bodies where twisted.web
answers a bare 400: a body declared over ``max_body`` gets 413 before it is
read, a head over ``HTTPChannel.totalHeadersSize`` bytes or with more than
``HTTPChannel.maxHeaders`` headers and a malformed request get 400; all three
close the connection. A connection has no idle timeout (twisted.web's is 12
hours): nothing is scheduled per connection.
"""

from collections import deque
from collections.abc import Iterable
from io import BytesIO
from urllib.parse import unquote_to_bytes

import httptools
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer, ITCPTransport, ITransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, HTTPChannel, datetimeToString, parse_qs
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.server import version as SERVER_VERSION
from zope.interface import implementer

from allq.client.http import error_body, json_response
from allq.client.http_request import EndHook, too_large_response
from allq.client.site import OneWriteHTTPChannel
from allq.errors import BadRequest
from allq.socket_writes import write_now
from allq.wire.messages import dumps

#: Parsed requests that may wait behind the one being answered before reading pauses.
MAX_PIPELINED = 16
#: ``--http-parser`` values.
PARSERS = ("httptools", "twisted")

_log = Logger()
_VERSIONS = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0"}
#: twisted.web's default ``Content-Type`` (``Request.defaultContentType``).
_DEFAULT_CONTENT_TYPE = b"text/html"
_NO_BODY_CODES = (204, 304)


class FastHTTPFactory(Factory):
    """Serves ``site`` with :class:`FastHTTPProtocol`: ``routes`` directly, the rest
    through the site's own ``HTTPChannel``.

    In-flight tracking and the body limit are the site's request class's
    (:func:`allq.client.http_request.request_class`), so both paths count and
    limit alike.

    :param site: the client's site (:func:`allq.client.site.build_site`).
    :param routes: ``(method, path)`` pairs served without twisted.web
        (``RestApi.fast_routes()``'s keys).
    """

    noisy = False

    def __init__(self, site: Site, routes: Iterable[tuple[bytes, bytes]]) -> None:
        self.site = site
        self.routes = frozenset(routes)
        self.max_body: int | None = getattr(site.requestFactory, "max_body", None)
        self.tracker = getattr(site.requestFactory, "tracker", None)
        self._date_second: int | None = None
        self._date = b""

    def doStart(self) -> None:
        # The site keeps the access log open and its timestamp fresh while it listens.
        self.site.doStart()

    def doStop(self) -> None:
        self.site.doStop()

    def buildProtocol(self, addr) -> "FastHTTPProtocol":
        return FastHTTPProtocol(self)

    def date(self) -> bytes:
        """The ``Date`` header's value now (formatted once a second)."""
        second = int(self.site.reactor.seconds())
        if second != self._date_second:
            self._date_second = second
            self._date = datetimeToString(second)
        return self._date


def http_factory(site: Site, routes: Iterable[tuple[bytes, bytes]],
                 parser: str = "httptools") -> Factory:
    """The factory the client listens with: ``--http-parser httptools`` (the
    default) puts :class:`FastHTTPFactory` in front of ``site``; ``twisted``
    serves ``site`` alone."""
    if parser not in PARSERS:
        raise ValueError(f"unknown HTTP parser {parser!r}: use one of {', '.join(PARSERS)}")
    return site if parser == "twisted" else FastHTTPFactory(site, routes)


class _Stop(Exception):
    """Raised in a parser callback: the connection reads no further request."""


class _Refused(Exception):
    """Raised in a parser callback: answer ``response`` and close the connection."""

    def __init__(self, response: bytes) -> None:
        super().__init__()
        self.response = response


#: twisted.web's limits on a request's head (``HTTPChannel``).
_HEAD_LIMIT = HTTPChannel.totalHeadersSize
_MAX_HEADERS = HTTPChannel.maxHeaders
#: The most bytes taken while a head is incomplete: the limit, and one read's worth
#: (the read that began the head may also hold the end of the request before it).
_HEAD_BUFFER = _HEAD_LIMIT + 65536


def _head_too_large() -> bytes:
    return _bad_request(f"the request's head is larger than {_HEAD_LIMIT} bytes")


def _bad_request(detail: str) -> bytes:
    body = dumps(error_body(BadRequest(detail))) + b"\n"
    return (b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))


@implementer(IPushProducer)
class FastHTTPProtocol(Protocol):
    """One HTTP/1.1 connection (see the module's docstring)."""

    def __init__(self, factory: FastHTTPFactory) -> None:
        self._factory = factory
        self._parser = httptools.HttpRequestParser(self)
        #: Requests in arrival order; the first is being answered (or waits for its body).
        self._queue: deque = deque()
        #: The request whose head or body is being received.
        self._receiving = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        #: Bytes received while a head is incomplete (httptools buffers a header
        #: until it ends: this bounds that buffer).
        self._in_head = False
        self._head_bytes = 0
        #: An upgrade request being read, then the connection's, handed to twisted.web.
        self._upgrading = None
        self._handed_over = None
        self._closing = False
        self._advancing = False
        self._write_blocked = False
        self._reading_paused = False

    # -- the connection ---------------------------------------------------------------

    def connectionMade(self) -> None:
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)  # as twisted.web's channel does
        self.transport.registerProducer(self, True)

    def dataReceived(self, data: bytes) -> None:
        if self._handed_over is not None:
            self._handed_over.receive(data)
            return
        if self._closing:
            return  # after a response that closes the connection, as twisted.web does
        try:
            self._parser.feed_data(data)
            if self._in_head:
                self._head_bytes += len(data)
                if self._head_bytes > _HEAD_BUFFER:
                    raise _Refused(_head_too_large())
        except _Refused as refused:
            self._refuse(refused.response)
        except httptools.HttpParserUpgrade as upgrade:
            self._handed_over = self._upgrading
            self._handed_over.receive(data[upgrade.args[0]:])
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__context__, _Refused):
                self._refuse(e.__context__.response)
            elif not isinstance(e.__context__, _Stop):
                raise
        except httptools.HttpParserError as e:
            self._refuse(_bad_request(f"malformed HTTP request: {str(e)[:200]}"))
        self._advance()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closing = True
        queue, self._queue = self._queue, deque()
        for exchange in queue:
            exchange.connection_lost(reason)

    # The transport's write buffer: answer no further request while it is full.

    def pauseProducing(self) -> None:
        self._write_blocked = True
        self._update_reading()

    def resumeProducing(self) -> None:
        self._write_blocked = False
        self._advance()

    def stopProducing(self) -> None:
        pass  # the connection is closing; connectionLost ends what is in flight

    # -- the parser's callbacks -------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._closing:
            raise _Stop()  # a response closed the connection while this chunk was read
        self._url = b""
        self._headers = []
        self._head_size = 0
        self._in_head = True
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > _HEAD_LIMIT:
            raise _Refused(_head_too_large())

    def on_header(self, name: bytes, value: bytes) -> None:
        # As twisted.web counts: the bytes of the head's lines, and the headers.
        headers = self._headers
        headers.append((name, value))
        self._head_size += len(name) + len(value) + 2
        if self._head_size > _HEAD_LIMIT:
            raise _Refused(_head_too_large())
        if len(headers) > _MAX_HEADERS:
            raise _Refused(_bad_request(f"a request may have at most {_MAX_HEADERS} headers"))

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        method = parser.get_method()
        url = self._url
        path = url.partition(b"?")[0]
        proto = _VERSIONS.get(parser.get_http_version())
        headers = {name.lower(): value for name, value in self._headers}
        if ((method, path) in self._factory.routes and proto is not None
                and not parser.should_upgrade() and b"transfer-encoding" not in headers
                and b"expect" not in headers):
            length = headers.get(b"content-length")
            max_body = self._factory.max_body
            if max_body is not None and length is not None and int(length) > max_body:
                raise _Refused(too_large_response(max_body))
            persistent = proto == b"HTTP/1.1" and parser.should_keep_alive()
            exchange = FastRequest(self, self._factory, method, url, path, proto, headers,
                                   persistent)
        else:
            upgrade = parser.should_upgrade()
            exchange = _Fallback(self, _request_head(method, url, parser, self._headers),
                                 chunked=b"transfer-encoding" in headers, for_good=upgrade)
            if upgrade:
                self._upgrading = exchange
        self._receiving = exchange
        self._queue.append(exchange)

    def on_body(self, data: bytes) -> None:
        self._receiving.body_received(data)

    def on_message_complete(self) -> None:
        receiving, self._receiving = self._receiving, None
        receiving.body_complete()

    # -- answering, in order ------------------------------------------------------------

    def _refuse(self, response: bytes) -> None:
        """Answer ``response`` once the requests before it are answered, then close;
        a request cut short by it is dropped."""
        receiving, self._receiving = self._receiving, None
        if receiving is not None:
            if self._queue and self._queue[0] is receiving and receiving.started:
                self._queue.popleft()
                receiving.connection_lost(Failure(ConnectionDone("malformed request")))
            elif receiving in self._queue:
                self._queue.remove(receiving)
        self._closing = True
        self._queue.append(_Refusal(self, response))

    def _advance(self) -> None:
        """Start the first request waiting, if the one before it is answered."""
        if self._advancing:
            return  # a request answered at once inside the loop below
        self._advancing = True
        try:
            while self._queue and not self._write_blocked:
                head = self._queue[0]
                if head.started or not head.ready:
                    break
                head.start()
        finally:
            self._advancing = False
        self._update_reading()

    def answered(self, exchange, close: bool) -> None:
        """``exchange`` (the first request) has been answered; ``close``: and the
        connection must close."""
        if not self._queue or self._queue[0] is not exchange:
            return  # the connection was lost meanwhile
        self._queue.popleft()
        if close:
            self._closing = True
            self._queue.clear()
            self.transport.unregisterProducer()
            self.transport.loseConnection()
            return
        self._advance()

    def _update_reading(self) -> None:
        pause = (self._write_blocked or len(self._queue) > MAX_PIPELINED) and not self._closing
        if pause != self._reading_paused:
            self._reading_paused = pause
            if pause:
                self.transport.pauseProducing()
            else:
                self.transport.resumeProducing()


def _request_head(method: bytes, url: bytes, parser, headers) -> bytes:
    """A request's line and headers as twisted.web reads them."""
    lines = [b"%s %s HTTP/%s" % (method, url, parser.get_http_version().encode("ascii"))]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


class FastRequest:
    """A hot route's request: what the site's resources use of ``IRequest``
    (``method``, ``path``, ``args``, ``content``, headers in and out, ``write``,
    ``finish``, :meth:`when_done`), answered in one write.

    Attribute names are twisted.web's, so the access log's formatter reads it too.
    """

    code = 200
    code_message = b"OK"
    sentLength = 0
    finished = False

    def __init__(self, connection: FastHTTPProtocol, factory: FastHTTPFactory, method: bytes,
                 uri: bytes, path: bytes, clientproto: bytes, headers: dict[bytes, bytes],
                 persistent: bool) -> None:
        self._connection = connection
        self._factory = factory
        self.method = method
        self.uri = uri
        self.path = path
        self.clientproto = clientproto
        self._received = headers
        self._persistent = persistent
        query = uri.partition(b"?")[2]
        self.args = parse_qs(query, 1) if query else {}
        self.prepath: list[bytes] = []
        segments = path[1:].split(b"/")
        self.postpath = ([unquote_to_bytes(segment) for segment in segments] if b"%" in path
                         else segments)
        self.content = _EMPTY
        self._body: list[bytes] = []
        #: lower-case name → value, in the order set (twisted.web's order on the wire)
        self._response_headers: dict[bytes, bytes] = {}
        self._out: list[bytes] = []
        self._end_hooks: list[EndHook] | None = None
        self.ready = False
        self.started = False
        self._gone = False

    # -- receiving (the connection's side) --------------------------------------------

    def body_received(self, data: bytes) -> None:
        self._body.append(data)

    def body_complete(self) -> None:
        if self._body:
            self.content = BytesIO(b"".join(self._body))
            self._body = []
        else:
            self.content = BytesIO()
        self.ready = True

    def start(self) -> None:
        """Route the request through the site's resources."""
        self.started = True
        self._end_hooks = []
        tracker = self._factory.tracker
        if tracker is not None:
            tracker.started()
        headers = self._response_headers
        if not self._persistent and self.clientproto == b"HTTP/1.1":
            headers[b"connection"] = b"close"  # as twisted.web says it, first
        headers[b"server"] = SERVER_VERSION
        headers[b"date"] = self._factory.date()
        site = self._factory.site
        try:
            resource = site.resource
            if not resource.isLeaf:
                resource = site.getResourceFor(self)
            else:
                self.site = site
            body = resource.render(self)
        except Exception:
            _log.failure("unhandled error serving {method} {path}", method=self.method,
                         path=self.path)
            self._response_headers.clear()
            body = self._internal_error()
        if body is NOT_DONE_YET:
            return
        self.write(body)
        self.finish()

    def _internal_error(self) -> bytes:
        return json_response(self, {"error": "internal_error",
                                    "detail": "internal error (logged)"}, 500)

    def connection_lost(self, reason: Failure) -> None:
        if self.started and not self.finished:
            self._gone = True
            self._ended(False)

    # -- IRequest, as the resources use it --------------------------------------------

    def getHeader(self, name: bytes | str) -> bytes | None:
        if isinstance(name, str):
            name = name.encode("ascii")
        return self._received.get(name.lower())

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        if name.__class__ is not bytes:
            name = name.encode("ascii")
        if value.__class__ is not bytes:
            value = value.encode("utf-8")
        self._response_headers[name.lower()] = value

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        self.code = code
        self.code_message = message or RESPONSES.get(code, b"Unknown Status")

    def getClientAddress(self):
        return self._connection.transport.getPeer()

    getPeer = getClientAddress

    def getHost(self):
        return self._connection.transport.getHost()

    def isSecure(self) -> bool:
        return False

    def when_done(self, hook: EndHook) -> None:
        """Run ``hook(completed)`` once, when this request ends (see
        :func:`allq.client.http_request.when_done`)."""
        if self._end_hooks is None:
            raise RuntimeError("when_done() before the request is processed")
        self._end_hooks.append(hook)

    def write(self, data: bytes) -> None:
        if self.finished:
            raise RuntimeError("Request.write called on a request after Request.finish "
                               "was called.")
        if self._gone:
            return
        self._out.append(data)
        self.sentLength += len(data)

    def finish(self) -> None:
        if self._gone:
            raise RuntimeError("Request.finish called on a request after its connection "
                               "was lost")
        if self.finished:
            return
        self.finished = True
        out = self._out
        body = out[0] if len(out) == 1 else b"".join(out)
        headers = self._response_headers
        no_body = self.code in _NO_BODY_CODES
        if not no_body:
            if b"content-length" not in headers:
                headers[b"content-length"] = b"%d" % len(body)
            if b"content-type" not in headers and headers[b"content-length"] != b"0":
                headers[b"content-type"] = _DEFAULT_CONTENT_TYPE
        parts = [self.clientproto, b" %d " % self.code, self.code_message, b"\r\n"]
        canonical = _CANONICAL
        for name, value in headers.items():
            parts += (canonical.get(name) or _canonical(name), b": ", value, b"\r\n")
        parts += (b"\r\n", b"" if no_body else body)
        write_now(self._connection.transport, b"".join(parts))
        self._factory.site.log(self)
        self._ended(True)
        self._connection.answered(self, close=not self._persistent)

    def _ended(self, completed: bool) -> None:
        hooks, self._end_hooks = self._end_hooks, None
        if hooks is None:
            return
        tracker = self._factory.tracker
        if tracker is not None:
            tracker.ended()
        for hook in hooks:
            hook(completed)


_EMPTY = BytesIO()  # a request's body until it is complete (never read)
_CANONICAL: dict[bytes, bytes] = {}


def _canonical(name: bytes) -> bytes:
    """A header name as twisted.web writes it (``content-type`` → ``Content-Type``)."""
    canonical = _CANONICAL.get(name)
    if canonical is None:
        canonical = b"-".join(part.capitalize() for part in name.split(b"-"))
        if len(_CANONICAL) < 256:
            _CANONICAL[name] = canonical
    return canonical


class _Fallback:
    """A request twisted.web answers: its head and body, as they arrive, go to an
    ``HTTPChannel`` of the site made for it once it is the request being answered."""

    ready = True

    def __init__(self, connection: FastHTTPProtocol, head: bytes, *, chunked: bool,
                 for_good: bool) -> None:
        self._connection = connection
        self._chunked = chunked
        self._pending: list[bytes] | None = [head]
        self._channel: _FallbackChannel | None = None
        self._relay: _Relay | None = None
        #: An upgrade: the channel keeps the connection (every later byte is its).
        self._for_good = for_good
        self.started = False

    def body_received(self, data: bytes) -> None:
        if not data:
            return  # (httptools reports an empty read as an empty piece: no chunk)
        if self._chunked:  # the parser took the chunks apart; twisted.web reads chunks
            data = b"%x\r\n%s\r\n" % (len(data), data)
        self.receive(data)

    def body_complete(self) -> None:
        if self._chunked:
            self.receive(b"0\r\n\r\n")

    def receive(self, data: bytes) -> None:
        if self._channel is not None:
            if not self._relay.detached:
                self._channel.dataReceived(data)
        else:
            self._pending.append(data)

    def start(self) -> None:
        self.started = True
        connection = self._connection
        site = connection._factory.site
        channel = self._channel = _FallbackChannel(self)
        # What Site.buildProtocol sets; no idle timer (the connection is ours).
        channel.factory = site
        channel.site = site
        channel.requestFactory = site.requestFactory
        channel.callLater = site.reactor.callLater
        channel.timeOut = None
        self._relay = _Relay(connection.transport, self)
        channel.makeConnection(self._relay)
        pending, self._pending = self._pending, None
        channel.dataReceived(b"".join(pending))

    def request_done(self) -> None:
        """The channel answered the request and would read the next one."""
        if not self._for_good:
            self._end(close=False)

    def closed(self) -> None:
        """The channel closed the connection (``Connection: close``, HTTP/1.0, its 400 or 413)."""
        self._end(close=True)

    def _end(self, close: bool) -> None:
        self._relay.detached = True
        self._channel.connectionLost(Failure(ConnectionDone()))
        self._connection.answered(self, close)

    def connection_lost(self, reason: Failure) -> None:
        if self._channel is not None and not self._relay.detached:
            self._relay.detached = True
            self._channel.connectionLost(reason)


class _FallbackChannel(OneWriteHTTPChannel):
    """The site's channel for one request (or, after an upgrade, the rest of the
    connection); tells its :class:`_Fallback` when the request was answered."""

    def __init__(self, exchange: _Fallback) -> None:
        super().__init__()
        self._exchange = exchange

    def requestDone(self, request) -> None:
        super().requestDone(request)
        if self.persistent:
            self._exchange.request_done()


@implementer(ITransport)
class _Relay:
    """A fallback channel's transport: writes go to the connection while its
    request is the one being answered; closing it closes the connection in turn."""

    def __init__(self, transport, exchange: _Fallback) -> None:
        self._transport = transport
        self._exchange = exchange
        self.detached = False
        self.disconnecting = False

    def write(self, data: bytes) -> None:
        if not self.detached:
            self._transport.write(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        if not self.disconnecting and not self.detached:
            self.disconnecting = True
            self._exchange.closed()

    def abortConnection(self) -> None:
        self.disconnecting = True
        self._transport.abortConnection()

    def getPeer(self):
        return self._transport.getPeer()

    def getHost(self):
        return self._transport.getHost()


class _Refusal:
    """A canned error answer (400, 413) that closes the connection."""

    ready = True
    started = False

    def __init__(self, connection: FastHTTPProtocol, response: bytes) -> None:
        self._connection = connection
        self._response = response

    def start(self) -> None:
        self.started = True
        self._connection.transport.write(self._response)
        self._connection.answered(self, close=True)

    def connection_lost(self, reason: Failure) -> None:
        pass

