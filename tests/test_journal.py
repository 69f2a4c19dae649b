"""Tests of persistence without sockets: the journal, recovery, restore and the options.

Every test works in its own temporary data directory with a :class:`task.Clock`.
"Crashing" a server is copying its data directory after a commit (what a
SIGKILL leaves: everything written to the OS, nothing in Python's buffers) and
recovering the copy; the live journal goes on untouched.
"""

import os
import random
import shutil
from pathlib import Path

import attrs
import pytest
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.python import usage

from allq.core.idempotency import DEFAULT_WINDOW, IdempotencyKeys
from allq.core.job import Job, JobState
from allq.core.parents import ParentInfo
from allq.core.queue import Queue
from allq.errors import AllQError, BadRequest
from allq.server import journal as journal_module
from allq.server.dispatch import Dispatcher
from allq.server.journal import FsyncPolicy, Journal, JournalError
from allq.server.records import frame, has_settings, unframe
from allq.server.protocol import ServerFactory
from allq.server.recovery import DataDirError, recover, restore_keys, restore_queue
from allq.server.tap import Options, makeService
from allq.wire.crypto import Authenticator
from allq.cli import generate_keys

from tests.test_server_protocol import CLIENT_KEYS, SERVER_ID, SERVER_KEYS, Peer

START = 1_700_000_000.0
ALWAYS = FsyncPolicy("always")


# -- helpers ---------------------------------------------------------------------------


class Server:
    """A queue journaling into ``directory``, as ``makeService`` wires one."""

    def __init__(self, directory, policy=ALWAYS, clock=None, **journal_args) -> None:
        self.directory = str(directory)
        self.clock = clock or Clock()
        if self.clock.seconds() < START:
            self.clock.advance(START - self.clock.seconds())
        self.recovered = recover(self.directory, self.clock.seconds())
        self.journal = Journal(
            self.directory, policy, self.clock,
            generation=self.recovered.generation,
            snapshot_bytes=self.recovered.snapshot_bytes,
            max_id=self.recovered.max_id, lock_fd=self.recovered.lock_fd, **journal_args)
        self.queue = Queue(first_id=self.recovered.max_id + 1, started=self.clock.seconds(),
                           on_change=self.journal.on_change)
        self.restored = restore_queue(self.queue, self.recovered, self.clock.seconds())
        self.keys = IdempotencyKeys()
        restore_keys(self.keys, self.recovered, self.clock.seconds())
        self.journal.attach(self.queue, self.keys)
        self.journal.startService()

    @property
    def now(self) -> float:
        return self.clock.seconds()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.queue.expire(self.now)

    def stop(self) -> None:
        """An orderly stop (SIGTERM): stopService, then close."""
        d = self.journal.stopService()
        assert d.called
        self.journal.close()
        assert self.clock.getDelayedCalls() == []

    def restart(self, policy=ALWAYS, **journal_args) -> "Server":
        self.stop()
        return Server(self.directory, policy, self.clock, **journal_args)

    def crash_copy(self, target) -> "Server":
        """What a SIGKILL right now would leave, recovered (in a copy of the directory)."""
        self.journal.commit()
        shutil.copytree(self.directory, target)
        return Server(target, ALWAYS, _clock_at(self.now))


def _clock_at(now: float) -> Clock:
    clock = Clock()
    clock.advance(now)
    return clock


def canonical(queue: Queue, now: float):
    """A queue's state as a restart should give it back: reserved jobs and due
    delayed jobs are ready; everything else exactly as it is."""
    jobs = {}
    for job in queue.live_jobs():
        state, deadline = job.state, job.deadline
        if state is JobState.RESERVED or (state is JobState.DELAYED and deadline <= now):
            state, deadline = JobState.READY, None
        info = queue.parent_info(job.id)
        jobs[job.id] = (
            job.tube, job.body, job.priority, job.ttl, job.expired_limit, job.created,
            job.shard_key, job.parent_id, state, deadline, job.expireds, job.releases,
            None if info is None else attrs.astuple(info),
        )
    tubes = {}
    for name in queue.tube_names():
        tube = queue.tube(name)
        if has_settings(tube):
            tubes[name] = (None if tube.throttle is None else tube.throttle.rate, tube.paused,
                           tube.draining, tube.fair_setting, tube.fair_policy, tube.max_size)
    return jobs, tubes, queue.draining


def journal_path(server: Server) -> str:
    return os.path.join(server.directory, f"journal.{server.journal.generation}.log")


def files(directory) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name != "lock")


def one_turn(clock: Clock) -> None:
    """Run the calls due now, but not those they schedule (a reactor turn).

    ``Clock.advance(0)`` would also run what the calls schedule for "now", so a
    chunked compaction would finish in one go.
    """
    due = [c for c in clock.getDelayedCalls() if c.getTime() <= clock.seconds()]
    for call in due:
        if call.active():
            clock.calls.remove(call)
            call.called = 1
            call.func(*call.args, **call.kw)


def drain_compaction(clock: Clock, d: Deferred, limit: int = 10_000) -> object:
    for _ in range(limit):
        if d.called:
            break
        one_turn(clock)
    assert d.called
    return d.result


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path / "data")
    yield s
    s.journal.close()


# -- the fsync policy (the record codec is tested in test_records.py) -----------------


@pytest.mark.parametrize("text, expected", [
    ("always", FsyncPolicy("always")),
    ("never", FsyncPolicy("never")),
    ("interval:50", FsyncPolicy("interval", 0.05)),
    ("interval:1", FsyncPolicy("interval", 0.001)),
])
def test_fsync_policy_parses(text, expected):
    """The three policies parse, and print back as written."""
    assert FsyncPolicy.parse(text) == expected
    assert str(FsyncPolicy.parse(text)) == text


@pytest.mark.parametrize("text", ["", "sometimes", "interval", "interval:", "interval:0",
                                  "interval:-5", "interval:1.5", "interval:x", "ALWAYS"])
def test_fsync_policy_rejects_other_values(text):
    """Anything else is refused with a message listing the valid forms."""
    with pytest.raises(ValueError, match="always, never or interval:MS"):
        FsyncPolicy.parse(text)


# -- replaying every transition ------------------------------------------------------------


def test_a_restart_keeps_ready_delayed_buried_and_settings(server):
    """Cases 98-103, FIXed: ids, priorities, buried jobs, throttles of empty tubes,
    parents with their counters, reserved jobs (ready again) and pauses all survive
    a restart; a finished job stays finished."""
    q, now = server.queue, server.now
    a = q.put("t", "A", now=now, priority=2)
    b = q.put("t", "B", now=now, priority=8)
    delayed = q.put("t", "D", now=now, delay=100)
    buried = q.put("bury", "X", now=now)
    q.get("bury", now=now)
    q.bury(buried.id, now=now)
    done = q.put("fin", "done", now=now)
    q.get("fin", now=now)
    q.done(done.id, now=now)
    reserved = q.put("res", "R", now=now)
    q.get("res", now=now)
    q.set_throttle("empty", 9, now=now)
    q.set_paused("paused", True)
    parent = q.put_parent("p", "parent", now=now, limit=2, timeout=500)
    child = q.put("c", "child", now=now, parent_id=parent.id)
    q.set_fair("fq-off", "off")
    q.set_max_size("small", 3)
    q.set_tube_draining("draining", True)
    expected = canonical(q, now)

    restarted = server.restart()
    q2 = restarted.queue
    assert canonical(q2, now) == expected
    assert (q2.job(a.id).priority, q2.job(b.id).priority) == (2, 8)
    assert q2.job(reserved.id).state is JobState.READY
    assert q2.job(delayed.id).state is JobState.DELAYED
    assert q2.job(buried.id).state is JobState.BURIED
    with pytest.raises(AllQError):
        q2.job(done.id)
    assert q2.tube("empty").throttle.rate == 9
    assert q2.tube("paused").paused
    info = q2.parent_info(parent.id)
    assert (info.limit, info.children_put, info.children_done) == (2, 1, 0)
    assert q2.job(child.id).parent_id == parent.id
    assert (restarted.restored.ready, restarted.restored.delayed, restarted.restored.buried,
            restarted.restored.waiting) == (4, 1, 1, 1)
    # the restored parent still works: its child finishing counts
    (got,) = q2.get("c", now=now)
    q2.done(got.id, now=now)
    assert q2.parent_info(parent.id).children_done == 1
    restarted.journal.close()


def test_every_transition_replays(server):
    """Release (delayed), ttl expiry, expiry to buried, kick, delete, get+delete,
    parents finishing and timing out, clear and server drain all come back as they were."""
    q = server.queue
    now = server.now
    jobs = [q.put("t", f"j{i}", now=now, ttl=10, expired_limit=2) for i in range(6)]
    q.get("t", now=now, count=2)
    q.release(jobs[0].id, now=now, delay=30)           # reserved -> delayed, releases 1
    q.release(jobs[1].id, now=now)                     # reserved -> ready, releases 1
    expiring = q.put("e", "expiring", now=now, ttl=10, expired_limit=2)
    twice = q.put("e", "twice", now=now, ttl=10, expired_limit=2)
    q.get("e", now=now, count=2)
    server.advance(11)                                 # both expire: expireds 1
    q.get("e", now=server.now, count=1)
    server.advance(11)                                 # expireds 2 -> buried
    assert q.job(expiring.id).state is JobState.BURIED
    assert (q.job(twice.id).state, q.job(twice.id).expireds) == (JobState.READY, 1)
    q.kick(expiring.id, now=server.now)                # buried -> ready, counters reset
    q.delete(jobs[4].id, now=server.now)
    q.get("t", now=server.now, count=1, delete=True)
    late = q.put_parent("p", "late", now=server.now, timeout=5, run_on_timeout=True)
    buried_parent = q.put_parent("p", "bp", now=server.now, timeout=5)
    quick = q.put_parent("p", "quick", now=server.now)
    kid = q.put("p", "kid", now=server.now, parent_id=quick.id)
    q.set_children_started(quick.id, now=server.now)
    q.delete(kid.id, now=server.now)                   # quick starts
    server.advance(6)                                  # late -> ready, bp -> buried
    q.put("gone", "x", now=server.now, delay=5)
    q.clear("gone")
    q.set_draining(True)
    expected = canonical(q, server.now)
    assert q.job(quick.id).state is JobState.READY
    assert q.job(late.id).state is JobState.READY
    assert q.job(buried_parent.id).state is JobState.BURIED

    restarted = server.restart()
    assert canonical(restarted.queue, server.now) == expected
    assert restarted.queue.draining
    restarted.journal.close()


def test_noop_parents_and_caller_ids_survive_a_restart(server):
    """A waiting noop parent and a caller-chosen id come back: the id still names
    the parent, and the noop still finishes instead of running."""
    q, now = server.queue, server.now
    top = q.put_parent("top", "top", now=now, limit=1)
    join = q.put_parent("j", "join", now=now, limit=1, parent_id=top.id, noop=True,
                        alias="flow-7")
    kid = q.put("w", "kid", now=now, parent_id=join.id)
    expected = canonical(q, now)
    restarted = server.restart()
    q2 = restarted.queue
    assert canonical(q2, now) == expected
    assert q2.parent_by_alias("flow-7").id == join.id
    [got] = q2.get("w", now=now)
    q2.done(got.id, now=now)
    assert q2.get("j", now=now) == []
    assert [job.id for job in q2.get("top", now=now)] == [top.id]
    again = restarted.restart()
    assert again.queue.parent_by_alias("flow-7") is None
    assert again.queue.get("j", now=now) == []
    again.journal.close()


def test_restore_resumes_delays_and_parent_timeouts_from_the_wall_clock(server):
    """Downtime counts: a delay that ran out while stopped is ready at once, one that
    did not is due at its original time, and a parent past its timeout times out."""
    q, now = server.queue, server.now
    short = q.put("t", "short", now=now, delay=10)
    long = q.put("t", "long", now=now, delay=100)
    parent = q.put_parent("t", "parent", now=now, timeout=20, run_on_timeout=True)
    server.stop()
    clock = _clock_at(now + 50)
    restarted = Server(server.directory, ALWAYS, clock)
    q2 = restarted.queue
    assert q2.job(short.id).state is JobState.READY
    assert q2.job(long.id).state is JobState.DELAYED
    assert q2.next_deadline() == now + 20  # the parent's, already past
    events = q2.expire(clock.seconds())
    assert [(e.kind, e.job_id) for e in events] == [("parent_timeout", parent.id)]
    assert q2.expire(now + 99.9) == [] and q2.job(long.id).state is JobState.DELAYED
    assert [e.job_id for e in q2.expire(now + 100)] == [long.id]
    restarted.journal.close()


def test_restored_ready_jobs_line_up_by_priority_then_put_order(server):
    """After a restart the ready line is (priority, put order), as in beanstalkd."""
    q, now = server.queue, server.now
    first = q.put("t", "1", now=now, priority=3)
    second = q.put("t", "2", now=now, priority=3)
    urgent = q.put("t", "u", now=now, priority=1)
    q.get("t", now=now, count=1)           # takes urgent
    q.release(urgent.id, now=now)
    restarted = server.restart()
    assert [j.id for j in restarted.queue.tube("t").iter_ready()] == [
        urgent.id, first.id, second.id]
    restarted.journal.close()


def test_ids_are_never_reused_after_a_restart(server):
    """The next id after a restart is above every id ever journaled, deleted ones too."""
    q, now = server.queue, server.now
    q.put("t", "a", now=now)
    last = q.put("t", "b", now=now)
    q.delete(last.id, now=now)
    restarted = server.restart()
    assert restarted.recovered.max_id == last.id
    assert restarted.queue.put("t", "c", now=now).id == last.id + 1
    restarted.journal.close()


def test_reservations_are_not_journaled(server):
    """A get writes nothing (a restart makes reserved jobs ready anyway), so with
    fsync always it costs no fsync."""
    q, now = server.queue, server.now
    q.put("t", "a", now=now)
    server.journal.commit()
    size, fsyncs = os.path.getsize(journal_path(server)), server.journal.fsyncs
    q.get("t", now=now)
    server.journal.commit()
    assert (os.path.getsize(journal_path(server)), server.journal.fsyncs) == (size, fsyncs)


# -- damaged journals ----------------------------------------------------------------------


def test_a_torn_tail_is_skipped_cut_off_and_kept(server, tmp_path):
    """A half-written last record: start over the good prefix, keep the tail in a
    .corrupt file, and append after the good prefix from then on."""
    q, now = server.queue, server.now
    kept = [q.put("t", f"{i}", now=now).id for i in range(3)]
    server.stop()
    path = journal_path(server)
    good_size = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(frame(["j", 99, "t", "torn", 5, 1.0, 3, now, None, None, "ready", None, 0, 0,
                       None])[:30])
    restarted = Server(server.directory, ALWAYS, server.clock)
    assert restarted.recovered.skipped == 1
    assert [j.id for j in restarted.queue.live_jobs()] == kept
    assert os.path.getsize(path) == good_size
    (corrupt,) = [n for n in files(server.directory) if ".corrupt-" in n]
    assert corrupt.startswith("journal.1.log.corrupt-")
    assert len(Path(server.directory, corrupt).read_bytes()) == 30
    assert "skipped 1 damaged" in restarted.recovered.damaged[0]
    new = restarted.queue.put("t", "new", now=now)
    again = restarted.restart()
    assert again.recovered.skipped == 0
    assert [j.id for j in again.queue.live_jobs()] == [*kept, new.id]
    again.journal.close()


def test_a_corrupt_record_in_the_middle_ends_the_good_prefix(server):
    """A flipped byte in the middle: everything before it is restored, nothing after it
    (not even records that read well: one may be missing in between)."""
    q, now = server.queue, server.now
    ids = [q.put("t", f"body-{i}", now=now).id for i in range(10)]
    server.stop()
    path = journal_path(server)
    data = bytearray(Path(path).read_bytes())
    at = data.index(b"body-5")
    data[at] ^= 0x20
    Path(path).write_bytes(bytes(data))
    restarted = Server(server.directory, ALWAYS, server.clock)
    assert [j.id for j in restarted.queue.live_jobs()] == ids[:5]
    assert restarted.recovered.skipped == 5
    restarted.journal.close()


def test_a_damaged_header_drops_that_file_only(server):
    """Garbage from the first byte on: nothing to restore from it, and the server starts."""
    server.queue.put("t", "a", now=server.now)
    server.stop()
    path = journal_path(server)
    Path(path).write_bytes(b"\x00" * 100)
    restarted = Server(server.directory, ALWAYS, server.clock)
    assert len(restarted.queue) == 0 and restarted.recovered.skipped == 1
    assert unframe(Path(path).read_bytes().splitlines(keepends=True)[0])[0] == "journal"  # a fresh header
    restarted.journal.close()


def test_a_newer_format_is_refused(tmp_path):
    """A journal from a newer allq is not corruption: start-up stops with a message."""
    directory = tmp_path / "data"
    directory.mkdir()
    (directory / "journal.1.log").write_bytes(frame(["journal", 2, 1]))
    with pytest.raises(DataDirError, match="format version 2"):
        recover(str(directory), START)


def test_a_data_directory_is_used_by_one_server_at_a_time(server):
    """A second server on the same directory is refused while the first holds it."""
    with pytest.raises(DataDirError, match="in use by another allq-server"):
        recover(server.directory, START)


# -- compaction ----------------------------------------------------------------------------


def test_idempotency_keys_survive_a_restart_and_a_crash(server, tmp_path):
    """A put's key outlives the server: a retry after a restart finds its job."""
    job = server.queue.put("t", "once", now=server.now)
    server.keys.remember("retry-me", job.id, server.now)
    crashed = server.crash_copy(tmp_path / "crashed")
    assert crashed.keys.lookup("retry-me", crashed.now) == job.id
    crashed.journal.close()
    restarted = server.restart()
    assert restarted.keys.lookup("retry-me", restarted.now) == job.id
    restarted.journal.close()


def test_idempotency_keys_survive_compaction_and_expire(server):
    """Snapshots carry the live keys; a key past its window is not put back."""
    q = server.queue
    old = q.put("t", "old", now=server.now)
    server.keys.remember("old", old.id, server.now)
    server.advance(DEFAULT_WINDOW - 10)
    new = q.put("t", "new", now=server.now)
    server.keys.remember("new", new.id, server.now)
    assert drain_compaction(server.clock, server.journal.compact()) is True
    server.advance(20)  # "old" has expired, "new" has not
    restarted = server.restart()
    assert restarted.keys.lookup("new", restarted.now) == new.id
    assert restarted.keys.lookup("old", restarted.now) is None
    assert len(restarted.keys) == 1
    restarted.journal.close()


def test_compaction_replaces_the_journal_by_a_snapshot(server):
    """After a compaction only snapshot G and journal G remain, and a restart gives
    the same state."""
    q, now = server.queue, server.now
    for i in range(50):
        job = q.put("t", f"{i}", now=now, priority=i % 3)
        if i % 2:
            q.delete(job.id, now=now)
    q.set_throttle("t", 2.5, now=now)
    assert drain_compaction(server.clock, server.journal.compact()) is True
    assert files(server.directory) == ["journal.2.log", "snapshot.2"]
    q.put("t", "after", now=now)
    expected = canonical(q, now)
    restarted = server.restart()
    assert canonical(restarted.queue, now) == expected
    assert restarted.recovered.snapshot_generation == 2
    restarted.journal.close()


def test_a_fuzzy_snapshot_plus_its_journal_is_exact(server, tmp_path):
    """Jobs changing while the snapshot is written (a chunk per reactor turn) are
    still restored exactly: the new journal's absolute records win."""
    server.journal._snapshot_chunk = 2
    q = server.queue
    jobs = [q.put("t", f"{i}", now=server.now, ttl=5) for i in range(20)]
    parent = q.put_parent("p", "parent", now=server.now, limit=3)
    q.put("p", "kid", now=server.now, parent_id=parent.id)
    d = server.journal.compact()
    one_turn(server.clock)  # two jobs written
    q.get("t", now=server.now, count=5)
    q.delete(jobs[10].id, now=server.now)
    kid2 = q.put("p", "kid2", now=server.now, parent_id=parent.id)
    q.release(jobs[0].id, now=server.now, delay=50)
    one_turn(server.clock)
    q.delete(kid2.id, now=server.now)
    q.bury(jobs[1].id, now=server.now)
    mid = server.crash_copy(tmp_path / "mid")  # snapshot.tmp, journals 1 and 2
    assert canonical(mid.queue, server.now) == canonical(q, server.now)
    mid.journal.close()
    assert drain_compaction(server.clock, d) is True
    q.kick(jobs[1].id, now=server.now)
    expected = canonical(q, server.now)
    restarted = server.restart()
    assert canonical(restarted.queue, server.now) == expected
    assert restarted.queue.parent_info(parent.id).children_put == 2
    restarted.journal.close()


def test_every_compaction_crash_point_recovers(server, tmp_path):
    """Crash with snapshot.tmp half written, with it written but not renamed, and after
    the rename before the old files went: each restart gives the same state, and the
    leftovers are cleaned up."""
    q, now = server.queue, server.now
    for i in range(30):
        q.put("t", f"{i}", now=now)
    steps = []

    def run_blocking(f):
        steps.append(f)
        return Deferred()

    server.journal._run_blocking = run_blocking
    server.journal._snapshot_chunk = 10
    d = server.journal.compact()
    one_turn(server.clock)
    half = server.crash_copy(tmp_path / "half")          # .tmp partly written
    assert canonical(half.queue, now) == canonical(q, now)
    assert "snapshot.2.tmp" not in files(half.directory)
    half.journal.close()
    while not steps:
        one_turn(server.clock)
    q.put("t", "during", now=now)
    unrenamed = server.crash_copy(tmp_path / "unrenamed")  # .tmp complete, not installed
    assert canonical(unrenamed.queue, now) == canonical(q, now)
    unrenamed.journal.close()
    # the install, done by hand up to the rename: snapshot.2 next to journal.1
    target = tmp_path / "renamed"
    server.journal.commit()
    shutil.copytree(server.directory, target)
    os.rename(target / "snapshot.2.tmp", target / "snapshot.2")
    assert {"journal.1.log", "journal.2.log", "snapshot.2"} <= set(files(target))
    renamed = Server(target, ALWAYS, _clock_at(now))
    assert canonical(renamed.queue, now) == canonical(q, now)
    assert files(target) == ["journal.2.log", "snapshot.2"]
    renamed.journal.close()
    # finish the real one
    (install,) = steps
    install()
    server.journal._compaction._installing.callback(None)
    assert d.called


def test_compaction_starts_by_itself_past_the_size_threshold(tmp_path):
    """Once the journal passes its threshold, a commit schedules a compaction, which
    runs on later reactor turns, never inside the commit."""
    server = Server(tmp_path / "data", compact_min_bytes=2000, snapshot_chunk=5)
    q = server.queue
    for i in range(30):
        q.put("t", "x" * 50, now=server.now)
    server.journal.commit()
    assert server.journal.compactions == 0
    one_turn(server.clock)  # the compaction starts: journal 2, snapshot.2.tmp
    assert server.journal.generation == 2 and server.journal.compactions == 0
    for _ in range(20):
        one_turn(server.clock)
    assert server.journal.compactions == 1
    assert files(server.directory) == ["journal.2.log", "snapshot.2"]
    expected = canonical(q, server.now)
    restarted = server.restart()
    assert canonical(restarted.queue, server.now) == expected
    restarted.journal.close()


def test_stopping_during_a_compaction_keeps_everything(server):
    """SIGTERM while a snapshot is half written: the .tmp is abandoned and the
    restart reads snapshot-less journals 1 and 2."""
    server.journal._snapshot_chunk = 1
    q = server.queue
    for i in range(5):
        q.put("t", f"{i}", now=server.now)
    d = server.journal.compact()
    one_turn(server.clock)
    q.put("t", "more", now=server.now)
    expected = canonical(q, server.now)
    restarted = server.restart()
    assert d.called and d.result is False
    assert canonical(restarted.queue, server.now) == expected
    restarted.journal.close()


# -- a random walk against the journal -----------------------------------------------------


def _random_step(rng: random.Random, server: Server) -> None:
    q, now = server.queue, server.now
    live = q.live_jobs()
    by_state = {}
    for job in live:
        by_state.setdefault(job.state, []).append(job)
    tube = rng.choice(["a", "b", "fq-c"])
    shard = rng.choice(["k1", "k2", "k3"])
    choice = rng.randrange(20)
    try:
        if choice < 5:
            q.put(tube, f"body{rng.random()}", now=now, priority=rng.randrange(4),
                  delay=rng.choice([0, 0, 3, 30]), ttl=rng.choice([2, 60]),
                  shard_key=shard, expired_limit=rng.choice([1, 3]))
        elif choice == 5:
            q.put_parent(tube, "parent", now=now, limit=rng.choice([None, 0, 1, 2]),
                         timeout=rng.choice([4, 100]), run_on_timeout=rng.random() < 0.5,
                         shard_key=shard)
        elif choice == 6 and by_state.get(JobState.WAITING):
            parent = rng.choice(by_state[JobState.WAITING])
            q.put(tube, "child", now=now, parent_id=parent.id, shard_key=shard)
        elif choice in (7, 8):
            q.get(tube, now=now, count=rng.randrange(1, 4), delete=rng.random() < 0.2)
        elif choice == 9 and by_state.get(JobState.RESERVED):
            job = rng.choice(by_state[JobState.RESERVED])
            rng.choice([
                lambda: q.done(job.id, now=now),
                lambda: q.release(job.id, now=now, delay=rng.choice([0, 5])),
                lambda: q.bury(job.id, now=now),
                lambda: q.touch(job.id, now=now),
            ])()
        elif choice == 10 and live:
            job = rng.choice(live)
            rng.choice([lambda: q.delete(job.id, now=now), lambda: q.kick(job.id, now=now)])()
        elif choice == 11 and by_state.get(JobState.WAITING):
            q.set_children_started(rng.choice(by_state[JobState.WAITING]).id, now=now)
        elif choice == 12:
            rng.choice([
                lambda: q.set_throttle(tube, rng.choice([None, 0.5, 100]), now=now),
                lambda: q.set_paused(tube, rng.random() < 0.3),
                lambda: q.set_tube_draining(tube, rng.random() < 0.2),
                lambda: q.set_fair(tube, rng.choice([None, "off", "weighted", "round_robin"])),
                lambda: q.set_max_size(tube, rng.choice([None, 1000])),
                lambda: q.set_draining(rng.random() < 0.1),
            ])()
        elif choice == 13 and rng.random() < 0.2:
            q.clear(tube, state=rng.choice(["all", "ready", "delayed", "buried", "reserved",
                                           "parents"]))
        elif choice == 14:
            q.kick_tube(tube, now=now, count=2)
        else:
            server.advance(rng.choice([0.5, 1, 3]))
    except AllQError:
        pass  # refused (full, draining, wrong state, fair tube without key): fine
    if rng.random() < 0.3:
        server.journal.commit()


@pytest.mark.parametrize("seed", range(8))
def test_random_walks_recover_exactly(seed, tmp_path):
    """Hundreds of random operations with compactions (chunked, interleaved) along
    the way: a crash at any of several points, and a clean restart at the end, give
    back exactly the live state."""
    rng = random.Random(seed)
    server = Server(tmp_path / "data", snapshot_chunk=3, compact_min_bytes=6000)
    for round_ in range(6):
        for _ in range(80):
            _random_step(rng, server)
            if rng.random() < 0.2:
                one_turn(server.clock)  # let a compaction step run
        crashed = server.crash_copy(tmp_path / f"crash{round_}")
        assert canonical(crashed.queue, server.now) == canonical(server.queue, server.now)
        crashed.journal.close()
    assert server.journal.compactions >= 1
    expected = canonical(server.queue, server.now)
    restarted = server.restart()
    assert canonical(restarted.queue, server.now) == expected
    restarted.journal.close()


# -- fsync policies -----------------------------------------------------------------------


def test_always_fsyncs_once_per_commit_with_changes(server):
    """With always, a commit after changes fsyncs once (group commit), a commit
    without changes does not."""
    q = server.queue
    for i in range(10):
        q.put("t", f"{i}", now=server.now)
    server.journal.commit()
    assert (server.journal.writes, server.journal.fsyncs) == (1, 1)
    server.journal.commit()
    assert server.journal.fsyncs == 1


def test_interval_writes_at_each_commit_and_fsyncs_on_the_interval(tmp_path):
    """With interval:50 a commit gets records to the OS (a SIGKILL loses nothing),
    and fsync happens on the 50 ms ticks, only when something was written (here
    run_blocking runs it at once)."""
    server = Server(tmp_path / "data", FsyncPolicy.parse("interval:50"))
    path = journal_path(server)
    server.queue.put("t", "a", now=server.now)
    before = os.path.getsize(path)
    server.journal.commit()
    assert os.path.getsize(path) > before
    assert server.journal.fsyncs == 0
    server.clock.advance(0.049)
    assert server.journal.fsyncs == 0
    server.clock.advance(0.001)
    assert server.journal.fsyncs == 1
    server.clock.advance(0.05)
    assert server.journal.fsyncs == 1  # nothing new: no fsync
    server.queue.put("t", "b", now=server.now)  # not even committed: the tick writes it
    server.clock.advance(0.05)
    assert server.journal.fsyncs == 2 and os.path.getsize(path) > before
    server.stop()


def test_interval_fsyncs_off_the_reactor_one_at_a_time(tmp_path, monkeypatch):
    """With a thread pool (here: Deferreds fired by hand) an interval fsync runs off
    the reactor on a duplicate descriptor, one at a time; a failed one stops the
    server and later commits refuse to acknowledge."""
    pending = []

    def run_blocking(f):
        d = Deferred()
        pending.append((f, d))
        return d

    server = Server(tmp_path / "data", FsyncPolicy.parse("interval:50"),
                    run_blocking=run_blocking)
    stops = []
    server.journal._on_failure = lambda: stops.append(1)
    server.queue.put("t", "a", now=server.now)
    server.journal.commit()
    server.clock.advance(0.05)
    assert len(pending) == 1 and server.journal.fsyncs == 0
    server.queue.put("t", "b", now=server.now)
    server.clock.advance(0.05)
    assert len(pending) == 1  # still in flight: no second one
    fsync, d = pending.pop()
    fsync()
    d.callback(None)
    assert server.journal.fsyncs == 1
    server.clock.advance(0.05)  # "b" was written after that fsync started
    assert len(pending) == 1

    def broken(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(journal_module, "_datasync", broken)
    fsync, d = pending.pop()
    with pytest.raises(OSError):
        fsync()
    d.errback(OSError(5, "Input/output error"))
    assert stops == [1]
    server.queue.put("t", "c", now=server.now)
    with pytest.raises(JournalError, match="Input/output error"):
        server.journal.commit()
    monkeypatch.undo()


def test_never_writes_but_does_not_fsync(tmp_path):
    """With never, records reach the OS at each commit and idle tick; fsync only at stop."""
    server = Server(tmp_path / "data", FsyncPolicy("never"))
    server.queue.put("t", "a", now=server.now)
    server.journal.commit()
    server.queue.put("t", "b", now=server.now)  # from a timer, say: no commit follows
    server.clock.advance(1.0)
    assert server.journal.writes == 2 and server.journal.fsyncs == 0
    server.stop()
    assert server.journal.fsyncs == 1


def test_after_stop_every_commit_fsyncs(tmp_path):
    """Frames can still arrive between stopService and the end of the reactor: from
    then on each commit is durable, whatever the policy."""
    server = Server(tmp_path / "data", FsyncPolicy("never"))
    server.journal.stopService()
    server.queue.put("t", "late", now=server.now)
    server.journal.commit()
    assert server.journal.fsyncs == 1
    server.journal.close()


def test_a_failing_write_stops_the_server_and_acknowledges_nothing(server, monkeypatch):
    """If the journal cannot be written (other than for space), commit raises (the
    connection is dropped unanswered), the server is told to stop once, and later
    commits raise too."""
    stops = []
    server.journal._on_failure = lambda: stops.append(1)

    def broken(fd, data):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(journal_module.os, "write", broken)
    server.queue.put("t", "a", now=server.now)
    with pytest.raises(JournalError, match="Input/output error"):
        server.journal.commit()
    server.queue.put("t", "b", now=server.now)
    with pytest.raises(JournalError):
        server.journal.commit()
    assert stops == [1]
    monkeypatch.undo()


def test_a_failing_fsync_stops_the_server(server, monkeypatch):
    """A failed fsync is fatal too: the page cache can no longer be trusted."""
    stops = []
    server.journal._on_failure = lambda: stops.append(1)

    def broken(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(journal_module, "_datasync", broken)
    server.queue.put("t", "a", now=server.now)
    with pytest.raises(JournalError, match="fsync"):
        server.journal.commit()
    assert stops == [1]
    monkeypatch.undo()


# -- the protocol hook ----------------------------------------------------------------------


def test_the_protocol_commits_once_per_read_after_all_its_frames(tmp_path):
    """Several frames in one read: each is handled, then the journal is committed
    once, while every reply still sits in the transport's buffer."""
    clock = _clock_at(START)
    queue = Queue(started=START)
    calls = []
    factory = ServerFactory(
        authenticator=Authenticator(SERVER_KEYS),
        dispatcher=Dispatcher(queue, clock, lambda: SERVER_ID),
        clock=clock, server_id=lambda: SERVER_ID, max_job_size=1000,
        max_line_length=64 * 1024,
        after_data=lambda: calls.append((len(queue), peer.transport.value().count(b"\n"))),
    )
    peer = Peer(factory, CLIENT_KEYS)
    peer.handshake()
    calls.clear()
    frames = b"".join(peer.seal({"id": i, "action": "put",
                                 "params": {"tube": "t", "body": f"{i}"}}) + b"\n"
                      for i in range(3))
    peer.protocol.dataReceived(frames)
    assert calls == [(3, 3)]  # 3 jobs in, 3 replies written, committed once


def test_a_commit_that_raises_drops_the_replies(tmp_path):
    """If the commit fails the connection is aborted: the replies waiting in the
    transport's buffer are never sent."""
    clock = _clock_at(START)
    queue = Queue(started=START)

    def fail():
        if len(queue):
            raise JournalError("disk gone")

    factory = ServerFactory(
        authenticator=Authenticator(SERVER_KEYS),
        dispatcher=Dispatcher(queue, clock, lambda: SERVER_ID),
        clock=clock, server_id=lambda: SERVER_ID, max_job_size=1000,
        max_line_length=64 * 1024, after_data=fail,
    )
    peer = Peer(factory, CLIENT_KEYS)
    peer.handshake()
    peer.protocol.dataReceived(
        peer.seal({"id": 1, "action": "put", "params": {"tube": "t", "body": "x"}}) + b"\n")
    assert peer.transport.disconnected  # StringTransport's mark of abortConnection


# -- the core's restore API -----------------------------------------------------------------


def _job(job_id, state, deadline=None, tube="t", **fields):
    return Job(id=job_id, tube=tube, body="b", priority=fields.pop("priority", 5), ttl=60,
               expired_limit=3, created=START, state=state, deadline=deadline, **fields)


def test_queue_restore_places_each_state():
    """Reserved -> ready, delayed due -> ready, delayed later stays, buried stays
    buried (kick order kept), waiting keeps its info and deadline; no on_change calls."""
    changes = []
    q = Queue(first_id=1, on_change=lambda *a: changes.append(a))
    q.restore(_job(10, JobState.RESERVED, START + 5, reserved_at=START), now=START)
    q.restore(_job(11, JobState.DELAYED, START - 1), now=START)
    q.restore(_job(12, JobState.DELAYED, START + 30), now=START)
    q.restore(_job(14, JobState.BURIED), now=START)
    q.restore(_job(13, JobState.BURIED), now=START)
    info = ParentInfo(100.0, True, 2, 1, 0)
    q.restore(_job(15, JobState.WAITING, START + 100), now=START, parent=info)
    q.restore(_job(16, JobState.READY, parent_id=15), now=START)
    assert changes == []
    (stats,) = q.tube_stats(START)
    assert (stats.ready, stats.delayed, stats.buried, stats.parents, stats.reserved) == (
        3, 1, 2, 1, 0)
    assert q.job(10).deadline is None and q.job(10).reserved_at is None
    assert q.parent_info(15) is info
    assert [j.id for j in q.kick_tube("t", now=START, count=2)] == [14, 13]
    assert q.put("t", "new", now=START).id == 17
    assert q.next_deadline() == START + 30


def test_queue_restore_refuses_duplicates_and_bad_parents():
    """The same id twice, a deleted job, or a waiting parent without its info are refused."""
    q = Queue()
    q.restore(_job(1, JobState.READY), now=START)
    with pytest.raises(BadRequest, match="already exists"):
        q.restore(_job(1, JobState.READY), now=START)
    with pytest.raises(BadRequest):
        q.restore(_job(2, JobState.DELETED), now=START)
    with pytest.raises(BadRequest, match="parent info"):
        q.restore(_job(3, JobState.WAITING, START + 1), now=START)


def test_queue_restore_tube_sets_every_setting_without_on_change():
    """Throttle, pause, drain, an explicit fair setting (even "off" on an fq- tube)
    and a maximum size are set; none is reported as a change."""
    changes = []
    q = Queue(on_change=lambda *a: changes.append(a))
    tube = q.restore_tube("fq-x", now=START, throttle=0.5, paused=True, draining=True,
                          fair="off", max_size=7)
    assert (tube.throttle.rate, tube.paused, tube.draining, tube.fair_setting,
            tube.fair_policy, tube.max_size) == (0.5, True, True, "off", None, 7)
    assert q.restore_tube("fq-y", now=START).fair_policy == "round_robin"
    assert q.restore_tube("w", now=START, fair="weighted").fair_policy == "weighted"
    with pytest.raises(BadRequest):
        q.restore_tube("z", now=START, fair="bogus")
    assert changes == []


# -- options and wiring ----------------------------------------------------------------------


def parse(argv, environ=None) -> Options:
    options = Options()
    options.environ = {} if environ is None else environ
    options.parseOptions(argv)
    return options


def test_persistence_is_off_by_default():
    """No flag, no variable: memory only, and the fsync default is interval:50."""
    options = parse([])
    assert options["data-dir"] is None
    assert options["fsync"] == "interval:50"


@pytest.mark.parametrize("argv, environ, expected", [
    (["--data-dir", "/var/lib/allq"], {}, "/var/lib/allq"),
    ([], {"ALLQ_DATA_DIR": "/d"}, "/d"),
    ([], {"SERIALIZE": "true", "SERIALIZER_DIR": "/s"}, "/s"),
    ([], {"SERIALIZE": "true"}, "/tmp/allq"),
    ([], {"SERIALIZE": "True", "SERIALIZER_DIR": "/s"}, None),
    ([], {"SERIALIZE": "false", "SERIALIZER_DIR": "/s"}, None),
    ([], {"ALLQ_DATA_DIR": "/d", "SERIALIZE": "true", "SERIALIZER_DIR": "/s"}, "/d"),
    (["--data-dir", "/f"], {"ALLQ_DATA_DIR": "/d"}, "/f"),
])
def test_data_dir_sources(argv, environ, expected):
    """--data-dir, then ALLQ_DATA_DIR, then SERIALIZER_DIR when SERIALIZE is exactly true."""
    assert parse(argv, environ)["data-dir"] == expected


def test_fsync_flag_and_variable():
    """--fsync and ALLQ_FSYNC set the policy; the flag wins."""
    assert parse(["--fsync", "always"])["fsync"] == "always"
    assert parse([], {"ALLQ_FSYNC": " never "})["fsync"] == "never"
    assert parse(["--fsync", "interval:200"], {"ALLQ_FSYNC": "never"})["fsync"] == (
        "interval:200")


@pytest.mark.parametrize("argv, message", [
    (["--fsync", "sometimes"], "--fsync must be always, never or interval:MS"),
    (["--fsync", "interval:0"], "--fsync must be"),
])
def test_bad_fsync_values_name_the_option(argv, message):
    """A bad policy stops start-up with a message naming --fsync."""
    with pytest.raises(usage.UsageError, match=message):
        parse(argv)


def test_a_data_dir_that_is_a_file_is_refused(tmp_path):
    """--data-dir naming a regular file is a usage error, not a crash later."""
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(usage.UsageError, match="is not a directory"):
        parse(["--data-dir", str(path)])


def test_make_service_restores_and_wires_the_journal(tmp_path):
    """makeService reads the directory back before listening, logs what it restored,
    starts the journal first and closes it after shutdown."""
    data = tmp_path / "data"
    first = Server(data)
    first.queue.put("t", "a", now=first.now, priority=1)
    first.queue.put("t", "d", now=first.now, delay=1000)
    first.stop()
    keys = str(tmp_path / "keys")
    generate_keys(keys)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        reactor = MemoryReactorClock()
        reactor.advance(START + 1)
        service = makeService(parse(["--keys", keys, "--data-dir", str(data),
                                     "--fsync", "always"]), reactor=reactor)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert isinstance(service, MultiService)
    journal = list(service)[0]
    assert isinstance(journal, Journal) and journal.policy == ALWAYS
    (restored,) = [e for e in events if "restored" in e.get("log_format", "")]
    assert (restored["total"], restored["ready"], restored["delayed"], restored["skipped"]) == (
        2, 1, 1, 0)
    service.startService()
    factory = reactor.tcpServers[0][1]
    assert factory.after_data == journal.commit
    service.stopService()
    assert journal.close in [t[0] for t in reactor.triggers["after"]["shutdown"]]
    journal.close()


def test_make_service_refuses_a_busy_data_dir(tmp_path):
    """A data directory held by another server stops start-up with a clear message."""
    data = tmp_path / "data"
    holder = Server(data)
    keys = str(tmp_path / "keys")
    generate_keys(keys)
    with pytest.raises(SystemExit, match="in use by another allq-server"):
        makeService(parse(["--keys", keys, "--data-dir", str(data)]),
                    reactor=MemoryReactorClock())
    holder.journal.close()


def test_a_snapshot_that_cannot_be_written_leaves_the_journal_working(
        server, monkeypatch, observe_errors):
    """If the snapshot file cannot be created the failure is logged, the journal goes
    on in its new generation, and a restart still has everything."""
    real_open = os.open

    def refuse_tmp(path, *args, **kwargs):
        if path.endswith(".tmp"):
            raise OSError(28, "No space left on device")
        return real_open(path, *args, **kwargs)

    q = server.queue
    q.put("t", "a", now=server.now)
    monkeypatch.setattr(journal_module.os, "open", refuse_tmp)
    server.journal._compact_min_bytes = 0
    server.journal.commit()
    one_turn(server.clock)
    monkeypatch.undo()
    assert [e["log_format"] for e in observe_errors] == ["starting a compaction failed"]
    observe_errors.clear()  # the one failure this test expects
    assert server.journal._compaction is None and server.journal.generation == 2
    server.journal._compact_min_bytes = 1 << 30
    q.put("t", "b", now=server.now)
    expected = canonical(q, server.now)
    restarted = server.restart()
    assert canonical(restarted.queue, server.now) == expected
    restarted.journal.close()
