"""Several client processes on one port: ``twistd allq-client --workers N``.

One client process answers a few thousand REST calls a second on one core: the
HTTP parsing and the reactor's work per call are Python's, and a process has one
core. ``--workers N`` runs N processes that serve the same address. Each binds
its own socket with ``SO_REUSEPORT``, so the kernel spreads new connections
evenly over them, and each is a whole client (its own links to every server,
long polls, retries). The twistd process, the *primary*, spawns the N-1 others
(``python -m allq.client.worker`` with the same settings), restarts one that
dies, and stops them all on shutdown.

What must still look like one client:

* **admin changes** (``POST /add_server``, ``PUT /update_servers``, server
  ``/drain`` and ``/undrain``) made through any process are made in every
  process: the process relays the change to the primary, which applies it and
  relays it to the other workers;
* **metrics**: a worker sends what it counted (jobs, errors, retries, request
  latencies) to the primary every second, and answers ``/metrics`` with the
  primary's registry, so the counters are the whole client's (up to a second
  late). Process metrics (CPU, memory) are the primary's;
* **shutdown**: SIGTERM to the primary stops the workers (each one gracefully,
  as the primary does) and waits for them to exit.

The control channel is one JSON object per line, on a worker's stdin (primary to
worker) and stdout (worker to primary); its stderr carries its log lines, which
the primary logs as its own, prefixed by the worker's number.
"""

import json
import os
import re
import socket
import sys
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import error
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime, IStreamServerEndpoint
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from allq.client.http import json_response
from allq.client.metrics_http import TimedResource
from allq.client.observers import FederationObserver

#: Seconds between a worker's metric reports.
REPORT_INTERVAL = 1.0
#: Seconds a worker's ``/metrics`` waits for the primary's answer.
METRICS_TIMEOUT = 5.0
#: Seconds workers get to stop gracefully before they are killed.
STOP_GRACE = 15.0
#: Restart delays for a worker that died: doubling from the first to the last.
RESTART_FIRST, RESTART_MAX = 0.5, 30.0
#: The longest control line accepted (a metrics answer can be long).
MAX_LINE = 64 * 1024 * 1024
_UNESCAPED_COLON = re.compile(r"(?<!\\):")


# -- the shared port --------------------------------------------------------------


def parse_tcp(description: str) -> tuple[str, int, int]:
    """``(interface, port, backlog)`` of a ``tcp:PORT[:interface=H][:backlog=N]``
    endpoint (``tcp6:`` too), the only kind several processes can share.

    :raises ValueError: any other endpoint, or a malformed one.
    """
    kind, *fields = _UNESCAPED_COLON.split(description)
    if kind not in ("tcp", "tcp6") or not fields:
        raise ValueError(f"{description!r} is not a tcp:PORT endpoint")
    port_text, *options = fields
    interface, backlog = ("::" if kind == "tcp6" else "0.0.0.0"), 50
    for option in options:
        name, equals, value = option.partition("=")
        value = value.replace("\\:", ":")
        if not equals or name not in ("interface", "backlog"):
            raise ValueError(f"{description!r}: only interface= and backlog= can be given")
        if name == "interface":
            interface = value
        elif value.isdigit() and int(value) > 0:
            backlog = int(value)
        else:
            raise ValueError(f"{description!r}: backlog must be a positive integer")
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"{description!r}: the port must be a number from 0 to 65535")
    return interface, int(port_text), backlog


def reuse_port_socket(interface: str, port: int, backlog: int) -> socket.socket:
    """A listening, non-blocking socket that other processes may bind as well.

    :raises OSError: it cannot be bound (or the platform has no ``SO_REUSEPORT``).
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        raise OSError("this platform has no SO_REUSEPORT; run without --workers")
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((interface, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    """Listens on a ``SO_REUSEPORT`` socket (see :func:`reuse_port_socket`)."""

    def __init__(self, reactor, interface: str, port: int, backlog: int) -> None:
        self._reactor = reactor
        self._interface = interface
        self._port = port
        self._backlog = backlog

    def listen(self, factory) -> Deferred:
        try:
            sock = reuse_port_socket(self._interface, self._port, self._backlog)
        except OSError as e:
            return fail(error.CannotListenError(self._interface, self._port, e))
        try:  # the reactor listens on a duplicate of the descriptor
            return succeed(self._reactor.adoptStreamPort(sock.fileno(), sock.family, factory))
        finally:
            sock.close()


# -- what every process shares ------------------------------------------------------


class AdminRelay(FederationObserver):
    """Makes one process's admin changes every process's.

    It observes this process's federation and sends each admin change it makes
    (``add_server``, ``update_servers``, ``drain_server``) to the other processes
    through ``send``; :meth:`apply` makes a change another process sent, without
    sending it on again.

    :param federation: this process's federation.
    :param send: the way to the other processes (the primary's
        :meth:`WorkerPool.relay`, or a worker's control channel).
    """

    _log = Logger()

    def __init__(self, federation: Any, send: Callable[[dict], None]) -> None:
        self._federation = federation
        self._send = send
        self._applying = False
        federation.observe(self)

    def admin_changed(self, call: str, args: list) -> None:
        if not self._applying:
            self._send({"op": "admin", "call": call, "args": args})

    def apply(self, message: dict) -> None:
        """Make a change another process relayed (without relaying it again)."""
        call, args = message.get("call"), message.get("args")
        if not isinstance(args, list):
            self._log.warn("ignored a relayed change without arguments: {message}",
                           message=message)
            return
        self._applying = True
        try:
            if call == "add_server" and len(args) == 1:
                self._federation.add_server(args[0])
            elif call == "update_servers" and len(args) == 1:
                self._federation.update_servers(args[0])
            elif call == "drain_server" and len(args) == 2:
                d = self._federation.drain_server(*args)
                d.addErrback(lambda f: self._log.failure("relayed drain of {server} failed", f,
                                                         server=args[0]))
            else:
                self._log.warn("ignored an unknown relayed change: {message}", message=message)
        finally:
            self._applying = False


class Counts:
    """What a worker counted since its last report, in the shape the primary
    applies to its :class:`ClientMetrics` (see :func:`apply_counts`)."""

    def __init__(self) -> None:
        self.jobs: dict[tuple[str, str], int] = {}
        self.errors: dict[tuple[str, str], int] = {}
        self.retries: dict[tuple[str, str], int] = {}
        self.latencies: dict[tuple[str, str, str], list[float]] = {}

    def __bool__(self) -> bool:
        return bool(self.jobs or self.errors or self.retries or self.latencies)

    def message(self) -> dict:
        return {
            "op": "counts",
            "jobs": [[action, tube, n] for (action, tube), n in self.jobs.items()],
            "errors": [[operation, code, n] for (operation, code), n in self.errors.items()],
            "retries": [[operation, server, n] for (operation, server), n in self.retries.items()],
            "latencies": [[*key, values] for key, values in self.latencies.items()],
        }


def apply_counts(metrics: Any, message: dict) -> None:
    """Add a worker's report (:meth:`Counts.message`) to the primary's metrics.

    :raises ValueError: the report is malformed (nothing of it is applied then).
    """
    try:
        jobs = [(str(a), str(t), int(n)) for a, t, n in message["jobs"]]
        errors = [(str(o), str(c), int(n)) for o, c, n in message["errors"]]
        retries = [(str(o), str(s), int(n)) for o, s, n in message["retries"]]
        latencies = [(str(m), str(r), str(s), [float(v) for v in values])
                     for m, r, s, values in message["latencies"]]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"malformed counts: {e}") from None
    for action, tube, n in jobs:
        metrics.count_jobs(action, tube, n)
    for operation, code, n in errors:
        metrics.count_error(operation, code, n)
    for operation, server, n in retries:
        metrics.count_retry(operation, server or None, n)
    for method, route, status, values in latencies:
        for seconds in values:
            metrics.observe_request(method, route, status, seconds)


# -- the worker's side ----------------------------------------------------------------


class ControlChannel(Protocol):
    """A worker's end of the control channel (its stdin and stdout).

    Messages from the primary go to the handler registered for their ``op``
    (:meth:`handle`), so the channel can be made before what it serves.

    :param on_closed: called when the primary is gone (stdin closed).
    """

    _log = Logger()

    def __init__(self, on_closed: Callable[[], None]) -> None:
        self._handlers: dict[str, Callable[[dict], None]] = {}
        self._on_closed = on_closed
        self._buffer = b""

    def handle(self, op: str, handler: Callable[[dict], None]) -> None:
        """Pass the messages whose ``op`` is ``op`` to ``handler``."""
        self._handlers[op] = handler

    def send(self, message: dict) -> None:
        if self.transport is not None:
            self.transport.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            message = _decode(line)
            handler = None if message is None else self._handlers.get(message.get("op"))
            if handler is None:
                self._log.warn("ignored a malformed control line ({size} bytes)", size=len(line))
            else:
                handler(message)

    def connectionLost(self, reason: Failure = None) -> None:
        self._on_closed()


class WorkerMetrics(Service):
    """A worker's metrics: counted here, reported to the primary every
    :data:`REPORT_INTERVAL` seconds while running (and once more when stopped);
    ``/metrics`` is the primary's answer.

    It has the interface the client's pieces use of :class:`ClientMetrics`
    (the ``Recorder`` methods, ``observe_request``, ``instrument``, ``resource``).

    :param send: sends one control message to the primary.
    :param clock: drives the reports.
    """

    def __init__(self, send: Callable[[dict], None], clock: IReactorTime) -> None:
        self._send = send
        self._clock = clock
        self._counts = Counts()
        self._reports = LoopingCall(self.report)
        self._reports.clock = clock
        self._questions: dict[int, Deferred] = {}
        self._next_question = 0

    def startService(self) -> None:
        super().startService()
        self._reports.start(REPORT_INTERVAL, now=False)

    def stopService(self) -> None:
        """Send what is left and stop reporting; pending ``/metrics`` fail."""
        super().stopService()
        if self._reports.running:
            self._reports.stop()
        self.report()
        questions, self._questions = self._questions, {}
        for d in questions.values():
            d.cancel()

    def report(self) -> None:
        if self._counts:
            counts, self._counts = self._counts, Counts()
            self._send(counts.message())

    # -- recording (what ClientMetrics offers) ----------------------------------

    def count_jobs(self, action: str, tube: str, count: int = 1) -> None:
        if count > 0:
            key = (action, tube)
            self._counts.jobs[key] = self._counts.jobs.get(key, 0) + count

    def count_error(self, operation: str, code: str, count: int = 1) -> None:
        key = (operation, code)
        self._counts.errors[key] = self._counts.errors.get(key, 0) + count

    def count_retry(self, operation: str, address: str | None = None,
                    count: int = 1) -> None:
        key = (operation, address or "")
        self._counts.retries[key] = self._counts.retries.get(key, 0) + count

    def observe_request(self, method: str, route: str, status: str, seconds: float) -> None:
        self._counts.latencies.setdefault((method, route, status), []).append(
            round(max(seconds, 0.0), 6))

    def instrument(self, resource: Resource, routes: Any) -> Resource:
        return TimedResource(resource, self, routes, self._clock)

    def resource(self) -> Resource:
        return _PrimaryMetricsResource(self)

    # -- asking the primary -----------------------------------------------------

    def exposition(self, accept: str | None) -> Deferred:
        """The primary's ``/metrics`` body and content type."""
        self._next_question += 1
        question = self._next_question
        d = Deferred(lambda _: self._questions.pop(question, None))
        self._questions[question] = d
        self._send({"op": "metrics", "id": question, "accept": accept or ""})
        return d.addTimeout(METRICS_TIMEOUT, self._clock)

    def answered(self, message: dict) -> None:
        d = self._questions.pop(message.get("id"), None)
        if d is not None:
            d.callback((str(message.get("body", "")).encode("utf-8"),
                        str(message.get("content_type", "text/plain"))))


class _PrimaryMetricsResource(Resource):
    """``GET /metrics`` in a worker: the primary's exposition, relayed."""

    isLeaf = True

    def __init__(self, metrics: WorkerMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def render(self, request: IRequest) -> bytes | int:
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return json_response(request, {
                "error": "method_not_allowed", "detail": "/metrics accepts GET"}, 405)
        accept = request.getHeader(b"accept")
        d = self._metrics.exposition(None if accept is None else accept.decode("latin-1"))
        finished = request.notifyFinish()
        finished.addErrback(lambda _: d.cancel())

        def answer(result) -> None:
            body, content_type = result
            request.setHeader(b"content-type", content_type.encode("ascii", "replace"))
            request.setHeader(b"cache-control", b"no-store")
            request.write(body)
            request.finish()

        def unanswered(failure: Failure) -> None:
            if finished.called:
                return  # the caller went away
            request.write(json_response(request, {
                "error": "unavailable",
                "detail": "the client's primary process did not answer"}, 503))
            request.finish()

        d.addCallbacks(answer, unanswered)
        return NOT_DONE_YET


def worker_control(reactor) -> ControlChannel:
    """Connect this worker process's stdin and stdout to a :class:`ControlChannel`;
    the process stops when the primary goes away."""
    from twisted.internet.stdio import StandardIO

    def closed() -> None:
        if reactor.running:
            reactor.stop()

    channel = ControlChannel(closed)
    StandardIO(channel, reactor=reactor)
    return channel


# -- the primary's side -----------------------------------------------------------------


class _Worker(ProcessProtocol):
    """The primary's end of one worker process."""

    def __init__(self, pool: "WorkerPool", index: int) -> None:
        self.pool = pool
        self.index = index
        self.ended = Deferred()
        self._out = b""
        self._err = b""

    def send(self, message: dict) -> None:
        if self.transport is not None:
            self.transport.writeToChild(
                0, json.dumps(message, separators=(",", ":")).encode() + b"\n")

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd == 1:
            self._out += data
            *lines, self._out = self._out.split(b"\n")
            for line in lines:
                self.pool.received(self, line)
            if len(self._out) > MAX_LINE:
                self.pool.log.warn("worker {index} sent an over-long control line; dropped",
                                   index=self.index)
                self._out = b""
        elif fd == 2:
            self._err += data
            *lines, self._err = self._err.split(b"\n")
            for line in lines:
                self.pool.log.info("worker {index}: {line}", index=self.index,
                                   line=line.decode("utf-8", "replace"))

    def processEnded(self, reason: Failure) -> None:
        self.pool.ended(self, reason)
        self.ended.callback(None)


class WorkerPool(Service):
    """Runs the primary's N-1 worker processes and is its end of their control
    channels.

    :param reactor: spawns the processes and drives restarts.
    :param count: how many workers (N-1).
    :param command: the command line of worker ``index`` serving ``port``.
    :param metrics: the primary's ``ClientMetrics``.
    :ivar admin: this process's :class:`AdminRelay`, which applies the changes
        workers relay (set once made: it relays through this pool).
    :param replay: the admin changes a newly started worker must be told (its
        command line carries the current servers, not their drains).
    """

    log = Logger()

    def __init__(self, reactor, count: int, command: Callable[[int, int], list[str]],
                 metrics: Any,
                 replay: Callable[[], list[dict]] = list) -> None:
        self._reactor = reactor
        self._replay = replay
        self._count = count
        self._command = command
        self.admin: AdminRelay | None = None
        self._metrics = metrics
        self._workers: dict[int, _Worker] = {}
        self._restarts: dict[int, Any] = {}
        self._failures: dict[int, int] = {}
        self._stopping = False
        self._port: int | None = None
        self.restarts = 0

    @property
    def pids(self) -> list[int]:
        return [w.transport.pid for w in self._workers.values() if w.transport is not None]

    def status(self) -> tuple[int, int]:
        """(processes serving, the primary included; workers restarted so far)."""
        return 1 + len(self._workers), self.restarts

    def listening(self, port: int) -> None:
        """The primary listens on ``port`` now: the workers can bind it too."""
        self._port = port
        self._spawn_all()

    def startService(self) -> None:
        # Under twistd the port is bound in the privileged start, and this runs
        # after any --uid switch: the workers never run with more rights.
        super().startService()
        self._spawn_all()

    def _spawn_all(self) -> None:
        if self.running and self._port is not None and not self._workers and not self._stopping:
            for index in range(1, self._count + 1):
                self._spawn(index)

    def _spawn(self, index: int) -> None:
        if self._restarts.pop(index, None) is not None:
            self.restarts += 1
        if self._stopping:
            return
        worker = _Worker(self, index)
        command = self._command(index, self._port)
        self._reactor.spawnProcess(worker, command[0], command, env=os.environ,
                                   childFDs={0: "w", 1: "r", 2: "r"})
        self._workers[index] = worker
        for message in self._replay():
            worker.send(message)
        self.log.info("started worker {index} (pid {pid})", index=index,
                      pid=worker.transport.pid)

    def relay(self, message: dict, origin: _Worker | None = None) -> None:
        """Send ``message`` to every worker but ``origin``."""
        for worker in self._workers.values():
            if worker is not origin:
                worker.send(message)

    def received(self, worker: _Worker, line: bytes) -> None:
        message = _decode(line)
        op = None if message is None else message.get("op")
        if op == "admin":
            self.admin.apply(message)
            self.relay(message, origin=worker)
        elif op == "counts":
            try:
                apply_counts(self._metrics, message)
            except ValueError as e:
                self.log.warn("worker {index}: {error}", index=worker.index, error=e)
        elif op == "metrics":
            body, content_type = self._metrics.exposition(message.get("accept") or None)
            worker.send({"op": "metrics", "id": message.get("id"),
                         "body": body.decode("utf-8"), "content_type": content_type})
        else:
            self.log.warn("worker {index} sent an unknown control line ({size} bytes)",
                          index=worker.index, size=len(line))

    def ended(self, worker: _Worker, reason: Failure) -> None:
        if self._workers.get(worker.index) is worker:
            del self._workers[worker.index]
        if self._stopping:
            return
        failures = self._failures[worker.index] = self._failures.get(worker.index, 0) + 1
        delay = min(RESTART_FIRST * 2 ** (failures - 1), RESTART_MAX)
        self.log.warn("worker {index} exited ({reason}); restarting it in {delay:g} s",
                      index=worker.index, reason=reason.getErrorMessage(), delay=delay)
        self._restarts[worker.index] = self._reactor.callLater(delay, self._spawn, worker.index)

    def stopService(self) -> Deferred:
        """SIGTERM every worker; fires once all have exited (SIGKILL after the grace)."""
        super().stopService()
        self._stopping = True
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        workers = list(self._workers.values())
        if not workers:
            return succeed(None)
        for worker in workers:
            _signal(worker, "TERM")
        kill = self._reactor.callLater(STOP_GRACE, self._kill, workers)

        def all_ended(_) -> None:
            if kill.active():
                kill.cancel()

        return gatherResults([w.ended for w in workers]).addCallback(all_ended)

    def _kill(self, workers: list[_Worker]) -> None:
        for worker in workers:
            if not worker.ended.called:
                self.log.warn("worker {index} did not stop in {grace:g} s; killing it",
                              index=worker.index, grace=STOP_GRACE)
                _signal(worker, "KILL")


def _signal(worker: _Worker, name: str) -> None:
    try:
        worker.transport.signalProcess(name)
    except error.ProcessExitedAlready:
        pass


def _decode(line: bytes) -> dict | None:
    try:
        message = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    return message if isinstance(message, dict) else None


def worker_command(index: int, options: list[str]) -> list[str]:
    """The command line of worker ``index`` with the client options ``options``."""
    return [sys.executable, "-m", "allq.client.worker", "--worker-index", str(index), *options]
