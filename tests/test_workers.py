"""allq.client.workers: the shared port, admin relays, metric reports and the
worker pool, with fake processes and a Clock (real processes: test_client_integration)."""

import json
import os
import socket

import pytest
from twisted.internet.defer import Deferred, TimeoutError as DeferredTimeout, succeed
from twisted.internet.error import CannotListenError, ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from allq.client import workers
from allq.client.metrics import ClientMetrics
from allq.client.workers import (
    AdminRelay,
    ControlChannel,
    ReusePortEndpoint,
    WorkerMetrics,
    WorkerPool,
    apply_counts,
    parse_tcp,
    reuse_port_socket,
    worker_command,
)

# -- the shared port ---------------------------------------------------------------


@pytest.mark.parametrize("description, expected", [
    ("tcp:8090", ("0.0.0.0", 8090, 50)),
    ("tcp:0:interface=127.0.0.1:backlog=1024", ("127.0.0.1", 0, 1024)),
    ("tcp:8090:backlog=7:interface=10.0.0.1", ("10.0.0.1", 8090, 7)),
    ("tcp6:8090:interface=\\:\\:1", ("::1", 8090, 50)),
    ("tcp6:8090", ("::", 8090, 50)),
])
def test_parse_tcp(description, expected):
    assert parse_tcp(description) == expected


@pytest.mark.parametrize("description", [
    "unix:/tmp/x.sock", "ssl:443", "tcp", "tcp:", "tcp:http", "tcp:70000",
    "tcp:80:reuse=yes", "tcp:80:backlog=0", "tcp:80:backlog=x", "tcp:80:interface",
])
def test_parse_tcp_refuses_what_cannot_be_shared(description):
    with pytest.raises(ValueError):
        parse_tcp(description)


def test_two_processes_worth_of_sockets_share_a_port():
    first = reuse_port_socket("127.0.0.1", 0, 5)
    try:
        port = first.getsockname()[1]
        second = reuse_port_socket("127.0.0.1", port, 5)
        assert second.getsockname()[1] == port
        second.close()
    finally:
        first.close()


class AdoptingReactor:
    """Records adoptStreamPort calls (the fd is duplicated, as the real reactor does)."""

    def __init__(self):
        self.adopted = []

    def adoptStreamPort(self, fd, family, factory):
        sock = socket.socket(family, socket.SOCK_STREAM, fileno=os.dup(fd))
        self.adopted.append((sock, factory))
        return sock


def test_endpoint_listens_on_the_port_and_reports_bind_errors():
    reactor = AdoptingReactor()
    port = ReusePortEndpoint(reactor, "127.0.0.1", 0, 5).listen("factory").result
    try:
        assert reactor.adopted == [(port, "factory")]
        number = port.getsockname()[1]
        taken = socket.socket()  # not SO_REUSEPORT: nobody may share it
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        try:
            d = ReusePortEndpoint(reactor, "127.0.0.1", taken.getsockname()[1], 5).listen("f")
            failures = []
            d.addErrback(failures.append)
            assert failures and failures[0].check(CannotListenError)
        finally:
            taken.close()
        assert number > 0
    finally:
        port.close()


# -- admin changes -------------------------------------------------------------------


class FakeFederation:
    """Records admin calls and reports them to observers, as the real Federation
    does (tests/test_federation.py checks that side)."""

    def __init__(self):
        self.calls = []
        self.observers = []

    def observe(self, observer):
        self.observers.append(observer)

    def _changed(self, call, args):
        for observer in self.observers:
            observer.admin_changed(call, args)

    def add_server(self, address):
        self.calls.append(("add_server", address))
        self._changed("add_server", [address])

    def update_servers(self, addresses):
        self.calls.append(("update_servers", addresses))
        self._changed("update_servers", [list(addresses)])

    def drain_server(self, server, draining=True):
        self.calls.append(("drain_server", server, draining))
        self._changed("drain_server", [server, draining])
        return succeed(True)


def test_admin_changes_are_relayed():
    federation, relayed = FakeFederation(), []
    AdminRelay(federation, relayed.append)
    federation.add_server("h:1")
    federation.update_servers(["h:1", "h:2"])
    assert federation.drain_server("h:1").result is True
    assert federation.calls == [("add_server", "h:1"), ("update_servers", ["h:1", "h:2"]),
                                ("drain_server", "h:1", True)]
    assert [m["call"] for m in relayed] == ["add_server", "update_servers", "drain_server"]
    assert relayed[2] == {"op": "admin", "call": "drain_server", "args": ["h:1", True]}


def test_relayed_changes_are_applied_without_relaying_again():
    federation, relayed = FakeFederation(), []
    admin = AdminRelay(federation, relayed.append)
    for message in [{"op": "admin", "call": "add_server", "args": ["h:3"]},
                    {"op": "admin", "call": "update_servers", "args": [["h:3"]]},
                    {"op": "admin", "call": "drain_server", "args": ["h:3", False]},
                    {"op": "admin", "call": "format_disk", "args": []},
                    {"op": "admin", "call": "add_server", "args": "h:4"},
                    {"op": "admin", "call": "add_server", "args": ["a", "b"]}]:
        admin.apply(message)
    assert federation.calls == [("add_server", "h:3"), ("update_servers", ["h:3"]),
                                ("drain_server", "h:3", False)]
    assert relayed == []


# -- metrics ---------------------------------------------------------------------------


@pytest.fixture
def clock():
    return Clock()


def test_worker_metrics_report_totals_every_interval(clock):
    sent = []
    metrics = WorkerMetrics(sent.append, clock)
    metrics.startService()
    clock.advance(workers.REPORT_INTERVAL)
    assert sent == []  # nothing counted, nothing sent
    metrics.count_jobs("put", "t")
    metrics.count_jobs("put", "t", 2)
    metrics.count_jobs("get", "t", 0)
    metrics.count_error("put", "unavailable")
    metrics.count_retry("get", None)
    metrics.observe_request("GET", "/job", "2xx", 0.0015)
    clock.advance(workers.REPORT_INTERVAL)
    [report] = sent
    assert report["jobs"] == [["put", "t", 3]]
    assert report["errors"] == [["put", "unavailable", 1]]
    assert report["retries"] == [["get", "", 1]]
    assert report["latencies"] == [["GET", "/job", "2xx", [0.0015]]]
    metrics.count_jobs("delete", "t")
    metrics.stopService()  # sends what is left, then nothing more
    assert sent[-1]["jobs"] == [["delete", "t", 1]]
    clock.advance(10)
    assert len(sent) == 2 and clock.getDelayedCalls() == []


def test_reports_add_up_in_the_primary(clock):
    primary = ClientMetrics(clock, process=False)
    sent = []
    worker = WorkerMetrics(sent.append, clock)
    worker.count_jobs("put", "t", 5)
    worker.count_error("put", "timeout")
    worker.observe_request("POST", "/job", "2xx", 0.002)
    worker.report()
    primary.count_jobs("put", "t", 2)
    apply_counts(primary, json.loads(json.dumps(sent[0])))
    text = primary.exposition()[0].decode()
    assert 'allq_client_jobs_total{action="put",tube="t"} 7.0' in text
    assert 'allq_client_operation_errors_total{error="timeout",operation="put"} 1.0' in text
    assert 'allq_client_request_duration_seconds_count{method="POST",route="/job",status="2xx"}' \
        ' 1.0' in text


def test_a_malformed_report_changes_nothing(clock):
    primary = ClientMetrics(clock, process=False)
    for message in [{}, {"jobs": [["put", "t", "many"]], "errors": [], "retries": [],
                         "latencies": []},
                    {"jobs": [["put", "t", 1]], "errors": [], "retries": [],
                     "latencies": [["GET", "/job", "2xx", ["slow"]]]}]:
        with pytest.raises(ValueError):
            apply_counts(primary, message)
    assert "allq_client_jobs_total{" not in primary.exposition()[0].decode()


def test_worker_metrics_ask_the_primary_for_the_exposition(clock):
    sent = []
    metrics = WorkerMetrics(sent.append, clock)
    d = metrics.exposition("text/plain")
    [question] = sent
    metrics.answered({"op": "metrics", "id": question["id"], "body": "x 1\n",
                      "content_type": "text/plain"})
    assert d.result == (b"x 1\n", "text/plain")
    unanswered = metrics.exposition(None)
    clock.advance(workers.METRICS_TIMEOUT)
    failures = []
    unanswered.addErrback(failures.append)
    assert failures and failures[0].check(DeferredTimeout)
    metrics.answered({"op": "metrics", "id": 999})  # an answer nobody waits for: ignored


# -- the control channel -----------------------------------------------------------------


class Transport:
    def __init__(self):
        self.written = b""

    def write(self, data):
        self.written += data


def test_control_channel_reads_lines_and_skips_garbage():
    got, closed = [], []
    channel = ControlChannel(lambda: closed.append(True))
    channel.handle("admin", got.append)
    channel.handle("metrics", got.append)
    channel.makeConnection(Transport())
    channel.dataReceived(b'{"op": "admin"}\n{"op"')
    channel.dataReceived(b': "metrics"}\nnot json\n[1, 2]\n{"op": "unknown"}\n')
    assert got == [{"op": "admin"}, {"op": "metrics"}]
    channel.send({"op": "counts"})
    assert channel.transport.written == b'{"op":"counts"}\n'
    channel.connectionLost(None)
    assert closed == [True]


# -- the pool ------------------------------------------------------------------------------


class FakeProcess:
    def __init__(self, pid):
        self.pid = pid
        self.signals = []
        self.stdin = b""

    def signalProcess(self, name):
        self.signals.append(name)

    def writeToChild(self, fd, data):
        assert fd == 0
        self.stdin += data


class ProcessReactor(Clock):
    def __init__(self):
        super().__init__()
        self.spawned = []

    def spawnProcess(self, protocol, executable, args, env=None, childFDs=None):
        assert childFDs == {0: "w", 1: "r", 2: "r"}
        process = FakeProcess(1000 + len(self.spawned))
        protocol.makeConnection(process)
        self.spawned.append((protocol, args))
        return process


class PrimaryMetrics:
    def __init__(self):
        self.jobs = []

    def count_jobs(self, action, tube, count=1):
        self.jobs.append((action, tube, count))

    def exposition(self, accept=None):
        return b"allq 1\n", "text/plain"


@pytest.fixture
def pool():
    reactor = ProcessReactor()
    federation, relayed = FakeFederation(), []
    admin = AdminRelay(federation, relayed.append)
    pool = WorkerPool(reactor, 2, lambda i, port: worker_command(i, ["--servers", "h:1"]),
                      PrimaryMetrics(), replay=lambda: [{"op": "admin", "call": "x"}])
    pool.admin = admin
    pool.startService()
    assert reactor.spawned == []  # not before the primary listens
    pool.listening(8090)
    pool.reactor, pool.federation = reactor, federation
    return pool


def lines(process):
    return [json.loads(line) for line in process.stdin.splitlines()]


def test_workers_start_once_running_and_listening_whichever_comes_last():
    reactor = ProcessReactor()
    ports = []
    pool = WorkerPool(reactor, 1, lambda i, port: ports.append(port) or worker_command(i, []),
                      PrimaryMetrics())
    pool.listening(8090)  # twistd binds in the privileged start, before startService
    assert reactor.spawned == []
    pool.startService()
    assert len(reactor.spawned) == 1
    pool.listening(8090)  # never twice
    assert len(reactor.spawned) == 1
    assert ports == [8090]  # the worker serves the port the primary bound


def test_workers_start_with_the_command_and_are_told_the_replay(pool):
    (first, args), (second, _) = pool.reactor.spawned
    assert args[1:5] == ["-m", "allq.client.worker", "--worker-index", "1"]
    assert args[-2:] == ["--servers", "h:1"]
    assert lines(first.transport) == [{"op": "admin", "call": "x"}]
    assert sorted(pool.pids) == [1000, 1001]


def test_the_pool_relays_applies_and_answers(pool):
    (first, _), (second, _) = pool.reactor.spawned
    first.childDataReceived(1, b'{"op": "admin", "call": "add_server", "args": ["h:9"]}\n')
    assert pool.federation.calls == [("add_server", "h:9")]
    assert lines(second.transport)[-1]["args"] == ["h:9"]  # the other worker is told
    assert len(lines(first.transport)) == 1  # not the one it came from
    first.childDataReceived(1, json.dumps(
        {"op": "counts", "jobs": [["put", "t", 4]], "errors": [], "retries": [],
         "latencies": []}).encode() + b"\n")
    assert pool._metrics.jobs == [("put", "t", 4)]
    second.childDataReceived(1, b'{"op": "metrics", "id": 7, "accept": ""}\n')
    assert lines(second.transport)[-1] == {"op": "metrics", "id": 7, "body": "allq 1\n",
                                           "content_type": "text/plain"}
    first.childDataReceived(1, b'{"op": "counts", "jobs": 1}\nrubbish\n')  # logged, ignored
    first.childDataReceived(2, b"a log line\n")


def test_a_worker_that_dies_is_restarted_with_backoff(pool):
    (first, _), _ = pool.reactor.spawned
    first.processEnded(Failure(ProcessTerminated(exitCode=1)))
    assert len(pool.reactor.spawned) == 2
    pool.reactor.advance(workers.RESTART_FIRST)
    assert len(pool.reactor.spawned) == 3
    restarted, args = pool.reactor.spawned[2]
    assert args[4] == "1"  # the same worker number
    restarted.processEnded(Failure(ProcessTerminated(exitCode=1)))
    assert pool.status() == (2, 1)  # one worker down, one restart so far
    pool.reactor.advance(workers.RESTART_FIRST)
    assert len(pool.reactor.spawned) == 3  # the second restart waits twice as long
    pool.reactor.advance(workers.RESTART_FIRST)
    assert len(pool.reactor.spawned) == 4
    assert pool.status() == (3, 2)


def test_the_primary_exports_the_process_count_and_restarts(clock):
    metrics = ClientMetrics(clock, process=False)
    assert "allq_client_processes" not in metrics.exposition()[0].decode()
    metrics.workers = lambda: (3, 1)
    text = metrics.exposition()[0].decode()
    assert "allq_client_processes 3.0" in text
    assert "allq_client_worker_restarts_total 1.0" in text


def test_stopping_terms_every_worker_and_waits(pool):
    (first, _), (second, _) = pool.reactor.spawned
    d = pool.stopService()
    assert first.transport.signals == second.transport.signals == ["TERM"]
    first.processEnded(Failure(ProcessDone(0)))
    assert not d.called
    pool.reactor.advance(workers.STOP_GRACE)  # the second is stuck: killed
    assert second.transport.signals == ["TERM", "KILL"]
    second.processEnded(Failure(ProcessTerminated(signal=9)))
    assert d.called
    assert len(pool.reactor.spawned) == 2 and pool.reactor.getDelayedCalls() == []


def test_a_pending_restart_is_cancelled_by_stopping(pool):
    (first, _), (second, _) = pool.reactor.spawned
    first.processEnded(Failure(ProcessTerminated(exitCode=1)))
    d = pool.stopService()
    second.processEnded(Failure(ProcessDone(0)))
    assert d.called and pool.reactor.getDelayedCalls() == []
    assert len(pool.reactor.spawned) == 2


def test_stopping_with_no_worker_left(pool):
    for protocol, _ in pool.reactor.spawned:
        protocol.processEnded(Failure(ProcessDone(0)))
    for call in pool.reactor.getDelayedCalls():
        call.cancel()
    pool._restarts.clear()
    assert pool.stopService().called
