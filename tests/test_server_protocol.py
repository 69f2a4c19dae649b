"""Tests of :mod:`allq.server.protocol`: the handshake, frames and what bad input does.

The server side is the real :class:`ServerProtocol` built by its factory on a
:class:`StringTransport`; the client side is driven by hand with the real
handshake and :class:`Session` of :mod:`allq.wire.crypto`. The last part runs the
real :class:`allq.peer.connection.ServerConnection` against the real server
in memory over :mod:`twisted.test.iosim`.
"""

import base64

import pytest
from nacl.public import PrivateKey
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, connect
from twisted.trial.unittest import SynchronousTestCase

from allq import __version__
from allq.peer import connection
from allq.peer.connection import ServerConnection
from allq.core.queue import Queue, QueueConfig
from allq.errors import BadRequest, ConnectionLost, NotFound, Timeout, TooLarge, UnknownAction
from allq.server.dispatch import Dispatcher
from allq.server.protocol import (
    DEFAULT_IDLE_TIMEOUT,
    HANDSHAKE_TIMEOUT,
    HELLO_MAX_LENGTH,
    MAX_BATCH,
    PARTIAL_LINES_BUDGET,
    ServerFactory,
)
from allq.wire.crypto import (
    Authenticator,
    client_hello,
    frame_length,
    new_challenge,
    parse_challenge_line,
)
from allq.wire.keys import ClientKeys, ServerKeys
from allq.wire.messages import dumps, loads

SERVER_ID = "srv1"
SERVER_SECRET = PrivateKey.generate()
CLIENT_SECRET = PrivateKey.generate()
SERVER_KEYS = ServerKeys(SERVER_SECRET, (CLIENT_SECRET.public_key,))
CLIENT_KEYS = ClientKeys(CLIENT_SECRET, SERVER_SECRET.public_key)
MAX_JOB_SIZE = 1000
MAX_LINE_LENGTH = 64 * 1024


def make_factory(clock: Clock, max_line_length: int = MAX_LINE_LENGTH, after_frame=None,
                 **options):
    """A server factory on ``clock``; no idle timeout unless ``options`` give one."""
    options.setdefault("idle_timeout", None)
    queue = Queue(QueueConfig(max_job_size=MAX_JOB_SIZE), started=clock.seconds())
    return ServerFactory(
        authenticator=Authenticator(SERVER_KEYS),
        dispatcher=Dispatcher(queue, clock, lambda: SERVER_ID),
        clock=clock,
        server_id=lambda: SERVER_ID,
        max_job_size=MAX_JOB_SIZE,
        max_line_length=max_line_length,
        **({} if after_frame is None else {"after_frame": after_frame}),
        **options,
    )


class Peer:
    """One connection: the server protocol on a StringTransport, the client side by hand."""

    def __init__(self, factory: ServerFactory, keys: ClientKeys = CLIENT_KEYS) -> None:
        self.keys = keys
        self.protocol = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.session = None
        self._request_id = 0

    def lines(self) -> list[bytes]:
        """Everything the server wrote since the last call, as lines."""
        data = self.transport.value()
        self.transport.clear()
        assert data == b"" or data.endswith(b"\n")
        return data.split(b"\n")[:-1]

    def challenge(self) -> bytes:
        (line,) = self.lines()
        return parse_challenge_line(line)

    def send_line(self, line: bytes) -> None:
        self.protocol.dataReceived(line + b"\n")

    def handshake(self) -> dict:
        hello, self.session = client_hello(self.keys, self.challenge())
        self.send_line(hello)
        return self.receive()

    def seal(self, obj: object) -> bytes:
        return self.session.seal(obj if isinstance(obj, bytes) else dumps(obj))

    def receive(self) -> object:
        (line,) = self.lines()
        return loads(self.session.open(line))

    def request(self, action: str, **params: object) -> dict:
        self._request_id += 1
        self.send_line(self.seal({"id": self._request_id, "action": action, "params": params}))
        return self.receive()

    def refused_with(self) -> str:
        """The code of the clear-text ERROR line the server wrote before closing."""
        (line,) = self.lines()
        assert line.startswith(b"ERROR ")
        assert self.transport.disconnecting
        return line.split(b" ")[1].decode()

    def lose(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def factory(clock) -> ServerFactory:
    return make_factory(clock)


@pytest.fixture
def peer(factory) -> Peer:
    """A connection that completed the handshake."""
    peer = Peer(factory)
    peer.handshake()
    return peer


# -- handshake --------------------------------------------------------------------


def test_connecting_sends_a_challenge(factory):
    """The first line a client gets is an ALLQ1 challenge of 16 bytes."""
    assert len(Peer(factory).challenge()) == 16


def test_a_good_hello_gets_an_encrypted_welcome(factory, clock):
    """An authorized client's HELLO gets an encrypted welcome with server id and limits."""
    peer = Peer(factory)
    assert peer.handshake() == {
        "welcome": {
            "server_id": SERVER_ID,
            "version": __version__,
            "protocol": 1,
            "max_job_size": MAX_JOB_SIZE,
            "max_line_length": MAX_LINE_LENGTH,
        }
    }
    assert not peer.transport.disconnecting
    assert clock.getDelayedCalls() == []


def test_an_unknown_client_key_is_refused(factory):
    """A HELLO from a key not in authorized_keys gets ERROR unknown_key and is closed."""
    stranger = ClientKeys(PrivateKey.generate(), SERVER_SECRET.public_key)
    peer = Peer(factory, stranger)
    hello, _ = client_hello(stranger, peer.challenge())
    peer.send_line(hello)
    assert peer.refused_with() == "unknown_key"


def test_a_proof_for_another_challenge_is_refused(factory):
    """A HELLO whose proof answers another connection's challenge gets ERROR bad_proof."""
    peer = Peer(factory)
    peer.challenge()
    hello, _ = client_hello(CLIENT_KEYS, new_challenge())
    peer.send_line(hello)
    assert peer.refused_with() == "bad_proof"


@pytest.mark.parametrize("hello", [b"GET / HTTP/1.1", b"HELLO", b"HELLO x y", b"\x00\xff\xfe"])
def test_a_garbage_hello_is_refused(factory, hello):
    """A first line that is not a well-formed HELLO gets ERROR bad_hello and is closed."""
    peer = Peer(factory)
    peer.challenge()
    peer.send_line(hello)
    assert peer.refused_with() == "bad_hello"


def test_silence_times_out_the_handshake(factory, clock):
    """No HELLO within 10 s: ERROR handshake_timeout and close; nothing left scheduled."""
    peer = Peer(factory)
    peer.challenge()
    clock.advance(HANDSHAKE_TIMEOUT - 0.5)
    assert peer.lines() == []
    clock.advance(0.5)
    assert peer.refused_with() == "handshake_timeout"
    peer.lose()
    assert clock.getDelayedCalls() == []


def test_losing_the_connection_during_the_handshake_cancels_the_timeout(factory, clock):
    """A connection lost before its HELLO leaves no delayed call behind."""
    peer = Peer(factory)
    assert len(clock.getDelayedCalls()) == 1
    peer.lose()
    assert clock.getDelayedCalls() == []


# -- frames that cannot be trusted: ERROR line and close ----------------------------


def test_a_tampered_frame_is_refused(peer):
    """A frame with one flipped ciphertext byte gets ERROR tampered_frame and is closed."""
    raw = bytearray(base64.b64decode(peer.seal({"id": 1, "action": "ping"})))
    raw[-1] ^= 0x01
    peer.send_line(base64.b64encode(bytes(raw)))
    assert peer.refused_with() == "tampered_frame"


def test_a_frame_replayed_on_the_same_connection_is_refused(peer):
    """Sending a frame the server already accepted again gets ERROR replayed_frame."""
    line = peer.seal({"id": 1, "action": "ping"})
    peer.send_line(line)
    assert peer.receive()["result"] == {"server_id": SERVER_ID}
    peer.send_line(line)
    assert peer.refused_with() == "replayed_frame"


def test_a_frame_replayed_on_another_connection_is_refused(factory, peer):
    """A frame captured on one connection is refused on another with replayed_frame."""
    captured = peer.seal({"id": 1, "action": "ping"})
    other = Peer(factory)
    other.handshake()
    other.send_line(captured)
    assert other.refused_with() == "replayed_frame"


def test_a_non_base64_line_is_refused(peer):
    """A line after the handshake that is not base64 gets ERROR malformed_frame."""
    peer.send_line(b"this is not base64!")
    assert peer.refused_with() == "malformed_frame"


@pytest.mark.parametrize("delimited", [True, False])
def test_an_oversized_line_is_refused(clock, delimited):
    """A line longer than max_line_length, complete or not, gets ERROR too_large."""
    peer = Peer(make_factory(clock, max_line_length=1024))
    peer.handshake()
    peer.protocol.dataReceived(b"A" * 2000 + (b"\n" if delimited else b""))
    assert peer.refused_with() == "too_large"


def test_before_the_handshake_a_long_line_is_refused(factory):
    """An unauthenticated peer cannot make the server buffer more than a HELLO's worth."""
    peer = Peer(factory)
    peer.challenge()
    peer.protocol.dataReceived(b"H" * (HELLO_MAX_LENGTH + 1))
    assert peer.refused_with() == "too_large"


def test_after_the_handshake_lines_up_to_max_line_length_are_accepted(peer):
    """The handshake lifts the line limit to the configured max_line_length."""
    body = "x" * MAX_JOB_SIZE
    assert frame_length(len(body)) > HELLO_MAX_LENGTH
    assert "result" in peer.request("put", tube="t", body=body)


def test_lines_after_a_refused_frame_are_ignored(peer):
    """Frames that arrive in the same packet after a refused one are not processed."""
    good = peer.seal({"id": 1, "action": "ping"})
    peer.protocol.dataReceived(b"garbage!\n" + good + b"\n")
    assert peer.refused_with() == "malformed_frame"


# -- frames that decrypt but are not good requests: encrypted error, stay open -------


@pytest.mark.parametrize(
    "plaintext, request_id, code",
    [
        (b"not json", None, "bad_request"),
        (b"\xff\xfe", None, "bad_request"),
        (dumps("a string"), None, "bad_request"),
        (dumps(17), None, "bad_request"),
        (dumps({"id": 5, "action": "explode"}), 5, "unknown_action"),
        (dumps({"id": 6, "action": "get", "params": {"tube": 5}}), 6, "bad_request"),
        (dumps([]), None, "bad_request"),
        (dumps([{"id": n, "action": "ping"} for n in range(MAX_BATCH + 1)]), None, "bad_request"),
    ],
)
def test_a_bad_request_gets_an_encrypted_error_and_the_connection_stays_open(
    peer, plaintext, request_id, code
):
    """A frame that decrypts but is not a valid request gets an error reply; the next works."""
    peer.send_line(peer.seal(plaintext))
    reply = peer.receive()
    assert reply["id"] == request_id
    assert reply["error"]["code"] == code
    assert not peer.transport.disconnecting
    assert peer.request("ping")["result"] == {"server_id": SERVER_ID}


def test_a_full_batch_is_served(peer):
    """A batch of exactly MAX_BATCH requests gets MAX_BATCH replies."""
    peer.send_line(peer.seal([{"id": n, "action": "ping"} for n in range(MAX_BATCH)]))
    replies = peer.receive()
    assert [reply["id"] for reply in replies] == list(range(MAX_BATCH))


def test_another_connection_is_served_while_one_is_attacked(factory):
    """Refusing one connection does not disturb another on the same factory."""
    good, bad = Peer(factory), Peer(factory)
    good.handshake()
    bad.handshake()
    job_id = good.request("put", tube="t", body="x")["result"]["job_id"]
    bad.send_line(b"!!!")
    assert bad.refused_with() == "malformed_frame"
    bad.lose()
    (job,) = good.request("get", tube="t")["result"]["jobs"]
    assert job["job_id"] == job_id
    assert not good.transport.disconnecting


def test_after_frame_is_called_after_each_handled_frame(clock):
    """after_frame runs once per request or batch frame the dispatcher handled."""
    calls = []
    peer = Peer(make_factory(clock, after_frame=lambda: calls.append(peer.transport.value())))
    peer.handshake()
    assert calls == []
    peer.request("put", tube="t", body="x")
    assert len(calls) == 1 and calls[0] != b""  # called after the reply was written
    peer.send_line(peer.seal([{"id": 8, "action": "ping"}, {"id": 9, "action": "ping"}]))
    peer.receive()
    peer.request("explode")
    assert len(calls) == 3


# -- the real client against the real server, in memory ------------------------------


class ClientAgainstServerTests(SynchronousTestCase):
    """:class:`ServerConnection` talking to :class:`ServerProtocol` over an IOPump."""

    def setUp(self) -> None:
        self.server_clock = Clock()
        self.client_clock = Clock()
        self.server = make_factory(self.server_clock).buildProtocol(None)
        self.client = ServerConnection(CLIENT_KEYS, self.client_clock, request_timeout=5)
        self.pump = connect(
            self.server, FakeTransport(self.server, isServer=True),
            self.client, FakeTransport(self.client, isServer=False),
        )
        self.assertIs(self.successResultOf(self.client.ready), self.client)

    def result(self, d):
        self.pump.flush()
        return self.successResultOf(d)

    def test_handshake_gives_the_welcome(self):
        """After the handshake the client knows the server's id and limits."""
        self.assertEqual(self.client.server_id, SERVER_ID)
        self.assertEqual(self.client.welcome["max_job_size"], MAX_JOB_SIZE)

    def test_pipelined_requests_resolve_by_id(self):
        """Several requests in flight at once each get their own reply."""
        puts = [self.client.request("put", {"tube": "t", "body": str(n)}) for n in range(3)]
        ping = self.client.request("ping")
        self.assertEqual(self.client.pending, 4)
        self.pump.flush()
        job_ids = [self.successResultOf(d)["job_id"] for d in puts]
        self.assertEqual(len(set(job_ids)), 3)
        self.assertEqual(self.successResultOf(ping), {"server_id": SERVER_ID})
        jobs = self.result(self.client.request("get", {"tube": "t", "count": 3}))["jobs"]
        self.assertEqual([job["body"] for job in jobs], ["0", "1", "2"])
        self.assertEqual(self.client.pending, 0)

    def test_batch_returns_results_and_errors_in_order(self):
        """A batch fires with one outcome per request, errors as values."""
        outcomes = self.result(self.client.batch([
            ("put", {"tube": "t", "body": "x"}),
            ("done", {"job_id": f"{SERVER_ID},424242"}),
            ("ping", {}),
        ]))
        self.assertIn("job_id", outcomes[0])
        self.assertIsInstance(outcomes[1], NotFound)
        self.assertEqual(outcomes[2], {"server_id": SERVER_ID})

    def test_a_batch_the_server_would_refuse_fails_at_once(self):
        """An empty or over-long batch fails with BadRequest instead of waiting for a timeout."""
        self.assertEqual(connection.MAX_BATCH, MAX_BATCH)
        for size in (0, MAX_BATCH + 1):
            d = self.client.batch([("ping", {})] * size)
            self.pump.flush()
            self.failureResultOf(d, BadRequest)
        self.assertEqual(self.client.pending, 0)
        self.assertEqual(self.client_clock.getDelayedCalls(), [])

    def test_server_errors_arrive_as_their_classes(self):
        """Error codes from the server come back as the matching AllQError subclasses."""
        cases = [
            (("explode", {}), UnknownAction),
            (("put", {"tube": "t", "body": "x" * (MAX_JOB_SIZE + 1)}), TooLarge),
            (("kick", {"job_id": "nope"}), BadRequest),
            (("kick", {"job_id": "9999"}), NotFound),
        ]
        ds = [self.client.request(action, params) for (action, params), _ in cases]
        self.pump.flush()
        for d, (_, error_class) in zip(ds, cases):
            self.assertEqual(type(self.failureResultOf(d).value), error_class)

    def test_a_request_without_reply_times_out(self):
        """A request whose reply never comes fails with Timeout; no call is left scheduled."""
        d = self.client.request("ping")  # never pumped to the server
        self.client_clock.advance(4.9)
        self.assertNoResult(d)
        self.client_clock.advance(0.1)
        self.failureResultOf(d, Timeout)
        self.assertEqual(self.client.pending, 0)
        self.assertEqual(self.client_clock.getDelayedCalls(), [])

    def test_replies_cancel_their_timeouts(self):
        """A request that got its reply leaves no timeout scheduled."""
        self.result(self.client.request("ping"))
        self.assertEqual(self.client_clock.getDelayedCalls(), [])

    def test_losing_the_connection_fails_pending_requests(self):
        """Pending requests fail with ConnectionLost when the connection goes away."""
        d = self.client.request("ping")
        self.server.transport.loseConnection()
        self.pump.flush()
        self.failureResultOf(d, ConnectionLost)
        self.assertIsNone(self.successResultOf(self.client.lost))
        self.assertEqual(self.client_clock.getDelayedCalls(), [])
        self.assertEqual(self.server_clock.getDelayedCalls(), [])
        self.failureResultOf(self.client.request("ping"), ConnectionLost)


class CoalescingClientTests(SynchronousTestCase):
    """A coalescing :class:`ServerConnection` sends one frame per reactor turn."""

    def setUp(self) -> None:
        self.server_clock = Clock()
        self.client_clock = Clock()
        self.factory = make_factory(self.server_clock)
        self.server = self.factory.buildProtocol(None)
        self.client = ServerConnection(CLIENT_KEYS, self.client_clock, request_timeout=5,
                                       coalesce=True)
        self.pump = connect(
            self.server, FakeTransport(self.server, isServer=True),
            self.client, FakeTransport(self.client, isServer=False),
        )
        self.assertIs(self.successResultOf(self.client.ready), self.client)

    def test_requests_of_one_turn_share_a_frame_and_resolve_separately(self):
        """Requests made in one turn go out as one frame; each gets its own result or error."""
        frames = []
        self.factory.after_frame = lambda: frames.append(1)
        puts = [self.client.request("put", {"tube": "t", "body": str(n)}) for n in range(5)]
        bad = self.client.request("done", {"job_id": f"{SERVER_ID},424242"})
        self.pump.flush()
        self.assertNoResult(puts[0])  # nothing sent before the turn ends
        self.client_clock.advance(0)
        self.pump.flush()
        self.assertEqual(len(frames), 1)
        self.assertEqual(len({self.successResultOf(d)["job_id"] for d in puts}), 5)
        self.failureResultOf(bad, NotFound)
        batch = self.client.batch([("ping", {}), ("ping", {})])
        single = self.client.request("ping")
        self.client_clock.advance(0)
        self.pump.flush()
        self.assertEqual(len(self.successResultOf(batch)), 2)
        self.assertEqual(self.successResultOf(single), {"server_id": SERVER_ID})
        self.assertEqual(self.client.pending, 0)

    def test_a_full_outbox_goes_out_at_once_and_loss_leaves_no_timer(self):
        """At MAX_COALESCED requests the frame leaves without waiting; losing the
        connection fails queued requests and cancels the flush."""
        from allq.peer.connection import MAX_COALESCED

        ds = [self.client.request("ping") for _ in range(MAX_COALESCED)]
        self.pump.flush()
        self.assertEqual(self.successResultOf(ds[-1]), {"server_id": SERVER_ID})
        queued = self.client.request("ping")
        self.server.transport.loseConnection()
        self.pump.flush()
        self.failureResultOf(queued, ConnectionLost)
        self.assertEqual(self.client_clock.getDelayedCalls(), [])


# -- hostile values: huge numbers, deep nesting (issue 10) ---------------------------

_HUGE = "1" + "0" * 309  # 10**309: no float can hold it


@pytest.mark.parametrize(
    "plaintext, request_id",
    [
        (b'{"id":1,"action":"put","params":{"tube":"t","body":"x","ttl":' + _HUGE.encode()
         + b"}}", 1),
        (b'{"id":2,"action":"put","params":{"tube":"t","body":"x","delay":1e400}}', 2),
        (b'{"id":3,"action":"put","params":{"tube":"t","body":"x","priority":' + _HUGE.encode()
         + b"}}", 3),
        (b'{"id":4,"action":"release","params":{"job_id":"srv1,1","delay":NaN}}', 4),
        (b'{"id":5,"action":"get","params":{"tube":"t","count":' + _HUGE.encode() + b"}}", 5),
        (b'{"id":6,"action":"put_parent","params":{"tube":"t","body":"x","timeout":-Infinity}}',
         6),
        (b'{"id":' + _HUGE.encode() + b',"action":"ping"}', None),
        (b'{"id":7,"action":' + _HUGE.encode() + b"}", 7),
        (b'{"id":8,"action":"stats","params":{"x":' + b"9" * 5000 + b"}}", None),
        (b"[" * 20_000 + b"]" * 20_000, None),
        (b'{"id":9,"action":"put","params":' + b'{"a":' * 8_000 + b"1" + b"}" * 8_001
         + b"}", None),
        (b'{"id":10,"action":' + b"[" * 900 + b"]" * 900 + b"}", 10),
        (b"[" + b",".join([b'{"id":%d,"action":"throttle","params":{"tube":"t","tps":%s}}'
                           % (n, _HUGE.encode()) for n in range(3)]) + b"]", "batch"),
    ],
)
def test_hostile_values_get_an_error_reply_and_the_connection_stays_open(
    peer, plaintext, request_id
):
    """Huge integers, non-finite numbers and deep nesting get a bad_request reply (with
    the request's id when it is readable); the connection keeps serving."""
    peer.send_line(peer.seal(plaintext))
    reply = peer.receive()
    if request_id == "batch":
        assert [r["id"] for r in reply] == [0, 1, 2]
        assert {r["error"]["code"] for r in reply} == {"bad_request"}
    else:
        assert reply["id"] == request_id
        assert reply["error"]["code"] in ("bad_request", "unknown_action")
    assert not peer.transport.disconnecting
    assert peer.request("ping")["result"] == {"server_id": SERVER_ID}


def test_a_bug_in_the_dispatcher_gets_an_error_reply_and_is_logged(peer, factory,
                                                                   observe_errors):
    """An unexpected exception while handling a frame is logged and answered with
    code "error"; the connection stays open."""
    def explode(obj):
        raise ZeroDivisionError("boom")

    real, factory.dispatcher.handle_frame = factory.dispatcher.handle_frame, explode
    peer.send_line(peer.seal({"id": 1, "action": "ping"}))
    reply = peer.receive()
    assert reply["error"]["code"] == "error" and reply["id"] is None
    (event,) = observe_errors
    assert event["log_failure"].check(ZeroDivisionError)
    observe_errors.clear()  # expected here
    factory.dispatcher.handle_frame = real
    assert peer.request("ping")["result"] == {"server_id": SERVER_ID}


# -- idle connections and unfinished frames (issue 10) --------------------------------


def test_a_silent_authenticated_connection_is_closed_after_the_idle_timeout(clock):
    """No byte for idle_timeout seconds after the handshake: ERROR idle_timeout, close."""
    peer = Peer(make_factory(clock, idle_timeout=300.0))
    peer.handshake()
    clock.advance(299.0)
    assert peer.lines() == [] and not peer.transport.disconnecting
    clock.advance(1.0)
    assert peer.refused_with() == "idle_timeout"
    peer.lose()
    assert clock.getDelayedCalls() == []


def test_traffic_keeps_a_connection_open_past_the_idle_timeout(clock):
    """Each read restarts the idle period; the one timer is re-armed when it fires."""
    peer = Peer(make_factory(clock, idle_timeout=300.0))
    peer.handshake()
    for _ in range(5):
        clock.advance(200.0)
        assert peer.request("ping")["result"] == {"server_id": SERVER_ID}
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(299.0)
    assert not peer.transport.disconnecting
    clock.advance(1.0)
    assert peer.refused_with() == "idle_timeout"


def test_losing_an_authenticated_connection_cancels_its_idle_timer(clock):
    """connectionLost leaves no delayed call behind."""
    peer = Peer(make_factory(clock, idle_timeout=300.0))
    peer.handshake()
    assert len(clock.getDelayedCalls()) == 1
    peer.lose()
    assert clock.getDelayedCalls() == []


def test_the_default_idle_timeout_is_five_minutes(clock):
    """A factory built without idle_timeout closes silent connections after 300 s."""
    factory = make_factory(clock)
    assert ServerFactory(
        factory.authenticator, factory.dispatcher, clock, lambda: SERVER_ID,
        MAX_JOB_SIZE, MAX_LINE_LENGTH).idle_timeout == DEFAULT_IDLE_TIMEOUT == 300.0


def test_unfinished_frames_are_bounded_across_connections(clock):
    """The connection whose partial line takes all connections over the budget gets
    ERROR busy; the others keep theirs; closing one gives its bytes back."""
    factory = make_factory(clock, max_line_length=4096, partial_budget=10_000)
    first, second, third = Peer(factory), Peer(factory), Peer(factory)
    for peer in (first, second, third):
        peer.handshake()
    first.protocol.dataReceived(b"A" * 4000)
    second.protocol.dataReceived(b"B" * 4000)
    assert factory.partial_bytes == 8000
    third.protocol.dataReceived(b"C" * 4000)
    assert third.refused_with() == "busy"
    third.lose()
    assert factory.partial_bytes == 8000
    assert not first.transport.disconnecting and not second.transport.disconnecting
    first.lose()
    assert factory.partial_bytes == 4000


def test_a_completed_frame_returns_its_bytes_to_the_budget(peer, factory):
    """Bytes of a line count only while the line is unfinished."""
    line = peer.seal({"id": 1, "action": "ping"})
    peer.protocol.dataReceived(line[:10])
    assert factory.partial_bytes == 10
    peer.protocol.dataReceived(line[10:] + b"\n")
    assert factory.partial_bytes == 0
    assert peer.receive()["result"] == {"server_id": SERVER_ID}


def test_the_default_partial_budget_is_some_maximal_lines(factory):
    """By default all connections together may hold 32 maximal lines unfinished."""
    assert factory.partial_budget == PARTIAL_LINES_BUDGET * MAX_LINE_LENGTH


# -- revoking keys ---------------------------------------------------------------------


def test_replacing_the_authenticator_closes_the_sessions_of_revoked_keys(factory):
    """set_authenticator closes every connection of a key no longer accepted (ERROR
    revoked), keeps the others, and refuses the revoked key's next handshake."""
    other_secret = PrivateKey.generate()
    other_keys = ClientKeys(other_secret, SERVER_SECRET.public_key)
    factory.set_authenticator(Authenticator(
        ServerKeys(SERVER_SECRET, (CLIENT_SECRET.public_key, other_secret.public_key))))
    revoked_1, revoked_2, kept = Peer(factory), Peer(factory), Peer(factory, other_keys)
    for peer in (revoked_1, revoked_2, kept):
        peer.handshake()
    assert len(factory.sessions) == 2
    closed = factory.set_authenticator(
        Authenticator(ServerKeys(SERVER_SECRET, (other_secret.public_key,))))
    assert closed == 2
    assert revoked_1.refused_with() == "revoked" and revoked_2.refused_with() == "revoked"
    revoked_1.lose()
    revoked_2.lose()
    assert list(factory.sessions) == [bytes(other_secret.public_key)]
    assert kept.request("ping")["result"] == {"server_id": SERVER_ID}
    again = Peer(factory)
    hello, _ = client_hello(CLIENT_KEYS, again.challenge())
    again.send_line(hello)
    assert again.refused_with() == "unknown_key"
