"""A connection whose replies wait for the backup (``--replica``).

:class:`HeldRepliesProtocol` is the server's connection class when it replicates
(docs/replication.md, *Synchronous acknowledgement*): the replies of one read
are collected instead of written; if the read changed nothing (no commit
produced records besides ``r``), they are written at once, as without a
replica; else the :class:`allq.server.replication.Replicator` writes them once
the backup acknowledged their records (:meth:`release`), or drops the
connection (:meth:`drop`, ``strict`` without a backup). Without ``--replica``
the server uses the plain :class:`ServerProtocol`: nothing here is on its path.

A connection's replies leave in the order they were sealed, always: each frame
carries the session's next sequence number, and a client refuses one out of
order. So the replies of a read that changed nothing wait behind a held read of
the same connection (never for the backup themselves).
"""

from collections import deque

import attrs

from allq.server.protocol import ServerProtocol


@attrs.define(eq=False)
class _Batch:
    """One read's replies, and whether they may be written (their changes are held
    by the backup, or they acknowledge none)."""

    lines: list[bytes]
    ready: bool


class HeldRepliesProtocol(ServerProtocol):
    """A :class:`ServerProtocol` whose replies acknowledge only replicated changes."""

    #: The replies of the read being handled (``None`` outside a read).
    _held: list[bytes] | None = None
    _dropped = False
    #: Reads whose replies are not written yet, oldest first (``None``: none so far).
    _unwritten: deque[_Batch] | None = None

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
        changed = replicator.changes != before
        if not changed and not self._unwritten:
            self.transport.writeSequence(held)
            return
        if self._unwritten is None:
            self._unwritten = deque()
        batch = _Batch(held, ready=not changed)
        self._unwritten.append(batch)
        if changed:
            replicator.hold(self, batch)

    def sendLine(self, line: bytes) -> None:
        if self._held is not None:
            self._held.append(line + self.delimiter)
        else:
            self.transport.write(line + self.delimiter)

    def _drop_unacknowledged(self, error: Exception) -> None:
        self._dropped = True
        ServerProtocol._drop_unacknowledged(self, error)

    def release(self, batch: _Batch) -> None:
        """The backup has the changes these replies acknowledge: write them, and the
        replies queued behind them that are ready, in order."""
        batch.ready = True
        unwritten = self._unwritten
        while unwritten and unwritten[0].ready and not self._dropped:
            self.transport.writeSequence(unwritten.popleft().lines)

    def drop(self) -> None:
        """These replies can never be sent (strict, backup lost): close at once;
        the client does not know their outcome and retries."""
        if not self._dropped:
            self._dropped = True
            self._log.warn("dropping a connection whose changes the backup does not "
                           "hold (--replication strict)")
            self.transport.abortConnection()
