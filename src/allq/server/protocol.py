"""The server's connection adapter: bytes in, dispatcher calls, bytes out.

Per connection: send a challenge, authenticate the client's HELLO, then for each
line decrypt, decode JSON, hand the value to the :class:`Dispatcher`, and send
the encrypted reply. No queue logic lives here. A line that cannot be trusted
(bad handshake, undecryptable, replayed or oversized frame) gets a clear-text
``ERROR <code> <message>`` line and the connection is closed; a frame that
decrypts but is not a valid request gets an encrypted error reply and the
connection stays open. Either way the server keeps serving everyone else.
"""

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from allq import __version__
from allq.errors import BadRequest
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
#: Longest line accepted before the handshake; a HELLO is about 150 bytes. Until the
#: client has proved its key it must not make us buffer a whole max_line_length.
HELLO_MAX_LENGTH = 1024
MAX_BATCH = 1000
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

    def connectionMade(self) -> None:
        self._challenge = new_challenge()
        self._handshake_timeout = self._factory.clock.callLater(
            HANDSHAKE_TIMEOUT, self._refuse, "handshake_timeout", "no HELLO in time"
        )
        self.sendLine(challenge_line(self._challenge))

    def connectionLost(self, reason: Failure) -> None:
        self._cancel_handshake_timeout()
        self._session = None

    def dataReceived(self, data: bytes) -> None:
        LineOnlyReceiver.dataReceived(self, data)
        # The replies to these frames wait in the transport's buffer until this
        # returns to the reactor: make the changes they acknowledge durable first
        # (one journal commit per read, not per frame).
        self._factory.after_data()

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
        self._send(
            welcome(factory.server_id(), __version__, factory.max_job_size,
                    factory.max_line_length)
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
        reply = factory.dispatcher.handle_frame(obj)
        # What _send does, inline: this is the path of every request.
        self.sendLine(self._session.seal(dumps(reply)))
        factory.after_frame()

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
        are written out (commits the journal); it may raise to drop the connection
        unanswered.
    """

    noisy = False

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
    ) -> None:
        self.authenticator = authenticator
        self.dispatcher = dispatcher
        self.clock = clock
        self.server_id = server_id
        self.max_job_size = max_job_size
        self.max_line_length = max_line_length
        self.after_frame = after_frame
        self.after_data = after_data

    def buildProtocol(self, addr) -> ServerProtocol:
        return ServerProtocol(self)
