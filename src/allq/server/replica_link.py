"""How a primary reaches its backup, and when it starts serving clients.

:func:`parse_peer` reads ``--replica HOST:PORT``; :func:`backup_connector` is the
:class:`allq.server.replication.Replicator`'s ``connect`` (a TCP connection and
handshake through :mod:`allq.peer.connection`, the primary's own key pair as the
client key); :class:`ServeWhenReady` starts the client listener only once the
backup answered (docs/replication.md, *Start-up*).
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


class ServeWhenReady(Service):
    """Starts ``inner`` (the client listener) once ``ready()`` fires: a primary does
    not serve clients before its backup answered (docs/replication.md, *Start-up*)."""

    def __init__(self, ready: Callable[[], Deferred], inner) -> None:
        self._ready = ready
        self._inner = inner
        self._waiting: Deferred | None = None

    def startService(self) -> None:
        super().startService()
        self._waiting = self._ready()
        self._waiting.addCallbacks(self._start, lambda failure: failure.trap(CancelledError))

    def _start(self, _) -> None:
        self._waiting = None
        if self.running:
            self._inner.startService()

    def stopService(self):
        super().stopService()
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            waiting.cancel()
        if self._inner.running:
            return self._inner.stopService()
        return None
