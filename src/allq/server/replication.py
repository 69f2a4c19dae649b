"""The primary's side of replication (docs/replication.md): :class:`Replicator`.

A server started with ``--replica HOST:PORT`` keeps one stream connection to its
backup (the ordinary encrypted protocol, :mod:`allq.peer.connection`, with this
server's own key pair as the client key). On each connection it says
``replicate {primary, epoch, address}``, then sends a fuzzy snapshot
(``snapshot_chunk`` jobs per reactor turn, :mod:`allq.server.snapshot_records`)
interleaved, in order, with the live records each journal commit hands it
(:meth:`allq.server.journal.Journal.stream_to`), then ``replica_synced``.
Everything streamed during one reactor turn goes out as one ``replica_records
{seq, lines}``; the backup acknowledges each ``seq``.

Held replies: the replies of a read that changed something wait here
(:meth:`Replicator.hold`) until the backup acknowledged a ``seq`` covering its
records (:mod:`allq.server.held_replies` is the connection's side). While the
backup is unreachable:

* ``available``: held replies are released, counted in ``alone_changes`` (one
  per read whose changes were acknowledged alone), one warning per episode;
* ``strict``: held replies are dropped with their connections (the outcome is
  unknown to the client, which retries with its idempotency key), and
  ``on_refusing(True)`` makes the server refuse changes with
  ``replica_unavailable``. During a re-sync changes are taken, and their replies
  wait until ``replica_synced`` is acknowledged.

A backup that does not acknowledge within ``timeout`` seconds (every request's
timeout on the stream connection) or has more than ``max_lag`` bytes
unacknowledged is dropped, and re-synced from a fresh snapshot on the next
connection. A ``fenced`` answer to ``replicate`` calls ``on_fenced(epoch)``
once: the server sets its data aside and exits (:mod:`allq.server.tap`).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from allq.errors import Fenced
from allq.server.snapshot_records import job_lines, settings_lines

STRICT = "strict"
AVAILABLE = "available"
MODES = (STRICT, AVAILABLE)
DEFAULT_MODE = AVAILABLE
DEFAULT_TIMEOUT = 2.0
DEFAULT_MAX_LAG = 64 * 1024 * 1024
#: Seconds between heartbeats on an idle stream.
HEARTBEAT = 1.0
#: Most bytes of lines in one ``replica_records`` message (a turn may send several).
MESSAGE_BYTES = 1024 * 1024
#: Reconnection delays: from the first to the longest, doubling.
FIRST_RETRY = 0.1
LONGEST_RETRY = 5.0
STATES = ("connecting", "syncing", "streaming", "alone", "refusing", "fenced")


@attrs.define
class _Held:
    """Replies of one read, waiting for the backup to acknowledge ``seq``."""

    connection: object  # HeldRepliesProtocol: release(replies) / drop()
    replies: object  # what the connection hands back to itself on release
    seq: int | None = None  # assigned when its records leave


@attrs.define
class _Sent:
    seq: int
    at: float
    size: int
    records: int


class Replicator(Service):
    """Streams this server's changes to its backup and holds replies until it has them.

    :param connect: opens a stream connection: returns a Deferred of a ready
        :class:`allq.peer.connection.ServerConnection` (tests pass their own).
    :param peer: the backup's ``HOST:PORT`` (shown in stats, sent in welcomes).
    :param server_id: this server's id.
    :param queue: the queue whose snapshot is sent on each connection.
    :param clock: the reactor's time.
    :param mode: ``strict`` or ``available``.
    :param timeout: seconds the backup may take to acknowledge; also how long
        start-up waits in ``available`` mode.
    :param max_lag: unacknowledged bytes after which the backup is dropped.
    :param epoch: the epoch kept in the data directory (``None``: none yet).
    :param keep_epoch: ``keep_epoch(epoch, backup_id)`` persists a new epoch.
    :param on_refusing: called with ``True`` when changes must be refused
        (strict, backup unreachable), ``False`` when they are taken again.
    :param on_fenced: called once with the backup's epoch when it fenced us.
    :param address: this server's address, sent in ``replicate`` (or ``None``).
    :param keys, schedules, interests: the idempotency keys, schedules and
        interests a snapshot carries.
    """

    _log = Logger()

    def __init__(self, *, connect: Callable[[], Deferred], peer: str,
                 server_id: Callable[[], str | None], queue, clock: IReactorTime,
                 mode: str = DEFAULT_MODE, timeout: float = DEFAULT_TIMEOUT,
                 max_lag: int = DEFAULT_MAX_LAG, epoch: int | None = None,
                 keep_epoch: Callable[[int, str | None], None] = lambda epoch, backup: None,
                 on_refusing: Callable[[bool], None] = lambda refusing: None,
                 on_fenced: Callable[[int], None] = lambda epoch: None,
                 address: str | None = None, keys=None, schedules=None, interests=None,
                 snapshot_chunk: int = 1000) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        self._connect = connect
        self.peer = peer
        self._server_id = server_id
        self._queue = queue
        self._clock = clock
        self.mode = mode
        self._timeout = timeout
        self._max_lag = max_lag
        self.epoch = epoch
        self._keep_epoch = keep_epoch
        self._on_refusing = on_refusing
        self._on_fenced = on_fenced
        self._address = address
        self._keys = keys
        self._schedules = schedules
        self._interests = interests
        self._snapshot_chunk = snapshot_chunk
        self.state = "connecting"
        self.peer_id: str | None = None
        #: Reads that produced records (the held-replies check compares it).
        self.changes = 0
        self.records_sent = 0
        self.resyncs = 0
        self.alone_changes = 0
        self.last_sync: float | None = None
        self._refusing = False
        self._warned = False
        self._connection = None
        self._attempt: Deferred | None = None
        self._retry_call: IDelayedCall | None = None
        self._retry_delay = FIRST_RETRY
        self._synced_once = False
        self._next_seq = 1
        self._outbox: list[bytes] = []
        self._flush_call: IDelayedCall | None = None
        self._unacked: deque[_Sent] = deque()
        self._unacked_bytes = 0
        self._acked_seq = 0
        self._last_send = 0.0
        self._held: deque[_Held] = deque()
        self._unassigned: list[_Held] = []
        self._snapshot: list | None = None
        self._snapshot_position = 0
        self._snapshot_records = 0
        self._snapshot_call: IDelayedCall | None = None
        self._synced_due = False
        self._heartbeat: LoopingCall | None = None
        self._gates: list[Deferred] = []
        self._gate_call: IDelayedCall | None = None
        self._answered = False
        self._waiting_logged = False

    # -- lifecycle --------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = self._clock
        self._heartbeat.start(HEARTBEAT, now=False)
        self._set_state("connecting")  # strict: refusing until the backup answers
        self._try_connect()

    def stopService(self) -> None:
        super().stopService()
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self._heartbeat = None
        for call in (self._retry_call, self._flush_call, self._snapshot_call, self._gate_call):
            if call is not None and call.active():
                call.cancel()
        self._retry_call = self._flush_call = self._snapshot_call = self._gate_call = None
        if self._attempt is not None:
            self._attempt.cancel()
        if self._connection is not None:
            self._connection.close()

    def ready_to_serve(self) -> Deferred:
        """Fires once clients may be served: the backup answered ``replicate``, or
        (``available``) it did not within ``timeout`` seconds of the start."""
        d = Deferred()
        if self._answered:
            d.callback(None)
        else:
            self._gates.append(d)
            if self.mode == AVAILABLE and self._gate_call is None:
                self._gate_call = self._clock.callLater(self._timeout, self._give_up_waiting)
        return d

    def _give_up_waiting(self) -> None:
        self._gate_call = None
        if not self._answered:
            self._log.warn("backup {peer} did not answer within {timeout:g} s; serving "
                           "alone until it does (--replication available)",
                           peer=self.peer, timeout=self._timeout)
            self._warned = True
            self._set_state("alone")
            self._open_gates()

    def _open_gates(self) -> None:
        self._answered = True
        if self._gate_call is not None and self._gate_call.active():
            self._gate_call.cancel()
        self._gate_call = None
        gates, self._gates = self._gates, []
        for d in gates:
            if not d.called:  # a gate given up on (cancelled at shutdown) stays so
                d.callback(None)

    # -- connecting -------------------------------------------------------------------

    def _try_connect(self) -> None:
        self._retry_call = None
        if not self.running or self.state == "fenced":
            return
        attempt = self._attempt = self._connect()
        attempt.addCallbacks(self._connected, self._connect_failed)

    def _connect_failed(self, failure) -> None:
        self._attempt = None
        if not self.running:
            return None
        if self._answered or self._waiting_logged:
            self._log.debug("connecting to backup {peer} failed: {error}", peer=self.peer,
                            error=failure.getErrorMessage())
        else:
            self._waiting_logged = True
            self._log.warn("waiting for backup {peer} before serving clients: {error}; "
                           "retrying", peer=self.peer, error=failure.getErrorMessage())
        self._unreachable()
        self._retry_later()
        return None

    def _retry_later(self) -> None:
        if self.running and self.state != "fenced" and self._retry_call is None:
            self._retry_call = self._clock.callLater(self._retry_delay, self._try_connect)
            self._retry_delay = min(self._retry_delay * 2, LONGEST_RETRY)

    def _connected(self, connection) -> None:
        self._attempt = None
        if not self.running:
            connection.close()
            return
        connection.lost.addCallback(lambda _: self._lost(connection, "connection lost"))
        params = {"primary": self._server_id(), "epoch": self.epoch,
                  "address": self._address}
        connection.request("replicate", params).addCallbacks(
            self._replicating, self._refused, callbackArgs=(connection,),
            errbackArgs=(connection,))

    def _refused(self, failure, connection) -> None:
        if failure.check(Fenced):
            self._fenced(failure.value)
            return
        connection.close()
        self._connect_failed(failure)

    def _replicating(self, result: dict, connection) -> None:
        if not self.running or connection.closed:
            return
        self._connection = connection
        self._retry_delay = FIRST_RETRY
        self.peer_id = result.get("backup")
        epoch = result.get("epoch")
        if type(epoch) is int and epoch != self.epoch:
            self._keep_epoch(epoch, self.peer_id)
            self.epoch = epoch
        if self._synced_once:
            self.resyncs += 1
        self._next_seq = 1
        self._acked_seq = 0
        self._last_send = self._clock.seconds()
        self._set_state("syncing")
        self._log.info("backup {peer} ({backup}) answered replicate (epoch {epoch}); "
                       "sending a snapshot", peer=self.peer, backup=self.peer_id,
                       epoch=self.epoch)
        self._snapshot = self._queue.live_jobs()
        self._snapshot_position = 0
        self._snapshot_records = 0
        self._snapshot_call = self._clock.callLater(0, self._snapshot_step)
        self._open_gates()

    def _fenced(self, error: Fenced) -> None:
        if self.state == "fenced":
            return
        found = re.search(r"epoch\D*(\d+)", error.message)
        epoch = int(found.group(1)) if found else (self.epoch or 0) + 1
        self._set_state("fenced")
        self._log.critical("backup {peer} fenced this server: it took this server's jobs "
                           "over at epoch {epoch} ({message})", peer=self.peer, epoch=epoch,
                           message=error.message)
        self._on_fenced(epoch)

    # -- the snapshot -----------------------------------------------------------------

    def _snapshot_step(self) -> None:
        self._snapshot_call = None
        if self._connection is None or self._snapshot is None:
            return
        jobs = self._snapshot
        end = min(self._snapshot_position + self._snapshot_chunk, len(jobs))
        lines = job_lines(self._queue, jobs[self._snapshot_position:end], reservations=True)
        self._snapshot_position = end
        if end >= len(jobs):
            lines += settings_lines(self._queue, self._keys, self._schedules,
                                    self._interests)
            self._snapshot = None
            self._synced_due = True
        else:
            self._snapshot_call = self._clock.callLater(0, self._snapshot_step)
        self._snapshot_records += len(lines)
        self._queue_lines(lines)

    # -- the live stream --------------------------------------------------------------

    def stream(self, lines: list[bytes], changed: bool) -> None:
        """The journal's hook: one commit's records (``changed``: not only ``r``)."""
        if changed:
            self.changes += 1
        if self._connection is not None and self.running:
            self._queue_lines(lines)
        # Else dropped: the next connection's snapshot carries their effect.

    def _queue_lines(self, lines: list[bytes]) -> None:
        self._outbox.extend(lines)
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(0, self._flush)

    def _flush(self) -> None:
        """Send what this turn streamed: one ``replica_records`` (more if large)."""
        self._flush_call = None
        connection = self._connection
        outbox, self._outbox = self._outbox, []
        if connection is None:
            return
        start = 0
        size = 0
        for index, line in enumerate(outbox):
            size += len(line)
            if size >= MESSAGE_BYTES or index == len(outbox) - 1:
                self._send_records(connection, outbox[start:index + 1], size)
                start, size = index + 1, 0
                if self._connection is not connection:
                    return  # dropped for lag: what waits was released or dropped
        seq = self._next_seq - 1
        for held in self._unassigned:
            held.seq = seq
            self._held.append(held)
        self._unassigned = []
        if self._synced_due:
            self._synced_due = False
            self._request(connection, "replica_synced",
                          {"seq": self._next_seq, "records": self._snapshot_records},
                          records=0, size=0).addCallback(self._synced)

    def _send_records(self, connection, lines: list[bytes], size: int) -> None:
        text = b"".join(lines).decode("utf-8")
        self.records_sent += len(lines)
        self._request(connection, "replica_records", {"seq": self._next_seq, "lines": text},
                      records=len(lines), size=size)
        if self._unacked_bytes > self._max_lag:
            self._drop(connection, f"more than {self._max_lag} bytes unacknowledged")

    def _request(self, connection, action: str, params: dict, records: int,
                 size: int) -> Deferred:
        seq = params.get("seq")
        if seq is not None:
            self._next_seq = seq + 1
            self._unacked.append(_Sent(seq, self._clock.seconds(), size, records))
            self._unacked_bytes += size
        self._last_send = self._clock.seconds()
        d = connection.request(action, params)
        d.addCallback(self._acked, connection)
        d.addErrback(self._failed, connection, action)
        return d

    def _acked(self, result: dict, connection) -> dict:
        if connection is not self._connection:
            return result
        seq = result.get("seq") if isinstance(result, dict) else None
        if type(seq) is int and seq > self._acked_seq:
            self._acked_seq = seq
            while self._unacked and self._unacked[0].seq <= seq:
                self._unacked_bytes -= self._unacked.popleft().size
            if self.state == "streaming":
                self._release_acked()
        return result

    def _synced(self, result) -> None:
        if not isinstance(result, dict) or self._connection is None:
            return
        self._synced_once = True
        self.last_sync = self._clock.seconds()
        self._warned = False
        self._set_state("streaming")
        self._log.info("backup {peer} ({backup}) holds a full replica (epoch {epoch})",
                       peer=self.peer, backup=self.peer_id, epoch=self.epoch)
        self._release_acked()

    def _failed(self, failure, connection, action: str) -> None:
        self._drop(connection, f"{action}: {failure.getErrorMessage()}")

    def _beat(self) -> None:
        connection = self._connection
        if connection is not None and self._clock.seconds() - self._last_send >= HEARTBEAT:
            self._request(connection, "ping", {}, records=0, size=0)

    # -- losing the backup ------------------------------------------------------------

    def _drop(self, connection, why: str) -> None:
        if connection is not self._connection:
            return
        self._log.warn("dropping the stream to backup {peer}: {why}; it will be re-synced",
                       peer=self.peer, why=why)
        self._lost(connection, why)
        connection.close()

    def _lost(self, connection, why: str) -> None:
        if connection is not self._connection:
            return
        self._connection = None
        self._snapshot = None
        self._synced_due = False
        if self._snapshot_call is not None and self._snapshot_call.active():
            self._snapshot_call.cancel()
        self._snapshot_call = None
        self._outbox = []
        self._unacked.clear()
        self._unacked_bytes = 0
        self._unreachable()
        self._retry_later()

    def _unreachable(self) -> None:
        """No backup holds our changes now: release or drop what waits, refuse or warn."""
        if self.state == "fenced":
            return
        if self.mode == STRICT:
            self._set_state("refusing")
            if self._answered and not self._warned:
                self._warned = True
                self._log.warn("backup {peer} is unreachable: refusing changes with "
                               "replica_unavailable until it is back (--replication "
                               "strict)", peer=self.peer)
        elif self._answered:
            self._set_state("alone")
            if not self._warned:
                self._warned = True
                self._log.warn("backup {peer} is unreachable: acknowledging changes alone "
                               "until it is back (--replication available)", peer=self.peer)
        waiting = list(self._held) + self._unassigned
        self._held.clear()
        self._unassigned = []
        for held in waiting:
            self._give_up_on(held)

    def _give_up_on(self, held: _Held) -> None:
        if self.mode == STRICT:
            held.connection.drop()
        else:
            self.alone_changes += 1
            held.connection.release(held.replies)

    # -- held replies -----------------------------------------------------------------

    def hold(self, connection, replies: object) -> None:
        """Have ``connection`` write ``replies`` (a read's, acknowledging changes just
        streamed) once the backup has their records: ``connection.release(replies)``,
        or ``connection.drop()`` when they can never be sent."""
        state = self.state
        if state == "streaming" or (state == "syncing" and self.mode == STRICT):
            self._unassigned.append(_Held(connection, replies))
        else:
            self._give_up_on(_Held(connection, replies))

    def _release_acked(self) -> None:
        held = self._held
        acked = self._acked_seq
        while held and held[0].seq <= acked:
            entry = held.popleft()
            entry.connection.release(entry.replies)

    # -- state ------------------------------------------------------------------------

    def _set_state(self, state: str) -> None:
        self.state = state
        refusing = state == "fenced" or (
            self.mode == STRICT and state in ("connecting", "refusing"))
        if refusing != self._refusing:
            self._refusing = refusing
            self._on_refusing(refusing)

    def lag(self) -> tuple[int, float]:
        """Records sent and not yet acknowledged, and the age of the oldest."""
        if not self._unacked:
            return 0, 0.0
        records = sum(sent.records for sent in self._unacked)
        return records, max(0.0, self._clock.seconds() - self._unacked[0].at)

    def stats(self) -> dict:
        """The ``replication`` section of ``stats`` (docs/replication.md)."""
        records, seconds = self.lag()
        return {
            "role": "primary", "mode": self.mode, "peer": self.peer,
            "peer_id": self.peer_id, "state": self.state, "epoch": self.epoch,
            "lag_records": records, "lag_seconds": round(seconds, 3),
            "last_sync": self.last_sync, "records_sent": self.records_sent,
            "resyncs": self.resyncs, "alone_changes": self.alone_changes,
        }

    def welcome(self) -> dict:
        """What a welcome adds: this server's epoch and its backup's address."""
        return {"epoch": self.epoch, "replica": {"address": self.peer}}

