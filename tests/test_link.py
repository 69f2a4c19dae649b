"""allq.client.link: the reconnect loop, refused handshakes, keepalive, with a Clock."""

from nacl.public import PrivateKey
from twisted.internet import error as net_error
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher

from allq.client.fencing import Fences, Promotion
from allq.client.link import HANDSHAKE_TIMEOUT, KEEPALIVE_INTERVAL, NotConnected, ServerLink
from allq.errors import ConnectionLost, NotFound
from allq.wire.keys import ClientKeys


#: The first retry waits 0.2 s (0.1 s doubled once) plus under 1 s of jitter.
FIRST_RETRY_AT_MOST = 1.2


class FakeConnection:
    def __init__(self, server_id="srv", **welcome):
        self.ready = Deferred()
        self.lost = Deferred()
        self.closed = False
        self.server_id = server_id
        self.welcome = {"server_id": server_id, **welcome}
        self.requests = []
        #: Replies by action (an exception: that error), else ``{}``.
        self.replies = {}

    def request(self, action, params):
        self.requests.append(action)
        reply = self.replies.get(action, {})
        return fail(reply) if isinstance(reply, Exception) else succeed(reply)

    def close(self):
        if not self.closed:
            self.closed = True
            self.lost.callback(None)


class FakeEndpoint:
    """Each connect answers with the next outcome: a FakeConnection, or an exception."""

    def __init__(self):
        self.outcomes = []
        self.connects = 0

    def connect(self, factory):
        self.connects += 1
        outcome = self.outcomes.pop(0)
        if callable(outcome):  # made now: a refused handshake's failure is the link's
            outcome = outcome()
        return fail(outcome) if isinstance(outcome, Exception) else succeed(outcome)


def make_link(**kwargs):
    clock = MemoryReactorClock()
    link = ServerLink("127.0.0.1:5555", ClientKeys(PrivateKey.generate(),
                                                   PrivateKey.generate().public_key),
                      clock, request_timeout=1, **kwargs)
    link._endpoint = endpoint = FakeEndpoint()
    return link, endpoint, clock


def logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    return events, lambda: globalLogPublisher.removeObserver(events.append)


def refused(code, message):
    """A connection whose server refuses the handshake, made when it is connected."""

    def connect():
        connection = FakeConnection()
        connection.ready.errback(ConnectionLost(f"server refused: {code}: {message}"))
        return connection

    return connect


def test_a_refused_key_is_one_clear_line_with_backoff_and_a_reason():
    link, endpoint, clock = make_link()
    endpoint.outcomes = [refused("unknown_key", "client key abcd1234... is not authorized")
                         for _ in range(20)]
    events, stop = logged()
    try:
        link.startService()
        for _ in range(5):
            clock.advance(4.0)  # the longest backoff, 3 s, plus up to 1 s of jitter
    finally:
        stop()
    assert endpoint.connects == 6
    assert not link.up
    assert "key not authorized by the server" in link.down_reason
    assert "authorized_keys" in link.down_reason
    downs = [e for e in events if "down" in e.get("log_format", "")]
    assert len(downs) == 1  # one line for the state change, not one per attempt
    assert not [e for e in events if e.get("log_failure") or e.get("isError")]
    link.stopService()
    assert clock.getDelayedCalls() == []


def test_a_wrong_server_pub_is_named():
    link, endpoint, clock = make_link()
    endpoint.outcomes = [refused("bad_proof", "the client's proof does not match")]
    link.startService()
    assert "server.pub" in link.down_reason
    assert "A_CURVE_SERVER_PUBLICKEY" in link.down_reason
    link.stopService()


def test_connection_refused_and_silence_have_their_reasons():
    link, endpoint, clock = make_link()
    endpoint.outcomes = [net_error.ConnectionRefusedError(), FakeConnection()]
    link.startService()
    assert link.down_reason.startswith("connection refused")
    clock.advance(FIRST_RETRY_AT_MOST)
    clock.advance(HANDSHAKE_TIMEOUT)  # the second connection never says welcome
    assert link.down_reason.startswith(f"no handshake within {HANDSHAKE_TIMEOUT:g} s")
    link.stopService()
    assert clock.getDelayedCalls() == []


def test_a_lost_connection_reconnects_and_the_link_pings_while_up():
    link, endpoint, clock = make_link()
    first, second = FakeConnection("s1"), FakeConnection("s1")
    endpoint.outcomes = [first, second]
    link.startService()
    first.ready.callback(first)
    assert link.up and link.down_reason is None and link.server_id == "s1"
    clock.advance(KEEPALIVE_INTERVAL)
    assert first.requests == ["ping"]
    first.close()
    assert not link.up and link.down_reason == "connection lost"
    failures = []
    link.request("get", {}).addErrback(failures.append)
    assert failures[0].check(NotConnected)  # at once: nothing was sent
    clock.advance(FIRST_RETRY_AT_MOST)
    second.ready.callback(second)
    assert link.up and endpoint.connects == 2
    stopped = link.stopService()
    assert stopped.called and second.closed
    assert clock.getDelayedCalls() == []


def test_stopping_while_waiting_to_retry_leaves_no_timer():
    link, endpoint, clock = make_link()
    endpoint.outcomes = [net_error.ConnectionRefusedError()]
    link.startService()
    assert clock.getDelayedCalls()
    link.stopService()
    assert clock.getDelayedCalls() == []
    assert link.down_reason == "client stopping"


def test_the_welcome_says_the_epoch_and_the_backup():
    link, endpoint, clock = make_link()
    connection = FakeConnection("p1", epoch=3, replica={"address": "backup.example:5556"})
    endpoint.outcomes = [connection]
    link.startService()
    connection.ready.callback(connection)
    assert (link.epoch, link.backup_address) == (3, "backup.example:5556")
    connection.close()
    # Still known while the server is down: that is when a failover needs it.
    assert (link.epoch, link.backup_address) == (3, "backup.example:5556")
    link.stopService()


def test_a_welcome_naming_no_usable_backup_names_none():
    link, endpoint, clock = make_link()
    connection = FakeConnection("p1", epoch="1", replica={"address": "no port"})
    endpoint.outcomes = [connection]
    link.startService()
    connection.ready.callback(connection)
    assert link.up and (link.epoch, link.backup_address) == (None, None)
    link.stopService()


def test_a_replica_link_says_serve_as_first_and_acts_for_the_primary():
    link, endpoint, clock = make_link(serve_as="p1")
    assert link.server_id == "p1" and link.draining and not link.up
    refusing, serving = FakeConnection("b1"), FakeConnection("b1")
    refusing.replies["serve_as"] = NotFound("no promoted replica of p1")
    serving.replies["serve_as"] = {"server_id": "p1", "epoch": 2, "backup": "b1"}
    endpoint.outcomes = [refusing, serving]
    link.startService()
    refusing.ready.callback(refusing)
    assert not link.up and refusing.closed
    assert link.down_reason == ("the backup does not serve p1: not_found: "
                                "no promoted replica of p1")
    clock.advance(FIRST_RETRY_AT_MOST)
    serving.ready.callback(serving)
    assert link.up and serving.requests == ["serve_as"]
    assert (link.server_id, link.epoch, link.welcome["server_id"]) == ("p1", 2, "b1")
    link.stopService()
    assert clock.getDelayedCalls() == []


def test_a_welcome_at_an_epoch_older_than_a_promotion_seen_is_fenced():
    fences = Fences()
    link, endpoint, clock = make_link(fences=fences)
    up, stale, fresh = (FakeConnection("p1", epoch=1), FakeConnection("p1", epoch=1),
                        FakeConnection("p1-e2"))
    endpoint.outcomes = [up, stale, fresh]
    link.startService()
    up.ready.callback(up)
    assert link.up
    fences.promoted(Promotion("p1", "b1", 2))
    link.refuse_if_fenced()  # a connection already open is dropped
    assert up.closed and not link.up
    clock.advance(FIRST_RETRY_AT_MOST)
    stale.ready.callback(stale)
    assert stale.closed and not link.up
    assert link.down_reason == "fenced: taken over by b1 at epoch 2"
    assert link.server_id == "p1"
    clock.advance(4.0)
    fresh.ready.callback(fresh)  # back as a fresh server, under a new id
    assert link.up and link.server_id == "p1-e2"
    link.stopService()


def test_fences_keep_the_highest_epoch():
    fences = Fences()
    assert fences.promoted(Promotion("p1", "b1", 2))
    assert not fences.promoted(Promotion("p1", "b1", 2))
    assert not fences.promoted(Promotion("p1", "b9", 1))
    assert fences.epoch("p1") == 2 and fences.epoch("p2") is None
    assert fences.why_fenced({"server_id": "p1", "epoch": 2}) is None
    assert fences.why_fenced({"server_id": "p1"}) == "fenced: taken over by b1 at epoch 2"
    assert fences.why_fenced({"server_id": "p2", "epoch": 1}) is None
