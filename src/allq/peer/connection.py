"""One encrypted, pipelined connection from a client to an allq server.

:class:`ServerConnection` answers the server's challenge, waits for its welcome,
then sends requests tagged with ids and matches replies to a ``{id: Deferred}``
map, so any number of requests may be in flight on one connection. Each request
Deferred times out on the injected clock; when the connection is lost every
pending Deferred fails with :class:`ConnectionLost`. Errors the server reports
come back as the matching :class:`AllQError` subclass.

Used by the REST client's server pool, by the integration tests and by the
benchmarks (:func:`connect` is the whole public entry point for a script).
"""

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from allq.expiry import Expiry
from allq.errors import (
    AllQError,
    BadRequest,
    ConnectionLost,
    ProtocolError,
    Timeout,
    error_for_code,
)
from allq.socket_writes import write_now
from allq.vocabulary import MAX_BATCH, SERVER_REQUEST_TIMEOUT
from allq.wire.crypto import FrameError, HandshakeError, Session, client_hello, parse_challenge_line
from allq.wire.keys import ClientKeys
from allq.wire.messages import dumps, encode_request, loads, max_line_length

#: Requests made in one reactor turn that go out together in one frame at most.
MAX_COALESCED = 100
_ERROR_PREFIX = b"ERROR "


class ServerConnection(LineOnlyReceiver):
    """The client end of one connection.

    :param keys: the client's keys (and the server's public key).
    :param clock: for request timeouts.
    :param request_timeout: seconds a request may wait for its reply.
    :param coalesce: send the requests made during one reactor turn together, as
        one batch frame (each still resolves on its own): pipelined callers then
        pay one encryption and one frame per turn instead of one per request.
    :ivar ready: fires with this connection once the server's welcome arrived, or
        fails with the handshake error.
    :ivar welcome: the server's welcome (``server_id``, ``version``, limits).
    :ivar lost: fires (with ``None``) when the connection closes.
    """

    delimiter = b"\n"
    _log = Logger()

    def __init__(
        self,
        keys: ClientKeys,
        clock: IReactorTime,
        request_timeout: float = SERVER_REQUEST_TIMEOUT,
        max_job_size: int = 16 * 1024 * 1024,
        coalesce: bool = False,
    ) -> None:
        self._keys = keys
        self._clock = clock
        self._timeout = request_timeout
        self._coalesce = coalesce
        self._outbox: list[dict] = []
        self._flush_call: IDelayedCall | None = None
        self._batches: set[int] = set()  # first ids of explicit batches in flight
        self.MAX_LENGTH = max_line_length(max_job_size)
        self._session: Session | None = None
        self._pending: dict[int, Deferred] = {}
        self._expiry = Expiry(clock)
        self._next_id = 1
        self.welcome: Mapping[str, Any] = {}
        self.ready: Deferred = Deferred()
        self.lost: Deferred = Deferred()
        self.closed = False

    @property
    def server_id(self) -> str:
        """The id the server announced in its welcome."""
        return self.welcome["server_id"]

    @property
    def pending(self) -> int:
        """How many requests wait for a reply."""
        return len(self._pending)

    # -- requests --------------------------------------------------------------

    def request(self, action: str, params: Mapping[str, Any] | None = None) -> Deferred:
        """Send one request.

        :returns: a Deferred firing with the result object, or failing with the
            :class:`AllQError` the server reported, :class:`Timeout` or
            :class:`ConnectionLost`.
        """
        request_id = self._allocate_id()
        return self._send(request_id, encode_request(request_id, action, params or {}))

    def batch(self, requests: Sequence[tuple[str, Mapping[str, Any]]]) -> Deferred:
        """Send several requests in one frame.

        :returns: a Deferred firing with a list holding, per request, its result
            object or its :class:`AllQError` (errors are values here, so one bad
            request does not hide the others' results).
        """
        if not 0 < len(requests) <= MAX_BATCH:
            return fail(BadRequest(f"a batch holds 1 to {MAX_BATCH} requests"))
        first = self._allocate_id(len(requests))
        frame = [
            encode_request(first + offset, action, params)
            for offset, (action, params) in enumerate(requests)
        ]
        self._batches.add(first)
        return self._send(first, frame).addBoth(self._batch_done, first)

    def _batch_done(self, result, first: int):
        self._batches.discard(first)
        return result

    def close(self) -> None:
        """Close the connection; pending requests fail with ConnectionLost."""
        if self.transport is not None:
            self.transport.loseConnection()

    def _allocate_id(self, count: int = 1) -> int:
        request_id = self._next_id
        self._next_id += count
        return request_id

    def _send(self, key: int, frame: object) -> Deferred:
        if self._session is None or self.closed:
            return fail(ConnectionLost("not connected"))

        def cancel(d: Deferred) -> None:
            self._pending.pop(key, None)

        d = Deferred(cancel)
        self._pending[key] = d
        if self._coalesce and isinstance(frame, dict):
            self._outbox.append(frame)
            if len(self._outbox) >= MAX_COALESCED:
                self._flush()
            elif self._flush_call is None:
                self._flush_call = self._clock.callLater(0, self._flush)
        else:
            self._write_frame(frame)
        return self._expiry.watch(d, self._timeout, self._timed_out)

    def _write_frame(self, message: object) -> None:
        # One write per frame, sent at once when nothing is buffered.
        write_now(self.transport, self._session.seal(dumps(message)) + b"\n")

    def _flush(self) -> None:
        """Send the requests queued this turn: alone, or as one batch frame."""
        self._cancel_flush()
        outbox, self._outbox = self._outbox, []
        if outbox and not self.closed:
            self._write_frame(outbox[0] if len(outbox) == 1 else outbox)

    def _cancel_flush(self) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None

    def _timed_out(self) -> Timeout:
        return Timeout(f"no reply within {self._timeout:g} s; the outcome is unknown")

    # -- receiving -------------------------------------------------------------

    def connectionMade(self) -> None:
        # Requests and replies are small frames, often several in flight:
        # Nagle's algorithm would hold one back for the server's delayed ACK.
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)

    def lineReceived(self, line: bytes) -> None:
        if line.startswith(_ERROR_PREFIX):
            self._server_refused(line)
            return
        try:
            if self._session is None:
                self._answer_challenge(line)
                return
            message = loads(self._session.open(line))
        except (HandshakeError, FrameError, AllQError) as e:
            self._abort(ProtocolError(f"bad frame from server: {e}"))
            return
        if not self.welcome:
            self._welcomed(message)
        elif isinstance(message, list):
            first = message[0].get("id") if message and isinstance(message[0], dict) else None
            if first in self._batches:
                self._resolve(first, message, batch=True)
            else:  # requests coalesced into one frame: each resolves on its own
                for reply in message:
                    if isinstance(reply, dict):
                        self._resolve(reply.get("id"), reply, batch=False)
        elif isinstance(message, dict):
            self._resolve(message.get("id"), message, batch=False)

    def _answer_challenge(self, line: bytes) -> None:
        hello, self._session = client_hello(self._keys, parse_challenge_line(line))
        self.sendLine(hello)

    def _welcomed(self, message: object) -> None:
        if not (isinstance(message, dict) and isinstance(message.get("welcome"), dict)):
            self._abort(ProtocolError("the server sent no welcome"))
            return
        self.welcome = message["welcome"]
        if not self.ready.called:  # the handshake may have timed out meanwhile
            self.ready.callback(self)

    def _resolve(self, key: object, message: object, batch: bool) -> None:
        d = self._pending.pop(key, None)
        if d is None:
            if isinstance(message, dict) and "error" in message:
                # An error about a frame the server could not read: it names no request.
                self._log.warn("server reported: {error}", error=message["error"])
            return
        if batch:
            d.callback([_outcome(reply) for reply in message])
            return
        outcome = _outcome(message)
        if isinstance(outcome, AllQError):
            d.errback(outcome)
        else:
            d.callback(outcome)

    def _server_refused(self, line: bytes) -> None:
        _, _, rest = line.decode("utf-8", "replace").partition(" ")
        code, _, message = rest.partition(" ")
        self._abort(ConnectionLost(f"server refused: {code}: {message}"))

    def _abort(self, error: AllQError) -> None:
        self._fail_all(error)
        self.close()

    def connectionLost(self, reason: Failure = None) -> None:
        self.closed = True
        self._cancel_flush()
        self._outbox = []
        self._fail_all(ConnectionLost("connection to the server was lost"))
        self._expiry.stop()
        self.lost.callback(None)

    def _fail_all(self, error: AllQError) -> None:
        if not self.ready.called:
            self.ready.errback(error)
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(error)


def _outcome(reply: object) -> dict | AllQError:
    if not isinstance(reply, dict):
        return ProtocolError("malformed reply")
    if "error" in reply:
        error = reply["error"]
        return error_for_code(str(error.get("code")), str(error.get("message", "")))
    return reply.get("result", {})


class ServerConnectionFactory(Factory):
    """Builds one :class:`ServerConnection` per ``connect``."""

    noisy = False

    def __init__(self, keys: ClientKeys, clock: IReactorTime, request_timeout: float,
                 coalesce: bool = True) -> None:
        self._keys = keys
        self._clock = clock
        self._request_timeout = request_timeout
        self._coalesce = coalesce

    def buildProtocol(self, addr) -> ServerConnection:
        return ServerConnection(self._keys, self._clock, self._request_timeout,
                                coalesce=self._coalesce)


def connect(
    reactor,
    endpoint: IStreamClientEndpoint | str,
    keys: ClientKeys,
    request_timeout: float = SERVER_REQUEST_TIMEOUT,
) -> Deferred:
    """Open a connection and complete the handshake.

    :param endpoint: an endpoint, or a client endpoint string (``tcp:host=..:port=..``).
    :returns: a Deferred firing with a ready :class:`ServerConnection`.
    """
    if isinstance(endpoint, str):
        endpoint = clientFromString(reactor, endpoint)
    factory = ServerConnectionFactory(keys, reactor, request_timeout)
    return endpoint.connect(factory).addCallback(lambda connection: connection.ready)
