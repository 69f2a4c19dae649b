"""allq.socket_writes: ``write_now`` delivers what ``transport.write`` delivers, in order.

Over a real loopback TCP connection (the shortcut reads Twisted's TCP transport
below its public surface, so a Twisted upgrade that moves those attributes must
fail here), and over a ``StringTransport`` (the public path).
"""

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport

from allq.socket_writes import write_now


class _Collect(Protocol):
    """Collects every byte until the peer closes."""

    def __init__(self) -> None:
        self.data = b""
        self.done = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason=None) -> None:
        self.done.callback(self.data)


def test_a_transport_that_is_not_tcp_gets_a_plain_write():
    transport = StringTransport()
    write_now(transport, b"one\n")
    write_now(transport, b"two\n")
    assert transport.value() == b"one\ntwo\n"


@pytest_twisted.ensureDeferred
async def test_writes_arrive_whole_and_in_order_over_tcp():
    received = _Collect()
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Factory.forProtocol(lambda: received))
    sender = Protocol()
    try:
        await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), sender)
        transport = sender.transport
        write_now(transport, b"small\n")
        # Sent at once: nothing left in the transport's buffer, no write watch.
        assert transport.dataBuffer == b"" and not transport._tempDataLen
        assert transport not in reactor.getWriters()
        big = bytes(range(256)) * (transport.SEND_LIMIT // 256 + 1)  # over the limit
        write_now(transport, big)
        # Buffered now (by transport.write): a later write must queue behind it.
        transport.write(b"buffered\n")
        write_now(transport, b"after\n")
        transport.loseConnection()
        # After loseConnection the public path decides (Twisted still sends it).
        write_now(transport, b"closing\n")
        data = await received.done.addTimeout(10, reactor)
    finally:
        await port.stopListening()
    assert data == b"small\n" + big + b"buffered\nafter\nclosing\n"
