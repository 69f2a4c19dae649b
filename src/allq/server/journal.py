"""Persistence: an append-only journal of queue changes, fsync policies, compaction.

Responsibility: turn the core's ``on_change`` calls into journal records, get
them to the operating system before the replies that acknowledge them can leave
the process, fsync them as the policy says, and now and then replace the
journal by a snapshot of the live state. Reading it all back at start-up is
:mod:`allq.server.recovery`. What it must not do: decide queue semantics (the
core does), or block the reactor for long (see *Compaction*).

Files (all under the data directory)::

    lock                   held (flock) while a server uses the directory
    journal.<G>.log        records appended since snapshot <G> was started
    snapshot.<G>           every live job, tube setting and the drain flag, as of
                           the moment journal <G> was started (give or take the
                           records of journal <G> itself, see below)
    snapshot.<G>.tmp       a snapshot being written; never read, removed at start
    journal.<G>.log.corrupt-<unix time>   a damaged tail cut off at start-up

Record framing: one line per record, ``<crc32 of payload, 8 hex digits> <payload>\\n``
where the payload is a compact JSON array. A torn line (no newline), a CRC
mismatch or undecodable JSON marks the end of the good prefix. Records::

    ["journal", 1, G]                                       first line of journal G
    ["j", id, tube, body, priority, ttl, expired_limit, created, shard_key,
          parent_id, state, deadline, expireds, releases, parent]   a job, whole
    ["s", id, state, deadline, expireds, releases, parent]  a job's mutable fields
    ["d", id]                                               a job is gone
    ["e", id, error]                                        a job's last error (a bury's)
    ["t", tube, throttle, paused, draining, fair_setting, max_size]  tube settings
    ["S", draining]                                         the server's drain flag
    ["k", key, id, expires]                                 a put's idempotency key
    ["R", name, schedule | null]                            a recurring schedule, whole
                                                            (null: removed)
    ["i", tube, interests, version]                         a tube's interests (null:
                                                            deleted; allq.core.interests)
    ["u", id, unique_key, concurrency_key]                  a keyed job's keys (after its "j")
    ["c", tube, limit]                                      a tube's concurrency limit
    ["snapshot", 1, G, next_id, created]                    first line of snapshot G
    ["end", records]                                        last line of a snapshot

``body`` is the body's text, or ``["base64", <base64>]`` for a binary body.
``paused`` is false for a pause given with a delay (it ends by itself, and
does not outlast a restart). ``parent`` is ``null`` or ``[timeout, run_on_timeout,
limit, children_put, children_done]`` for a waiting parent, followed by ``noop, alias``
when either is set (a noop parent, a caller-chosen id). Every record states absolute values
(never "add one"), so applying a record twice, or applying a record to a state
that already contains it, gives the same result. That is what makes a fuzzy
snapshot correct, and it is why a child's put also writes its parent's counters.

Reserved jobs are never journaled: a restarted server gives them back to ready
anyway (their workers' connections are gone), so a reservation needs no record,
and a ``get`` reply needs no fsync.

Durability (``--fsync``): records are encoded into a buffer as the core reports
them. :meth:`Journal.commit` runs after every batch of frames a connection
delivered (``ServerProtocol.dataReceived``), while the replies to those frames
still sit in the transport's buffer (Twisted writes them once control returns to
the reactor): it ``write()``\\ s the buffer to the OS, and with ``always`` it
also fsyncs. So a reply never leaves before its records reach the OS, which is
all a SIGKILL can threaten; with ``always`` it never leaves before they reach
the disk (group commit: one fsync per read, not per request). ``interval:MS``
fsyncs from a :class:`LoopingCall` at most every MS milliseconds, in a thread
(``run_blocking``) on a duplicate descriptor, so the reactor never waits for the
disk (a power loss can lose the last MS, plus one fsync's duration, of
acknowledged changes); ``never`` leaves it to the OS. With ``always`` the fsync
runs on the reactor thread, synchronously: waiting for it before replying is the
point of ``always`` (STYLE.md anti-pattern 1 is accepted here, and measured in
``bench/persistence.py``).

Disk full: a write that fails with ``ENOSPC`` (or ``EDQUOT``) does not stop the
server. What the OS did not take stays in memory, byte-exact (a record cut in
two by a short write is completed later, never followed by another), the
journal turns *read-only* (:attr:`Journal.disk_full`; ``on_disk_full(True)``
lets the server refuse changes with ``disk_full`` while gets, peeks and stats
go on), and :meth:`commit` raises :class:`JournalFull` for the read whose
changes did not get out (its replies are dropped: nothing unwritten is
acknowledged). Every ``disk_retry`` seconds a :class:`LoopingCall` writes what
is pending; once that works and the file system has ``resume_free_bytes`` free,
the journal is writable again (``on_disk_full(False)``). A journal that cannot
even be opened or given its header at start-up (a restart on a full disk)
starts read-only the same way. Any other failure, and any failed fsync (after
one the page cache cannot be trusted), is fatal: ``on_failure`` stops the
server, which then exits non-zero.

Compaction: once the journal is larger than both ``compact_min_bytes`` and
``compact_ratio`` times the last snapshot, the journal switches to generation
G+1 (the old one is fsynced and closed) and snapshot G+1 is written from a copy
of the list of live jobs, ``snapshot_chunk`` jobs per reactor turn, so a
million jobs never block the reactor for more than a few milliseconds at a
time. Jobs change while it is written, so the snapshot is fuzzy; journal G+1
holds every change since the switch, and absolute records make replaying it
over the fuzzy snapshot exact. The finished file is fsynced, renamed into
place, and the directory fsynced in a thread (``run_blocking``; the thread only
touches that file); then older journals and snapshots are removed. A crash at
any step leaves either snapshot G with journals G and G+1, or snapshot G+1 with
journal G+1: never a record applied twice out of order, never one lost.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from allq.core.job import Job, JobState
from allq.server.records import (
    FORMAT_VERSION,
    frame,
    frame_deleted,
    generation_of,
    concurrency_record,
    error_record,
    keys_record,
    job_record,
    journal_name,
    schedule_record,
    snapshot_name,
    state_record,
    tube_record,
)
from allq.server.snapshot_records import job_lines, reservation_record, settings_lines

MIB = 1024 * 1024
MILLISECONDS = 0.001
DEFAULT_FSYNC = "interval:50"
#: Compact once the journal passes this size and ``compact_ratio`` x the snapshot.
DEFAULT_COMPACT_MIN_BYTES = 64 * MIB
DEFAULT_COMPACT_RATIO = 1.0
#: Jobs written to a snapshot per reactor turn (a few milliseconds of work).
DEFAULT_SNAPSHOT_CHUNK = 1000
#: How often records are written out when nothing else does it (``always``,
#: ``never``): the deadline timer's changes arrive outside any frame.
IDLE_FLUSH_SECONDS = 1.0
#: Seconds between attempts to write again while the disk is full.
DEFAULT_DISK_RETRY_SECONDS = 2.0
#: Free bytes the file system must have before a full journal takes changes again
#: (so one freed block does not flip it back and forth).
DEFAULT_RESUME_FREE_BYTES = 1 * MIB
#: Write errors that mean "no space": read-only until there is, not fatal.
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})

_RESERVED = JobState.RESERVED
_DELETED = JobState.DELETED
_WAITING = JobState.WAITING
_BURIED = JobState.BURIED
#: ``fsync`` flushes data *and* the metadata needed to read it (the file size)
#: with ``fdatasync``; macOS has no ``fdatasync``.
_datasync = getattr(os, "fdatasync", os.fsync)


class _StreamOnly(bytes):
    """A framed record for the replication stream only, never written to the file."""


class JournalError(Exception):
    """The journal could not be written or fsynced: changes are not durable."""


class JournalFull(JournalError):
    """The data directory is full: the journal is read-only until space returns
    (the changes not written stay pending in memory, unacknowledged)."""


# -- the fsync policy ------------------------------------------------------------------


@attrs.frozen
class FsyncPolicy:
    """When the journal is fsynced.

    :ivar mode: ``"always"`` (before every reply that acknowledges a change),
        ``"interval"`` (at most every ``interval`` seconds) or ``"never"``
        (the OS decides).
    :ivar interval: seconds between fsyncs in ``interval`` mode.
    """

    mode: str
    interval: float = 0.05

    @classmethod
    def parse(cls, text: str) -> FsyncPolicy:
        """Parse ``always``, ``never`` or ``interval:MS`` (MS: whole milliseconds >= 1).

        :raises ValueError: anything else.
        """
        text = text.strip()
        if text in ("always", "never"):
            return cls(text)
        kind, _, milliseconds = text.partition(":")
        if kind == "interval" and milliseconds.isdigit() and 1 <= int(milliseconds) <= 3_600_000:
            return cls("interval", int(milliseconds) * MILLISECONDS)
        raise ValueError(
            f"must be always, never or interval:MS (MS from 1 to 3600000), got {text[:40]!r}")

    def __str__(self) -> str:
        if self.mode == "interval":
            return f"interval:{round(self.interval / MILLISECONDS)}"
        return self.mode


def fsync_directory(directory: str) -> None:
    """Make a file's creation, rename or removal in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (a write may be partial)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_durably(directory: str, name: str, data: bytes) -> None:
    """Put ``data`` in ``directory/name`` atomically and durably: written to
    ``name.tmp`` (which recovery removes if a crash leaves it), fsynced, renamed
    into place, the directory fsynced. Blocking: for small or rare files."""
    tmp = os.path.join(directory, name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, os.path.join(directory, name))
    fsync_directory(directory)


# -- the journal service -----------------------------------------------------------------


class Journal(Service):
    """Appends the queue's changes to the data directory's journal.

    Wire it as the queue's ``on_change`` hook and as the server factory's
    ``after_data`` hook (:meth:`commit`); :mod:`allq.server.recovery` reads the
    directory back and says which generation to continue.

    :param directory: the data directory (it exists, and this process holds its lock).
    :param policy: when to fsync.
    :param clock: the reactor, for the fsync interval and compaction steps.
    :param generation: the journal generation to append to (from recovery).
    :param snapshot_bytes: size of the snapshot recovery loaded (compaction threshold).
    :param max_id: the largest job id recovery saw: a job with a larger id is new.
    :param run_blocking: runs a blocking callable off the reactor thread and
        returns a Deferred of its result; by default it runs it right away
        (tests), the server passes a thread pool.
    :param lock_fd: the data directory's lock, released by :meth:`close`.
    :param on_failure: called once when a write or fsync fails fatally (the server
        stops, with a non-zero exit status).
    :param on_disk_full: called with ``True`` when the journal turns read-only for
        lack of space, and with ``False`` when it takes changes again.
    :param disk_retry: seconds between write attempts while the disk is full.
    :param resume_free_bytes: free space needed to take changes again.
    :param free_bytes: returns the free bytes of the file system holding a path
        (tests replace it); ``None`` when unknown.
    """

    _log = Logger()

    def __init__(
        self,
        directory: str,
        policy: FsyncPolicy,
        clock: IReactorTime,
        *,
        generation: int = 1,
        snapshot_bytes: int = 0,
        max_id: int = 0,
        lock_fd: int | None = None,
        compact_min_bytes: int = DEFAULT_COMPACT_MIN_BYTES,
        compact_ratio: float = DEFAULT_COMPACT_RATIO,
        snapshot_chunk: int = DEFAULT_SNAPSHOT_CHUNK,
        run_blocking: Callable[[Callable[[], object]], Deferred] = maybeDeferred,
        on_failure: Callable[[], None] = lambda: None,
        on_disk_full: Callable[[bool], None] = lambda full: None,
        disk_retry: float = DEFAULT_DISK_RETRY_SECONDS,
        resume_free_bytes: int = DEFAULT_RESUME_FREE_BYTES,
        free_bytes: Callable[[str], int | None] | None = None,
    ) -> None:
        self.directory = directory
        self.policy = policy
        self._clock = clock
        self.generation = generation
        self._snapshot_bytes = snapshot_bytes
        self._max_id = max_id
        self._lock_fd = lock_fd
        self._compact_min_bytes = compact_min_bytes
        self._compact_ratio = compact_ratio
        self._snapshot_chunk = snapshot_chunk
        self._run_blocking = run_blocking
        self._on_failure = on_failure
        self._on_disk_full = on_disk_full
        self._disk_retry = disk_retry
        self._resume_free_bytes = resume_free_bytes
        self._free_bytes = free_bytes if free_bytes is not None else _free_bytes
        #: Bytes the OS did not take (disk full), written before any newer record.
        self._unwritten = b""
        #: Whether the journal is read-only for lack of space (see the module docstring).
        self.disk_full = False
        self._retry: LoopingCall | None = None
        self._queue = None
        self._keys = None
        self._schedules = None
        self._interests = None
        self._fd: int | None = None
        self._buffer: list[bytes] = []
        self._journal_bytes = 0
        #: Bytes handed to the OS, and bytes known to be on disk (all generations).
        self._written = 0
        self._synced = 0
        self._background_sync: Deferred | None = None
        self._sync_each_commit = policy.mode == "always"
        self._failed: JournalError | None = None
        self._ticker: LoopingCall | None = None
        self._compaction: _Compaction | None = None
        self._compaction_call: IDelayedCall | None = None
        #: Counters, for tests and the benchmark.
        self.fsyncs = 0
        self.writes = 0
        self.compactions = 0
        #: The replication hook (:meth:`stream_to`): ``None`` when nothing streams.
        self._on_stream: Callable[[list[bytes], bool], None] | None = None
        #: Stream-only (``r``) lines in the buffer, left out of the file.
        self._stream_only = 0

    def attach(self, queue, keys=None, interests=None) -> None:
        """Follow ``queue``: it gives parents' counters and the jobs for snapshots;
        ``keys`` (:class:`IdempotencyKeys`), whose new keys are journaled; and
        ``interests`` (:class:`InterestTable`), whose changed entries are."""
        self._queue = queue
        self._keys = keys
        if keys is not None:
            keys.on_remember = self.on_key
        self._interests = interests
        if interests is not None:
            interests.on_change = self.on_interest

    def on_interest(self, entry) -> None:
        """A tube's interests changed (or were deleted): buffer its record."""
        self._buffer.append(frame(["i", *entry.record()]))

    def attach_schedules(self, schedules) -> None:
        """Follow ``schedules`` (:class:`allq.core.schedules.Schedules`): each change
        is journaled, and snapshots keep them all."""
        self._schedules = schedules
        schedules.on_change = self.on_schedule

    def on_schedule(self, name: str, schedule) -> None:
        """A schedule was added, changed (a firing, a pause) or removed (``None``)."""
        self._buffer.append(frame(schedule_record(name, schedule)))

    def on_key(self, key: str, job_id: int, expires: float) -> None:
        """A put's idempotency key was remembered: buffer its record. It follows
        the job's own record in the same commit, so a retry after a restart finds
        the job instead of storing a duplicate."""
        self._buffer.append(frame(["k", key, job_id, expires]))

    def stream_to(self, on_stream: Callable[[list[bytes], bool], None]) -> None:
        """Hand each commit's lines to ``on_stream(lines, changed)`` before they are
        written (replication: the journal is the change stream). The lines then
        also carry stream-only ``["r", id, deadline]`` records for reservations, in
        order among the others; ``changed`` is false when a commit holds nothing
        but those (a get: nothing to wait for)."""
        self._on_stream = on_stream

    # -- the core's hook ----------------------------------------------------------------

    def on_change(self, kind: str, subject: object) -> None:
        """The queue's ``on_change`` hook: buffer the record(s) for one change."""
        if kind == "job":
            job = subject
            state = job.state
            if state is _RESERVED:
                # A restart gives reserved jobs back to ready: nothing to keep on
                # disk. A backup needs the deadline (docs/replication.md).
                if self._on_stream is not None:
                    self._buffer.append(_StreamOnly(frame(reservation_record(job))))
                    self._stream_only += 1
                return
            if state is _DELETED:
                self._buffer.append(frame_deleted(job.id))
                return
            info = self._queue.parent_info(job.id) if state is _WAITING else None
            if job.id > self._max_id:
                self._max_id = job.id
                self._buffer.append(frame(job_record(job, info)))
                keys = self._queue.job_keys(job.id)
                if keys is not None:
                    self._buffer.append(frame(keys_record(job.id, keys)))
                if job.parent_id is not None:
                    # The core counts the child toward its parent without a change
                    # report of its own; records are absolute, so state the count.
                    parent = self._queue.parent_info(job.parent_id)
                    if parent is not None:
                        self._buffer.append(frame(state_record(
                            self._queue.job(job.parent_id), parent)))
            else:
                self._buffer.append(frame(state_record(job, info)))
                if state is _BURIED:
                    error = self._queue.last_error(job.id)
                    if error is not None:
                        self._buffer.append(frame(error_record(job.id, error)))
        elif kind == "tube":
            self._buffer.append(frame(tube_record(subject)))
        elif kind == "server":
            self._buffer.append(frame(["S", bool(subject.draining)]))
        elif kind == "concurrency":
            self._buffer.append(frame(concurrency_record(*subject)))

    # -- durability ------------------------------------------------------------------

    def commit(self) -> None:
        """Get buffered records to the OS (and to disk with ``always``).

        The server calls this after each batch of frames, before their replies
        can be written out.

        :raises JournalError: the journal cannot be written; the caller must not
            acknowledge anything (the connection that triggered it is dropped).
        """
        if self._on_stream is not None and self._buffer:
            self._stream()
        if self._buffer or (self._unwritten and not self.disk_full):
            # While the disk is full a read that changed nothing (a get, a peek)
            # is not held up by what is still pending: the retry writes that.
            self._flush()
        if self._sync_each_commit and self._written > self._synced:
            self._fsync()
        if (self._compaction is None and self._compaction_call is None and self.running
                and not self.disk_full and self._journal_bytes >= self._compact_at()):
            # Not inside a protocol callback: the switch itself fsyncs.
            self._compaction_call = self._clock.callLater(0, self._scheduled_compaction)

    def _stream(self) -> None:
        """Hand the buffered lines to the replicator; keep the file's ones."""
        lines, only = self._buffer, self._stream_only
        self._on_stream(list(lines), len(lines) > only)
        if only:
            self._buffer = [line for line in lines if type(line) is bytes]
            self._stream_only = 0

    def sync(self) -> None:
        """Write out and fsync everything now, whatever the policy."""
        if self._on_stream is not None and self._buffer:
            self._stream()
        if self._buffer or self._unwritten:
            self._flush()
        if self._written > self._synced:
            self._fsync()

    def _tick(self) -> None:
        try:
            self.commit()
            if (self.policy.mode == "interval" and not self._sync_each_commit
                    and self._written > self._synced and self._background_sync is None):
                self._fsync_in_background()
        except JournalError:
            pass  # already logged: the server is stopping, or read-only until space returns

    def _fsync_in_background(self) -> None:
        """fsync what was written so far off the reactor thread (``interval``).

        The thread gets its own duplicate of the descriptor, so a journal switch
        or close meanwhile cannot make it fsync a closed or reused descriptor.
        One at a time: the next tick starts the next one.
        """
        fd = os.dup(self._fd)
        upto = self._written

        def fsync() -> None:
            try:
                _datasync(fd)
            finally:
                os.close(fd)

        def synced(_) -> None:
            self._background_sync = None
            self._synced = max(self._synced, upto)
            self.fsyncs += 1

        def failed(failure) -> None:
            self._background_sync = None
            try:
                self._fail(f"fsync of the journal failed: {failure.getErrorMessage()}")
            except JournalError:
                pass  # logged; the next commit raises it

        self._background_sync = self._run_blocking(fsync)
        self._background_sync.addCallbacks(synced, failed)

    def _flush(self) -> None:
        self._check()
        data = b"".join(self._buffer)
        self._buffer.clear()
        if self._unwritten:
            data = self._unwritten + data
            self._unwritten = b""
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as e:
            done = len(data) - len(view)
            self._journal_bytes += done
            self._written += done
            if e.errno not in _NO_SPACE:
                self._fail(f"writing the journal failed: {e}")
            # Keep exactly what the OS did not take: the next write completes a
            # record cut in two, so no record ever follows a torn one.
            self._unwritten = bytes(view)
            self._enter_disk_full(f"writing the journal failed: {e}")
        self._journal_bytes += len(data)
        self._written += len(data)
        self.writes += 1

    def _fsync(self) -> None:
        self._check()
        try:
            _datasync(self._fd)
        except OSError as e:
            # After a failed fsync the page cache cannot be trusted (Linux may have
            # dropped the dirty pages): stop rather than acknowledge more.
            self._fail(f"fsync of the journal failed: {e}")
        self._synced = self._written
        self.fsyncs += 1

    def _check(self) -> None:
        if self._failed is not None:
            raise self._failed
        if self._fd is None:
            try:
                self._open()
            except OSError as e:
                if e.errno not in _NO_SPACE:
                    self._fail(f"opening the journal failed: {e}")
                self._enter_disk_full(f"opening the journal failed: {e}")

    # -- disk full ----------------------------------------------------------------------

    def _enter_disk_full(self, message: str) -> None:
        """Turn read-only (once), start retrying, and raise :class:`JournalFull`."""
        if not self.disk_full:
            self.disk_full = True
            self._log.critical(
                "data directory {directory} is full ({message}); refusing changes with "
                "disk_full until space returns (retrying every {retry:g} s)",
                directory=self.directory, message=message, retry=self._disk_retry)
            if self.running:
                self._start_retrying()
            self._on_disk_full(True)
        raise JournalFull(f"{message}; the data directory is full")

    def _start_retrying(self) -> None:
        if self._retry is None:
            self._retry = LoopingCall(self.retry_disk_full)
            self._retry.clock = self._clock
            self._retry.start(self._disk_retry, now=False)

    def _stop_retrying(self) -> None:
        if self._retry is not None and self._retry.running:
            self._retry.stop()
        self._retry = None

    def retry_disk_full(self) -> bool:
        """Write what is pending and, if that works and there is room again, take
        changes again. Runs every ``disk_retry`` seconds while the disk is full.

        :returns: whether the journal is writable now.
        """
        if not self.disk_full:
            return True
        if self._failed is not None:
            return False
        try:
            self._check()  # (re)opens the journal if that failed
            if self._buffer or self._unwritten:
                self._flush()
            self.commit()
        except JournalFull:
            return False
        except JournalError:
            return False  # fatal; logged, the server is stopping
        free = self._free_bytes(self.directory)
        if free is not None and free < self._resume_free_bytes:
            return False
        self.disk_full = False
        self._stop_retrying()
        self._log.info("data directory {directory} has room again ({free} bytes free); "
                       "taking changes", directory=self.directory,
                       free="?" if free is None else free)
        self._on_disk_full(False)
        return True

    def _fail(self, message: str) -> None:
        first = self._failed is None
        self._failed = JournalError(f"{message}; changes are no longer persisted")
        if first:
            self._log.critical("{message}; stopping", message=self._failed)
            self._on_failure()
        raise self._failed

    # -- lifecycle --------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        try:
            self._check()  # opens the journal; on a full disk, starts read-only
        except JournalFull:
            pass  # logged; retrying
        else:
            free = self._free_bytes(self.directory)
            if free is not None and free < self._resume_free_bytes:
                # A restart on a (nearly) full disk: read-only from the start
                # rather than fail on the first put.
                with contextlib.suppress(JournalFull):
                    self._enter_disk_full(f"only {free} bytes free")
        if self.disk_full:
            self._start_retrying()
        period = self.policy.interval if self.policy.mode == "interval" else IDLE_FLUSH_SECONDS
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = self._clock
        self._ticker.start(period, now=False)

    def stopService(self) -> Deferred:
        """Stop the ticker and any compaction, then write and fsync everything.

        Frames may still arrive until the reactor closes the connections: from
        now on each :meth:`commit` fsyncs (as ``always`` does).
        """
        super().stopService()
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        self._ticker = None
        self._stop_retrying()
        if self._compaction_call is not None and self._compaction_call.active():
            self._compaction_call.cancel()
        self._compaction_call = None
        self._sync_each_commit = True
        finishing = self._compaction.abandon() if self._compaction is not None else succeed(None)

        def synced(_):
            try:
                self.sync()
            except JournalError:
                pass  # logged; nothing more can be done at shutdown
            return None

        return finishing.addCallback(synced)

    def close(self) -> None:
        """Write, fsync and close the journal file and release the directory
        (after the reactor stopped)."""
        try:
            self.sync()
        except JournalError:
            pass
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _open(self) -> None:
        path = os.path.join(self.directory, journal_name(self.generation))
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                header = frame(["journal", FORMAT_VERSION, self.generation])
                write_all(fd, header)
                _datasync(fd)
                fsync_directory(self.directory)
                size = len(header)
        except OSError:
            # A header the disk had no room for (or half of one): leave no torn
            # first line behind; the next attempt starts the file again.
            with contextlib.suppress(OSError):
                if os.fstat(fd).st_size < len(frame(["journal", FORMAT_VERSION,
                                                      self.generation])):
                    os.ftruncate(fd, 0)
            os.close(fd)
            raise
        self._fd = fd
        self._journal_bytes = size

    # -- compaction -------------------------------------------------------------------

    def _compact_at(self) -> float:
        return max(self._compact_min_bytes, self._compact_ratio * self._snapshot_bytes)

    def compact(self) -> Deferred:
        """Start a compaction now (unless one is running); fires when it is done."""
        if self._compaction is not None:
            return self._compaction.done()
        if self._compaction_call is not None and self._compaction_call.active():
            self._compaction_call.cancel()
        self._compaction_call = None
        return self._begin_compaction()

    def _scheduled_compaction(self) -> None:
        try:
            self._begin_compaction()
        except JournalError:
            pass  # logged; the server is stopping
        except Exception:
            # The journal goes on in the new generation; the next compaction is
            # due once that one is past the threshold in turn.
            self._log.failure("starting a compaction failed")

    def _begin_compaction(self) -> Deferred:
        self._compaction_call = None
        if self._queue is None:
            raise RuntimeError("compaction needs the queue: call attach() first")
        # Switch journals: everything up to here is in journal G (made durable),
        # everything from here on goes to journal G+1.
        self.sync()
        os.close(self._fd)
        self._fd = None
        self.generation += 1
        self._check()  # opens journal G+1
        compaction = self._compaction = _Compaction(self, self.generation)
        done = compaction.done()
        compaction.start()
        return done

    def _compacted(self, generation: int, snapshot_bytes: int | None) -> None:
        """Called by the compaction when it ends (``None``: it did not finish)."""
        self._compaction = None
        if snapshot_bytes is not None:
            self._snapshot_bytes = snapshot_bytes
            self.compactions += 1


class _Compaction:
    """Writes snapshot ``generation`` a chunk per reactor turn, then installs it."""

    _log = Logger()

    def __init__(self, journal: Journal, generation: int) -> None:
        self._journal = journal
        self._clock = journal._clock
        self._queue = journal._queue
        self.generation = generation
        directory = journal.directory
        self._directory = directory
        self._tmp_path = os.path.join(directory, snapshot_name(generation) + ".tmp")
        self._path = os.path.join(directory, snapshot_name(generation))
        self._fd: int | None = None
        self._jobs: list[Job] = []
        self._position = 0
        self._records = 0
        self._bytes = 0
        self._call: IDelayedCall | None = None
        self._installing: Deferred | None = None
        self._waiters: list[Deferred] = []
        self._started = 0.0
        self._abandoned = False

    def done(self) -> Deferred:
        d = Deferred()
        self._waiters.append(d)
        return d

    def start(self) -> None:
        self._started = self._clock.seconds()
        # One C-level copy of the job references (~50 ms at a million jobs): the
        # list is walked over many turns while the queue keeps changing.
        self._jobs = self._queue.live_jobs()
        try:
            self._fd = os.open(self._tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            self._write([frame(["snapshot", FORMAT_VERSION, self.generation,
                                self._journal._max_id + 1, self._started])], records=0)
        except OSError:
            self._give_up()
            raise
        self._call = self._clock.callLater(0, self._step)

    def _step(self) -> None:
        self._call = None
        try:
            self._write_chunk()
        except Exception:
            self._log.failure("writing snapshot {generation} failed", generation=self.generation)
            self._give_up()
            return
        if self._position < len(self._jobs):
            self._call = self._clock.callLater(0, self._step)
        else:
            self._finish()

    def _write_chunk(self) -> None:
        end = min(self._position + self._journal._snapshot_chunk, len(self._jobs))
        lines = job_lines(self._queue, self._jobs[self._position:end])
        self._position = end
        self._write(lines, records=len(lines))

    def _write(self, lines: list[bytes], records: int) -> None:
        data = b"".join(lines)
        write_all(self._fd, data)
        self._bytes += len(data)
        self._records += records

    def _finish(self) -> None:
        journal = self._journal
        lines = settings_lines(self._queue, journal._keys, journal._schedules,
                               journal._interests)
        self._write(lines, records=len(lines))
        self._write([frame(["end", self._records])], records=0)
        self._jobs = []
        fd, self._fd = self._fd, None
        self._installing = self._journal._run_blocking(lambda: self._install(fd))
        self._installing.addCallbacks(self._installed, self._install_failed)

    def _install(self, fd: int) -> None:
        """Off the reactor thread: make the snapshot durable, put it in place,
        then remove what it replaces."""
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(self._tmp_path, self._path)
        fsync_directory(self._directory)
        for name in os.listdir(self._directory):
            generation = generation_of(name)
            if generation is not None and generation < self.generation:
                os.unlink(os.path.join(self._directory, name))

    def _installed(self, _) -> None:
        self._installing = None
        took = self._clock.seconds() - self._started
        self._log.info(
            "compaction: snapshot {generation} holds {records} records ({mib:.1f} MiB), "
            "written in {took:.2f} s",
            generation=self.generation, records=self._records, mib=self._bytes / MIB, took=took,
        )
        self._end(self._bytes)

    def _install_failed(self, failure) -> None:
        self._installing = None
        self._log.failure("installing snapshot {generation} failed", failure,
                          generation=self.generation)
        self._give_up()

    def abandon(self) -> Deferred:
        """Stop writing (server shutdown); the .tmp file is removed at the next start.

        Fires once nothing touches the snapshot any more.
        """
        self._abandoned = True
        if self._call is not None and self._call.active():
            self._call.cancel()
            self._call = None
            self._give_up()
            return succeed(None)
        if self._installing is not None:
            return self.done()  # let the thread finish: the result is valid
        return succeed(None)

    def _give_up(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with contextlib.suppress(OSError):
            os.unlink(self._tmp_path)
        self._jobs = []
        self._end(None)

    def _end(self, snapshot_bytes: int | None) -> None:
        self._journal._compacted(self.generation, snapshot_bytes)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(snapshot_bytes is not None)


def _free_bytes(path: str) -> int | None:
    """Bytes an unprivileged process may still write on the file system of ``path``."""
    try:
        stats = os.statvfs(path)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize
