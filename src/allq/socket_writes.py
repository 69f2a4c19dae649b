"""Writes that go to the socket at once: the private-API shortcut of the client's
frames to its servers and of its front-ends' replies (like those of
:mod:`allq.speedups`, beside its public path). Never the server's replies: a reply
that acknowledges a change may leave only after the journal commit that ends each
read (``ServerProtocol.dataReceived``), so the server keeps the buffered write.

``transport.write`` only buffers: it asks the reactor to watch the socket for
writability (one ``epoll_ctl``), the next reactor turn calls ``doWrite``, which
sends and stops watching (another ``epoll_ctl``). On a request/reply connection
the buffer is empty before nearly every write, so :func:`write_now` sends at once
instead, when that cannot change the order of bytes: a TCP transport, connected,
not closing, nothing buffered. What the kernel does not take, and every other
case, goes through ``transport.write``. ``tests/test_socket_writes.py`` checks
that the peer reads the same bytes either way.

Ground floor: Twisted's TCP transports (``twisted.internet.tcp``, read below
their public surface: ``socket``, ``dataBuffer``, ``offset``, ``_tempDataLen``,
``_writeDisconnected``).
"""

from twisted.internet import tcp

#: The transports whose socket :func:`write_now` may write to: plain TCP only
#: (a TLS transport, a test's ``StringTransport`` take the public path).
_TCP_TRANSPORTS = (tcp.Server, tcp.Client)


def write_now(transport, data: bytes) -> None:
    """``transport.write(data)``, sent on the socket at once when the transport's
    buffer is empty."""
    if (type(transport) in _TCP_TRANSPORTS and transport.connected
            and not transport.disconnecting and not transport._writeDisconnected
            and not transport._tempDataLen and transport.offset == len(transport.dataBuffer)
            and len(data) <= transport.SEND_LIMIT):
        try:
            sent = transport.socket.send(data)
        except OSError:
            # Would block, or the connection broke: the buffered write tries
            # again, and the reactor reports a broken connection as it always does.
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def public_write(transport, data: bytes) -> None:
    """The public slow path of :func:`write_now`."""
    transport.write(data)
