"""Reading a data directory back at start-up: snapshot + journals -> a queue.

Responsibility: lock the directory, load the newest installed snapshot, replay
the journals of its generation and later, stop reading a file at its first torn
or damaged record (never refuse to start over the good prefix), cut a damaged
tail off (keeping a copy for forensics), remove what a finished compaction left
behind, and place every job back through the core's restore API
(:meth:`Queue.restore`). The file layout and record format are described in
:mod:`allq.server.journal`; the codec is :mod:`allq.server.records`.

This runs in ``makeService``, before the reactor does: its blocking file I/O
happens before any client is served, and nowhere else.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os

import attrs

from allq.core.job import Job, JobState
from allq.core.parents import ParentInfo
from allq.errors import AllQError
from allq.server.journal import fsync_directory
from allq.server.records import (
    FORMAT_VERSION,
    body_from_record,
    LOCK_FILE,
    generation_of,
    journal_name,
    schedule_from_record,
    snapshot_name,
    unframe,
)

#: Field positions in a ``j`` record.
_MUTABLE = slice(10, 15)  # state, deadline, expireds, releases, parent
_STATES = {state.value: state for state in JobState}
_RESERVED = JobState.RESERVED


@contextlib.contextmanager
def _bulk_load():
    """No cyclic GC while millions of long-lived objects are made: it would scan
    them again and again (it halves recovery time), and none of them form cycles."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class DataDirError(Exception):
    """The data directory cannot be used (in use, unreadable, a newer format)."""


@attrs.define
class Recovered:
    """What a data directory holds, replayed.

    :ivar jobs: each live job's ``j`` record (its latest state), in put order.
    :ivar tubes: each tube's latest ``t`` record.
    :ivar draining: the server's drain flag.
    :ivar keys: each idempotency key's latest ``k`` record.
    :ivar interests: each tube's ``i`` records (interests, merged on restore).
    :ivar errors: each live job's last error (``e`` records), by job id.
    :ivar schedules: each live schedule's latest ``R`` record, by name.
    :ivar max_id: the largest job id ever recorded (ids above it are new).
    :ivar generation: the journal generation to go on appending to.
    :ivar snapshot_bytes: size of the snapshot loaded (0: none).
    :ivar records: records applied.
    :ivar skipped: lines not applied: the first damaged one of a file and all after it.
    :ivar damaged: one line per damaged file, saying what was cut off and where it went.
    :ivar lock_fd: the open lock file; closing it releases the directory.
    """

    directory: str
    jobs: dict[int, list] = attrs.Factory(dict)
    tubes: dict[str, list] = attrs.Factory(dict)
    draining: bool = False
    keys: dict[str, list] = attrs.Factory(dict)
    interests: dict[str, list] = attrs.Factory(dict)
    errors: dict[int, str] = attrs.Factory(dict)
    schedules: dict[str, list] = attrs.Factory(dict)
    #: Each live keyed job's ``(unique_key, concurrency_key)`` (``u`` records), by job id.
    job_keys: dict[int, tuple] = attrs.Factory(dict)
    #: Each tube's concurrency limit (``c`` records).
    concurrency: dict[str, int] = attrs.Factory(dict)
    max_id: int = 0
    generation: int = 1
    snapshot_generation: int | None = None
    snapshot_bytes: int = 0
    records: int = 0
    skipped: int = 0
    orphans: int = 0
    damaged: list[str] = attrs.Factory(list)
    lock_fd: int | None = None


@attrs.frozen
class Restored:
    """How many jobs :func:`restore_queue` placed, by the state they are in now."""

    ready: int = 0
    delayed: int = 0
    buried: int = 0
    waiting: int = 0
    invalid: int = 0
    #: Kept reserved (``keep_reserved`` only).
    reserved: int = 0

    @property
    def total(self) -> int:
        return self.ready + self.delayed + self.buried + self.waiting + self.reserved


def lock_directory(directory: str) -> int:
    """Create ``directory`` if needed and take its lock for this process.

    :returns: the lock file's descriptor (the lock lasts until it is closed or
        the process ends, however it ends).
    :raises DataDirError: it cannot be created, or another server holds it.
    """
    try:
        # Job bodies are stored as the server sees them (decrypted): owner only.
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(directory, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise DataDirError(f"cannot use data directory {directory}: {e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise DataDirError(
            f"data directory {directory} is in use by another allq-server") from None
    return fd


def recover(directory: str, now: float) -> Recovered:
    """Lock ``directory`` and read back everything it holds.

    :param now: the wall-clock time, used to name a damaged tail's copy.
    :raises DataDirError: the directory is unusable or was written by a newer format.
    """
    state = Recovered(directory, lock_fd=lock_directory(directory))
    try:
        with _bulk_load():
            _recover(state, now)
    except BaseException:
        os.close(state.lock_fd)
        raise
    return state


def _recover(state: Recovered, now: float) -> None:
    directory = state.directory
    journals: list[int] = []
    snapshots: list[int] = []
    for name in os.listdir(directory):
        generation = generation_of(name)
        if generation is None:
            continue
        if name == journal_name(generation):
            journals.append(generation)
        elif name == snapshot_name(generation):
            snapshots.append(generation)
    if snapshots:
        base = max(snapshots)
        state.snapshot_generation = base
        _load_snapshot(state, os.path.join(directory, snapshot_name(base)))
        state.snapshot_bytes = os.path.getsize(os.path.join(directory, snapshot_name(base)))
    else:
        base = min(journals, default=1)
    replayed = sorted(g for g in journals if g >= base)
    for generation in replayed:
        _replay_journal(state, os.path.join(directory, journal_name(generation)), now)
    state.generation = max(replayed, default=base)
    _remove_leftovers(directory, base if snapshots else None)


def _remove_leftovers(directory: str, snapshot: int | None) -> None:
    """Remove unfinished snapshots and, once a snapshot is in place, what it replaced."""
    removed = False
    for name in os.listdir(directory):
        generation = generation_of(name)
        if generation is None:
            continue
        if name.endswith(".tmp") or (snapshot is not None and generation < snapshot):
            os.unlink(os.path.join(directory, name))
            removed = True
    if removed:
        fsync_directory(directory)


def _read_records(path: str):
    """Yield ``(offset, line, record)`` for each line; ``record`` is ``None`` from
    the first damaged line on (the rest is counted, not trusted)."""
    offset = 0
    damaged = False
    with open(path, "rb") as f:
        for line in f:
            record = None if damaged else unframe(line)
            damaged = record is None
            yield offset, line, record
            offset += len(line)


def _load_snapshot(state: Recovered, path: str) -> None:
    header = None
    end = None
    loaded = skipped = 0
    for _, _, record in _read_records(path):
        if record is not None and not skipped and end is None:
            if header is None:
                header = _check_header(record, "snapshot", path)
                state.max_id = max(state.max_id, header[3] - 1)
                continue
            if record[0] == "end":
                end = record
                continue
            if apply_record(state, record):
                loaded += 1
                continue
        skipped += 1
    state.records += loaded
    state.skipped += skipped
    if header is None or end is None or skipped or end[1] != loaded:
        # Only a finished, fsynced snapshot is ever renamed into place: this is
        # damage on disk. Go on with what could be read.
        state.damaged.append(
            f"snapshot {path} is damaged: loaded {loaded} records"
            + ("" if end is None else f" of {end[1]}") + f", skipped {skipped} lines")


def _replay_journal(state: Recovered, path: str, now: float) -> None:
    header = None
    good = 0
    skipped = 0
    tail_at = None
    for offset, line, record in _read_records(path):
        if record is not None and tail_at is None:
            if header is None:
                header = _check_header(record, "journal", path)
                good = offset + len(line)
                continue
            if apply_record(state, record):
                state.records += 1
                good = offset + len(line)
                continue
        # The first bad record ends the good prefix: what follows it is not
        # applied, even if it reads well (a record may be missing in between).
        skipped += 1
        if tail_at is None:
            tail_at = offset
    if tail_at is None:
        return
    state.skipped += skipped
    # Keep the bad tail for forensics, then cut it off so new records follow
    # the good prefix (a record appended after garbage could never be read).
    copy = f"{path}.corrupt-{int(now)}"
    with open(path, "rb") as f:
        f.seek(tail_at)
        tail = f.read()
    with open(copy, "wb") as out:
        out.write(tail)
        out.flush()
        os.fsync(out.fileno())
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, good)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_directory(os.path.dirname(path) or ".")
    state.damaged.append(
        f"journal {path}: skipped {skipped} damaged or torn records from byte {tail_at} "
        f"of {tail_at + len(tail)}; the tail was saved as {copy}")


def _check_header(record: list, kind: str, path: str) -> list:
    if record[0] != kind or len(record) < 3:
        raise DataDirError(f"{path} does not start with a {kind} header")
    if record[1] != FORMAT_VERSION:
        raise DataDirError(
            f"{path} has format version {record[1]!r}; this allq reads version {FORMAT_VERSION}")
    return record


def apply_record(state: Recovered, record: list) -> bool:
    """Apply one journal record to the replayed state; ``False``: not a known record.

    Also how a backup's replicas (:mod:`allq.server.replica_state`) apply the
    primary's streamed records: the way recovery replays a journal.
    """
    kind = record[0]
    size = len(record)
    if kind == "j" and size == 15 and type(record[1]) is int:
        state.jobs[record[1]] = record
        if record[1] > state.max_id:
            state.max_id = record[1]
    elif kind == "s" and size == 7:
        job = state.jobs.get(record[1])
        if job is None:
            # A job that changed and was deleted while a fuzzy snapshot was
            # written (it is absent from it); its "d" record follows.
            state.orphans += 1
        else:
            job[_MUTABLE] = record[2:7]
    elif kind == "d" and size == 2:
        state.jobs.pop(record[1], None)
        if state.errors:
            state.errors.pop(record[1], None)
        if state.job_keys:
            state.job_keys.pop(record[1], None)
    elif kind == "e" and size == 3 and isinstance(record[2], str):
        if record[1] in state.jobs:
            state.errors[record[1]] = record[2]
        else:
            state.orphans += 1  # as for an "s" record of a job gone since
    elif kind == "t" and size == 7 and isinstance(record[1], str):
        state.tubes[record[1]] = record
    elif kind == "u" and size == 4:
        if record[1] in state.jobs:
            state.job_keys[record[1]] = (record[2], record[3])
        else:
            state.orphans += 1
    elif kind == "c" and size == 3 and isinstance(record[1], str):
        state.concurrency[record[1]] = record[2]
    elif kind == "S" and size == 2:
        state.draining = bool(record[1])
    elif kind == "k" and size == 4 and isinstance(record[1], str):
        state.keys[record[1]] = record
    elif kind == "R" and size == 3 and isinstance(record[1], str):
        if record[2] is None:
            state.schedules.pop(record[1], None)
        elif isinstance(record[2], dict):
            state.schedules[record[1]] = record
        else:
            return False
    elif kind == "i" and size == 4 and isinstance(record[1], str):
        # Merged last-writer-wins on restore, so keep every version seen.
        state.interests.setdefault(record[1], []).append(record[1:])
    else:
        return False
    return True


def restore_keys(keys, recovered: Recovered, now: float) -> int:
    """Put the recovered idempotency keys that have not expired back into ``keys``
    (:class:`IdempotencyKeys`), oldest first; how many were still valid."""
    restored = 0
    for _, key, job_id, expires in sorted(recovered.keys.values(), key=_expiry):
        if isinstance(job_id, int) and isinstance(expires, int | float) and expires > now:
            keys.restore(key, job_id, expires, now)
            restored += 1
    return restored


def restore_schedules(schedules, recovered: Recovered, now: float) -> int:
    """Put the recovered schedules back into ``schedules`` (:class:`Schedules`),
    each applying its missed-firing policy; how many could not be read."""
    invalid = 0
    for record in recovered.schedules.values():
        try:
            schedules.restore(schedule_from_record(record), now)
        except (ValueError, TypeError):
            invalid += 1
    return invalid


def restore_interests(interests, recovered: Recovered) -> int:
    """Merge the recovered interest records into ``interests``
    (:class:`InterestTable`); how many tubes' entries were taken."""
    return interests.restore(record for records in recovered.interests.values()
                             for record in records)


def _expiry(record: list) -> float:
    expires = record[3]
    return expires if isinstance(expires, int | float) else 0.0


def restore_queue(queue, recovered: Recovered, now: float,
                  keep_reserved: bool = False) -> Restored:
    """Place what was recovered into an empty ``queue``.

    Tube settings come first (a fair setting decides how ready jobs line up),
    then jobs in put order, then the drain flag. A record the core refuses
    (it would take a bug to write one) is counted in ``invalid``, not fatal.

    :param keep_reserved: a job recorded ``reserved`` stays reserved until its
        recorded deadline (a promoted replica: its workers may still finish it);
        by default it becomes ready (a restart: its workers are gone).
    """
    for name, (_, _, throttle, paused, draining, fair, max_size) in recovered.tubes.items():
        try:
            queue.restore_tube(name, now=now, throttle=throttle, paused=paused,
                               draining=draining, fair=fair, max_size=max_size)
        except (AllQError, TypeError, ValueError):
            pass
    for name, limit in recovered.concurrency.items():
        try:
            queue.restore_concurrency(name, limit)
        except AllQError:
            pass
    counts = {JobState.READY: 0, JobState.DELAYED: 0, JobState.BURIED: 0, JobState.WAITING: 0,
              _RESERVED: 0}
    invalid = 0
    restore = queue.restore
    errors = recovered.errors
    job_keys = recovered.job_keys
    with _bulk_load():
        for record in recovered.jobs.values():
            try:
                (_, job_id, tube, body, priority, ttl, expired_limit, created, shard_key,
                 parent_id, state, deadline, expireds, releases, parent) = record
                job = Job(id=job_id, tube=tube, body=body_from_record(body), priority=priority, ttl=ttl,
                          expired_limit=expired_limit, created=created, state=_STATES[state],
                          deadline=deadline, expireds=expireds, releases=releases,
                          shard_key=shard_key, parent_id=parent_id)
                unique_key, concurrency_key = (job_keys.get(job_id, (None, None))
                                               if job_keys else (None, None))
                reserved_until = (deadline if keep_reserved and job.state is _RESERVED
                                  and deadline is not None else None)
                restore(job, now=now, parent=None if parent is None else ParentInfo(*parent),
                        last_error=errors.get(job_id) if errors else None,
                        unique_key=unique_key, concurrency_key=concurrency_key,
                        reserved_until=reserved_until)
            except (AllQError, TypeError, ValueError, KeyError):
                invalid += 1
                continue
            counts[job.state] += 1
    queue.draining = recovered.draining
    return Restored(ready=counts[JobState.READY], delayed=counts[JobState.DELAYED],
                    buried=counts[JobState.BURIED], waiting=counts[JobState.WAITING],
                    invalid=invalid, reserved=counts[_RESERVED])
