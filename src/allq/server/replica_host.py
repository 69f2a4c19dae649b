"""The backup's side of replication: replicas, promotion, ``serve_as`` (docs/replication.md).

:class:`ReplicaHost` holds one :class:`Replica` per primary that streams to this
server. A connection whose first request is ``replicate`` becomes a
:class:`StreamConnection` (``replica_records``, ``replica_synced``, ``ping``),
applied to that primary's :class:`~allq.server.replica_state.ReplicaState`. A
client's ``promote`` (an ordinary request, :meth:`ReplicaHost.promote`) turns a
complete replica whose primary went silent into a :class:`PromotedReplica`: a
live queue, deadline timer and dispatcher acting under the primary's server id,
reached by connections whose first request is ``serve_as``
(:class:`ServeAsConnection`).

Epochs fence a primary that returns: promotion raises the replica's epoch, and
a ``replicate`` for a promoted replica is refused with ``fenced`` from then on.

With a data directory, everything of a primary lives in
``<data-dir>/replicas/<primary id>/``: ``epoch`` (the epoch, as text),
``promoted`` (the unix time of its promotion) and, once promoted, a data
directory of its own (snapshot + journal, :mod:`allq.server.journal`) that a
restarted backup reads back and serves again. A replica that was not promoted
is kept in memory only: after a restart its primary re-syncs it from a snapshot.

Blocking file I/O here (the epoch file, the promotion snapshot) is small or
rare: it runs when a primary first connects and once per promotion, never on
the stream's path.

What it must not do: decide queue semantics (the core does), or know how the
primary builds its stream (:mod:`allq.server.replication`).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import attrs
from twisted.application.service import MultiService
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from allq.core.idempotency import IdempotencyKeys
from allq.core.interests import InterestTable
from allq.core.queue import Queue, QueueConfig
from allq.core.schedules import Schedules
from allq.errors import (
    AllQError,
    BadRequest,
    Draining,
    Fenced,
    NotFound,
    PrimaryAlive,
    ReplicaGap,
    ReplicaIncomplete,
    Unavailable,
)
from allq.server.dispatch import Dispatcher
from allq.server.journal import FsyncPolicy, Journal, JournalError
from allq.server.replica_files import (
    EPOCH_FILE,
    PROMOTED_FILE,
    REPLICAS_DIR,
    read_number,
    write_file,
    write_snapshot,
)
from allq.server.recovery import (
    DataDirError,
    Recovered,
    lock_directory,
    recover,
    restore_interests,
    restore_keys,
    restore_queue,
    restore_schedules,
)
from allq.server.replica_state import MalformedStream, ReplicaState
from allq.server.schedules import ScheduleService
from allq.server.timer import DeadlineTimer
from allq.vocabulary import SERVER_ID
from allq.wire.messages import decode_request, error_reply, request_id_of, result_reply

#: A primary heard from within this many seconds on its stream is alive: no promotion.
PRIMARY_SILENCE = 3.0
#: The actions a stream connection carries after its ``replicate``.
_STREAM_ACTIONS = ("replica_records", "replica_synced", "ping")
#: Actions a promoted replica refuses: it takes no new jobs (clients drain it).
_NEW_JOB_ACTIONS = ("put", "put_parent", "event", "schedule_add")


def _check_server_id(action: str, server_id: str) -> str:
    """A primary id as a name: it is also a directory name under ``replicas/``."""
    if not SERVER_ID.fullmatch(server_id):
        raise BadRequest(f"{action}: {server_id[:70]!r} is not a server id "
                         "(1-64 letters, digits, '_' and '-')")
    return server_id


# -- a promoted replica -------------------------------------------------------------------


class PromotedDispatcher(Dispatcher):
    """A promoted replica's dispatcher: the primary's jobs, no new ones.

    Clients drain a promoted replica (they place puts on live servers); a put
    that reaches it anyway is refused with ``draining``, so nothing is stored
    where no client will look for it.
    """

    def handle(self, obj: object) -> dict:
        if isinstance(obj, dict) and obj.get("action") in _NEW_JOB_ACTIONS:
            if self._stored_before(obj):
                # A retry of a put the primary stored (same idempotency key): the
                # dispatcher answers it with that job's id, storing nothing.
                return super().handle(obj)
            error = Draining(f"{obj['action']}: this is a promoted replica of server "
                             f"{self._server_id()}; it takes no new jobs")
            return error_reply(request_id_of(obj), error)
        return super().handle(obj)


    def _stored_before(self, obj: dict) -> bool:
        params = obj.get("params")
        key = params.get("idempotency_key") if isinstance(params, dict) else None
        return (obj["action"] in ("put", "put_parent") and isinstance(key, str)
                and self._idempotency.lookup(key, self._clock.seconds()) is not None)


@attrs.define(eq=False)
class PromotedReplica:
    """A replica turned into a live queue, served under its primary's id.

    :ivar queue: the primary's jobs.
    :ivar timer: the queue's deadline timer (a child service of the host).
    :ivar dispatcher: answers ``serve_as`` connections.
    :ivar journal: its journal (``None`` without a data directory).
    """

    queue: Queue
    timer: DeadlineTimer
    dispatcher: PromotedDispatcher
    journal: Journal | None = None

    def handle_frame(self, obj: object) -> object:
        """Apply a frame; its changes are committed before the reply can leave.

        :raises JournalError: not durable (the caller must not send the reply).
        """
        reply = self.dispatcher.handle_frame(obj)
        self.timer.poke()
        if self.journal is not None:
            self.journal.commit()
        return reply


# -- one primary's replica ----------------------------------------------------------------


@attrs.define(eq=False)
class Replica:
    """What this backup holds of one primary.

    :ivar primary: the primary's server id.
    :ivar epoch: its epoch (1 at the first ``replicate``, +1 per promotion).
    :ivar address: the address the primary gave in its ``replicate``.
    :ivar state: the applied stream (empty once promoted: the queue holds it).
    :ivar synced: whether ``replica_synced`` arrived since the last ``replicate``.
    :ivar stream: the primary's stream connection, if one is open.
    :ivar last_heard: when the primary last sent anything on its stream.
    :ivar last_record: when records last arrived; :ivar last_sync: when the
        replica last became complete.
    :ivar promoted: the live queue, once promoted; :ivar promoted_at: when.
    """

    primary: str
    epoch: int = 1
    address: str | None = None
    state: ReplicaState = attrs.Factory(ReplicaState)
    synced: bool = False
    stream: StreamConnection | None = None
    last_heard: float | None = None
    last_record: float | None = None
    last_sync: float | None = None
    promoted: PromotedReplica | None = None
    promoted_at: float | None = None

    @property
    def status(self) -> str:
        if self.promoted is not None:
            return "promoted"
        if self.stream is None:
            return "disconnected"
        return "synced" if self.synced else "syncing"

    def describe(self) -> dict:
        """The replica's entry in ``stats`` and ``replicas`` (docs/replication.md)."""
        jobs = len(self.promoted.queue) if self.promoted is not None else self.state.jobs
        return {"primary": self.primary, "address": self.address, "epoch": self.epoch,
                "state": self.status, "records": self.state.records, "jobs": jobs,
                "last_record": self.last_record, "last_sync": self.last_sync,
                "promoted_at": self.promoted_at}


# -- connection modes (allq.server.protocol's choose_mode) ---------------------------------


class StreamConnection:
    """A primary's stream connection: ``replicate`` first, then the stream.

    ``seq`` numbers the ``replica_records`` and ``replica_synced`` messages of a
    connection from 1; a message out of order, or a damaged line, drops the
    connection (after its error reply) and leaves the replica unpromotable until
    a fresh snapshot has been synced.
    """

    _log = Logger()

    def __init__(self, host: ReplicaHost, protocol) -> None:
        self._host = host
        self._protocol = protocol
        self.replica: Replica | None = None
        self._seq = 0
        self._dropped = False

    def handle_frame(self, obj: object) -> object:
        if isinstance(obj, list):
            replies = []
            for item in obj:
                if self._dropped:  # the rest of a dropped stream is not applied
                    replies.append(error_reply(request_id_of(item), BadRequest(
                        "not applied: an earlier message of this frame ended the stream")))
                else:
                    replies.append(self._handle(item))
            return replies
        return self._handle(obj)

    def _handle(self, obj: object) -> dict:
        try:
            request = decode_request(obj)
            now = self._host.clock.seconds()
            action, params = request.action, request.params
            if action == "replicate":
                if self.replica is not None:
                    raise BadRequest("replicate: this connection already streams for "
                                     f"{self.replica.primary}")
                result = self._host.replicate(self, now, **params)
            elif self.replica is None:
                raise BadRequest(f"{action}: send replicate first on a stream connection")
            elif action not in _STREAM_ACTIONS:
                raise BadRequest(f"{action}: a stream connection carries only "
                                 "replica_records, replica_synced and ping")
            else:
                result = self._stream(now, action, params)
            return result_reply(request.id, result)
        except AllQError as error:
            return error_reply(request_id_of(obj), error)

    def _stream(self, now: float, action: str, params) -> dict:
        replica = self.replica
        replica.last_heard = now
        if action == "ping":
            return {}
        seq = params["seq"]
        if seq != self._seq + 1:
            self._drop(replica, "replica_gap", f"{action}: seq {seq} after {self._seq}; "
                       "the stream must start again with replicate")
            raise ReplicaGap(f"{action}: expected seq {self._seq + 1}, got {seq}")
        self._seq = seq
        if action == "replica_synced":
            replica.synced = True
            replica.last_sync = now
            self._log.info("replica of {primary} is complete: {jobs} jobs, {records} records "
                           "(the primary sent {sent} snapshot records)",
                           primary=replica.primary, jobs=replica.state.jobs,
                           records=replica.state.records, sent=params["records"])
            return {"seq": seq}
        try:
            replica.state.apply_lines(params["lines"])
        except MalformedStream as e:
            self._drop(replica, "bad_stream", str(e))
            raise BadRequest(f"{e}; the stream must start again with replicate") from None
        replica.last_record = now
        return {"seq": seq}

    def _drop(self, replica: Replica, code: str, message: str) -> None:
        """Close this stream after the error reply: the replica is incomplete until
        a fresh snapshot is synced."""
        replica.synced = False
        self._dropped = True
        self._log.warn("dropping the stream of {primary}: {message}",
                       primary=replica.primary, message=message)
        self._protocol.close_after_reply(code, message)

    def close(self, code: str, message: str) -> None:
        """Close this stream now (replaced by a newer one, or its replica promoted)."""
        self._protocol.close_session(code, message)

    def connection_lost(self) -> None:
        if self.replica is not None and self.replica.stream is self:
            self.replica.stream = None


class ServeAsConnection:
    """A connection that acts for a promoted replica: its first request is
    ``serve_as``, every later frame goes to that replica's dispatcher. A
    ``serve_as`` that names no promoted replica is answered ``not_found`` and
    the connection closed."""

    _log = Logger()

    def __init__(self, host: ReplicaHost, protocol) -> None:
        self._host = host
        self._protocol = protocol
        self._promoted: PromotedReplica | None = None

    def handle_frame(self, obj: object) -> object | None:
        if self._promoted is None:
            return self._serve_as(obj)
        try:
            return self._promoted.handle_frame(obj)
        except JournalError as e:
            # Not durable, so not acknowledged: drop the reply with the connection.
            self._log.warn("dropping a serve_as connection with unacknowledged replies: "
                           "{error}", error=e)
            self._protocol.transport.abortConnection()
            return None

    def _serve_as(self, obj: object) -> dict:
        try:
            request = decode_request(obj)
            self._promoted, result = self._host.serve_as(request.params["server_id"])
        except AllQError as error:
            self._protocol.close_after_reply(error.code, error.message)
            return error_reply(request_id_of(obj), error)
        return result_reply(request.id, result)

    def connection_lost(self) -> None:
        self._promoted = None


# -- the host ---------------------------------------------------------------------------


class ReplicaHost(MultiService):
    """Every replica this server holds, and the actions that reach them.

    :param clock: the reactor (time, and the promoted replicas' timers).
    :param server_id: this server's own id (known once it listens).
    :param config: the queue settings promoted replicas are built with.
    :param data_dir: this server's data directory (``None``: all in memory).
    :param fsync: the promoted replicas' journals' fsync policy.
    :param run_blocking: for the journals' background fsyncs (see :class:`Journal`).
    :param on_failure: called when a promoted replica's journal fails fatally.
    """

    _log = Logger()

    def __init__(self, clock: IReactorTime, server_id: Callable[[], str | None],
                 config: QueueConfig, data_dir: str | None = None,
                 fsync: FsyncPolicy = FsyncPolicy("never"), run_blocking=None,
                 on_failure: Callable[[], None] = lambda: None) -> None:
        super().__init__()
        self.clock = clock
        self._server_id = server_id
        self._config = config
        self._data_dir = data_dir
        self._fsync = fsync
        self._run_blocking = run_blocking
        self._on_failure = on_failure
        self.replicas: dict[str, Replica] = {}
        self._dispatcher: Dispatcher | None = None

    # -- wiring ---------------------------------------------------------------------

    def install(self, dispatcher: Dispatcher) -> None:
        """Add ``replicas``, ``promote`` and the stats section to the server's dispatcher."""
        self._dispatcher = dispatcher
        dispatcher.actions["replicas"] = self._do_replicas
        dispatcher.actions["promote"] = self._do_promote
        for action in ("replicate", "serve_as"):
            dispatcher.actions[action] = _first_request_only(action)
        for action in ("replica_records", "replica_synced"):
            dispatcher.actions[action] = _stream_only(action)
        if self.replicas:
            self._show_in_stats()

    def _show_in_stats(self) -> None:
        # Only servers that hold a replica carry the section.
        if self._dispatcher is not None:
            self._dispatcher.stats_sections["replicas"] = self.describe

    def describe(self) -> list[dict]:
        return [replica.describe() for replica in self.replicas.values()]

    def choose_mode(self, protocol, obj: object):
        """:class:`ServerFactory`'s ``choose_mode`` hook: a connection whose first
        request is ``replicate`` is a stream, one that ``serve_as`` a promoted
        replica acts for it; any other is an ordinary connection."""
        if not isinstance(obj, dict):
            return None
        action = obj.get("action")
        if action == "replicate":
            return StreamConnection(self, protocol)
        if action == "serve_as":
            return ServeAsConnection(self, protocol)
        return None

    def serve_as(self, server_id: str) -> tuple[PromotedReplica, dict]:
        """A ``serve_as`` connection's first request: the promoted replica it acts
        for, and the reply.

        :raises NotFound: no promoted replica of ``server_id`` here.
        """
        _check_server_id("serve_as", server_id)
        replica = self.replicas.get(server_id)
        if replica is None or replica.promoted is None:
            held = f"its replica is {replica.status}" if replica else "none at all"
            raise NotFound(f"serve_as: this server holds no promoted replica of {server_id} "
                           f"({held}); promote it first")
        return replica.promoted, self._identity(replica)

    def _identity(self, replica: Replica) -> dict:
        return {"server_id": replica.primary, "epoch": replica.epoch,
                "backup": self._server_id()}

    # -- the stream -----------------------------------------------------------------

    def replicate(self, stream: StreamConnection, now: float, *, primary: str,
                  epoch: int | None, address: str | None) -> dict:
        """A primary (re)connects: reset its replica, or refuse it if it was promoted.

        :raises Fenced: its replica was promoted (at an epoch the primary never had).
        """
        _check_server_id("replicate", primary)
        if primary == self._server_id():
            raise BadRequest("replicate: a server cannot be its own backup")
        replica = self.replicas.get(primary)
        if replica is None:
            replica = self.replicas[primary] = Replica(primary)
            self._show_in_stats()
        if replica.promoted is not None:
            self._log.warn("fenced a stream from {primary} at epoch {sent}: its replica was "
                           "promoted at epoch {epoch}", primary=primary, sent=epoch,
                           epoch=replica.epoch)
            raise Fenced(f"replicate: server {primary} was replaced by its backup "
                         f"{self._server_id()} at epoch {replica.epoch}; it must not serve "
                         f"its old jobs (epoch {replica.epoch})")
        new_epoch = max(replica.epoch, epoch or 1)
        if new_epoch != replica.epoch or not self._epoch_stored(primary):
            replica.epoch = new_epoch
            self._store_epoch(replica)
        if replica.stream is not None:
            old, replica.stream = replica.stream, None
            old.close("replaced", f"a newer replicate for {primary} replaced this stream")
        replica.state = ReplicaState()
        replica.synced = False
        replica.address = address
        replica.stream = stream
        replica.last_heard = now
        stream.replica = replica
        self._log.info("streaming replica of {primary} ({address}), epoch {epoch}: "
                       "expecting a snapshot", primary=primary, address=address,
                       epoch=replica.epoch)
        return {"backup": self._server_id(), "epoch": replica.epoch}

    # -- the actions ----------------------------------------------------------------

    def _do_replicas(self, now: float) -> dict:
        return {"replicas": self.describe()}

    def _do_promote(self, now: float, *, server_id: str) -> dict:
        return self.promote(server_id, now)

    def promote(self, server_id: str, now: float) -> dict:
        """Serve ``server_id``'s jobs from its replica (docs/replication.md).

        :returns: ``{"server_id", "epoch", "backup"}``; the same for every call
            once promoted.
        :raises NotFound: no replica of it here.
        :raises ReplicaIncomplete: its snapshot never finished arriving.
        :raises PrimaryAlive: its primary was heard on its stream within
            :data:`PRIMARY_SILENCE` seconds.
        :raises Unavailable: the promoted replica could not be written to disk
            (nothing changed: a later ``promote`` tries again).
        """
        _check_server_id("promote", server_id)
        replica = self.replicas.get(server_id)
        if replica is None:
            raise NotFound(f"promote: this server holds no replica of {server_id}")
        if replica.promoted is not None:
            return self._identity(replica)
        if not replica.synced:
            raise ReplicaIncomplete(
                f"promote: the replica of {server_id} is incomplete (its snapshot has not "
                "all arrived); it cannot serve that server's jobs")
        if (replica.stream is not None and replica.last_heard is not None
                and now - replica.last_heard < PRIMARY_SILENCE):
            raise PrimaryAlive(
                f"promote: {server_id} is alive (heard {now - replica.last_heard:.1f} s ago "
                "on its stream); its clients' trouble is not a failover")
        try:
            promoted = self._build(replica, replica.state.recovered, now, promoting=True)
        except (DataDirError, OSError) as e:
            raise Unavailable(f"promote: cannot write the promoted replica of {server_id}: "
                              f"{e}") from None
        replica.promoted, replica.promoted_at = promoted, now
        replica.epoch += 1
        self._store_epoch(replica)
        self._store_promoted(replica)
        if replica.stream is not None:
            stream, replica.stream = replica.stream, None
            stream.close("fenced", f"server {server_id} was replaced by its backup at "
                         f"epoch {replica.epoch}")
        self._log.info("promoted the replica of {primary} at epoch {epoch}: serving its "
                       "{jobs} jobs", primary=server_id, epoch=replica.epoch,
                       jobs=len(replica.promoted.queue))
        return self._identity(replica)

    def _build(self, replica: Replica, recovered: Recovered, now: float, *,
               promoting: bool) -> PromotedReplica:
        """A live queue from ``recovered``: restored, journaled, with its timer."""
        journal = None
        directory = self._replica_dir(replica.primary)
        if directory is not None and promoting:
            lock_fd = lock_directory(directory)
            try:
                recovered.snapshot_bytes = write_snapshot(directory, recovered, now)
            except OSError:
                os.close(lock_fd)
                raise
            recovered.lock_fd = lock_fd
        if directory is not None:
            journal = Journal(
                directory, self._fsync, self.clock, generation=recovered.generation,
                snapshot_bytes=recovered.snapshot_bytes, max_id=recovered.max_id,
                lock_fd=recovered.lock_fd, on_failure=self._on_failure,
                **({} if self._run_blocking is None else {"run_blocking": self._run_blocking}))
        queue = Queue(self._config, first_id=max(recovered.max_id + 1, int(now * 1_000_000)),
                      started=now, on_change=None if journal is None else journal.on_change)
        idempotency = IdempotencyKeys()
        schedules = Schedules()
        interests = InterestTable()
        restore_queue(queue, recovered, now, keep_reserved=promoting)
        restore_keys(idempotency, recovered, now)
        restore_schedules(schedules, recovered, now)
        restore_interests(interests, recovered)
        if journal is not None:
            journal.attach(queue, idempotency, interests)
            journal.attach_schedules(schedules)
            journal.setServiceParent(self)
        timer = DeadlineTimer(queue, self.clock)
        timer.setServiceParent(self)
        primary = replica.primary
        # Its schedules are kept (listed, journaled) but never fire here: the
        # service is not started, as a promoted replica takes no new jobs.
        scheduler = ScheduleService(schedules, queue, self.clock, idempotency)
        dispatcher = PromotedDispatcher(queue, self.clock, lambda: primary, idempotency,
                                        schedules=scheduler, interests=interests)
        dispatcher.stats_sections["promoted"] = lambda: {
            "backup": self._server_id(), "epoch": replica.epoch,
            "promoted_at": replica.promoted_at}
        replica.state = ReplicaState(records=replica.state.records)
        return PromotedReplica(queue, timer, dispatcher, journal)

    # -- persistence ----------------------------------------------------------------

    def _replica_dir(self, primary: str) -> str | None:
        if self._data_dir is None:
            return None
        return os.path.join(self._data_dir, REPLICAS_DIR, primary)

    def _epoch_stored(self, primary: str) -> bool:
        directory = self._replica_dir(primary)
        return directory is None or os.path.exists(os.path.join(directory, EPOCH_FILE))

    def _store_epoch(self, replica: Replica) -> None:
        directory = self._replica_dir(replica.primary)
        if directory is not None:
            write_file(directory, EPOCH_FILE, f"{replica.epoch}\n")

    def _store_promoted(self, replica: Replica) -> None:
        directory = self._replica_dir(replica.primary)
        if directory is not None:
            write_file(directory, PROMOTED_FILE, f"{replica.promoted_at!r}\n")

    def load(self, now: float) -> None:
        """Read back the epochs and promoted replicas a data directory holds (at
        start-up, before the reactor runs).

        :raises DataDirError: a replica's directory cannot be read.
        """
        if self._data_dir is None:
            return
        root = os.path.join(self._data_dir, REPLICAS_DIR)
        if not os.path.isdir(root):
            return
        for primary in sorted(os.listdir(root)):
            directory = os.path.join(root, primary)
            if not (SERVER_ID.fullmatch(primary) and os.path.isdir(directory)):
                continue
            epoch = read_number(directory, EPOCH_FILE, int)
            if epoch is None:
                continue
            replica = self.replicas[primary] = Replica(primary, epoch=epoch)
            promoted_at = read_number(directory, PROMOTED_FILE, float)
            if promoted_at is not None:
                recovered = recover(directory, now)
                for note in recovered.damaged:
                    self._log.warn("replica {primary} damaged: {note}", primary=primary,
                                   note=note)
                replica.promoted_at = promoted_at
                replica.promoted = self._build(replica, recovered, now, promoting=False)
                self._log.info("serving the promoted replica of {primary} again (epoch "
                               "{epoch}, {jobs} jobs)", primary=primary, epoch=epoch,
                               jobs=len(replica.promoted.queue))
        if self.replicas:
            self._show_in_stats()

    def close(self) -> None:
        """Write, fsync and close the promoted replicas' journals and release their
        directories (after the reactor stopped, as the server's own journal)."""
        for replica in self.replicas.values():
            if replica.promoted is not None and replica.promoted.journal is not None:
                replica.promoted.journal.close()


def _first_request_only(action: str):
    def refuse(now, **params):
        raise BadRequest(f"{action} must be the first request of a connection")
    return refuse


def _stream_only(action: str):
    def refuse(now, **params):
        raise BadRequest(f"{action}: only a stream connection (one that began with "
                         "replicate) carries it")
    return refuse
