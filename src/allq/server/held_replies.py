"""A connection whose replies wait for the backup (``--replica``).

:class:`HeldRepliesProtocol` is the server's connection class when it replicates
(docs/replication.md, *Synchronous acknowledgement*): the replies of one read
are collected instead of written; if the read changed nothing (no commit
produced records besides ``r``), they are written at once, as without a
replica; else the :class:`allq.server.replication.Replicator` writes them once
the backup acknowledged their records (:meth:`release`), or drops the
connection (:meth:`drop`, ``strict`` without a backup). Without ``--replica``
the server uses the plain :class:`ServerProtocol`: nothing here is on its path.
"""

from allq.server.protocol import ServerProtocol


class HeldRepliesProtocol(ServerProtocol):
    """A :class:`ServerProtocol` whose replies acknowledge only replicated changes."""

    #: The replies of the read being handled (``None`` outside a read).
    _held: list[bytes] | None = None
    _dropped = False

    def dataReceived(self, data: bytes) -> None:
        replicator = self._factory.replicator
        before = replicator.changes
        self._held = held = []
        try:
            ServerProtocol.dataReceived(self, data)
        finally:
            self._held = None
        if not held or self._dropped:
            return
        if replicator.changes == before:
            self.transport.writeSequence(held)
        else:
            replicator.hold(self, held)

    def sendLine(self, line: bytes) -> None:
        if self._held is not None:
            self._held.append(line + self.delimiter)
        else:
            self.transport.write(line + self.delimiter)

    def _drop_unacknowledged(self, error: Exception) -> None:
        self._dropped = True
        ServerProtocol._drop_unacknowledged(self, error)

    def release(self, lines: list[bytes]) -> None:
        """The backup has the changes these replies acknowledge: write them."""
        if not self._dropped:
            self.transport.writeSequence(lines)

    def drop(self) -> None:
        """These replies can never be sent (strict, backup lost): close at once;
        the client does not know their outcome and retries."""
        if not self._dropped:
            self._dropped = True
            self._log.warn("dropping a connection whose changes the backup does not "
                           "hold (--replication strict)")
            self.transport.abortConnection()
