"""Tests of :mod:`allq.server.replica_host`: a backup's stream connections,
promotion rules, epochs, ``serve_as`` and persistence under ``replicas/``.

The server protocol runs on StringTransports (tests/test_server_protocol.py's
:class:`Peer`), time on a :class:`task.Clock`.
"""

import os

import pytest
from twisted.internet.task import Clock

from allq.core.job import JobState
from allq.core.queue import QueueConfig
from allq.server.journal import FsyncPolicy
from allq.server.replica_host import PRIMARY_SILENCE, ReplicaHost
from allq.wire.messages import loads

from tests.replicas import T0, lines, put, state
from tests.test_server_protocol import SERVER_ID, Peer, make_factory

PRIMARY = "prim-1"


class Backup:
    """A server factory with a replica host installed, on a clock."""

    def __init__(self, data_dir=None, clock=None) -> None:
        self.clock = clock or Clock()
        if clock is None:
            self.clock.advance(T0)
        self.factory = make_factory(self.clock)
        self.host = ReplicaHost(self.clock, lambda: SERVER_ID, QueueConfig(),
                                data_dir=None if data_dir is None else str(data_dir),
                                fsync=FsyncPolicy("always"))
        self.host.load(self.clock.seconds())
        self.host.install(self.factory.dispatcher)
        self.factory.choose_mode = self.host.choose_mode
        self.host.startService()

    def connect(self) -> Peer:
        peer = Peer(self.factory)
        peer.handshake()
        return peer

    def stream(self, epoch=None) -> Peer:
        """A stream connection that said replicate (asserted to succeed)."""
        peer = self.connect()
        reply = peer.request("replicate", primary=PRIMARY, epoch=epoch, address="h:1")
        assert "result" in reply, reply
        return peer

    def synced_stream(self, *records) -> Peer:
        peer = self.stream()
        assert peer.request("replica_records", seq=1, lines=lines(*records))["result"] == {
            "seq": 1}
        assert peer.request("replica_synced", seq=2, records=len(records))["result"] == {
            "seq": 2}
        return peer

    def request(self, action, **params) -> dict:
        return self.connect().request(action, **params)

    def stop(self) -> None:
        self.host.stopService()
        self.host.close()


def error_code(reply: dict) -> str:
    return reply["error"]["code"]


def refused(peer: Peer, action: str, **params) -> tuple[dict, str]:
    """Send a request the server answers, then closes the connection after:
    its reply and the code of the ERROR line."""
    peer.send_line(peer.seal({"id": 99, "action": action, "params": params}))
    reply, error = peer.lines()
    assert error.startswith(b"ERROR ") and peer.transport.disconnecting
    return loads(peer.session.open(reply)), error.split(b" ")[1].decode()


@pytest.fixture
def backup():
    backup = Backup()
    yield backup
    backup.stop()


def test_replicate_answers_backup_and_epoch(backup):
    """replicate gets {backup, epoch}; the replica shows up in replicas and stats."""
    peer = backup.connect()
    reply = peer.request("replicate", primary=PRIMARY, address="h:1")
    assert reply["result"] == {"backup": SERVER_ID, "epoch": 1}
    peer.request("replica_records", seq=1, lines=lines(put(1), put(2)))
    (entry,) = backup.request("replicas")["result"]["replicas"]
    assert entry == {"primary": PRIMARY, "address": "h:1", "epoch": 1, "state": "syncing",
                     "records": 2, "jobs": 2, "last_record": T0, "last_sync": None,
                     "promoted_at": None}
    assert backup.request("stats")["result"]["replicas"] == [entry]


def test_a_server_without_replicas_has_no_replicas_section(backup):
    """Only a server that holds a replica carries the stats section."""
    assert "replicas" not in backup.request("stats")["result"]
    assert backup.request("replicas")["result"] == {"replicas": []}


def test_synced_replica_says_synced_then_disconnected(backup):
    """replica_synced completes the replica; its stream closing disconnects it."""
    peer = backup.synced_stream(put(1))
    (entry,) = backup.host.describe()
    assert (entry["state"], entry["last_sync"]) == ("synced", T0)
    peer.lose()
    assert backup.host.describe()[0]["state"] == "disconnected"


def test_stream_messages_on_an_ordinary_connection_are_refused(backup):
    """replica_records before replicate: a clear error; the connection keeps serving."""
    peer = backup.connect()
    reply = peer.request("replica_records", seq=1, lines=lines(put(1)))
    assert error_code(reply) == "bad_request"
    assert "replicate" in reply["error"]["message"]
    assert "result" in peer.request("ping")
    assert error_code(peer.request("replicate", primary=PRIMARY)) == "bad_request"
    assert backup.host.replicas == {}


def test_a_stream_connection_carries_only_the_stream(backup):
    """A stream connection refuses other actions and a second replicate."""
    peer = backup.stream()
    assert error_code(peer.request("put", tube="t", body="x")) == "bad_request"
    assert error_code(peer.request("replicate", primary=PRIMARY)) == "bad_request"
    assert peer.request("ping")["result"] == {}


def test_a_seq_gap_drops_the_stream(backup):
    """A message out of order gets replica_gap, then the connection is closed."""
    peer = backup.synced_stream(put(1))
    reply, code = refused(peer, "replica_records", seq=5, lines=lines(put(2)))
    assert (error_code(reply), code) == ("replica_gap", "replica_gap")
    assert error_code(backup.request("promote", server_id=PRIMARY)) == "replica_incomplete"


def test_a_damaged_line_drops_the_stream_and_the_replica_is_incomplete(backup):
    """A CRC mismatch: a clear error, the stream dropped, no promotion until a fresh sync."""
    peer = backup.synced_stream(put(1))
    damaged = lines(put(2)).replace('"b"', '"c"')
    reply, code = refused(peer, "replica_records", seq=3, lines=damaged)
    assert (error_code(reply), code) == ("bad_request", "bad_stream")
    assert "damaged" in reply["error"]["message"]
    assert error_code(backup.request("promote", server_id=PRIMARY)) == "replica_incomplete"
    assert "result" in backup.request("ping")  # the server keeps serving
    backup.synced_stream(put(1)).lose()  # a fresh sync makes it promotable again
    backup.clock.advance(PRIMARY_SILENCE)
    assert "result" in backup.request("promote", server_id=PRIMARY)


def test_a_newer_replicate_replaces_the_older_stream(backup):
    """The older stream connection is closed; the replica starts from scratch."""
    old = backup.synced_stream(put(1))
    new = backup.stream()
    assert old.refused_with() == "replaced"
    assert backup.host.describe()[0]["state"] == "syncing"
    assert backup.host.describe()[0]["jobs"] == 0
    assert new.request("ping")["result"] == {}


@pytest.mark.parametrize("server_id, code", [
    ("nobody", "not_found"), ("../etc", "bad_request"), ("x" * 65, "bad_request"),
])
def test_promote_of_an_unknown_or_nonsense_id(backup, server_id, code):
    """promote names a replica this server holds, by a valid server id."""
    assert error_code(backup.request("promote", server_id=server_id)) == code


def test_promote_of_an_incomplete_replica_is_refused(backup):
    """Before replica_synced the replica cannot be promoted."""
    peer = backup.stream()
    peer.request("replica_records", seq=1, lines=lines(put(1)))
    peer.lose()
    backup.clock.advance(60)
    assert error_code(backup.request("promote", server_id=PRIMARY)) == "replica_incomplete"


def test_promote_while_the_primary_is_heard_is_refused(backup):
    """A primary heard within PRIMARY_SILENCE on its stream is alive."""
    peer = backup.synced_stream(put(1))
    backup.clock.advance(PRIMARY_SILENCE - 1)
    assert error_code(backup.request("promote", server_id=PRIMARY)) == "primary_alive"
    peer.request("ping")
    backup.clock.advance(PRIMARY_SILENCE - 1)
    assert error_code(backup.request("promote", server_id=PRIMARY)) == "primary_alive"
    backup.clock.advance(1)
    assert "result" in backup.request("promote", server_id=PRIMARY)


def test_promote_raises_the_epoch_fences_the_stream_and_is_idempotent(backup):
    """Promotion closes the silent primary's stream with fenced; every promote
    gets the same answer; the primary's next replicate is fenced."""
    peer = backup.synced_stream(put(1))
    backup.clock.advance(PRIMARY_SILENCE)
    first = backup.request("promote", server_id=PRIMARY)["result"]
    assert first == {"server_id": PRIMARY, "epoch": 2, "backup": SERVER_ID}
    assert peer.refused_with() == "fenced"
    assert backup.request("promote", server_id=PRIMARY)["result"] == first
    returning = backup.connect()
    reply = returning.request("replicate", primary=PRIMARY, epoch=1)
    assert error_code(reply) == "fenced"
    assert "epoch 2" in reply["error"]["message"]
    (entry,) = backup.host.describe()
    assert (entry["state"], entry["epoch"], entry["promoted_at"]) == ("promoted", 2,
                                                                      T0 + PRIMARY_SILENCE)


def promoted(backup, *records) -> Peer:
    """Promote a replica of ``records`` and open a serve_as connection to it."""
    backup.synced_stream(*records).lose()
    backup.clock.advance(PRIMARY_SILENCE)
    assert "result" in backup.request("promote", server_id=PRIMARY)
    peer = backup.connect()
    assert peer.request("serve_as", server_id=PRIMARY)["result"] == {
        "server_id": PRIMARY, "epoch": 2, "backup": SERVER_ID}
    return peer


def test_serve_as_of_a_replica_not_promoted_is_refused(backup):
    """serve_as needs a promoted replica: not_found, and the connection closes."""
    backup.synced_stream(put(1))
    peer = backup.connect()
    reply, code = refused(peer, "serve_as", server_id=PRIMARY)
    assert (error_code(reply), code) == ("not_found", "not_found")
    assert "promote it first" in reply["error"]["message"]
    assert error_code(refused(backup.connect(), "serve_as", server_id="other")[0]) == "not_found"


def test_serve_as_serves_the_primary_jobs_by_their_ids(backup):
    """Through serve_as: the primary's ids, its stats' server id, done works."""
    peer = promoted(backup, put(1), put(2, tube="u"))
    (job,) = peer.request("get", tube="t")["result"]["jobs"]
    assert job["job_id"] == f"{PRIMARY},1"
    assert peer.request("done", job_id=f"{PRIMARY},1")["result"] == {"job_id": f"{PRIMARY},1"}
    stats = peer.request("stats")["result"]
    assert stats["server_id"] == PRIMARY
    assert stats["promoted"] == {"backup": SERVER_ID, "epoch": 2,
                                 "promoted_at": T0 + PRIMARY_SILENCE}
    assert stats["global"]["jobs"] == 1
    # The backup's own jobs are apart from the replica's.
    assert backup.request("stats")["result"]["global"]["jobs"] == 0


def test_a_promoted_replica_takes_no_new_jobs(backup):
    """Puts reaching a promoted replica are refused with draining."""
    peer = promoted(backup, put(1))
    reply = peer.request("put", tube="t", body="new")
    assert error_code(reply) == "draining"
    assert peer.request("stats")["result"]["global"]["jobs"] == 1


def test_a_retried_put_the_primary_stored_gets_its_job_id(backup):
    """A put retried with the idempotency key of a put the primary stored (its reply
    was lost with the primary) is answered with that job, not refused, not stored again."""
    peer = promoted(backup, put(1), ["k", "retry-me", 1, T0 + 3600])
    reply = peer.request("put", tube="t", body="again", idempotency_key="retry-me")
    assert reply["result"] == {"job_id": f"{PRIMARY},1"}
    reply = peer.request("put", tube="t", body="new", idempotency_key="never-seen")
    assert error_code(reply) == "draining"
    assert peer.request("stats")["result"]["global"]["jobs"] == 1


def test_a_reserved_job_stays_reserved_for_its_worker(backup):
    """An r record newer than the job's state: reserved until its deadline; the
    original worker's done works."""
    peer = promoted(backup, put(1), put(2), ["r", 1, T0 + 30], ["r", 2, T0 + 30])
    assert peer.request("get", tube="t")["result"]["jobs"] == []
    assert "result" in peer.request("done", job_id=f"{PRIMARY},1")
    assert "result" in peer.request("touch", job_id=f"{PRIMARY},2")


def test_a_reserved_job_comes_back_after_its_ttl(backup):
    """The promoted replica's timer gives a reservation back at its deadline."""
    peer = promoted(backup, put(1), ["r", 1, T0 + 30], put(2), ["r", 2, T0 + 10],
                    state(2, JobState.READY, releases=1))
    (job,) = peer.request("get", tube="t")["result"]["jobs"]
    assert job["job_id"] == f"{PRIMARY},2"  # released after its r: ready at once
    backup.clock.advance(T0 + 30 - backup.clock.seconds())
    (job,) = peer.request("get", tube="t")["result"]["jobs"]
    assert (job["job_id"], job["expireds"]) == (f"{PRIMARY},1", 1)


def test_stopping_leaves_no_timer(backup):
    """stopService cancels the promoted replicas' timers."""
    peer = promoted(backup, put(1), ["r", 1, T0 + 30])
    peer.lose()
    backup.stop()
    assert backup.clock.getDelayedCalls() == []


# -- with a data directory -----------------------------------------------------------------


def test_epochs_and_promoted_replicas_survive_a_restart(tmp_path):
    """The epoch file, the promoted replica's snapshot and journal are read back:
    a restarted backup still fences and still serves the replica."""
    backup = Backup(tmp_path)
    backup.synced_stream(put(1), put(2), put(3)).lose()
    directory = tmp_path / "replicas" / PRIMARY
    assert (directory / "epoch").read_text() == "1\n"
    backup.clock.advance(PRIMARY_SILENCE)
    backup.request("promote", server_id=PRIMARY)
    assert (directory / "epoch").read_text() == "2\n"
    peer = backup.connect()
    peer.request("serve_as", server_id=PRIMARY)
    assert "result" in peer.request("delete", job_id=f"{PRIMARY},2")
    backup.stop()

    again = Backup(tmp_path, clock=backup.clock)
    (entry,) = again.host.describe()
    assert (entry["state"], entry["epoch"], entry["jobs"]) == ("promoted", 2, 2)
    assert error_code(again.connect().request("replicate", primary=PRIMARY,
                                              epoch=1)) == "fenced"
    peer = again.connect()
    peer.request("serve_as", server_id=PRIMARY)
    ids = sorted(job["job_id"] for job in peer.request(
        "get", tube="t", count=10)["result"]["jobs"])
    assert ids == [f"{PRIMARY},1", f"{PRIMARY},3"]
    again.stop()


def test_a_replica_not_promoted_keeps_only_its_epoch(tmp_path):
    """After a restart an unpromoted replica is known (its epoch) but incomplete."""
    backup = Backup(tmp_path)
    backup.synced_stream(put(1)).lose()
    backup.stop()
    again = Backup(tmp_path, clock=backup.clock)
    (entry,) = again.host.describe()
    assert (entry["state"], entry["epoch"], entry["jobs"]) == ("disconnected", 1, 0)
    assert error_code(again.request("promote", server_id=PRIMARY)) == "replica_incomplete"
    again.stop()


def test_a_damaged_epoch_file_is_a_clear_error(tmp_path):
    """An unreadable epoch file names itself."""
    directory = tmp_path / "replicas" / PRIMARY
    os.makedirs(directory)
    (directory / "epoch").write_text("two\n")
    from allq.server.recovery import DataDirError
    with pytest.raises(DataDirError, match="epoch"):
        Backup(tmp_path)


def test_a_promotion_that_cannot_be_written_changes_nothing(tmp_path, monkeypatch):
    """A disk error while writing the promoted replica: unavailable, same epoch,
    and a later promote (once the disk works) succeeds."""
    from allq.server import replica_files, replica_host

    backup = Backup(tmp_path)
    backup.synced_stream(put(1)).lose()
    backup.clock.advance(PRIMARY_SILENCE)
    real = replica_files.write_snapshot

    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(replica_host, "write_snapshot", full)
    reply = backup.request("promote", server_id=PRIMARY)
    assert error_code(reply) == "unavailable"
    assert "No space left" in reply["error"]["message"]
    (entry,) = backup.host.describe()
    assert (entry["state"], entry["epoch"]) == ("disconnected", 1)
    monkeypatch.setattr(replica_host, "write_snapshot", real)
    assert backup.request("promote", server_id=PRIMARY)["result"]["epoch"] == 2
    backup.stop()


# -- the daemon's wiring -------------------------------------------------------------------


def test_make_service_makes_every_server_a_backup(tmp_path):
    """makeService installs the replica host: connection modes and the actions."""
    from twisted.internet.testing import MemoryReactorClock

    from allq.cli import generate_keys
    from allq.server.tap import makeService
    from tests.test_server_tap import parse

    generate_keys(str(tmp_path / "keys"))
    reactor = MemoryReactorClock()
    service = makeService(parse(["--keys", str(tmp_path / "keys"), "--server-id", "b1",
                                 "--data-dir", str(tmp_path / "data")]), reactor=reactor)
    service.startService()
    [(_, factory, _, _)] = reactor.tcpServers
    assert factory.choose_mode is not None
    reply = factory.dispatcher.handle({"id": 1, "action": "replicas"})
    assert reply == {"id": 1, "result": {"replicas": []}}
    service.stopService()


def test_make_service_names_an_unreadable_replica(tmp_path):
    """A damaged replicas/ entry stops the start-up with a message naming it."""
    from allq.cli import generate_keys
    from allq.server.tap import makeService
    from twisted.internet.testing import MemoryReactorClock
    from tests.test_server_tap import parse

    generate_keys(str(tmp_path / "keys"))
    directory = tmp_path / "data" / "replicas" / PRIMARY
    os.makedirs(directory)
    (directory / "epoch").write_text("?\n")
    with pytest.raises(SystemExit, match="cannot read the replicas.*epoch"):
        makeService(parse(["--keys", str(tmp_path / "keys"), "--data-dir",
                           str(tmp_path / "data")]), reactor=MemoryReactorClock())
