"""Importing a data directory written by AllQueue (``SERIALIZE=true``) into allq's journal.

AllQueue kept one file per job (ALLQ-REFERENCE §10); allq keeps a journal
(:mod:`allq.server.journal`). Both may use the same directory
(``SERIALIZER_DIR``), so a server started on an AllQueue directory would
otherwise start empty beside the old jobs. :func:`find_allqueue_files` says
whether a directory holds such files (the server refuses to start on them
unless told to import); :func:`import_allqueue` imports them
(``allq import DIR``, or ``twistd allq-server --import-allqueue``).

AllQueue's layout, under the directory::

    ready/<tube>/<id>     {"job_id","body","tube","expireds","releases"} (strings)
    delayed/<tube>/<id>   {"time_to_start": unix, "job": {full job}, "priority": p}
    reserved/<id>         {"start": unix, "start_ms": ms, "job": {full job}}
    buried/<id>           like ready/
    parents/<id>          {"start", "job", "child_count", "timeout", "limit",
                           "run_on_timeout", "started_count"}
    throttles/<tube>      jobs per second, as text

A full job is ``{"id","parent_id","body","tube","reserved","noop","ttl","expireds",
"expired_limit","priority","releases","created_time"}``. Any file may hold any
of the three shapes (AllQueue moved files between directories before rewriting
them); where a job lies decides its state. What becomes of each:

* ready and buried jobs stay ready and buried; reserved jobs become **ready**
  (their reservation died with the AllQueue server), keeping their counts;
* delayed jobs keep their due time (one already due is ready);
* waiting parents keep their timeout (counted from their ``start``), their
  ``run_on_timeout``, and their children counts (``started_count`` children put,
  ``child_count`` finished, plus any child imported with them); AllQueue wrote
  the file before applying a ``limit`` and never updated it, so the limit is
  unknown and the parent waits for ``set_children_started`` or its timeout,
  as AllQueue itself did after a restart;
* throttles become tube throttles.

Every job gets a new allq id (``<server_id>,<number>``; AllQueue's ids were
random text). Children are linked to their imported parents by the new ids; a
child whose parent is not among the files loses the link (counted in the
report). The old and new numbers are written to ``ids.tsv`` beside the moved
files.

Nothing is half-imported: every file is read and checked before anything is
written, and one bad file (not JSON, a wrong field, a tube name allq refuses, a
``noop`` job outside ``parents/``) stops the import with a
message naming each bad file. Then the records are appended to allq's journal
(through the core's restore and the journal's ``on_change``, as a recovery
would place them) and fsynced, and only then are AllQueue's directories moved
into ``allqueue-imported-<unix time>/`` so that they are not imported twice.
The one window left is between that fsync and those renames: an import killed
exactly there would be imported again by a rerun.

Blocking file I/O: run before the reactor (``allq import``, or server start-up).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator

import attrs
from twisted.internet.task import Clock

from allq.core.job import Job, JobState
from allq.core.parents import ParentInfo
from allq.core.queue import (
    DEFAULT_EXPIRED_LIMIT,
    DEFAULT_PRIORITY,
    DEFAULT_TTL,
    Queue,
    QueueConfig,
)
from allq.errors import AllQError
from allq.server.journal import FsyncPolicy, Journal, fsync_directory
from allq.server.recovery import DataDirError, recover, restore_queue
from allq.vocabulary import (
    MAX_EXPIRED_LIMIT,
    check_count,
    check_priority,
    check_seconds,
    check_tube,
)

#: AllQueue's directories, in the order their files are placed (parents before
#: the children that point at them).
KINDS = ("parents", "ready", "delayed", "reserved", "buried", "throttles")
#: Kinds whose files sit in one sub-directory per tube.
_BY_TUBE = ("ready", "delayed")
#: Where imported files go, with ``-<unix time>`` after it.
IMPORTED_PREFIX = "allqueue-imported"
IDS_FILE = "ids.tsv"
#: A job file larger than this is not AllQueue's (its messages were at most 600,000
#: characters); refusing it keeps a stray huge file from filling memory.
MAX_FILE_BYTES = 16 * 1024 * 1024
#: Bad files listed in the error; the rest are counted.
MAX_LISTED_ERRORS = 20


class AllQueueImportError(Exception):
    """The AllQueue files cannot be imported; the message names each bad file.
    Nothing was written."""


@attrs.frozen
class Found:
    """AllQueue files in a directory: how many of each kind."""

    directory: str
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def describe(self) -> str:
        """``3 ready, 1 buried`` style text of the non-zero counts."""
        return ", ".join(f"{count} {kind}" for kind, count in self.counts.items() if count)


@attrs.define
class Planned:
    """One job read from a file, checked, before it gets its allq id."""

    path: str
    old_id: str
    tube: str
    body: str
    priority: int
    ttl: float
    expired_limit: int
    created: float
    state: JobState
    expireds: int
    releases: int
    deadline: float | None = None
    parent_old_id: str | None = None
    parent: ParentInfo | None = None
    was_reserved: bool = False


@attrs.frozen
class ImportReport:
    """What an import did."""

    ready: int
    delayed: int
    buried: int
    waiting: int
    from_reserved: int
    throttles: int
    unlinked_children: int
    moved_to: str | None

    @property
    def jobs(self) -> int:
        return self.ready + self.delayed + self.buried + self.waiting

    def describe(self) -> str:
        text = (f"imported {self.jobs} AllQueue jobs ({self.ready} ready, of which "
                f"{self.from_reserved} were reserved; {self.delayed} delayed, {self.buried} "
                f"buried, {self.waiting} waiting parents) and {self.throttles} throttles")
        if self.unlinked_children:
            text += (f"; {self.unlinked_children} children whose parent was not among the "
                     "files lost their parent link")
        if self.moved_to is not None:
            text += f"; AllQueue's files moved to {self.moved_to}"
        return text


# -- finding -----------------------------------------------------------------------------


def _files(directory: str, kind: str) -> Iterator[str]:
    """The paths of every entry of one kind (its tube sub-directories for ready/delayed)."""
    root = os.path.join(directory, kind)
    if not os.path.isdir(root):
        return
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if kind in _BY_TUBE and os.path.isdir(path) and not os.path.islink(path):
            for job_name in sorted(os.listdir(path)):
                yield os.path.join(path, job_name)
        else:
            yield path


def find_allqueue_files(directory: str) -> Found | None:
    """Whether ``directory`` holds files in AllQueue's layout (``None``: none;
    empty AllQueue directories do not count).

    :raises OSError: a directory cannot be listed.
    """
    counts = {kind: sum(1 for _ in _files(directory, kind)) for kind in KINDS}
    found = Found(directory, counts)
    return found if found.total else None


def refusal(found: Found, data_dir: str) -> str:
    """What a server says when it will not start on AllQueue's files."""
    return (
        f"allq-server: {data_dir} holds jobs written by AllQueue ({found.describe()} "
        f"files under {', '.join(kind + '/' for kind, n in found.counts.items() if n)}), "
        "which allq does not read as they are; starting would ignore them. Import them "
        f"into allq's journal first, with the server stopped:\n\n    allq import {data_dir}\n\n"
        "or start the server once with --import-allqueue (env ALLQ_IMPORT_ALLQUEUE=true) "
        "to import them at start. See README, \"Switching from AllQueue\"."
    )


# -- reading -----------------------------------------------------------------------------


class _Bad(Exception):
    """One file's problem (internal: collected, then raised together)."""


def _read_json(path: str) -> object:
    try:
        if not os.path.isfile(path) or os.path.islink(path):
            raise _Bad("not a regular file")
        if os.path.getsize(path) > MAX_FILE_BYTES:
            raise _Bad(f"larger than {MAX_FILE_BYTES} bytes")
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise _Bad(f"cannot read: {e.strerror}") from None
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _Bad("not JSON (AllQueue versions before its JSON files wrote a binary "
                   "format, which this importer does not read)") from None


def _int(value: object, name: str, default: int | None = None) -> int:
    """AllQueue's numbers: ints, or the strings of its job hashes."""
    if value is None and default is not None:
        return default
    if isinstance(value, bool):
        raise _Bad(f"{name} must be a whole number, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise _Bad(f"{name} must be a whole number, got {str(value)[:40]!r}")


def _checked(check: Callable, *args, **kwargs) -> object:
    try:
        return check(*args, **kwargs)
    except AllQError as e:
        raise _Bad(e.message) from None


def _plan_job(path: str, data: object, kind: str, now: float) -> Planned:
    if not isinstance(data, dict):
        raise _Bad("expected a JSON object")
    job = data.get("job", data)
    if not isinstance(job, dict):
        raise _Bad("'job' must be a JSON object")
    body = job.get("body")
    if not isinstance(body, str):
        raise _Bad("'body' must be a string")
    tube = job.get("tube")
    if tube is None and kind in _BY_TUBE:
        tube = os.path.basename(os.path.dirname(path))
    tube = _checked(check_tube, tube)
    old_id = job.get("job_id", job.get("id", os.path.basename(path)))
    if not isinstance(old_id, str) or not old_id:
        raise _Bad("the job id must be a non-empty string")
    noop = job.get("noop", False)
    if not isinstance(noop, bool):
        raise _Bad("'noop' must be true or false")
    if noop and kind != "parents":
        raise _Bad("a noop job outside parents/: only a waiting parent can be a noop")
    priority = _checked(check_priority, _int(data.get("priority", job.get("priority")),
                                             "priority", DEFAULT_PRIORITY))
    ttl = _checked(check_seconds, "ttl", _int(job.get("ttl"), "ttl", int(DEFAULT_TTL)),
                   positive=True)
    expired_limit = _checked(
        check_count, "expired_limit",
        _int(job.get("expired_limit"), "expired_limit", DEFAULT_EXPIRED_LIMIT),
        minimum=0, maximum=MAX_EXPIRED_LIMIT)
    expireds = _int(job.get("expireds"), "expireds", 0)
    releases = _int(job.get("releases"), "releases", 0)
    if expireds < 0 or releases < 0:
        raise _Bad("expireds and releases must not be negative")
    created = job.get("created_time")
    if not isinstance(created, int | float) or isinstance(created, bool):
        created = os.path.getmtime(path)
    parent_old_id = job.get("parent_id")
    if parent_old_id is not None and not isinstance(parent_old_id, str):
        raise _Bad("'parent_id' must be a string")
    planned = Planned(path, old_id, tube, body, priority, ttl, expired_limit, float(created),
                      JobState.READY, expireds, releases,
                      parent_old_id=parent_old_id or None)
    if kind == "reserved":
        planned.was_reserved = True  # ready: its reservation ended with AllQueue
    elif kind == "buried":
        planned.state = JobState.BURIED
    elif kind == "delayed":
        planned.state = JobState.DELAYED
        planned.deadline = float(_int(data.get("time_to_start"), "time_to_start",
                                      int(now)))
    elif kind == "parents":
        start = _int(data.get("start"), "start")
        timeout = _int(data.get("timeout"), "timeout")
        if timeout <= 0:
            raise _Bad("timeout must be positive")
        run_on_timeout = data.get("run_on_timeout", False)
        if not isinstance(run_on_timeout, bool):
            raise _Bad("run_on_timeout must be true or false")
        limit = _int(data.get("limit"), "limit", -1)
        done = _int(data.get("child_count"), "child_count", 0)
        started = _int(data.get("started_count"), "started_count", 0)
        if done < 0 or started < 0:
            raise _Bad("child_count and started_count must not be negative")
        planned.state = JobState.WAITING
        planned.deadline = float(start + timeout)
        # AllQueue starts a parent only at a positive limit; -1 (not yet known) and 0 never.
        planned.parent = ParentInfo(float(timeout), run_on_timeout,
                                    limit if limit > 0 else None, max(started, done), done,
                                    noop=noop)
    return planned


def read_allqueue(directory: str, now: float) -> tuple[list[Planned], dict[str, float]]:
    """Read and check every AllQueue file under ``directory``.

    :returns: the jobs (parents first) and the throttles (tube: jobs per second).
    :raises AllQueueImportError: naming every file that cannot be imported.
    """
    planned: list[Planned] = []
    throttles: dict[str, float] = {}
    errors: list[str] = []
    for kind in KINDS:
        for path in _files(directory, kind):
            try:
                if kind == "throttles":
                    tube = _checked(check_tube, os.path.basename(path))
                    try:
                        with open(path, encoding="utf-8") as f:
                            text = f.read(64).strip()
                    except (OSError, UnicodeDecodeError) as e:
                        raise _Bad(f"cannot read: {getattr(e, 'strerror', None) or e}") from None
                    tps = _int(text, "the throttle")
                    if tps > 0:  # AllQueue removed the file at 0 or below
                        throttles[tube] = float(tps)
                else:
                    planned.append(_plan_job(path, _read_json(path), kind, now))
            except _Bad as e:
                errors.append(f"{path}: {e}")
    seen: dict[str, str] = {}
    for job in planned:
        if job.old_id in seen:
            errors.append(f"{job.path}: job id {job.old_id!r} also in {seen[job.old_id]}")
        seen.setdefault(job.old_id, job.path)
    if errors:
        listed = "\n".join(f"  {error}" for error in errors[:MAX_LISTED_ERRORS])
        more = len(errors) - MAX_LISTED_ERRORS
        raise AllQueueImportError(
            f"cannot import the AllQueue files in {directory}: {len(errors)} bad "
            f"file(s); nothing was imported. Fix or remove them and run the import again:\n"
            f"{listed}" + (f"\n  ... and {more} more" if more > 0 else ""))
    # Parents before children (a parent may itself be a child of another parent);
    # then the rest, oldest first, so ready jobs line up as they were put.
    planned.sort(key=lambda job: (job.created, job.path))
    return _parents_first(planned), throttles


def _parents_first(planned: list[Planned]) -> list[Planned]:
    """Waiting parents ordered so that each comes after its own parent."""
    parents = {job.old_id: job for job in planned if job.state is JobState.WAITING}
    ordered: list[Planned] = []
    placed: set[str] = set()

    def place(job: Planned, depth: int = 0) -> None:
        if job.old_id in placed:
            return
        placed.add(job.old_id)
        above = parents.get(job.parent_old_id or "")
        if above is not None and depth < len(parents):
            place(above, depth + 1)
        ordered.append(job)

    for job in planned:
        if job.state is JobState.WAITING:
            place(job)
    return ordered + [job for job in planned if job.state is not JobState.WAITING]


# -- importing ---------------------------------------------------------------------------


def import_allqueue(directory: str, now: float | None = None, *,
                    data_dir: str | None = None) -> ImportReport:
    """Import the AllQueue files under ``directory`` into the allq data directory
    ``data_dir`` (default: the same directory), then move them aside.

    :param now: the wall-clock time (default: ``time.time()``).
    :raises AllQueueImportError: a bad file (nothing imported), or no AllQueue
        files at all.
    :raises DataDirError: the data directory is in use by a running server, or
        unusable.
    """
    now = time.time() if now is None else now
    data_dir = directory if data_dir is None else data_dir
    if find_allqueue_files(directory) is None:
        raise AllQueueImportError(f"{directory}: no AllQueue files (ready/, delayed/, "
                                  "reserved/, buried/, parents/, throttles/) to import")
    planned, throttles = read_allqueue(directory, now)
    recovered = recover(data_dir, now)
    journal = Journal(data_dir, FsyncPolicy.parse("always"), Clock(),
                      generation=recovered.generation, snapshot_bytes=recovered.snapshot_bytes,
                      max_id=recovered.max_id, lock_fd=recovered.lock_fd)
    try:
        queue = Queue(QueueConfig(), first_id=max(recovered.max_id + 1, int(now * 1_000_000)),
                      started=now, on_change=journal.on_change)
        restore_queue(queue, recovered, now)
        journal.attach(queue)
        # Above every id ever journaled (the journal writes a whole record only for
        # those), and above what a server started now would hand out first.
        first_id = max(recovered.max_id + 1, int(now * 1_000_000))
        report, numbers = _place(queue, journal, planned, throttles, first_id, now)
        journal.sync()
    finally:
        journal.close()
    moved = _move_aside(directory, now, numbers)
    return attrs.evolve(report, moved_to=moved)


def _place(queue: Queue, journal: Journal, planned: list[Planned],
           throttles: dict[str, float], next_id: int,
           now: float) -> tuple[ImportReport, dict[str, int]]:
    """Place each job through the core's restore, then journal them all, then the
    throttles. The core checks every job before the journal holds any: a refusal
    leaves nothing to write (the caller closes the journal, which writes what it holds).

    :returns: the report, and each old id's new number.
    """
    numbers: dict[str, int] = {}
    counts = {state: 0 for state in JobState}
    from_reserved = unlinked = 0
    placed: list[Job] = []
    children: dict[str, int] = {}
    for job in planned:
        if job.parent_old_id is not None:
            children[job.parent_old_id] = children.get(job.parent_old_id, 0) + 1
    for job in planned:
        parent_id = numbers.get(job.parent_old_id) if job.parent_old_id else None
        if job.parent_old_id and parent_id is None:
            unlinked += 1
        info = job.parent
        if info is not None:
            # Children imported with it count as put, on top of the finished ones.
            info = attrs.evolve(info, children_put=max(
                info.children_put, info.children_done + children.get(job.old_id, 0)))
        new = Job(id=next_id, tube=job.tube, body=job.body, priority=job.priority,
                  ttl=job.ttl, expired_limit=job.expired_limit, created=job.created,
                  state=job.state, deadline=job.deadline, expireds=job.expireds,
                  releases=job.releases, parent_id=parent_id)
        try:
            queue.restore(new, now=now, parent=info)
        except AllQError as e:
            raise AllQueueImportError(f"{job.path}: {e.message}; nothing was imported") from None
        placed.append(new)
        numbers[job.old_id] = next_id
        next_id += 1
        counts[new.state] += 1
        from_reserved += job.was_reserved
    for new in placed:
        journal.on_change("job", new)
    for tube, tps in throttles.items():
        queue.set_throttle(tube, tps, now=now)  # journaled through on_change
    report = ImportReport(
        ready=counts[JobState.READY], delayed=counts[JobState.DELAYED],
        buried=counts[JobState.BURIED], waiting=counts[JobState.WAITING],
        from_reserved=from_reserved, throttles=len(throttles), unlinked_children=unlinked,
        moved_to=None)
    return report, numbers


def _move_aside(directory: str, now: float, numbers: dict[str, int]) -> str:
    """Move AllQueue's directories into ``allqueue-imported-<unix time>/`` (with the
    old and new id of every job in ``ids.tsv``), so they are not imported again.

    :returns: where they went.
    :raises AllQueueImportError: they could not be moved; the jobs are imported.
    """
    target = os.path.join(directory, f"{IMPORTED_PREFIX}-{int(now)}")
    suffix = 1
    while os.path.lexists(target):
        target = os.path.join(directory, f"{IMPORTED_PREFIX}-{int(now)}.{suffix}")
        suffix += 1
    try:
        os.mkdir(target, 0o700)
        with open(os.path.join(target, IDS_FILE), "w", encoding="utf-8") as f:
            f.write("# AllQueue id\tallq job number (the job id is <server_id>,<number>)\n")
            f.writelines(f"{old}\t{new}\n" for old, new in numbers.items())
        for kind in KINDS:
            if os.path.lexists(os.path.join(directory, kind)):
                os.rename(os.path.join(directory, kind), os.path.join(target, kind))
        fsync_directory(directory)
    except OSError as e:
        raise AllQueueImportError(
            f"the AllQueue jobs were imported into the journal, but their files could "
            f"not be moved into {target} ({e}); remove {', '.join(KINDS)} from "
            f"{directory} by hand before the server starts, or they will be imported "
            "again") from None
    return target


# -- the command line ------------------------------------------------------------------


def add_import_command(commands) -> None:
    """Add ``allq import DIR [--data-dir DATA_DIR]`` to the ``allq`` tool's commands."""
    parser = commands.add_parser(
        "import", help="import an AllQueue data directory (SERIALIZER_DIR) into allq's journal")
    parser.add_argument("directory", metavar="DIR",
                        help="the directory AllQueue wrote (its SERIALIZER_DIR)")
    parser.add_argument("--data-dir", metavar="DATA_DIR", default=None,
                        help="the allq server's data directory [default: DIR itself]")
    parser.set_defaults(run=_run_import)


def _run_import(args: argparse.Namespace, out) -> int:
    try:
        report = import_allqueue(args.directory, data_dir=args.data_dir)
    except (AllQueueImportError, DataDirError) as e:
        sys.stderr.write(f"allq import: {e}\n")
        return 2
    except OSError as e:
        sys.stderr.write(f"allq import: {e}\n")
        return 2
    out.write(report.describe() + "\n")
    target = args.data_dir or args.directory
    out.write(f"Start the server on {target} as usual (--data-dir {target}, or "
              "SERIALIZE=true with SERIALIZER_DIR).\n")
    return 0
