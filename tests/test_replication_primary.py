"""The primary's side of replication (allq.server.replication, held_replies,
replication_files, the journal's stream hook, the options)."""

import json
import os
import socket

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, fail, succeed
from twisted.python import usage

from allq.cli import generate_keys
from allq.core.queue import Queue, QueueConfig
from allq.errors import ConnectionLost, Fenced, ReplicaUnavailable
from allq.peer.connection import connect
from allq.server.dispatch import Dispatcher
from allq.server.journal import FsyncPolicy, Journal
from allq.server.keys import load_server_keys
from allq.server.protocol import ServerFactory
from allq.server.readonly import STRICT_ACTIONS, ReadOnlyDispatcher, replica_unavailable_error
from allq.server.records import unframe
from allq.server.recovery import Recovered, apply_record, recover
from allq.server.replica_link import parse_peer
from allq.server.replication import Replicator
from allq.server.replication_files import (
    fenced_id,
    read_epoch,
    read_server_id,
    set_aside,
    write_epoch,
)
from allq.server.tap import Options, _server_id, makeService
from allq.wire.keys import ClientKeys
from tests.replica_fake import start_backup


# -- a fake stream connection --------------------------------------------------------


class FakeConnection:
    """Records requests; each answer is a Deferred the test fires."""

    def __init__(self):
        self.requests = []  # (action, params, Deferred)
        self.closed = False
        self.lost = Deferred()

    def request(self, action, params):
        d = Deferred()
        self.requests.append((action, params, d))
        return d

    def close(self):
        if not self.closed:
            self.closed = True
            self.lost.callback(None)

    def take(self, action):
        found = [r for r in self.requests if r[0] == action]
        for r in found:
            self.requests.remove(r)
        return found


class FakeHeld:
    def __init__(self):
        self.released = []
        self.dropped = False

    def release(self, lines):
        self.released.extend(lines)

    def drop(self):
        self.dropped = True


def make(mode="available", epoch=None, connect_result=None):
    clock = task.Clock()
    queue = Queue(QueueConfig(), started=0.0)
    connection = FakeConnection()
    refusing, fenced, kept = [], [], []
    replicator = Replicator(
        connect=lambda: succeed(connection) if connect_result is None else connect_result(),
        peer="backup:5556", server_id=lambda: "p1", queue=queue, clock=clock, mode=mode,
        timeout=2.0, max_lag=10_000, epoch=epoch,
        keep_epoch=lambda e, b: kept.append((e, b)), on_refusing=refusing.append,
        on_fenced=fenced.append)
    return replicator, connection, clock, queue, refusing, fenced, kept


def sync(replicator, connection, clock, epoch=1):
    """Answer replicate, let the snapshot go out, acknowledge it and replica_synced."""
    [(_, params, d)] = connection.take("replicate")
    d.callback({"backup": "b1", "epoch": epoch})
    clock.advance(0)
    clock.advance(0)
    for action, params, d in connection.take("replica_records"):
        d.callback({"seq": params["seq"]})
    [(_, params, d)] = connection.take("replica_synced")
    d.callback({"seq": params["seq"]})
    assert replicator.state == "streaming"


def test_a_connection_says_replicate_then_a_snapshot_then_synced():
    replicator, connection, clock, queue, _, _, kept = make(epoch=None)
    queue.put("t", "one", now=0.0)
    replicator.startService()
    [(action, params, d)] = connection.requests
    assert (action, params) == ("replicate", {"primary": "p1", "epoch": None, "address": None})
    d.callback({"backup": "b1", "epoch": 1})
    assert replicator.state == "syncing" and kept == [(1, "b1")] and replicator.epoch == 1
    clock.advance(0)  # the snapshot's one chunk
    clock.advance(0)  # its flush
    [(_, records, _)] = connection.take("replica_records")
    assert records["seq"] == 1
    kinds = [unframe(line.encode())[0] for line in records["lines"].splitlines(True)]
    assert kinds == ["j", "S"]
    [(_, synced, d)] = connection.take("replica_synced")
    assert synced == {"seq": 2, "records": 2}
    d.callback({"seq": 2})
    assert replicator.state == "streaming" and replicator.last_sync == 0.0
    replicator.stopService()


def test_held_replies_wait_for_the_ack_of_their_seq():
    replicator, connection, clock, queue, _, _, _ = make()
    replicator.startService()
    sync(replicator, connection, clock)
    held = FakeHeld()
    replicator.stream([b"line1\n"], True)
    replicator.hold(held, [b"reply\n"])
    clock.advance(0)
    [(_, params, d)] = connection.take("replica_records")
    assert params == {"seq": 3, "lines": "line1\n"}
    assert held.released == []
    assert replicator.stats()["lag_records"] == 1
    d.callback({"seq": 3})
    assert held.released == [b"reply\n"]
    assert replicator.stats()["lag_records"] == 0
    replicator.stopService()


def test_one_message_per_turn_carries_many_commits():
    replicator, connection, clock, _, _, _, _ = make()
    replicator.startService()
    sync(replicator, connection, clock)
    first, second = FakeHeld(), FakeHeld()
    replicator.stream([b"a\n"], True)
    replicator.hold(first, [b"1\n"])
    replicator.stream([b"b\n"], True)
    replicator.hold(second, [b"2\n"])
    clock.advance(0)
    [(_, params, d)] = connection.take("replica_records")
    assert params["lines"] == "a\nb\n"
    d.callback({"seq": params["seq"]})
    assert first.released == [b"1\n"] and second.released == [b"2\n"]


def test_available_releases_held_replies_when_the_backup_goes_and_counts_them():
    replicator, connection, clock, _, refusing, _, _ = make(mode="available")
    replicator.startService()
    sync(replicator, connection, clock)
    held = FakeHeld()
    replicator.stream([b"a\n"], True)
    replicator.hold(held, [b"1\n"])
    clock.advance(0)
    connection.close()
    assert held.released == [b"1\n"] and not held.dropped
    assert replicator.state == "alone" and replicator.alone_changes == 1
    later = FakeHeld()
    replicator.stream([b"b\n"], True)
    replicator.hold(later, [b"2\n"])
    assert later.released == [b"2\n"] and replicator.alone_changes == 2
    assert refusing == []


def test_strict_drops_held_replies_and_refuses_until_the_backup_is_synced_again():
    calls = []
    replicator, connection, clock, _, refusing, _, _ = make(mode="strict")
    replicator._connect = lambda: calls.append(1) or succeed(connection)
    replicator.startService()
    assert refusing == [True]  # connecting: strict refuses
    sync(replicator, connection, clock)
    assert refusing == [True, False]
    held = FakeHeld()
    replicator.stream([b"a\n"], True)
    replicator.hold(held, [b"1\n"])
    clock.advance(0)
    connection.close()
    assert held.dropped and held.released == []
    assert replicator.state == "refusing" and refusing == [True, False, True]
    # It reconnects with backoff and re-syncs from a fresh snapshot.
    fresh = FakeConnection()
    replicator._connect = lambda: succeed(fresh)
    clock.advance(0.1)
    [(_, params, d)] = fresh.take("replicate")
    d.callback({"backup": "b1", "epoch": 1})
    assert refusing[-1] is False and replicator.state == "syncing"
    # During the sync a change's reply waits for replica_synced, not just its seq.
    during = FakeHeld()
    replicator.stream([b"c\n"], True)
    replicator.hold(during, [b"3\n"])
    clock.advance(0)
    clock.advance(0)
    for _, params, d in fresh.take("replica_records"):
        d.callback({"seq": params["seq"]})
    assert during.released == []
    [(_, params, d)] = fresh.take("replica_synced")
    d.callback({"seq": params["seq"]})
    assert during.released == [b"3\n"]
    assert replicator.resyncs == 1
    replicator.stopService()


def test_a_backup_that_fails_a_request_is_dropped_and_resynced():
    replicator, connection, clock, _, _, _, _ = make()
    replicator.startService()
    sync(replicator, connection, clock)
    clock.advance(1.0)  # idle: a heartbeat
    [(_, _, d)] = connection.take("ping")
    d.errback(ConnectionLost("timed out"))
    assert connection.closed and replicator.state == "alone"
    replicator.stopService()


def test_a_backup_past_max_lag_is_dropped():
    replicator, connection, clock, _, _, _, _ = make()
    replicator.startService()
    sync(replicator, connection, clock)
    replicator.stream([b"x" * 20_000 + b"\n"], True)
    clock.advance(0)
    assert connection.closed and replicator.state == "alone"
    replicator.stopService()


def test_available_start_up_waits_for_the_backup_then_gives_up():
    replicator, connection, clock, _, _, _, _ = make(
        mode="available", connect_result=lambda: Deferred())
    replicator.startService()
    ready = replicator.ready_to_serve()
    assert not ready.called
    clock.advance(1.9)
    assert not ready.called
    clock.advance(0.1)
    assert ready.called and replicator.state == "alone"
    replicator.stopService()


def test_strict_start_up_waits_until_the_backup_answers():
    attempts = []
    replicator, connection, clock, _, _, _, _ = make(mode="strict")
    replicator._connect = lambda: attempts.append(1) or fail(ConnectionLost("refused"))
    replicator.startService()
    ready = replicator.ready_to_serve()
    clock.pump([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0])
    assert not ready.called and len(attempts) == 8
    replicator._connect = lambda: succeed(connection)
    clock.advance(5.0)
    [(_, _, d)] = connection.take("replicate")
    d.callback({"backup": "b1", "epoch": 1})
    assert ready.called
    replicator.stopService()


def test_a_fenced_answer_calls_on_fenced_with_the_new_epoch_once():
    replicator, connection, clock, _, refusing, fenced, _ = make(mode="available", epoch=1)
    replicator.startService()
    [(_, _, d)] = connection.take("replicate")
    d.errback(Fenced("primary p1 was promoted on this backup at epoch 2"))
    assert fenced == [2] and replicator.state == "fenced"
    assert refusing == [True]  # even in available mode: its jobs are the backup's now
    clock.advance(10)
    assert connection.requests == []  # no reconnection
    replicator.stopService()


# -- the journal hook ----------------------------------------------------------------


def test_the_journal_streams_each_commit_with_r_records_that_never_reach_the_disk(tmp_path):
    clock = task.Clock()
    journal = Journal(str(tmp_path), FsyncPolicy.parse("never"), clock)
    queue = Queue(QueueConfig(), started=0.0, on_change=journal.on_change)
    journal.attach(queue)
    streamed = []
    journal.stream_to(lambda lines, changed: streamed.append((lines, changed)))
    journal.startService()
    queue.put("t", "body", now=0.0)
    journal.commit()
    [job] = queue.get("t", now=1.0)
    journal.commit()
    assert [[unframe(line)[0] for line in lines] for lines, _ in streamed] == [["j"], ["r"]]
    assert [changed for _, changed in streamed] == [True, False]
    assert unframe(streamed[1][0][0]) == ["r", job.id, job.deadline]
    journal.stopService()
    journal.close()
    with open(tmp_path / "journal.1.log", "rb") as f:
        assert [unframe(line)[0] for line in f] == ["journal", "j"]


# -- strict refusals -----------------------------------------------------------------


def test_strict_refuses_changes_done_and_deleting_gets_with_replica_unavailable():
    queue = Queue(QueueConfig(), started=0.0)
    dispatcher = ReadOnlyDispatcher(Dispatcher(queue, task.Clock(), lambda: "p1"),
                                    replica_unavailable_error, STRICT_ACTIONS)
    for action, params in (("put", {"tube": "t", "body": "x"}), ("done", {"job_id": "p1,1"}),
                           ("delete", {"job_id": "p1,1"}),
                           ("get", {"tube": "t", "delete": True})):
        reply = dispatcher.handle({"id": 1, "action": action, "params": params})
        assert reply["error"]["code"] == ReplicaUnavailable.code, action
    assert "result" in dispatcher.handle({"id": 2, "action": "get", "params": {"tube": "t"}})
    assert "result" in dispatcher.handle({"id": 3, "action": "stats", "params": {}})


# -- files and options ---------------------------------------------------------------


def test_fencing_sets_files_aside_and_the_new_identity_is_used_at_the_next_start(tmp_path):
    directory = str(tmp_path)
    for name in ("journal.3.log", "snapshot.3", "lock"):
        (tmp_path / name).write_text("x")
    write_epoch(directory, 1, "b1")
    assert read_epoch(directory) == 1
    folder = set_aside(directory, 2, 1000.0, fenced_id("p1", 2))
    assert sorted(os.listdir(folder)) == ["journal.3.log", "snapshot.3"]
    assert os.path.basename(folder) == "fenced-2-1000"
    assert read_server_id(directory) == "p1-e2" and read_epoch(directory) is None
    assert fenced_id("p1-e2", 5) == "p1-e5"
    options = parse(["--data-dir", directory, "--server-id", "other"])
    assert _server_id(options) == "p1-e2"


def parse(argv, environ=None):
    options = Options()
    options.environ = environ or {}
    options.parseOptions(argv)
    return options


@pytest.mark.parametrize("argv, message", [
    (["--replica", "host:5556"], "--replica needs --data-dir"),
    (["--replica", "nohost", "--data-dir", "d"], "--replica must be HOST:PORT"),
    (["--replica", "h:0", "--data-dir", "d"], "--replica must be HOST:PORT"),
    (["--replication", "sometimes"], "--replication must be strict or available"),
    (["--replica-timeout", "-1"], "replica-timeout"),
    (["--replica-max-lag", "10"], "replica-max-lag"),
])
def test_bad_replication_options_are_startup_errors_naming_the_option(argv, message, tmp_path):
    with pytest.raises(usage.UsageError, match=message):
        parse(argv)


def test_replication_options_come_from_the_environment(tmp_path):
    options = parse([], {"ALLQ_REPLICA": "[::1]:5556", "ALLQ_DATA_DIR": str(tmp_path),
                         "ALLQ_REPLICATION": "strict", "ALLQ_REPLICA_TIMEOUT": "0.5",
                         "ALLQ_REPLICA_MAX_LAG": "4096",
                         "ALLQ_REPLICA_SERVER_KEY": "k"})
    assert (options["replica"], options["replication"], options["replica-timeout"],
            options["replica-max-lag"], options["replica-server-key"]) == (
        "[::1]:5556", "strict", 0.5, 4096, "k")
    assert parse_peer(options["replica"]) == ("::1", 5556)


def test_a_primary_without_a_fixed_port_needs_a_server_id(tmp_path):
    options = parse(["--replica", "h:1", "--data-dir", str(tmp_path), "--listen", "tcp:0"])
    with pytest.raises(SystemExit, match="--replica needs --server-id"):
        _server_id(options)


# -- end to end: a real primary, a fake backup over TCP ---------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def until(predicate, turns=2000):
    for _ in range(turns):
        if predicate():
            return
        await task.deferLater(reactor, 0.005, lambda: None)
    raise AssertionError("condition not reached")


def replay(lines) -> Recovered:
    state = Recovered(directory="")
    for line in lines:
        record = unframe(line.encode("utf-8"))
        assert record is not None, line
        if record[0] != "r":  # stream-only: a promoted replica's business
            apply_record(state, record)
    return state


@pytest_twisted.ensureDeferred
async def test_a_real_primary_streams_its_state_and_holds_replies_until_acked(tmp_path):
    keys_dir = str(tmp_path / "keys")
    generate_keys(keys_dir)
    backup, backup_port = start_backup(keys_dir)
    listen = free_port()
    data = str(tmp_path / "data")
    os.mkdir(data)
    options = parse(["--keys", keys_dir, "--data-dir", data, "--server-id", "p1",
                     "--listen", f"tcp:{listen}:interface=127.0.0.1", "--fsync", "never",
                     "--replica", f"127.0.0.1:{backup_port.getHost().port}"])
    service = makeService(options, reactor)
    service.startService()
    client = None
    try:
        await until(lambda: backup.synced)
        assert backup.streams == [("p1", None)]
        with open(os.path.join(data, "replication")) as f:
            assert json.load(f) == {"epoch": 1, "backup": "backup-1"}
        client_keys = ClientKeys(load_server_keys(keys_dir, None, {}).secret,
                                 load_server_keys(keys_dir, None, {}).public)
        client = await connect(reactor, f"tcp:host=127.0.0.1:port={listen}", client_keys)
        assert client.welcome["epoch"] == 1
        assert client.welcome["replica"] == {"address": f"127.0.0.1:{backup_port.getHost().port}"}
        ids = []
        for body in ("a", "b", "c"):
            ids.append((await client.request("put", {"tube": "t", "body": body}))["job_id"])
            # The reply came after the backup acknowledged: it holds the job already.
            assert any(f'"{body}"' in line for line in backup.lines)
        await client.request("throttle", {"tube": "t", "tps": 5})
        [got] = (await client.request("get", {"tube": "t"}))["jobs"]
        assert got["job_id"] == ids[0]
        await client.request("done", {"job_id": ids[0]})
        assert any('["r",' in line for line in backup.lines)
        stats = await client.request("stats", {})
        section = stats["replication"]
        assert section["state"] == "streaming" and section["peer_id"] == "backup-1"
        assert section["records_sent"] >= 5
        # The stream, applied in order as recovery applies a journal, is the primary's
        # state (reserved jobs count as ready, as after a restart).
        state = replay(backup.lines)
        remaining = {str(job[1]) for job in state.jobs.values()}
        assert remaining == {ids[1].split(",")[1], ids[2].split(",")[1]}
        assert state.tubes["t"][2] == 5
    finally:
        if client is not None:
            client.close()
        await service.stopService()
        await backup_port.stopListening()
        service.services[0].close()  # the journal (twistd does this after shutdown)
    # What the primary wrote to disk says the same.
    recovered = recover(data, 0.0)
    os.close(recovered.lock_fd)
    assert set(recovered.jobs) == set(state.jobs)


@pytest_twisted.ensureDeferred
async def test_a_fenced_primary_sets_its_data_aside_and_stops(tmp_path, monkeypatch):
    keys_dir = str(tmp_path / "keys")
    generate_keys(keys_dir)
    backup, backup_port = start_backup(keys_dir, fence_at=4)
    data = str(tmp_path / "data")
    os.mkdir(data)
    write_epoch(data, 3, "backup-1")
    options = parse(["--keys", keys_dir, "--data-dir", data, "--server-id", "p1",
                     "--listen", f"tcp:{free_port()}:interface=127.0.0.1",
                     "--replica", f"127.0.0.1:{backup_port.getHost().port}"])
    stops = []
    monkeypatch.setattr("allq.server.tap.FatalStop.__call__", lambda self: stops.append(
        self.at_exit.__name__))
    service = makeService(options, reactor)
    service.startService()
    try:
        await until(lambda: stops)
        assert stops == ["_exit_fenced"]
        assert read_server_id(data) == "p1-e4"
        [folder] = [name for name in os.listdir(data) if name.startswith("fenced-4-")]
        assert "journal.1.log" in os.listdir(os.path.join(data, folder))
    finally:
        await service.stopService()
        await backup_port.stopListening()
        service.services[0].close()


# -- held replies on a real connection object ------------------------------------------


class PlainSession:
    """Frames in clear text: the protocol's reply path without the crypto."""

    peer_public = b"k" * 32

    def open(self, line):
        return line

    def seal(self, data):
        return data


def held_setup(tmp_path, mode="strict"):
    from twisted.internet.testing import StringTransport

    from allq.server.held_replies import HeldRepliesProtocol

    replicator, connection, clock, queue, _, _, _ = make(mode=mode)
    journal = Journal(str(tmp_path), FsyncPolicy.parse("never"), clock)
    queue._on_change = journal.on_change
    journal.attach(queue)
    journal.stream_to(replicator.stream)
    journal.startService()
    factory = ServerFactory(None, Dispatcher(queue, clock, lambda: "p1"), clock, lambda: "p1",
                            1024, 4096, after_data=journal.commit)
    factory.replicator = replicator
    protocol = HeldRepliesProtocol(factory)
    transport = StringTransport()
    protocol.makeConnection(transport)
    transport.clear()
    protocol._session = PlainSession()
    protocol.MAX_LENGTH = 4096
    replicator.startService()
    sync(replicator, connection, clock)
    return protocol, transport, connection, clock, replicator, journal


def request(protocol, request_id, action, **params):
    protocol.dataReceived(json.dumps({"id": request_id, "action": action,
                                      "params": params}).encode() + b"\n")


def replies(transport) -> list[int]:
    """The ids of the replies written so far, in order."""
    return [json.loads(line)["id"] for line in transport.value().splitlines()]


def test_a_reply_acknowledging_a_change_waits_for_the_backup_and_reads_do_not(tmp_path):
    protocol, transport, connection, clock, replicator, journal = held_setup(tmp_path)
    request(protocol, 1, "stats")
    assert replies(transport) == [1]  # changed nothing, nothing before it: not held
    transport.clear()
    request(protocol, 2, "put", tube="t", body="x")
    assert transport.value() == b""  # held
    # Changed nothing, but sealed after a held reply: frames leave in the order
    # they were sealed (the client checks their sequence numbers), so it waits.
    request(protocol, 3, "stats")
    assert transport.value() == b""
    clock.advance(0)
    [(_, params, d)] = connection.take("replica_records")
    assert '"x"' in params["lines"]
    d.callback({"seq": params["seq"]})
    assert replies(transport) == [2, 3]
    transport.clear()
    request(protocol, 4, "get", tube="t")  # a reservation: streamed, not waited for
    assert replies(transport) == [4]
    clock.advance(0)
    [(_, params, _)] = connection.take("replica_records")
    assert params["lines"].count("\n") == 1 and '["r",' in params["lines"]
    replicator.stopService()
    journal.stopService()


def test_strict_drops_the_connection_whose_changes_the_backup_lost(tmp_path):
    protocol, transport, connection, clock, replicator, journal = held_setup(tmp_path)
    request(protocol, 1, "put", tube="t", body="x")
    clock.advance(0)
    connection.close()
    assert transport.value() == b"" and transport.disconnecting
    replicator.stopService()
    journal.stopService()


def test_available_writes_held_replies_when_the_backup_goes(tmp_path):
    protocol, transport, connection, clock, replicator, journal = held_setup(
        tmp_path, mode="available")
    request(protocol, 1, "put", tube="t", body="x")
    clock.advance(0)
    connection.close()
    assert json.loads(transport.value())["id"] == 1
    assert replicator.stats()["alone_changes"] == 1
    replicator.stopService()
    journal.stopService()


def test_metrics_show_the_replication_section():
    from allq.server.metrics import ServerMetrics

    replicator, connection, clock, queue, _, _, _ = make()
    metrics = ServerMetrics(queue, clock, lambda: "p1", process=False,
                            replication=replicator.stats)
    text = metrics.exposition()[0].decode()
    assert 'allq_replication_state{server="p1",state="connecting"} 1.0' in text
    assert 'allq_replication_records_sent_total{server="p1"} 0.0' in text
    assert 'allq_replication_lag_seconds{server="p1"} 0.0' in text


def test_a_connection_lost_before_replicate_is_answered_is_retried():
    replicator, connection, clock, _, _, _, _ = make(mode="strict")
    replicator.startService()
    [(_, _, d)] = connection.take("replicate")
    d.errback(ConnectionLost("connection to the server was lost"))
    assert connection.closed and replicator.state == "refusing"
    fresh = FakeConnection()
    replicator._connect = lambda: succeed(fresh)
    clock.advance(0.1)
    assert [action for action, _, _ in fresh.requests] == ["replicate"]
    replicator.stopService()


# -- the start-up hold ---------------------------------------------------------------------


class FactoryStub:
    """What :class:`DiskFullSwitch` swaps: the factory's dispatcher."""

    def __init__(self, dispatcher) -> None:
        self.dispatcher = dispatcher


def code_of(reply: dict) -> str | None:
    return reply.get("error", {}).get("code")


def test_a_starting_primary_holds_its_jobs_back_but_answers_as_a_backup():
    """Until its backup answered, a primary serves none of its jobs (it may have been
    replaced), but answers stats and what it answers as a backup itself: two servers
    backing each other up must each reach the other to start."""
    from allq.server.replica_link import HoldUntilConfirmed
    from allq.server.tap import DiskFullSwitch

    clock = task.Clock()
    queue = Queue(QueueConfig(), first_id=1, started=0.0)
    queue.put("t", "old job", now=0.0)
    factory = FactoryStub(Dispatcher(queue, clock, lambda: "p1"))
    switch = DiskFullSwitch()
    switch.connect(factory)
    confirmed = Deferred()
    hold = HoldUntilConfirmed(lambda: confirmed, switch.set_starting)
    hold.startService()

    def ask(action, **params):
        return factory.dispatcher.handle({"id": 1, "action": action, "params": params})

    for action, params in (("get", {"tube": "t"}), ("put", {"tube": "t", "body": "x"}),
                           ("peek", {"tube": "t"}), ("pause", {"tube": "t"})):
        reply = ask(action, **params)
        assert code_of(reply) == ReplicaUnavailable.code, action
        assert "backup confirmed" in reply["error"]["message"]
    assert "result" in ask("stats")
    # A backup's own requests are not held (this dispatcher has no replica host, so
    # they are unknown here, not refused).
    assert code_of(ask("replicas")) == "unknown_action"
    confirmed.callback(None)
    (job,) = ask("get", tube="t")["result"]["jobs"]
    assert job["body"] == "old job"
    hold.stopService()


def test_a_primary_stopped_before_its_backup_answered_leaves_nothing_behind():
    from allq.server.replica_link import HoldUntilConfirmed

    replicator, connection, clock, *_ = make(mode="strict")
    held = []
    hold = HoldUntilConfirmed(replicator.ready_to_serve, held.append)
    replicator.startService()
    hold.startService()
    hold.stopService()
    replicator.stopService()
    assert held == [True]
    assert not clock.getDelayedCalls()
