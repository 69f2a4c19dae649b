"""Integration tests of persistence: real ``twistd allq-server`` daemons with
``--data-dir``, killed (SIGKILL) or stopped (SIGTERM) and started again on the
same directory and port, driven by the real client on the real reactor.

A restart on the same port keeps the derived server id, so job ids handed out
before the restart stay valid after it.
"""

import os
import re
import signal
import time

import pytest
import pytest_twisted
from twisted.internet.defer import DeferredList

from allq.peer.connection import ServerConnection, connect
from allq.errors import ConnectionLost, NotFound
from allq.wire.keys import ClientKeys

from tests.servers import LOCALHOST, Daemons, KeySet, RunningServer

pytestmark = pytest.mark.integration
TIMEOUT = 60.0
PUTS = 10_000
KILL_AFTER = 2_000  # acknowledged puts before the SIGKILL
WINDOW = 500  # puts in flight at once
RESTORED = r"restored (?P<total>\d+) jobs \((?P<ready>\d+) ready, (?P<delayed>\d+) delayed, " \
           r"(?P<buried>\d+) buried, (?P<waiting>\d+) waiting\) from \S+ in \S+ s; " \
           r"skipped (?P<skipped>\d+) corrupt records"


def reactor():
    """The global reactor, imported late: pytest-twisted installs it at start-up."""
    from twisted.internet import reactor

    return reactor


def start(daemons: Daemons, keys: KeySet, data, fsync: str, port: int = 0) -> RunningServer:
    """A server on ``data``; on ``port`` when restarting one (same port, same id)."""
    return daemons.start_server(
        keys, ["--data-dir", str(data), "--fsync", fsync,
               "--listen", f"tcp:{port}:interface={LOCALHOST}"])


def restored_line(server: RunningServer) -> dict:
    """The numbers of the server's "restored ..." log line."""
    match = re.search(RESTORED, server.daemon.log())
    assert match is not None, server.daemon.log()
    return {k: int(v) for k, v in match.groupdict().items()}


async def open_connection(server: RunningServer, client_keys: ClientKeys) -> ServerConnection:
    d = connect(reactor(), server.endpoint, client_keys, request_timeout=TIMEOUT)
    return await d.addTimeout(TIMEOUT, reactor())


async def close(connection: ServerConnection) -> None:
    connection.close()
    await connection.lost.addTimeout(TIMEOUT, reactor())


async def take_all(connection: ServerConnection, tube: str) -> list[dict]:
    """Every ready job of ``tube``, taken with delete (a thousand per request)."""
    jobs = []
    while True:
        batch = (await connection.request("get", {"tube": tube, "count": 1000,
                                                  "delete": True}))["jobs"]
        if not batch:
            return jobs
        jobs.extend(batch)


async def put_until_killed(server: RunningServer, keys: KeySet) -> tuple[dict, float, dict]:
    """Pipeline PUTS puts on one connection, WINDOW at a time; SIGKILL the server once
    KILL_AFTER are acknowledged, and send no more.

    The window keeps the kill mid-way however fast the server is: with all PUTS
    written at once, a fast server could answer every one before the signal lands.

    :returns: ``{body: (job_id, acknowledged at)}``, the kill time (monotonic), and
        ``{"failed": n}`` for the puts that got no reply (sent or not).
    """
    connection = await open_connection(server, keys.client)
    acked: dict[str, tuple[str, float]] = {}
    killed = []
    numbers = iter(range(PUTS))
    requests = []

    def acknowledged(result, body):
        acked[body] = (result["job_id"], time.monotonic())
        if len(acked) >= KILL_AFTER and not killed:
            killed.append(time.monotonic())
            server.daemon.process.send_signal(signal.SIGKILL)
        return result

    def send_next(_=None) -> None:
        number = None if killed else next(numbers, None)
        if number is not None:
            d = connection.request("put", {"tube": "t", "body": str(number)})
            requests.append(d.addCallback(acknowledged, str(number)).addCallback(send_next))

    for _ in range(WINDOW):
        send_next()
    await connection.lost.addTimeout(TIMEOUT, reactor())
    outcomes = await DeferredList(requests, consumeErrors=True)
    failures = [r for ok, r in outcomes if not ok]
    assert all(f.check(ConnectionLost) for f in failures), failures[:1]
    assert server.daemon.process.wait(TIMEOUT) == -signal.SIGKILL
    return acked, killed[0], {"failed": PUTS - len(acked)}


async def check_restart_after_kill(daemons, keys, server, data, fsync, acked):
    """Restart on the same directory and port; every acknowledged job is there, with
    its id, exactly once; nothing that was never sent. Returns the jobs missing."""
    again = start(daemons, keys, data, fsync, port=server.port)
    assert again.server_id == server.server_id
    connection = await open_connection(again, keys.client)
    try:
        stats = await connection.request("stats")
        jobs = await take_all(connection, "t")
    finally:
        await close(connection)
    bodies = [job["body"] for job in jobs]
    assert len(bodies) == len(set(bodies)) == stats["global"]["jobs"]  # no job twice
    assert set(bodies) <= {str(i) for i in range(PUTS)}
    found = {job["body"]: job["job_id"] for job in jobs}
    for body, (job_id, _) in acked.items():
        if body in found:
            assert found[body] == job_id
    assert restored_line(again)["total"] == len(jobs)
    return again, {body for body in acked if body not in found}


@pytest_twisted.ensureDeferred
async def test_sigkill_during_puts_with_fsync_always_loses_no_acknowledged_job(
        daemons, keys, tmp_path):
    """The issue's test: kill -9 during 10,000 pipelined puts with --fsync always;
    after a restart every acknowledged job is present exactly once, with its id."""
    data = tmp_path / "data"
    server = start(daemons, keys, data, "always")
    acked, _, outcome = await put_until_killed(server, keys)
    assert KILL_AFTER <= len(acked) < PUTS and outcome["failed"] > 0  # killed mid-way
    again, missing = await check_restart_after_kill(daemons, keys, server, data, "always", acked)
    assert missing == set()
    assert "Traceback" not in again.daemon.log()


@pytest_twisted.ensureDeferred
async def test_sigkill_with_interval_fsync_loses_at_most_the_last_interval(
        daemons, keys, tmp_path):
    """With --fsync interval:200 an acknowledged job may only be lost if it was
    acknowledged in the last ~200 ms before the crash.

    A SIGKILL cannot lose what already reached the OS, and the journal is written
    to the OS before each reply leaves, so in fact nothing is lost here; the 200 ms
    window (plus scheduling slack) is what a power loss could cost, since only the
    fsync, every 200 ms, makes the OS's copy durable.
    """
    data = tmp_path / "data"
    server = start(daemons, keys, data, "interval:200")
    acked, killed_at, _ = await put_until_killed(server, keys)
    again, missing = await check_restart_after_kill(
        daemons, keys, server, data, "interval:200", acked)
    slack = 1.0
    assert all(acked[body][1] > killed_at - 0.2 - slack for body in missing)
    assert missing == set()


@pytest_twisted.ensureDeferred
async def test_a_corrupt_journal_tail_is_skipped_not_fatal(daemons, keys, tmp_path):
    """Garbage appended to the journal (a torn write): the server starts, reports how
    many records it skipped, and keeps every job before them."""
    data = tmp_path / "data"
    server = start(daemons, keys, data, "always")
    connection = await open_connection(server, keys.client)
    ids = [(await connection.request("put", {"tube": "t", "body": f"{i}"}))["job_id"]
           for i in range(5)]
    await close(connection)
    server.daemon.process.send_signal(signal.SIGKILL)
    server.daemon.process.wait(TIMEOUT)
    (journal,) = [n for n in os.listdir(data) if n.startswith("journal.")]
    with open(data / journal, "ab") as f:
        f.write(b"deadbeef [\"j\",1,\"t\"]\nhalf a rec")
    again = start(daemons, keys, data, "always", port=server.port)
    assert restored_line(again) == {"total": 5, "ready": 5, "delayed": 0, "buried": 0,
                                    "waiting": 0, "skipped": 2}
    assert "data directory damaged" in again.daemon.log()
    assert any(".corrupt-" in n for n in os.listdir(data))
    connection = await open_connection(again, keys.client)
    try:
        assert [j["job_id"] for j in await take_all(connection, "t")] == ids
    finally:
        await close(connection)


@pytest_twisted.ensureDeferred
async def test_sigterm_restart_keeps_every_state_and_setting(daemons, keys, tmp_path):
    """Cases 98-103, FIXed, through the wire: after SIGTERM and a restart, ready jobs
    keep their ids and priorities, delayed, buried and parent jobs are there, a
    reserved job is ready again, throttles (even of an empty tube) and pauses hold,
    the parent's child count holds, and a job done before the restart stays done."""
    data = tmp_path / "data"
    server = start(daemons, keys, data, "interval:50")
    c = await open_connection(server, keys.client)

    async def put(tube, body, **params):
        return (await c.request("put", {"tube": tube, "body": body, **params}))["job_id"]

    a = await put("t", "A", priority=2)
    b = await put("t", "B", priority=8)
    await put("t", "D", delay=3600)
    x = await put("bury", "X")
    await c.request("get", {"tube": "bury"})
    await c.request("bury", {"job_id": x})
    done = await put("fin", "done")
    await c.request("get", {"tube": "fin"})
    await c.request("done", {"job_id": done})
    reserved = await put("res", "R")
    await c.request("get", {"tube": "res"})
    await c.request("throttle", {"tube": "empty", "tps": 9})
    await c.request("pause", {"tube": "paused"})
    await put("paused", "P")
    parent = (await c.request("put_parent", {"tube": "p", "body": "parent",
                                             "limit": 2}))["job_id"]
    first_child = await put("kids", "child1", parent_id=parent)
    await c.request("get", {"tube": "kids"})
    await c.request("done", {"job_id": first_child})
    await close(c)
    assert server.daemon.stop() == -signal.SIGTERM

    again = start(daemons, keys, data, "interval:50", port=server.port)
    assert restored_line(again) == {"total": 7, "ready": 4, "delayed": 1, "buried": 1,
                                    "waiting": 1, "skipped": 0}
    c = await open_connection(again, keys.client)
    try:
        tubes = {t["tube"]: t for t in (await c.request("stats"))["tubes"]}
        assert (tubes["t"]["ready"], tubes["t"]["delayed"]) == (2, 1)
        assert tubes["bury"]["buried"] == 1
        assert tubes["res"]["ready"] == 1 and tubes["res"]["reserved"] == 0
        assert tubes["empty"]["throttle_size"] == 9
        assert tubes["paused"]["paused"] and tubes["paused"]["ready"] == 1
        assert tubes["p"]["parents"] == 1
        assert "fin" not in tubes or tubes["fin"]["ready"] == 0
        got = (await c.request("get", {"tube": "t", "count": 2}))["jobs"]
        assert [(j["job_id"], j["priority"]) for j in got] == [(a, 2), (b, 8)]
        assert (await c.request("get", {"tube": "res"}))["jobs"][0]["job_id"] == reserved
        assert (await c.request("peek", {"tube": "bury", "buried": True}))["job"]["job_id"] == x
        with pytest.raises(NotFound):
            await c.request("delete", {"job_id": done})
        # the parent counted one finished child of two: one more starts it
        second_child = await c.request("put", {"tube": "kids", "body": "child2",
                                               "parent_id": parent})
        (kid,) = (await c.request("get", {"tube": "kids"}))["jobs"]
        assert kid["job_id"] == second_child["job_id"]
        await c.request("done", {"job_id": kid["job_id"]})
        (started,) = (await c.request("get", {"tube": "p"}))["jobs"]
        assert started["job_id"] == parent
    finally:
        await close(c)
    log = again.daemon.log()
    assert "Traceback" not in log


@pytest_twisted.ensureDeferred
async def test_compaction_on_the_real_reactor_installs_the_snapshot_from_a_thread(tmp_path):
    """On the real reactor, a compaction writes its chunks on reactor turns while
    puts go on, installs the snapshot from the reactor's thread pool, and a restart
    reads back exactly what is live."""
    from twisted.internet.task import deferLater
    from twisted.internet.threads import deferToThreadPool

    from allq.core.queue import Queue
    from allq.server.journal import FsyncPolicy, Journal
    from allq.server.recovery import recover, restore_queue

    r = reactor()
    data = str(tmp_path / "data")
    recovered = recover(data, r.seconds())
    journal = Journal(data, FsyncPolicy.parse("interval:50"), r, lock_fd=recovered.lock_fd,
                      snapshot_chunk=100,
                      run_blocking=lambda f: deferToThreadPool(r, r.getThreadPool(), f))
    queue = Queue(first_id=1, on_change=journal.on_change)
    journal.attach(queue)
    journal.startService()
    for i in range(3000):
        queue.put("t", f"{i}", now=r.seconds())
    done = journal.compact()
    puts_during = 0
    while not done.called:
        queue.put("t", "during", now=r.seconds())
        puts_during += 1
        journal.commit()
        await deferLater(r, 0, lambda: None)
    assert await done is True
    assert puts_during > 10  # the snapshot took many turns, puts went on meanwhile
    assert sorted(os.listdir(data)) == ["journal.2.log", "lock", "snapshot.2"]
    await journal.stopService()
    journal.close()
    again = recover(data, r.seconds())
    restored = Queue()
    assert restore_queue(restored, again, r.seconds()).ready == 3000 + puts_during
    os.close(again.lock_fd)


@pytest_twisted.ensureDeferred
async def test_a_put_retried_after_sigkill_and_restart_is_not_stored_twice(
        daemons, keys, tmp_path):
    """The idempotency key of an acknowledged put is journaled with the job, so the
    client's retry (same key) after the server was killed and restarted gets the
    first job's id back and stores nothing new."""
    data = tmp_path / "data"
    server = start(daemons, keys, data, "always")
    connection = await open_connection(server, keys.client)
    params = {"tube": "t", "body": "once", "idempotency_key": "client.42"}
    first = await connection.request("put", params)
    server.daemon.process.send_signal(signal.SIGKILL)
    await connection.lost.addTimeout(TIMEOUT, reactor())
    assert server.daemon.process.wait(TIMEOUT) == -signal.SIGKILL
    again = start(daemons, keys, data, "always", port=server.port)
    connection = await open_connection(again, keys.client)
    try:
        retried = await connection.request("put", params)
        jobs = await take_all(connection, "t")
    finally:
        await close(connection)
    assert retried["job_id"] == first["job_id"]
    assert [job["body"] for job in jobs] == ["once"]
