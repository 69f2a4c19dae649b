"""How a primary reaches its backup, and when it starts serving clients.

:func:`parse_peer` reads ``--replica HOST:PORT``; :func:`backup_connector` is the
:class:`allq.server.replication.Replicator`'s ``connect`` (a TCP connection and
handshake through :mod:`allq.peer.connection`, the primary's own key pair as the
client key); :class:`HoldUntilConfirmed` keeps the server's own jobs back until the backup
answered (docs/replication.md, *Start-up*).
"""

from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred


def parse_peer(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as ``(host, port)``.

    :raises ValueError: anything else.
    """
    host, sep, port = text.strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"must be HOST:PORT, got {text[:80]!r}")
    return host, int(port)


def backup_connector(reactor, host: str, port: int, keys, timeout: float):
    """The ``connect`` of a :class:`Replicator`: a TCP connection to the backup,
    its handshake done within ``timeout`` seconds, requests not coalesced (the
    replicator already sends one message per turn), each timing out after
    ``timeout`` seconds (a backup that does not acknowledge is dropped)."""
    from twisted.internet.endpoints import HostnameEndpoint

    from allq.peer.connection import ServerConnectionFactory

    def connect() -> Deferred:
        endpoint = HostnameEndpoint(reactor, host, port, timeout=max(1, int(timeout)))
        factory = ServerConnectionFactory(keys, reactor, timeout, coalesce=False)

        def handshake(connection):
            def failed(failure):
                connection.close()
                return failure
            return connection.ready.addTimeout(timeout, reactor).addErrback(failed)

        return endpoint.connect(factory).addCallback(handshake)

    return connect


class HoldUntilConfirmed(Service):
    """Holds a primary's own jobs back until ``ready()`` fires (its backup answered
    ``replicate``; docs/replication.md, *Start-up*): a primary its backup replaced
    must never serve its old jobs.

    The server listens meanwhile, and ``hold(True)`` makes it refuse every request
    but ``stats``, ``ping`` and what it answers as a backup itself (stream,
    ``replicas``, ``promote``, ``serve_as``): two servers that back each other up
    must each reach the other to start.

    :param ready: gives the Deferred that fires once the jobs may be served.
    :param hold: called with ``True`` at start, ``False`` once ``ready`` fired.
    """

    def __init__(self, ready: Callable[[], Deferred], hold: Callable[[bool], None]) -> None:
        self._ready = ready
        self._hold = hold
        self._waiting: Deferred | None = None

    def startService(self) -> None:
        super().startService()
        self._hold(True)
        self._waiting = self._ready()
        self._waiting.addCallbacks(self._confirmed, lambda failure: failure.trap(CancelledError))

    def _confirmed(self, _) -> None:
        self._waiting = None
        self._hold(False)

    def stopService(self):
        super().stopService()
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            waiting.cancel()
