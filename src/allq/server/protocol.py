"""The server's connection adapter: bytes in, dispatcher calls, bytes out.

Per connection: send a challenge, authenticate the client's HELLO, then for each
line decrypt, decode JSON, hand the value to the :class:`Dispatcher`, and send
the encrypted reply. No queue logic lives here. A line that cannot be trusted
(bad handshake, undecryptable, replayed or oversized frame) gets a clear-text
``ERROR <code> <message>`` line and the connection is closed; a frame that
decrypts but is not a valid request gets an encrypted error reply and the
connection stays open. Either way the server keeps serving everyone else.

Bounds on what a connection may hold (STYLE.md rule 11):

* before the handshake, :data:`HELLO_MAX_LENGTH` bytes and
  :data:`HANDSHAKE_TIMEOUT` seconds;
* after it, one line of at most ``max_line_length`` bytes, and no more than
  ``idle_timeout`` seconds without receiving a byte (``ERROR idle_timeout``;
  clients send a ``ping`` when they have nothing else to say);
* all connections together buffer at most ``partial_budget`` bytes of
  unfinished lines: the connection whose read goes over it is closed with
  ``ERROR busy`` (a few clients each sending the start of a maximal frame
  cannot make the server hold gigabytes).

Connection modes: the factory's ``choose_mode`` hook sees a connection's first
frame and may turn the connection into a special one for good (a primary's
replication stream, a ``serve_as`` link to a promoted replica:
:mod:`allq.server.replica_host`). Such a connection's frames go to its mode's
``handle_frame`` instead of the dispatcher; the mode may ask for the connection
to be closed once its reply is sent (:meth:`ServerProtocol.close_after_reply`).
"""

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from allq import __version__
from allq.errors import AllQError, BadRequest
from allq.server.dispatch import Dispatcher
from allq.wire.crypto import (
    Authenticator,
    FrameError,
    HandshakeError,
    MalformedFrame,
    ReplayedFrame,
    Session,
    TamperedFrame,
    challenge_line,
    new_challenge,
)
from allq.wire.messages import dumps, error_reply, loads, welcome

HANDSHAKE_TIMEOUT = 10.0
#: Seconds an authenticated connection may stay silent (``--idle-timeout``).
DEFAULT_IDLE_TIMEOUT = 300.0
#: Unfinished lines all connections may buffer together, in maximal lines.
PARTIAL_LINES_BUDGET = 32
#: Longest line accepted before the handshake; a HELLO is about 150 bytes. Until the
#: client has proved its key it must not make us buffer a whole max_line_length.
HELLO_MAX_LENGTH = 1024
MAX_BATCH = 1000
#: A connection whose first frame has not arrived yet (its mode is not chosen).
_UNDECIDED = object()
_FRAME_ERROR_CODES = {
    MalformedFrame: "malformed_frame",
    ReplayedFrame: "replayed_frame",
    TamperedFrame: "tampered_frame",
}


class ServerProtocol(LineOnlyReceiver):
    """One client connection to an allq server."""

    delimiter = b"\n"
    _log = Logger()

    def __init__(self, factory: "ServerFactory") -> None:
        self._factory = factory
        self.MAX_LENGTH = min(HELLO_MAX_LENGTH, factory.max_line_length)
        self._challenge = b""
        self._session: Session | None = None
        self._handshake_timeout: IDelayedCall | None = None
        self._idle_call: IDelayedCall | None = None
        self._last_read = 0.0
        #: Bytes of an unfinished line this connection counts in the factory's budget.
        self._partial = 0
        #: This connection's mode (``None``: an ordinary client connection); see
        #: the module docstring.
        self.mode = _UNDECIDED if getattr(factory, "choose_mode", None) is not None else None
        self._close_after: tuple[str, str] | None = None

    @property
    def client_key(self) -> bytes | None:
        """The authenticated client's public key (``None`` before the handshake)."""
        return None if self._session is None else self._session.peer_public

    def connectionMade(self) -> None:
        # A reply is one frame that its client may be waiting on: Nagle's
        # algorithm would hold it for the client's delayed ACK.
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)
        self._challenge = new_challenge()
        self._handshake_timeout = self._factory.clock.callLater(
            HANDSHAKE_TIMEOUT, self._refuse, "handshake_timeout", "no HELLO in time"
        )
        self.sendLine(challenge_line(self._challenge))

    def connectionLost(self, reason: Failure) -> None:
        self._cancel_handshake_timeout()
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None
        factory = self._factory
        factory.partial_bytes -= self._partial
        self._partial = 0
        if self._session is not None:
            factory.connection_closed(self)
        self._session = None
        mode, self.mode = self.mode, None
        if mode is not None and mode is not _UNDECIDED:
            mode.connection_lost()

    def dataReceived(self, data: bytes) -> None:
        factory = self._factory
        self._last_read = factory.clock.seconds()
        LineOnlyReceiver.dataReceived(self, data)
        # The replies to these frames wait in the transport's buffer until this
        # returns to the reactor: make the changes they acknowledge durable first
        # (one journal commit per read, not per frame).
        try:
            factory.after_data()
        except Exception as e:
            # Not durable, so not acknowledged: drop the replies with the connection
            # (abortConnection discards the transport's buffer). The journal has
            # logged why; the client retries or fails over.
            self._drop_unacknowledged(e)
            return
        partial = len(self._buffer)
        if partial != self._partial:
            factory.partial_bytes += partial - self._partial
            self._partial = partial
            if partial and factory.partial_bytes > factory.partial_budget:
                self._refuse("busy", "too many unfinished frames on this server; retry later")

    def _drop_unacknowledged(self, error: Exception) -> None:
        self._log.warn("dropping a connection with unacknowledged replies: {error}",
                       error=error)
        self.transport.abortConnection()

    def close_session(self, code: str, message: str) -> None:
        """Close this connection with ``ERROR <code> <message>`` (e.g. its key was revoked)."""
        self._refuse(code, message)

    def close_after_reply(self, code: str, message: str) -> None:
        """From a mode's ``handle_frame``: close with ``ERROR <code> <message>`` right
        after the reply it is returning has been sent."""
        self._close_after = (code, message)

    def lineReceived(self, line: bytes) -> None:
        if self._session is None:
            self._hello(line)
        else:
            self._frame(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._refuse("too_large", f"line longer than {self.MAX_LENGTH} bytes")

    def _hello(self, line: bytes) -> None:
        try:
            self._session = self._factory.authenticator.accept(line, self._challenge)
        except HandshakeError as e:
            self._refuse(e.code, e.message)
            return
        self._cancel_handshake_timeout()
        factory = self._factory
        self.MAX_LENGTH = factory.max_line_length
        if factory.idle_timeout:
            self._idle_call = factory.clock.callLater(factory.idle_timeout, self._check_idle)
        factory.connection_authenticated(self)
        self._send(
            welcome(factory.server_id(), __version__, factory.max_job_size,
                    factory.max_line_length, **factory.welcome_extra())
        )

    def _frame(self, line: bytes) -> None:
        try:
            plaintext = self._session.open(line)
        except FrameError as e:
            self._refuse(_FRAME_ERROR_CODES.get(type(e), "bad_frame"), str(e))
            return
        try:
            obj = loads(plaintext)
            if isinstance(obj, list) and not 0 < len(obj) <= MAX_BATCH:
                raise BadRequest(f"a batch holds 1 to {MAX_BATCH} requests")
        except BadRequest as e:
            self._send(error_reply(None, e))
            return
        factory = self._factory
        mode = self.mode
        if mode is not None:
            if mode is _UNDECIDED:
                mode = self.mode = factory.choose_mode(self, obj)
            if mode is not None:
                self._mode_frame(mode, obj)
                return
        try:
            reply = factory.dispatcher.handle_frame(obj)
        except Exception:
            # A bug, not the client's fault: say so, and keep the connection.
            self._log.failure("handling a frame failed")
            self._send(error_reply(None, AllQError("internal error handling the frame")))
            return
        # What _send does, inline: this is the path of every request. Buffered, never
        # written at once (allq.socket_writes): a reply acknowledges a change, so it
        # may leave only after dataReceived's journal commit.
        self.sendLine(self._session.seal(dumps(reply)))
        factory.after_frame()

    def _mode_frame(self, mode, obj: object) -> None:
        """A frame of a connection in a mode: its mode answers it (or not: ``None``)."""
        try:
            reply = mode.handle_frame(obj)
        except Exception:
            self._log.failure("handling a frame failed")
            reply = error_reply(None, AllQError("internal error handling the frame"))
        if reply is not None and self._session is not None:
            self._send(reply)
        closing, self._close_after = self._close_after, None
        if closing is not None and self._session is not None:
            self._refuse(*closing)

    def _check_idle(self) -> None:
        """The idle timer fired: close the connection, or re-arm for the time left.

        One timer per connection, re-armed only when it fires (a read just
        records the time): no timer work on the path of every frame.
        """
        self._idle_call = None
        timeout = self._factory.idle_timeout
        silent = self._factory.clock.seconds() - self._last_read
        if silent >= timeout:
            self._refuse("idle_timeout", f"nothing received for {timeout:g} s")
        else:
            self._idle_call = self._factory.clock.callLater(timeout - silent, self._check_idle)

    def _send(self, obj: object) -> None:
        self.sendLine(self._session.seal(dumps(obj)))

    def _refuse(self, code: str, message: str) -> None:
        self._handshake_timeout = None if code == "handshake_timeout" else self._handshake_timeout
        peer = self.transport.getPeer()
        self._log.warn(
            "closing connection from {peer}: {code}: {message}",
            peer=f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}",
            code=code, message=message,
        )
        self.transport.write(f"ERROR {code} {message}".encode("utf-8")[:500] + b"\n")
        self.transport.loseConnection()
        if self._session is not None:
            self._factory.connection_closed(self)
        self._session = None

    def _cancel_handshake_timeout(self) -> None:
        if self._handshake_timeout is not None and self._handshake_timeout.active():
            self._handshake_timeout.cancel()
        self._handshake_timeout = None


class ServerFactory(Factory):
    """Builds :class:`ServerProtocol` for each connection; holds what they share.

    :param authenticator: checks client handshakes (one precomputed box per key).
    :param dispatcher: applies decrypted requests to the queue.
    :param clock: for handshake timeouts.
    :param server_id: a callable giving this server's id.
    :param after_frame: called after each handled frame (re-arms the deadline timer).
    :param after_data: called after the frames of each read, before their replies
        are written out (commits the journal); if it raises, the connection is
        aborted and those replies are never sent.
    :param idle_timeout: seconds an authenticated connection may stay silent
        (``None`` or 0: forever).
    :param partial_budget: bytes of unfinished lines all connections may buffer
        together (default: :data:`PARTIAL_LINES_BUDGET` maximal lines).
    :param choose_mode: given a connection and its first frame, the mode that
        handles that connection's frames from then on (``handle_frame(obj)`` ->
        reply or ``None``, ``connection_lost()``), or ``None`` for an ordinary
        connection (see the module docstring).
    :ivar sessions: the authenticated connections by client public key, so a
        revoked key's connections can be closed (:meth:`close_sessions`).
    """

    noisy = False
    #: The connection class (:mod:`allq.server.held_replies` with a replica).
    protocol = ServerProtocol
    #: What a welcome adds (a replicating primary's epoch and backup).
    welcome_extra: Callable[[], dict] = staticmethod(dict)
    #: The :class:`allq.server.replication.Replicator` holding replies (``--replica``).
    replicator = None

    def __init__(
        self,
        authenticator: Authenticator,
        dispatcher: Dispatcher,
        clock: IReactorTime,
        server_id: Callable[[], str],
        max_job_size: int,
        max_line_length: int,
        after_frame: Callable[[], None] = lambda: None,
        after_data: Callable[[], None] = lambda: None,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        partial_budget: int | None = None,
        choose_mode: Callable[["ServerProtocol", object], object | None] | None = None,
    ) -> None:
        self.authenticator = authenticator
        self.dispatcher = dispatcher
        self.clock = clock
        self.server_id = server_id
        self.max_job_size = max_job_size
        self.max_line_length = max_line_length
        self.after_frame = after_frame
        self.after_data = after_data
        self.idle_timeout = idle_timeout
        self.partial_budget = (PARTIAL_LINES_BUDGET * max_line_length
                               if partial_budget is None else partial_budget)
        self.partial_bytes = 0
        self.choose_mode = choose_mode
        self.sessions: dict[bytes, set[ServerProtocol]] = {}

    def buildProtocol(self, addr) -> ServerProtocol:
        return self.protocol(self)

    def connection_authenticated(self, protocol: ServerProtocol) -> None:
        """Count ``protocol`` among its client key's sessions (its handshake succeeded)."""
        self.sessions.setdefault(protocol.client_key, set()).add(protocol)

    def connection_closed(self, protocol: ServerProtocol) -> None:
        """Forget an authenticated connection (closed, or being closed)."""
        key = protocol.client_key
        open_ = self.sessions.get(key)
        if open_ is not None:
            open_.discard(protocol)
            if not open_:
                del self.sessions[key]

    def set_authenticator(self, authenticator: Authenticator) -> int:
        """Accept the keys of ``authenticator`` from now on, and close the sessions
        of every client key it no longer accepts.

        :returns: how many connections were closed.
        """
        self.authenticator = authenticator
        closed = 0
        for key in [key for key in self.sessions if not authenticator.accepts(key)]:
            for protocol in list(self.sessions.get(key, ())):
                protocol.close_session("revoked", "this client key is no longer authorized")
                closed += 1
        return closed
