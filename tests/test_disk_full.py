"""Tests of the server on a full data directory (issue 10): the journal turns
read-only instead of stopping, the server refuses changes with ``disk_full``,
serves reads and deletes, and recovers by itself when space returns.

The full disk is an injected ``os.write`` that fails with ENOSPC after a
number of bytes (a short write, as a real file system does), and an injected
free-space probe; time is a :class:`task.Clock`.
"""

import errno
import os
import re
import shutil

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from allq.errors import DiskFull, error_for_code
from allq.server import journal as journal_module
from allq.server.journal import JournalError, JournalFull
from allq.server.readonly import ReadOnlyDispatcher
from allq.server.tap import DiskFullSwitch, FatalStop, Options, makeService
from allq.cli import generate_keys

from tests.test_journal import START, Server, canonical
from tests.test_server_protocol import CLIENT_KEYS, Peer


class Disk:
    """An ``os.write`` with a quota: short writes, then ENOSPC, until ``free`` grows."""

    def __init__(self, monkeypatch, free: int) -> None:
        self.free = free
        self._real = os.write
        monkeypatch.setattr(journal_module.os, "write", self.write)

    def write(self, fd, data):
        if self.free <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = self._real(fd, bytes(data[:self.free]))
        self.free -= n
        return n

    def free_bytes(self, path):
        return max(self.free, 0)


@pytest.fixture
def full(tmp_path, monkeypatch):
    """A journaling server whose disk holds only a few more bytes."""
    server = Server(tmp_path / "data")
    server.disk = Disk(monkeypatch, free=10**9)
    server.states = []
    server.journal._on_disk_full = server.states.append
    server.journal._free_bytes = server.disk.free_bytes
    server.journal._resume_free_bytes = 1000
    yield server
    monkeypatch.undo()
    server.journal.close()


def test_disk_full_is_a_507_error_known_by_code():
    """DiskFull has code disk_full and HTTP 507, and the client rebuilds it by code."""
    assert (DiskFull.code, DiskFull.http_status) == ("disk_full", 507)
    assert type(error_for_code("disk_full", "x")) is DiskFull


def test_a_full_disk_turns_the_journal_read_only_and_keeps_what_was_acknowledged(full):
    """ENOSPC in the middle of a record: commit raises JournalFull (nothing of that read
    is acknowledged), the server is not stopped, the hook says full once; what was
    committed before survives a crash."""
    stops = []
    full.journal._on_failure = lambda: stops.append(1)
    q = full.queue
    q.put("t", "acknowledged", now=full.now)
    full.journal.commit()
    expected = canonical(q, full.now)
    full.disk.free = 7  # a short write: part of the next record only
    q.put("t", "x" * 100, now=full.now)
    with pytest.raises(JournalFull, match="No space left"):
        full.journal.commit()
    q.put("t", "y", now=full.now)
    with pytest.raises(JournalFull):
        full.journal.commit()
    assert full.journal.disk_full and full.states == [True] and stops == []
    # What a crash leaves now: the acknowledged job; the torn record is cut off.
    shutil.copytree(full.directory, full.directory + "-crash")
    recovered = Server(full.directory + "-crash", clock=Clock())
    assert canonical(recovered.queue, full.now) == expected
    recovered.journal.close()


def test_space_returning_completes_the_torn_record_and_resumes(full):
    """The retry writes exactly what was left (completing a half-written record) and,
    with enough free space, takes changes again; nothing is lost or doubled."""
    q = full.queue
    full.disk.free = 7
    q.put("t", "x" * 100, now=full.now)
    with pytest.raises(JournalFull):
        full.journal.commit()
    full.clock.advance(2.0)  # a retry while still full
    assert full.journal.disk_full
    full.disk.free = 10**9
    full.clock.advance(2.0)
    assert not full.journal.disk_full and full.states == [True, False]
    q.put("t", "after", now=full.now)
    expected = canonical(q, full.now)
    restarted = full.restart()
    assert canonical(restarted.queue, full.now) == expected
    assert restarted.recovered.skipped == 0
    restarted.journal.close()


def test_resuming_waits_for_enough_free_space(full):
    """Pending bytes written is not enough: the file system must have resume_free_bytes."""
    full.disk.free = 0
    full.queue.put("t", "x", now=full.now)
    with pytest.raises(JournalFull):
        full.journal.commit()
    full.disk.free = 500  # room for the record, not for more
    full.clock.advance(2.0)
    assert full.journal.disk_full and full.journal._unwritten == b""
    full.disk.free = 5000
    full.clock.advance(2.0)
    assert not full.journal.disk_full


def test_stopping_while_full_cancels_the_retry(full):
    """stopService stops the retry loop: nothing stays scheduled."""
    full.disk.free = 0
    full.queue.put("t", "x", now=full.now)
    with pytest.raises(JournalFull):
        full.journal.commit()
    full.journal.stopService()
    assert full.clock.getDelayedCalls() == []


def test_other_write_errors_stay_fatal(full):
    """EIO is not a full disk: the server is told to stop, as before."""
    stops = []
    full.journal._on_failure = lambda: stops.append(1)

    def broken(fd, data):
        raise OSError(errno.EIO, "Input/output error")

    setattr(journal_module.os, "write", broken)  # undone by the fixture's monkeypatch
    full.queue.put("t", "x", now=full.now)
    with pytest.raises(JournalError) as caught:
        full.journal.commit()
    assert not isinstance(caught.value, JournalFull) and stops == [1]


def test_a_journal_that_cannot_be_started_on_a_full_disk_starts_read_only(tmp_path, monkeypatch):
    """A restart with no room for the new journal's header starts read-only (no torn
    header left behind) and becomes writable once space returns."""
    first = Server(tmp_path / "data")
    first.queue.put("t", "kept", now=first.now)
    expected = canonical(first.queue, first.now)
    first.journal.generation = 9  # make the next start create a new journal file
    first.stop()
    disk = Disk(monkeypatch, free=5)
    states = []
    clock = Clock()
    clock.advance(START)
    from allq.server.journal import FsyncPolicy, Journal
    from allq.server.recovery import recover
    recovered = recover(str(tmp_path / "data"), START)
    journal = Journal(str(tmp_path / "data"), FsyncPolicy("always"), clock, generation=10,
                      lock_fd=recovered.lock_fd, on_disk_full=states.append,
                      free_bytes=disk.free_bytes, resume_free_bytes=100)
    journal.startService()
    assert journal.disk_full and states == [True]
    assert os.path.getsize(tmp_path / "data" / "journal.10.log") == 0
    disk.free = 10**6
    clock.advance(2.0)
    assert not journal.disk_full and states == [True, False]
    journal.stopService()
    journal.close()
    assert clock.getDelayedCalls() == []
    monkeypatch.undo()
    again = Server(tmp_path / "data")
    assert canonical(again.queue, again.now) == expected
    again.journal.close()


def test_a_nearly_full_disk_starts_read_only(tmp_path):
    """Less than resume_free_bytes free at start: read-only from the start."""
    server = Server(tmp_path / "data", free_bytes=lambda path: 10, resume_free_bytes=100)
    assert server.journal.disk_full
    server.journal.stopService()
    server.journal.close()


# -- the read-only dispatcher and the switch ---------------------------------------------


@pytest.fixture
def switched(tmp_path):
    """A factory (as makeService wires it) with its disk-full switch."""
    from tests.test_server_protocol import make_factory

    clock = Clock()
    factory = make_factory(clock)
    switch = DiskFullSwitch()
    factory.dispatcher._disk_full = switch.is_full  # what makeService passes
    switch.connect(factory)
    peer = Peer(factory, CLIENT_KEYS)
    peer.handshake()
    return switch, factory, peer


def test_while_full_changes_get_disk_full_and_reads_and_deletes_work(switched):
    """Read-only: puts and settings get disk_full with their ids; get, peek, stats,
    touch, done and delete work; unknown actions stay unknown_action."""
    switch, factory, peer = switched
    first = peer.request("put", tube="t", body="a")["result"]["job_id"]
    second = peer.request("put", tube="t", body="b")["result"]["job_id"]
    switch.set(True)
    assert isinstance(factory.dispatcher, ReadOnlyDispatcher)
    for action, params in [("put", {"tube": "t", "body": "c"}), ("pause", {"tube": "t"}),
                           ("drain", {}), ("throttle", {"tube": "t", "tps": 1}),
                           ("clear", {"tube": "t"}), ("kick_tube", {"tube": "t"})]:
        reply = peer.request(action, **params)
        assert reply["error"]["code"] == "disk_full", action
        assert "data directory is full" in reply["error"]["message"]
    assert peer.request("peek", tube="t")["result"]["job"]["job_id"] == first
    (job,) = peer.request("get", tube="t")["result"]["jobs"]
    assert peer.request("touch", job_id=job["job_id"])["result"] == {"job_id": first}
    assert peer.request("done", job_id=first)["result"] == {"job_id": first}
    assert peer.request("delete", job_id=second)["result"] == {"job_id": second}
    assert peer.request("stats")["result"]["global"]["disk_full"] is True
    assert peer.request("explode")["error"]["code"] == "unknown_action"
    peer.send_line(peer.seal([{"id": 50, "action": "put", "params": {"tube": "t", "body": "x"}},
                              {"id": 51, "action": "ping"}]))
    replies = peer.receive()
    assert replies[0]["error"]["code"] == "disk_full" and "result" in replies[1]
    switch.set(False)
    assert peer.request("stats")["result"]["global"]["disk_full"] is False
    assert "result" in peer.request("put", tube="t", body="c")


def test_the_switch_applies_a_state_set_before_it_was_connected():
    """The journal may report full before the factory exists (a full disk at start)."""
    from tests.test_server_protocol import make_factory

    switch = DiskFullSwitch()
    switch.set(True)
    factory = make_factory(Clock())
    switch.connect(factory)
    assert isinstance(factory.dispatcher, ReadOnlyDispatcher)


def test_fatal_stop_stops_the_reactor_and_registers_a_nonzero_exit(monkeypatch):
    """A fatal journal failure stops the reactor and makes the process exit 1 (once)."""
    registered = []
    monkeypatch.setattr("allq.server.tap.atexit.register", registered.append)

    class Reactor:
        running = True
        stops = 0

        def stop(self):
            self.stops += 1

    reactor = Reactor()
    stop = FatalStop(reactor, at_exit="exit-1")
    stop()
    stop()
    assert registered == ["exit-1"] and reactor.stops == 2 and stop.failed


def test_make_service_wires_disk_full_into_stats_and_metrics(tmp_path):
    """With --data-dir and --metrics, the journal's state reaches the factory's
    dispatcher, stats and the allq_server_disk_full gauge."""
    keys = str(tmp_path / "keys")
    generate_keys(keys)
    options = Options()
    options.environ = {}
    options.parseOptions(["--keys", keys, "--data-dir", str(tmp_path / "data"),
                          "--listen", "tcp:0", "--metrics", "tcp:0"])
    reactor = MemoryReactorClock()
    service = makeService(options, reactor=reactor)
    service.startService()
    journal = service.services[0]
    factory = reactor.tcpServers[0][1]
    site = reactor.tcpServers[1][1]
    metrics = site.resource._metrics
    journal._on_disk_full(True)
    assert isinstance(factory.dispatcher, ReadOnlyDispatcher)
    assert metrics.stats()["global"]["disk_full"] is True
    body, _ = metrics.exposition()
    assert re.search(rb'\nallq_server_disk_full\{server="[^"]*"\} 1\.0\n', body)
    journal._on_disk_full(False)
    assert not isinstance(factory.dispatcher, ReadOnlyDispatcher)
    service.stopService()
    journal.close()


def test_while_full_a_read_without_changes_is_not_held_up(full):
    """A commit with no new records (a get's read) does not raise while bytes are
    still pending; one with new records (a delete) does, until space returns."""
    q = full.queue
    job = q.put("t", "a", now=full.now)
    full.journal.commit()
    full.disk.free = 0
    q.put("t", "b", now=full.now)
    with pytest.raises(JournalFull):
        full.journal.commit()
    full.journal.commit()  # nothing new: no error
    q.delete(job.id, now=full.now)
    with pytest.raises(JournalFull):
        full.journal.commit()
