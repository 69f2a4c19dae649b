"""Replication end to end (docs/replication.md): real daemons, killed, cut off, restarted.

A primary (``--replica``) streams to its backup; one client knows both and fails
over (``--failover-after``). Producers and workers run through the client's REST
API while the primary is killed with SIGKILL and its data directory deleted; the
backup is killed and restarted; the link between them is cut by a proxy this test
controls. Every check is on what the client acknowledged: nothing acknowledged is
lost, and a job delivered twice was delivered again only after its ttl ran out.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import threading
import time

import pytest

from tests.servers import LOCALHOST, RunningServer, SERVER_LISTENING, wait_for_greeting
from tests.shell import free_ports
from tests.test_client_integration import Api, start_client, wait_for

pytestmark = pytest.mark.integration

#: Seconds a client waits before failing a silent server over to its backup.
FAILOVER_AFTER = "1"
#: A short ttl, so jobs reserved on the dead primary come back soon on the backup.
TTL = 3


# -- helpers ------------------------------------------------------------------------------


def start_server_on(daemons, keys, port: int, *args, name: str) -> RunningServer:
    """A server on a known port (a restarted primary must come back on its address;
    a primary names itself to its backup before it listens, so it needs a fixed port)."""
    if port == 0 and "--replica" in args:
        port, = free_ports(1)
    daemon = daemons.spawn(
        "allq-server",
        ["--keys", str(keys.directory), "--listen", f"tcp:{port}:interface={LOCALHOST}", *args],
        name=name)
    match = daemon.wait_for_log(SERVER_LISTENING, timeout=30)
    server = RunningServer(daemon, match["host"], int(match["port"]), match["server_id"])
    wait_for_greeting(server)
    return server


def address(server_or_port) -> str:
    port = server_or_port if isinstance(server_or_port, int) else server_or_port.port
    return f"{LOCALHOST}:{port}"


def server_stats(api: Api) -> list[dict]:
    status, reply = api.call("GET", "/stats")
    assert status == 200, reply
    return reply


def stats_of(api: Api, server_id: str) -> dict | None:
    """One server's entry of ``GET /stats`` (AllQueue's shape: ``server_name`` is
    ``"<id>,<host:port>"``)."""
    for server in server_stats(api):
        if server["server_name"].split(",")[0] == server_id:
            return server
    return None


def replication_of(api: Api, server_id: str) -> dict | None:
    return (stats_of(api, server_id) or {}).get("replication")


def replicas_on(api: Api, server_id: str) -> list[dict]:
    return (stats_of(api, server_id) or {}).get("replicas") or []


class Workload:
    """Producers and workers through one client, recording what the client acknowledged."""

    def __init__(self, api: Api, tube: str) -> None:
        self.api = api
        self.tube = tube
        self.acknowledged: list[str] = []
        self.deliveries: dict[str, list[int]] = {}  # job id -> expireds at each delivery
        self.done: set[str] = set()
        self.done_unsure: set[str] = set()
        self.put_errors = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def produce(self, count: int) -> None:
        for number in range(count):
            status, reply = self.api.call("POST", "/job", {"tube": self.tube, "body": f"job-{number}",
                                                         "ttl": TTL}, timeout=30)
            if status == 200:
                with self._lock:
                    self.acknowledged.append(reply["job_id"])
            else:
                self.put_errors += 1

    def work_once(self) -> bool:
        """Get one job and finish it; ``False`` when the tube gave nothing."""
        status, job = self.api.call("GET", "/job", tube=self.tube, timeout=30)
        if status != 200 or not job:
            return False
        with self._lock:
            self.deliveries.setdefault(job["id"], []).append(job["expireds"])
        status, _ = self.api.call("DELETE", "/job", job_id=job["id"], timeout=30)
        with self._lock:
            if status == 200:
                self.done.add(job["id"])
            else:
                # Its outcome is unknown (the server died holding the done): the job is
                # either finished or comes back after its ttl.
                self.done_unsure.add(job["id"])
        return True

    def work_until_stopped(self) -> None:
        while not self._stop.is_set():
            if not self.work_once():
                time.sleep(0.05)

    def start_workers(self, count: int) -> list[threading.Thread]:
        threads = [threading.Thread(target=self.work_until_stopped, daemon=True)
                   for _ in range(count)]
        for thread in threads:
            thread.start()
        return threads

    def stop_workers(self, threads) -> None:
        self._stop.set()
        for thread in threads:
            thread.join(60)

    def drain(self, quiet_for: float = TTL + 2.0, limit: float = 60.0) -> None:
        """Work until the tube stayed empty for ``quiet_for`` seconds (reserved jobs of a
        dead primary come back after their ttl)."""
        deadline = time.monotonic() + limit
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < quiet_for:
            assert time.monotonic() < deadline, "the tube never stayed empty"
            if self.work_once():
                quiet_since = time.monotonic()
            else:
                time.sleep(0.1)

    def check_nothing_acknowledged_was_lost(self) -> None:
        missing = [job_id for job_id in self.acknowledged
                   if job_id not in self.done and job_id not in self.done_unsure]
        assert not missing, f"{len(missing)} acknowledged jobs never done: {missing[:10]}"
        for job_id, expireds in self.deliveries.items():
            # Delivered again only because its ttl ran out (its reservation died with
            # the primary, or a worker's done did not reach a server in time).
            assert all(later > 0 for later in expireds[1:]), (job_id, expireds)


class CuttableProxy:
    """A TCP forwarder between a primary and its backup that the test can cut and heal.

    Threads and blocking sockets: the test drives daemons, not a reactor. While cut,
    connections are accepted and closed at once (the backup is unreachable).
    """

    def __init__(self, target_port: int) -> None:
        self._target = (LOCALHOST, target_port)
        self._listener = socket.create_server((LOCALHOST, 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._cut = threading.Event()
        self._closed = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                downstream, _ = self._listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            if self._cut.is_set():
                downstream.close()
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=2)
            except OSError:
                downstream.close()
                continue
            with self._lock:
                self._sockets |= {downstream, upstream}
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data or self._cut.is_set():
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._close(source, sink)

    def _close(self, *sockets: socket.socket) -> None:
        with self._lock:
            for s in sockets:
                self._sockets.discard(s)
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self) -> None:
        self._cut.set()
        with self._lock:
            sockets = list(self._sockets)
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._close(*sockets)

    def heal(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self._closed.set()
        self.cut()
        self._listener.close()
        self._thread.join(5)


@pytest.fixture
def proxy_factory():
    proxies = []

    def make(target_port: int) -> CuttableProxy:
        proxy = CuttableProxy(target_port)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


# -- the primary dies with its disk ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["strict", "available"])
def test_primary_killed_with_its_data_directory_loses_no_acknowledged_job(
        daemons, keys, tmp_path, mode):
    backup = start_server_on(daemons, keys, 0, "--data-dir", str(tmp_path / "b"), name="backup")
    primary_data = tmp_path / "a"
    primary = start_server_on(daemons, keys, 0, "--data-dir", str(primary_data),
                              "--replica", address(backup), "--replication", mode,
                              name="primary")
    api = start_client(daemons, keys, [primary, backup], "--failover-after", FAILOVER_AFTER)
    api.wait_until(lambda health: health["up"] == 2)
    work = Workload(api, "replicated")

    work.produce(150)
    workers = work.start_workers(2)
    producer = threading.Thread(target=work.produce, args=(150,), daemon=True)
    producer.start()
    wait_for(lambda: len(work.acknowledged), lambda n: n >= 200, what="puts before the kill",
             timeout=60)
    primary.daemon.process.send_signal(signal.SIGKILL)
    primary.daemon.process.wait(10)
    shutil.rmtree(primary_data)
    producer.join(120)
    assert not producer.is_alive()
    # The client took the primary's jobs over from the backup, under the primary's id.
    wait_for(lambda: [r for r in replicas_on(api, primary.server_id) + replicas_on(api, backup.server_id)
                      if r.get("primary") == primary.server_id],
             lambda found: found and found[0]["state"] == "promoted",
             what="the backup promoted", timeout=30)
    work.stop_workers(workers)
    work.drain()
    work.check_nothing_acknowledged_was_lost()
    # A put whose reply died with the primary was retried on its backup, within the
    # retry budget (it outlasts --failover-after): no put failed.
    assert work.put_errors == 0
    assert any(job_id.startswith(primary.server_id + ",") for job_id in work.done)


def test_backup_killed_strict_refuses_available_carries_on_then_resyncs(daemons, keys, tmp_path):
    backup_port, = free_ports(1)
    backup = start_server_on(daemons, keys, backup_port, "--data-dir", str(tmp_path / "b"),
                             name="backup")
    strict = start_server_on(daemons, keys, 0, "--data-dir", str(tmp_path / "s"),
                             "--replica", address(backup), "--replication", "strict",
                             "--replica-timeout", "1", name="strict")
    available = start_server_on(daemons, keys, 0, "--data-dir", str(tmp_path / "v"),
                                "--replica", address(backup), "--replication", "available",
                                "--replica-timeout", "1", name="available")
    to_strict = start_client(daemons, keys, [strict], "--failover-after", "off")
    to_available = start_client(daemons, keys, [available], "--failover-after", "off")
    for api in (to_strict, to_available):
        api.wait_until(lambda health: health["up"] == 1)
        api.put("t", "before")

    backup.daemon.process.send_signal(signal.SIGKILL)
    backup.daemon.process.wait(10)

    def put(api):
        return api.call("POST", "/job", {"tube": "t", "body": "while the backup is gone"})

    status, reply = wait_for(lambda: put(to_strict), lambda answer: answer[0] == 503,
                             what="strict refusing puts", timeout=20)
    assert "replica_unavailable" in json.dumps(reply), reply
    status, reply = put(to_available)
    assert status == 200, reply
    assert replication_of(to_available, available.server_id)["state"] == "alone"
    assert replication_of(to_available, available.server_id)["alone_changes"] >= 1
    # Reads go on in strict mode.
    status, job = to_strict.call("GET", "/job", tube="t")
    assert status == 200 and job["body"] == "before", job

    # The backup returns (empty: its replicas were in memory, or on its disk) and both re-sync.
    backup = start_server_on(daemons, keys, backup_port, "--data-dir", str(tmp_path / "b"),
                             name="backup-again")
    for api, server in ((to_strict, strict), (to_available, available)):
        wait_for(lambda: replication_of(api, server.server_id),
                 lambda state: state and state["state"] == "streaming",
                 what=f"{server.server_id} streaming again", timeout=30)
    status, reply = put(to_strict)
    assert status == 200, reply
    checker = start_client(daemons, keys, [backup], "--failover-after", "off")
    checker.wait_until(lambda health: health["up"] == 1)
    held = {r["primary"]: r for r in replicas_on(checker, backup.server_id)}
    assert held[available.server_id]["jobs"] == 2  # "before" and the one put alone
    assert held[available.server_id]["state"] == "synced"
    assert held[strict.server_id]["state"] == "synced"


def test_primary_returning_after_failover_is_fenced_and_rejoins_fresh(daemons, keys, tmp_path):
    primary_port, = free_ports(1)
    backup = start_server_on(daemons, keys, 0, "--data-dir", str(tmp_path / "b"), name="backup")
    primary_args = ["--data-dir", str(tmp_path / "a"), "--replica", address(backup)]
    primary = start_server_on(daemons, keys, primary_port, *primary_args, name="primary")
    api = start_client(daemons, keys, [primary, backup], "--failover-after", FAILOVER_AFTER)
    api.wait_until(lambda health: health["up"] == 2)
    # Jobs on the primary only: the backup drains, so puts go there.
    status, _ = api.call("PUT", "/drain", server_id=backup.server_id)
    ids = [api.put("t", f"job-{n}") for n in range(5)]
    assert all(job_id.startswith(primary.server_id + ",") for job_id in ids)

    primary.daemon.process.send_signal(signal.SIGKILL)
    primary.daemon.process.wait(10)
    status, job = wait_for(lambda: api.call("GET", "/job", tube="t"),
                           lambda answer: answer[0] == 200 and answer[1],
                           what="a job served by the backup", timeout=30)
    assert job["id"] in ids

    # The old primary comes back with its data: the backup fences it; it sets the data
    # aside and exits 3; started again it is a fresh server under a new id.
    returning = daemons.spawn(
        "allq-server", ["--keys", str(keys.directory),
                        "--listen", f"tcp:{primary_port}:interface={LOCALHOST}", *primary_args],
        name="primary-returns")
    assert returning.wait(30) == 3, returning.log()
    assert "fenced" in returning.log()
    assert any(p.name.startswith("fenced-") for p in (tmp_path / "a").iterdir())
    fresh = start_server_on(daemons, keys, primary_port, *primary_args, name="primary-fresh")
    assert fresh.server_id == f"{primary.server_id}-e2"
    # Its old jobs are served once, by the backup, never by the returned primary.
    seen = [job["id"]]
    api.call("DELETE", "/job", job_id=job["id"])
    while True:
        status, job = api.call("GET", "/job", tube="t")
        assert status == 200, job
        if not job:
            break
        seen.append(job["id"])
        api.call("DELETE", "/job", job_id=job["id"])
    assert sorted(seen) == sorted(ids)


def test_two_clients_failing_over_at_once_agree_on_one_epoch(daemons, keys, tmp_path):
    backup = start_server_on(daemons, keys, 0, name="backup")
    primary = start_server_on(daemons, keys, 0, "--data-dir", str(tmp_path / "a"),
                              "--replica", address(backup), name="primary")
    clients = [start_client(daemons, keys, [primary, backup], "--failover-after", FAILOVER_AFTER)
               for _ in range(2)]
    for api in clients:
        api.wait_until(lambda health: health["up"] == 2)
    status, _ = clients[0].call("PUT", "/drain", server_id=backup.server_id)
    ids = [clients[0].put("t", f"job-{n}") for n in range(4)]
    primary.daemon.process.send_signal(signal.SIGKILL)
    primary.daemon.process.wait(10)
    # Each client fails over on its own, and gets and finishes a job of the dead
    # primary through the backup, by its original id.
    finished = []
    for api in clients:
        status, job = wait_for(lambda: api.call("GET", "/job", tube="t"),
                               lambda answer: answer[0] == 200 and answer[1],
                               what="a job of the dead primary", timeout=30)
        assert job["id"] in ids
        status, reply = api.call("DELETE", "/job", job_id=job["id"])
        assert status == 200, reply
        finished.append(job["id"])
    assert len(set(finished)) == 2
    replicas = replicas_on(clients[0], backup.server_id)
    (held,) = [r for r in replicas if r["primary"] == primary.server_id]
    assert held["state"] == "promoted" and held["epoch"] == 2, held


@pytest.mark.parametrize("mode", ["strict", "available"])
def test_network_cut_between_primary_and_backup(daemons, keys, tmp_path, proxy_factory, mode):
    backup = start_server_on(daemons, keys, 0, name="backup")
    proxy = proxy_factory(backup.port)
    primary = start_server_on(daemons, keys, 0, "--data-dir", str(tmp_path / "a"),
                              "--replica", address(proxy.port), "--replication", mode,
                              "--replica-timeout", "1", name="primary")
    api = start_client(daemons, keys, [primary], "--failover-after", "off")
    api.wait_until(lambda health: health["up"] == 1)
    api.put("t", "before the cut")

    proxy.cut()
    answers = [api.call("POST", "/job", {"tube": "t", "body": f"during the cut {n}"})
               for n in range(3)]
    if mode == "strict":
        wait_for(lambda: api.call("POST", "/job", {"tube": "t", "body": "probe"}),
                 lambda answer: answer[0] == 503, what="strict refusing during the cut",
                 timeout=20)
    else:
        assert all(status == 200 for status, _ in answers), answers
    proxy.heal()
    wait_for(lambda: replication_of(api, primary.server_id),
             lambda state: state and state["state"] == "streaming",
             what="streaming after the cut healed", timeout=30)
    status, reply = api.call("POST", "/job", {"tube": "t", "body": "after"})
    assert status == 200, reply
    # The backup holds exactly what the primary holds.
    checker = start_client(daemons, keys, [backup], "--failover-after", "off")
    checker.wait_until(lambda health: health["up"] == 1)
    (held,) = [r for r in replicas_on(checker, backup.server_id)
               if r["primary"] == primary.server_id]
    mine = stats_of(api, primary.server_id)
    assert held["jobs"] == sum(t["ready"] + t["reserved"] + t["delayed"] + t["buried"]
                               for t in mine["stats"])


def test_two_strict_servers_backing_each_other_up_both_start(daemons, keys, tmp_path):
    """A backs B up while B backs A up, both strict: each answers the other's stream
    while it waits for its own backup, so neither waits for ever."""
    port_a, port_b = free_ports(2)

    def spawn(name, port, peer):
        return daemons.spawn("allq-server", [
            "--keys", str(keys.directory), "--listen", f"tcp:{port}:interface={LOCALHOST}",
            "--data-dir", str(tmp_path / name), "--replica", address(peer),
            "--replication", "strict"], name=name)

    servers = []
    for daemon, port in ((spawn("a", port_a, port_b), port_a),
                         (spawn("b", port_b, port_a), port_b)):
        match = daemon.wait_for_log(SERVER_LISTENING, timeout=30)
        server = RunningServer(daemon, match["host"], port, match["server_id"])
        wait_for_greeting(server)
        servers.append(server)
    api = start_client(daemons, keys, servers, "--failover-after", "off")
    api.wait_until(lambda health: health["up"] == 2)
    for server in servers:
        wait_for(lambda: replication_of(api, server.server_id),
                 lambda state: state and state["state"] == "streaming",
                 what=f"{server.server_id} streaming", timeout=30)
    ids = [api.put("t", f"job-{n}") for n in range(6)]
    assert {job_id.split(",")[0] for job_id in ids} == {s.server_id for s in servers}
    for server, other in (servers, servers[::-1]):
        (held,) = [r for r in replicas_on(api, server.server_id)
                   if r["primary"] == other.server_id]
        assert held["state"] == "synced" and held["jobs"] == 3, held
