"""REST cycles per second through ``allq-client`` beside beanstalkd.

Run from the repository root::

    .venv/bin/python bench/rest_cycles.py [--seconds S] [--repeats R] [--quick]

Starts ONE ``allq-server``, ONE ``allq-client`` (pointed at that server) and ONE
beanstalkd, all on 127.0.0.1 with free ports and a fresh key set made by
``allq keys generate`` in a temporary directory, then measures (R repeats of S
seconds each, interleaved, after a warm-up; medians are shown):

``single``    N workers (1, 10, 100, 1000), each running lock-step cycles of three
              separate HTTP calls: ``POST /job``, ``GET /job?tube=T``,
              ``DELETE /job?job_id=ID``. cycles/s, and p50/p99 latency per call
              and per cycle.
``batched``   N workers (10, 100), each running rounds of three batch calls: one
              ``POST /multiple_job`` with ``--batch`` (100) jobs, ``GET
              /multiple_job?tube=T&count=100`` (repeated until it has the round's
              jobs or answers none), one ``DELETE /multiple_job`` with the ids it
              got. Reported as jobs/s (jobs deleted in the window), and p50/p99
              latency per call kind and per round.
``longpoll``  1,000 workers each holding ``GET /job?tube=LP&wait=10`` open on one
              allq-client while a separate producer process puts 5,000 jobs at a
              steady rate; a worker that gets a job deletes it and polls again.
              Reports errors (any non-200 or connection error), jobs delivered,
              duplicates, jobs never delivered, and wait-to-delivery (from the
              producer sending the job's POST to a worker receiving the job).
``beanstalkd`` the reference: ``--bs-procs`` (8) greenstalk processes, each doing
              lock-step put / reserve / delete (``common.greenstalk_worker``),
              cycles/s summed. Targets: single-job REST >= 0.15x, batched >= 0.5x.

The HTTP load comes from ``--procs`` load-generator processes, one keep-alive
connection per worker, no HTTP pipelining, the workers split evenly between
them. ``--http-client raw`` (the default) is a minimal keep-alive HTTP/1.1
Twisted protocol: it costs the load generator far less CPU per call than
Twisted's ``Agent``, so the figures measure allq-client rather than the
generator; ``--http-client agent`` uses ``Agent`` with a persistent
``HTTPConnectionPool`` (what treq uses). This parent process runs no reactor: it
starts, synchronises, samples and stops things. Every process it starts is
stopped by PID in a ``finally`` (also on Ctrl-C, SIGTERM or an error), and every
loop is bounded in time.

Shared code (daemon start-up, beanstalkd, the greenstalk reference worker,
process bookkeeping, the measurement protocol, machine facts) is imported from
the sibling ``common.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import re
import resource
import statistics
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (bench/common.py: processes, daemons, measurement)
from common import BODY_BYTES, START_TIMEOUT  # noqa: E402

DRAIN_TIMEOUT = 30.0   # seconds in-flight cycles and rounds may take to end after the window
ERROR_PAUSE = 0.05     # a worker whose call failed waits this long before going on
LP_PRODUCER_CONNECTIONS = 32  # the long-poll producer's connections = puts in flight at most
TARGETS = {"single": 0.25, "batched": 0.5}
CLIENT_SERVING = re.compile(r"serving REST on (\S+):(\d+)")
#: latency kinds per mode: (POST, GET, DELETE) as the workers note them
CALL_KINDS = {
    "single": ("POST /job", "GET /job", "DELETE /job"),
    "batched": ("POST /multiple_job", "GET /multiple_job", "DELETE /multiple_job"),
}


# -- load-generator processes ----------------------------------------------------------


def _raise_nofile(wanted: int) -> int:
    """Raise this process's open-file soft limit to ``wanted`` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class _Http:
    """A minimal HTTP client over ``Agent`` + a persistent ``HTTPConnectionPool``.

    ``call`` fires with ``(status, body bytes)``; connection errors fail it.
    """

    def __init__(self, reactor, base: str, connections: int) -> None:
        from twisted.web.client import Agent, HTTPConnectionPool
        from twisted.web.http_headers import Headers

        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = connections
        self.pool.retryAutomatically = False  # a silently repeated GET /job would reserve twice
        self.agent = Agent(reactor, pool=self.pool, connectTimeout=START_TIMEOUT)
        self.base = base.encode("ascii")
        self.json_headers = Headers({b"content-type": [b"application/json"]})

    def call(self, method: bytes, path: bytes, body: bytes | None = None):
        from twisted.web.client import readBody

        producer = None if body is None else _BytesProducer(body)
        d = self.agent.request(method, self.base + path,
                               self.json_headers if body is not None else None, producer)
        return d.addCallback(lambda response: readBody(response).addCallback(
            lambda data: (response.code, data)))

    def close(self):
        return self.pool.closeCachedConnections()


class _RawHttp:
    """The same interface over a minimal HTTP/1.1 keep-alive client (``--http-client raw``,
    the default).

    One Twisted ``Protocol`` per connection writes the request bytes in one call and
    parses just the status, ``Content-Length`` or chunked framing, and the body: no
    ``Agent``, no header objects, no body producers. Idle connections are kept in a
    list and reused; one request at a time per connection (no pipelining).
    """

    def __init__(self, reactor, base: str, connections: int) -> None:
        host, _, port = base.removeprefix("http://").partition(":")
        self._reactor = reactor
        self._host, self._port = host, int(port)
        self._host_header = f"Host: {host}:{port}\r\n".encode()
        self._idle: list = []
        self._all: set = set()

    def call(self, method: bytes, path: bytes, body: bytes | None = None):
        from twisted.internet.defer import Deferred

        head = method + b" " + path + b" HTTP/1.1\r\n" + self._host_header
        if body is None:
            data = head + b"\r\n"
        else:  # any method with a body, DELETE /multiple_job included, says its length
            data = (head + b"Content-Type: application/json\r\nContent-Length: "
                    + str(len(body)).encode() + b"\r\n\r\n" + body)
        if self._idle:
            return self._idle.pop().request(data)
        d = Deferred()
        connected = Deferred()
        self._reactor.connectTCP(self._host, self._port, _RawFactory(self, connected),
                                 timeout=START_TIMEOUT)
        connected.addCallback(lambda protocol: protocol.request(data)).chainDeferred(d)
        return d

    def _release(self, protocol) -> None:
        self._idle.append(protocol)

    def close(self):
        from twisted.internet.defer import succeed

        for protocol in list(self._all):
            protocol.transport.loseConnection()
        return succeed(None)


def _raw_classes():
    from twisted.internet.defer import Deferred
    from twisted.internet.error import ConnectionLost
    from twisted.internet.protocol import ClientFactory, Protocol

    class RawConnection(Protocol):
        def __init__(self, owner: _RawHttp, connected: Deferred) -> None:
            self._owner = owner
            self._connected = connected
            self._waiting: Deferred | None = None
            self._buffer = b""
            self._status = 0
            self._length: int | None = None  # body bytes still expected; None: in headers
            self._chunked = False
            self._body: list[bytes] = []

        def connectionMade(self) -> None:
            self._owner._all.add(self)
            self._connected.callback(self)

        def request(self, data: bytes) -> Deferred:
            def cancel(_d: Deferred) -> None:  # e.g. a long poll cut short at the end
                self._waiting = None
                self.transport.abortConnection()

            self._waiting = Deferred(cancel)
            self.transport.write(data)
            return self._waiting

        def dataReceived(self, data: bytes) -> None:
            self._buffer += data
            while self._waiting is not None and self._step():
                pass

        def _step(self) -> bool:
            buffer = self._buffer
            if self._length is None:  # status line and headers
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    return False
                head, self._buffer = buffer[:end].lower(), buffer[end + 4:]
                self._status = int(head[9:12])
                self._body = []
                at = head.find(b"\r\ncontent-length:")
                if at >= 0:
                    self._chunked = False
                    line_end = head.find(b"\r\n", at + 2)
                    self._length = int(head[at + 17:line_end if line_end >= 0 else len(head)])
                else:
                    self._chunked = b"transfer-encoding: chunked" in head
                    self._length = 0 if self._chunked else -1
                    if not self._chunked:
                        self._fail("neither Content-Length nor chunked")
                        return False
                return True
            if not self._chunked:
                if len(buffer) < self._length:
                    return False
                self._body.append(buffer[:self._length])
                self._buffer = buffer[self._length:]
                self._done()
                return True
            line_end = buffer.find(b"\r\n")  # chunked: "<hex size>\r\n<data>\r\n"
            if line_end < 0:
                return False
            size = int(buffer[:line_end].split(b";")[0], 16)
            if len(buffer) < line_end + 2 + size + 2:
                return False
            if size == 0:
                self._buffer = buffer[line_end + 4:]  # no trailers from twisted.web
                self._done()
                return True
            self._body.append(buffer[line_end + 2:line_end + 2 + size])
            self._buffer = buffer[line_end + 2 + size + 2:]
            return True

        def _done(self) -> None:
            d, self._waiting = self._waiting, None
            self._length = None
            self._owner._release(self)
            d.callback((self._status, b"".join(self._body)))

        def _fail(self, why: str) -> None:
            d, self._waiting = self._waiting, None
            self.transport.loseConnection()
            d.errback(ConnectionLost(why))

        def connectionLost(self, reason) -> None:
            self._owner._all.discard(self)
            if self in self._owner._idle:
                self._owner._idle.remove(self)
            if self._waiting is not None:
                d, self._waiting = self._waiting, None
                d.errback(ConnectionLost(f"connection lost: {reason.getErrorMessage()}"))

    class RawFactory(ClientFactory):
        noisy = False

        def __init__(self, owner: _RawHttp, connected: Deferred) -> None:
            self._owner = owner
            self._connected = connected

        def buildProtocol(self, addr):
            return RawConnection(self._owner, self._connected)

        def clientConnectionFailed(self, connector, reason) -> None:
            self._connected.errback(reason)

    return RawFactory


_RawFactory = None  # set in the load-generator process (needs Twisted imported)


def _make_http(reactor, spec: dict, connections: int):
    """The HTTP client ``spec["http_client"]`` names, for a load-generator process."""
    global _BytesProducer, _RawFactory
    if spec.get("http_client", "raw") == "raw":
        _RawFactory = _raw_classes()
        return _RawHttp(reactor, spec["base"], connections)
    _BytesProducer = _bytes_producer_class()
    return _Http(reactor, spec["base"], connections)


def _bytes_producer_class():
    from twisted.internet.defer import succeed
    from twisted.web.iweb import IBodyProducer
    from zope.interface import implementer

    @implementer(IBodyProducer)
    class BytesProducer:
        """Writes a bytes body at once (``FileBodyProducer`` would wait a reactor turn)."""

        def __init__(self, data: bytes) -> None:
            self._data = data
            self.length = len(data)

        def startProducing(self, consumer):
            consumer.write(self._data)
            return succeed(None)

        def pauseProducing(self) -> None:
            pass

        def resumeProducing(self) -> None:
            pass

        def stopProducing(self) -> None:
            pass

    return BytesProducer


_BytesProducer = None  # set in the load-generator process (needs Twisted imported)


class _Window(common.WindowCounts):
    """What one load-generator process counts inside the measured window.

    batched mode counts jobs deleted in the window in ``cycles``; single mode counts
    ``thirds``: successful POSTs, GETs that got a job and DELETEs in the window,
    three per cycle. With 1,000 lock-step workers the calls move in waves and a
    whole cycle can take longer than the window, so counting only finished cycles
    would swing between 0 and twice the rate.
    """

    def __init__(self, warm_end: float, end: float) -> None:
        super().__init__(warm_end, end)
        self.thirds = 0
        self.latency: dict[str, list[float]] = {}

    def note(self, kind: str, started: float, ended: float) -> None:
        if self.warm_end <= ended < self.end:
            self.latency.setdefault(kind, []).append(ended - started)

    def third(self) -> None:
        if self.inside(time.monotonic()):
            self.thirds += 1


async def _checked(reactor, http: _Http, window: _Window, kind: str, method: bytes,
                   path: bytes, body: bytes | None = None):
    """One HTTP call: its decoded JSON on 200, else ``None`` after counting the error
    and pausing ``ERROR_PAUSE`` (a failing worker must not spin)."""
    started = time.monotonic()
    try:
        status, data = await http.call(method, path, body)
    except Exception as e:  # noqa: BLE001 - connection errors are results here
        window.error(f"{kind}: {type(e).__name__}: {e}")
        await _pause(reactor, ERROR_PAUSE)
        return None
    ended = time.monotonic()
    if status != 200:
        window.error(f"{kind}: HTTP {status}: {data[:200]!r}")
        await _pause(reactor, ERROR_PAUSE)
        return None
    window.note(kind, started, ended)
    return json.loads(data)


async def _connect_all(http: _Http, count: int) -> None:
    """Open ``count`` pooled connections (``count`` concurrent ``GET /health``) so the
    window measures cycles, not TCP connects. Raises on the first failure."""
    from twisted.internet.defer import gatherResults

    async def one() -> None:
        status, data = await http.call(b"GET", b"/health")
        if status != 200:
            raise RuntimeError(f"GET /health answered {status}: {data[:200]!r}")

    await gatherResults([_deferred_from(one()) for _ in range(count)], consumeErrors=True)


def _deferred_from(coroutine):
    """``Deferred.fromCoroutine`` (Twisted is imported only in the child processes)."""
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(coroutine)


async def _pause(reactor, seconds: float) -> None:
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds, lambda: None)


async def _until_window_closes(window: _Window, step: Callable[[], Awaitable[None]]) -> None:
    """Run ``step`` again and again until the window closes; ``window.active`` counts
    this worker meanwhile, so the process waits for its last step (drain)."""
    window.active += 1
    try:
        while not window.stopping:
            await step()
    finally:
        window.active -= 1


async def _single_worker(reactor, http: _Http, window: _Window, tube: str) -> None:
    """Lock-step POST /job -> GET /job -> DELETE /job until the window closes."""
    put_body = json.dumps({"tube": tube, "body": "x" * BODY_BYTES}).encode()
    get_path = f"/job?tube={tube}".encode()
    put_kind, get_kind, delete_kind = CALL_KINDS["single"]

    async def cycle() -> None:
        started = time.monotonic()
        if await _checked(reactor, http, window, put_kind, b"POST", b"/job", put_body) is None:
            return
        window.third()
        job = await _checked(reactor, http, window, get_kind, b"GET", get_path)
        if job is None:
            return
        if not job:
            window.empty_gets += 1
            return
        window.third()
        if await _checked(reactor, http, window, delete_kind, b"DELETE",
                          b"/job?job_id=" + job["id"].encode()) is None:
            return
        window.third()
        window.note("cycle", started, time.monotonic())

    await _until_window_closes(window, cycle)


async def _batched_worker(reactor, http: _Http, window: _Window, tube: str, size: int) -> None:
    """Rounds of one POST /multiple_job with ``size`` jobs, GET /multiple_job until it
    has them (or gets none), one DELETE /multiple_job of the ids got; counts the
    jobs deleted in the window. A round once put is finished after the window
    closes too, so the tube drains."""
    put_kind, get_kind, delete_kind = CALL_KINDS["batched"]
    round_kind = f"round ({size} jobs)"
    put_body = json.dumps({"tube": tube, "jobs": [{"body": "x" * BODY_BYTES}] * size}).encode()

    async def one_round() -> None:
        started = time.monotonic()
        put = await _checked(reactor, http, window, put_kind, b"POST", b"/multiple_job",
                             put_body)
        if put is None:
            return
        wanted = len(put["job_ids"])
        ids: list[str] = []
        while len(ids) < wanted:
            got = await _checked(reactor, http, window, get_kind, b"GET",
                                 f"/multiple_job?tube={tube}&count={wanted - len(ids)}".encode())
            if got is None:
                break
            if not got["jobs"]:
                window.empty_gets += wanted - len(ids)
                break
            ids.extend(job["id"] for job in got["jobs"])
        if not ids:
            return
        done = await _checked(reactor, http, window, delete_kind, b"DELETE", b"/multiple_job",
                              json.dumps({"job_ids": ids}).encode())
        if done is None:
            return
        if window.inside(time.monotonic()):
            window.cycles += len(done.get("job_ids", ids))
        window.note(round_kind, started, time.monotonic())

    await _until_window_closes(window, one_round)


def _connect_then(child: common.ReactorChild, http: _Http, count: int,
                  started: Callable[[], None]) -> None:
    """Once the reactor runs, open ``count`` connections (:func:`_connect_all`), then
    call ``started``; a failure to connect ends the process with that error."""
    def connect() -> None:
        _deferred_from(_connect_all(http, count)).addCallbacks(
            lambda _: started(),
            lambda failure: child.fail(f"could not connect: {failure.getTraceback()}"))

    child.reactor.callWhenRunning(connect)


def rest_worker(spec: dict, ready_q, go, go_at, result_q) -> None:
    """One load-generator process: ``spec["workers"]`` workers of ``spec["mode"]``."""

    def prepare(child: common.ReactorChild) -> None:
        _raise_nofile(spec["workers"] * 2 + 256)
        from twisted.internet.defer import Deferred

        reactor = child.reactor
        http = _make_http(reactor, spec, spec["workers"])

        def started() -> None:
            if not child.ready():
                return
            warm_end = go_at.value + spec["warmup"]
            window = _Window(warm_end, warm_end + spec["seconds"])

            def drained(cpu: float) -> None:
                result = {
                    "cycles": window.cycles + window.thirds / 3,
                    "errors": window.errors,
                    "empty_gets": window.empty_gets, "first_error": window.first_error,
                    "undrained": window.active, "latency": window.latency, "cpu": cpu,
                }
                http.close().addBoth(lambda _: child.finish(result))

            def worker_failed(failure) -> None:
                window.error(f"worker crashed: {failure.getTraceback()}")

            window.schedule(reactor, DRAIN_TIMEOUT, drained)
            for _ in range(spec["workers"]):
                if spec["mode"] == "batched":
                    coroutine = _batched_worker(reactor, http, window, spec["tube"],
                                                spec["batch"])
                else:
                    coroutine = _single_worker(reactor, http, window, spec["tube"])
                Deferred.fromCoroutine(coroutine).addErrback(worker_failed)

        _connect_then(child, http, spec["workers"], started)

    common.run_reactor_child(
        spec, ready_q, go, result_q,
        START_TIMEOUT * 3 + spec["warmup"] + spec["seconds"] + DRAIN_TIMEOUT,
        "load generator", prepare)


# -- the long-poll test: workers and producer --------------------------------------------


def longpoll_workers(spec: dict, ready_q, go, go_at, result_q) -> None:
    """``spec["workers"]`` long-polling workers: GET wait -> DELETE -> GET again.

    Ends when every one of ``spec["jobs"]`` jobs has been seen (plus a short linger
    to catch late duplicates) or at the deadline; polls still open then are
    cancelled and not counted as errors.
    """

    def prepare(child: common.ReactorChild) -> None:
        _raise_nofile(spec["workers"] * 2 + 256)
        from twisted.internet.defer import Deferred

        reactor = child.reactor
        http = _make_http(reactor, spec, spec["workers"])
        state = {"stopping": False, "delivered": 0, "empty_polls": 0, "errors": 0,
                 "first_error": None, "waits": [], "seen": set(), "polls": set(),
                 "last_new": None}
        get_path = f"/job?tube={spec['tube']}&wait={spec['wait']:g}".encode()

        def error(what: str) -> None:
            if state["stopping"]:
                return
            state["errors"] += 1
            if state["first_error"] is None:
                state["first_error"] = what[:300]

        async def worker() -> None:
            while not state["stopping"]:
                d = http.call(b"GET", get_path)
                state["polls"].add(d)
                try:
                    status, data = await d
                except Exception as e:  # noqa: BLE001
                    error(f"GET wait: {type(e).__name__}: {e}")
                    if not state["stopping"]:
                        await _pause(reactor, ERROR_PAUSE)
                    continue
                finally:
                    state["polls"].discard(d)
                received = time.monotonic()
                if status != 200:
                    error(f"GET wait: HTTP {status}: {data[:200]!r}")
                    await _pause(reactor, ERROR_PAUSE)
                    continue
                job = json.loads(data)
                if not job:
                    state["empty_polls"] += 1
                    continue
                body = json.loads(job["body"])
                state["delivered"] += 1
                state["waits"].append(received - body["sent"])
                if body["seq"] not in state["seen"]:
                    state["seen"].add(body["seq"])
                    state["last_new"] = received
                try:
                    status, data = await http.call(
                        b"DELETE", b"/job?job_id=" + job["id"].encode())
                except Exception as e:  # noqa: BLE001
                    error(f"DELETE: {type(e).__name__}: {e}")
                    continue
                if status != 200:
                    error(f"DELETE: HTTP {status}: {data[:200]!r}")

        def started() -> None:
            if not child.ready():
                return
            deadline = go_at.value + spec["deadline"]
            cpu0 = time.process_time()

            def check() -> None:
                now = time.monotonic()
                all_seen = len(state["seen"]) >= spec["jobs"]
                if now < deadline and not (all_seen and now - state["last_new"] >= 1.0):
                    reactor.callLater(0.05, check)
                    return
                state["stopping"] = True
                child.finish({
                    "delivered": state["delivered"], "distinct": len(state["seen"]),
                    "seen": sorted(state["seen"]),
                    "errors": state["errors"], "first_error": state["first_error"],
                    "empty_polls": state["empty_polls"], "waits": state["waits"],
                    "open_polls": len(state["polls"]), "cpu": time.process_time() - cpu0,
                    "seen_at": now - go_at.value,
                }, after=0.2)
                for d in list(state["polls"]):
                    d.cancel()

            def worker_failed(failure) -> None:
                error(f"worker crashed: {failure.getTraceback()}")

            reactor.callLater(max(go_at.value - time.monotonic(), 0), check)
            for _ in range(spec["workers"]):
                Deferred.fromCoroutine(worker()).addErrback(worker_failed)

        _connect_then(child, http, spec["workers"], started)

    common.run_reactor_child(spec, ready_q, go, result_q,
                             START_TIMEOUT * 3 + spec["deadline"] + 5, "long-poll workers",
                             prepare)


def longpoll_producer(spec: dict, ready_q, go, go_at, result_q) -> None:
    """Puts ``spec["jobs"]`` jobs at ``spec["rate"]``/s, on a 10 ms tick.

    At most ``spec["connections"]`` puts are in flight (one per pooled connection):
    when the client cannot keep up, the producer falls behind its schedule (the
    achieved rate is reported) instead of piling up connections on the client.
    """

    def prepare(child: common.ReactorChild) -> None:
        from twisted.internet.task import LoopingCall

        reactor = child.reactor
        http = _make_http(reactor, spec, spec["connections"])
        state = {"issued": 0, "ok": 0, "ok_seqs": [], "errors": 0, "first_error": None,
                 "latency": [],
                 "in_flight": 0, "max_in_flight": 0}

        def put(seq: int) -> None:
            sent = time.monotonic()
            body = json.dumps({"tube": spec["tube"],
                               "body": json.dumps({"seq": seq, "sent": sent})}).encode()
            state["in_flight"] += 1
            state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])

            def answered(result) -> None:
                state["in_flight"] -= 1
                status, data = result
                if status == 200:
                    state["ok"] += 1
                    state["ok_seqs"].append(seq)
                    state["latency"].append(time.monotonic() - sent)
                else:
                    failed_with(f"HTTP {status}: {data[:200]!r}")

            def failed(failure) -> None:
                state["in_flight"] -= 1
                failed_with(f"{failure.type.__name__}: {failure.getErrorMessage()}")

            def failed_with(what: str) -> None:
                state["errors"] += 1
                if state["first_error"] is None:
                    state["first_error"] = f"POST /job: {what}"[:300]

            http.call(b"POST", b"/job", body).addCallbacks(answered, failed)

        def started() -> None:
            if not child.ready():
                return
            start = go_at.value + spec["delay"]
            cpu: dict[str, float] = {}

            def tick() -> None:
                now = time.monotonic()
                if now < start:
                    return
                cpu.setdefault("start", time.process_time())
                due = min(spec["jobs"], int((now - start) * spec["rate"]) + 1)
                while state["issued"] < due and state["in_flight"] < spec["connections"]:
                    put(state["issued"])
                    state["issued"] += 1
                if state["issued"] >= spec["jobs"] or now >= go_at.value + spec["deadline"]:
                    loop.stop()
                    state["last_issued"] = now - start
                    finish(now + DRAIN_TIMEOUT)

            def finish(deadline: float) -> None:
                if state["in_flight"] and time.monotonic() < deadline:
                    reactor.callLater(0.01, finish, deadline)
                    return
                child.finish({
                    "issued": state["issued"], "ok": state["ok"], "errors": state["errors"],
                    "first_error": state["first_error"], "latency": state["latency"],
                    "spread": state["last_issued"], "max_in_flight": state["max_in_flight"],
                    "unanswered": state["in_flight"], "ok_seqs": state["ok_seqs"],
                    "cpu": time.process_time() - cpu.get("start", time.process_time()),
                })

            loop = LoopingCall(tick)
            loop.start(0.01, now=False)

        _connect_then(child, http, spec["connections"], started)

    common.run_reactor_child(spec, ready_q, go, result_q,
                             START_TIMEOUT * 3 + spec["deadline"] + DRAIN_TIMEOUT + 5, "producer",
                             prepare)


# -- the parent: daemons ---------------------------------------------------------------------


def _log_problems(path: Path, limit: int = 8) -> list[str]:
    """Warning and error lines of a daemon's log (twistd's default format)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    hits = [line for line in lines
            if re.search(r"Traceback|Unhandled|Error|error|warn|down \(|refus", line)]
    if len(hits) > limit:
        hits = hits[:limit // 2] + [f"... {len(hits) - limit} more ..."] + hits[-limit // 2:]
    return hits


def start_allq(procs: common.Processes, tmp: Path, client_options: list[str],
               client_profile: str | None = None, server_profile: str | None = None) -> dict:
    """Generate keys with ``allq keys generate``, start a server and a client on it.

    :returns: pids, ports, the REST base URL and the log paths.
    """
    keys = common.generate_keys(tmp)
    server, server_port = common.start_allq_server(procs, tmp, keys, profile=server_profile)
    client_log = tmp / "allq-client.log"
    client = procs.start_server(
        [*common.twistd(client_profile), "-n", "--pidfile=", "allq-client",
         "--keys", str(keys), "--servers", f"127.0.0.1:{server_port}",
         "--http", "tcp:0:interface=127.0.0.1",
         # No JSON-lines listeners on the fixed 7766 / socket unless asked (a later
         # option wins): two runs at once would collide there.
         "--jsonl", "none", "--unix", "none", *client_options], client_log,
        common.daemon_env())
    match = common.wait_for_log(client, client_log, CLIENT_SERVING, "allq-client")
    base = f"http://127.0.0.1:{match.group(2)}"
    # Serving REST does not mean connected to the server yet: wait for /health 200.
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(base + "/health", timeout=2) as answer:
                if answer.status == 200:
                    break
        if client.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"allq-client never reached its server; its log ends:\n"
                               f"{common.tail(client_log)}")
        time.sleep(0.1)
    return {"server": server, "client": client, "server_port": server_port, "base": base,
            "server_log": tmp / "allq-server.log", "client_log": client_log}


# -- the parent: one measurement -------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def _warmup(args, workers: int) -> float:
    """Warm-up before the window: longer for many workers, whose first lock-step
    cycles all start together and take seconds when there are 1,000 of them."""
    return args.warmup + workers / 500


def run_rest(ctx, procs, daemons, args, mode: str, workers: int, label: str) -> dict:
    warmup = _warmup(args, workers)
    shared = {"warmup": warmup, "seconds": args.seconds, "base": daemons["base"],
              "http_client": args.http_client,
              "tube": f"bench-{label}", "mode": mode, "batch": args.batch}
    jobs = [(rest_worker, dict(shared, name=f"{label}-{i}", workers=n))
            for i, n in enumerate(common.split(workers, args.procs))]
    m = common.measure(ctx, procs, jobs,
                       {"client": daemons["client"].pid, "server": daemons["server"].pid},
                       (warmup, warmup + args.seconds), warmup + args.seconds + DRAIN_TIMEOUT + 30)
    latency: dict[str, list[float]] = {}
    for r in m["results"]:
        for kind, values in r["latency"].items():
            latency.setdefault(kind, []).extend(values)
    rs = m["results"]
    return {
        "rate": sum(r["cycles"] for r in rs) / args.seconds,
        "errors": sum(r["errors"] for r in rs),
        "empty_gets": sum(r["empty_gets"] for r in rs),
        "undrained": sum(r["undrained"] for r in rs),
        "first_error": next((r["first_error"] for r in rs if r["first_error"]), None),
        "p50": {k: _pct(v, 0.50) for k, v in latency.items()},
        "p99": {k: _pct(v, 0.99) for k, v in latency.items()},
        "calls_per_s": sum(len(v) for k, v in latency.items()
                           if k.startswith(("POST", "GET", "DELETE"))) / args.seconds,
        "client_cpu": m["cpu"]["client"], "server_cpu": m["cpu"]["server"],
        "gen_cpu": m["gen_cpu"], "gen_procs": len(jobs), "other_cpu": m["other_cpu"],
    }


def client_us_per_call(r: dict) -> float:
    """The allq-client's CPU per REST call in the window, in microseconds."""
    calls = r.get("calls_per_s") or 0.0
    return r["client_cpu"] / calls * 1e6 if calls else float("nan")


def run_beanstalkd(ctx, procs, bs_proc, bs_port: int, args, label: str) -> dict:
    shared = {"warmup": args.warmup, "seconds": args.seconds, "port": bs_port,
              "tube": f"bench-{label}"}
    jobs = [(common.greenstalk_worker, dict(shared, name=f"{label}-{i}"))
            for i in range(args.bs_procs)]
    m = common.measure(ctx, procs, jobs, {"server": bs_proc.pid},
                       (args.warmup, args.warmup + args.seconds),
                       args.warmup + args.seconds + DRAIN_TIMEOUT + 30)
    rs = m["results"]
    return {
        "rate": sum(r["cycles"] for r in rs) / args.seconds,
        "errors": sum(r["errors"] for r in rs),
        "empty_gets": sum(r["empty_gets"] for r in rs),
        "undrained": 0, "first_error": next((r["first_error"] for r in rs
                                             if r["first_error"]), None),
        "client_cpu": 0.0, "server_cpu": m["cpu"]["server"], "gen_cpu": m["gen_cpu"],
        "gen_procs": len(jobs), "other_cpu": m["other_cpu"],
    }


def run_longpoll(ctx, procs, daemons, args, label: str) -> dict:
    delay = 1.5  # let every worker park its first poll before the first put
    spread = args.lp_jobs / args.lp_rate
    deadline = delay + 2 * spread + args.lp_wait + 10.0  # bounded even if the client lags
    shared = {"base": daemons["base"], "tube": f"LP-{label}", "jobs": args.lp_jobs,
              "http_client": args.http_client}
    jobs = [
        (longpoll_workers, dict(shared, name=f"{label}-workers", workers=args.lp_workers,
                                wait=args.lp_wait, deadline=deadline)),
        (longpoll_producer, dict(shared, name=f"{label}-producer", rate=args.lp_rate,
                                 delay=delay, connections=LP_PRODUCER_CONNECTIONS,
                                 deadline=delay + 2 * spread + 5.0)),
    ]
    m = common.measure(ctx, procs, jobs,
                       {"client": daemons["client"].pid, "server": daemons["server"].pid},
                       (delay, delay + spread), deadline + DRAIN_TIMEOUT + 30)
    workers, producer = m["results"]
    waits = workers["waits"]
    return {
        "workers": args.lp_workers, "jobs": args.lp_jobs, "rate": args.lp_rate,
        "put_ok": producer["ok"], "put_errors": producer["errors"],
        "put_issued": producer["issued"], "put_unanswered": producer["unanswered"],
        "put_p50": _pct(producer["latency"], 0.5), "put_p99": _pct(producer["latency"], 0.99),
        "spread": producer["spread"],
        "delivered": workers["delivered"], "distinct": workers["distinct"],
        "duplicates": workers["delivered"] - workers["distinct"],
        # acknowledged puts no worker received (a put whose answer was lost may
        # still have stored its job: those count as delivered, not as missing)
        "missing": len(set(producer["ok_seqs"]) - set(workers["seen"])),
        "errors": workers["errors"] + producer["errors"],
        "first_error": workers["first_error"] or producer["first_error"],
        "empty_polls": workers["empty_polls"], "open_polls": workers["open_polls"],
        "wait_p50": _pct(waits, 0.5), "wait_p99": _pct(waits, 0.99),
        "wait_max": max(waits) if waits else float("nan"),
        "client_cpu": m["cpu"]["client"], "server_cpu": m["cpu"]["server"],
        "gen_cpu": m["gen_cpu"], "other_cpu": m["other_cpu"],
    }


# -- the parent: report ---------------------------------------------------------------------


def _ms(seconds: float) -> str:
    if seconds != seconds:  # nan
        return "-"
    ms = seconds * 1000
    return f"{ms:.1f}" if ms < 100 else f"{ms:.0f}"


def _lat(rs: list[dict], kind: str) -> str:
    p50 = [r["p50"][kind] for r in rs if kind in r["p50"]]
    p99 = [r["p99"][kind] for r in rs if kind in r["p99"]]
    if not p50:
        return "-"
    return f"{_ms(statistics.median(p50))}/{_ms(statistics.median(p99))}"


def report(args, runs: dict, longpolls: list[dict], facts: dict) -> str:
    med = lambda rs, f: statistics.median(r[f] for r in rs)  # noqa: E731
    bs_runs = runs.get(("beanstalkd", args.bs_procs))
    bs = med(bs_runs, "rate") if bs_runs else float("nan")
    out = []
    head = (f"{'mode':<10} {'workers':>7} {'rate':>9} {'unit':<7} {'x bstalk':>8} "
            f"{'target':>7} {'':<4} {'POST':>11} {'GET':>11} {'DELETE':>11} "
            f"{'cycle/round':>13}  {'CPU cli/srv/gen/other':>22} {'cli us/call':>11}")
    out.append("latency columns: p50/p99 in ms, medians over repeats")
    out.append(head)
    out.append("-" * len(head))
    best: dict[str, float] = {}
    for (mode, workers), rs in runs.items():
        rate = med(rs, "rate")
        ratio = rate / bs if bs else float("nan")
        target = TARGETS.get(mode)
        verdict = "" if target is None else ("PASS" if ratio >= target else "MISS")
        if target is not None:
            best[mode] = max(best.get(mode, 0.0), ratio) if ratio == ratio else ratio
        unit = "jobs/s" if mode == "batched" else "cyc/s"
        put_kind, get_kind, delete_kind = CALL_KINDS.get(mode, CALL_KINDS["single"])
        round_kind = f"round ({args.batch} jobs)" if mode == "batched" else "cycle"
        cpu = (f"{med(rs, 'client_cpu'):.0%}/{med(rs, 'server_cpu'):.0%}/"
               f"{med(rs, 'gen_cpu'):.0%}/{med(rs, 'other_cpu'):.0%}")
        if mode == "beanstalkd":
            note = f"({workers} greenstalk procs, lock-step put/reserve/delete)"
            bs_cpu = "-/" + cpu.split("/", 1)[1]
            out.append(f"{'beanstalkd':<10} {str(workers) + 'p':>7} {rate:>9,.0f} {'cyc/s':<7} "
                       f"{1.0:>8.3f} {'':>7} {'':<4} {note:<49}  {bs_cpu:>22}")
            continue
        out.append(
            f"{mode:<10} {workers:>7,} {rate:>9,.0f} {unit:<7} {ratio:>8.3f} "
            f"{'>=' + format(target, 'g') + 'x':>7} {verdict:<4} {_lat(rs, put_kind):>11} "
            f"{_lat(rs, get_kind):>11} {_lat(rs, delete_kind):>11} {_lat(rs, round_kind):>13}"
            f"  {cpu:>22} {statistics.median(client_us_per_call(r) for r in rs):>11,.0f}")
    out.append("")
    out.append(f"rate: median of {args.repeats} repeat(s) of {args.seconds:g} s (after "
               f"{args.warmup:g} s warm-up + 1 s per 500 workers). single = cycles/s = "
               f"successful calls in the window / 3 (POST, GET with a job, DELETE); batched = "
               f"jobs/s = jobs deleted in the window (rounds of 1 POST /multiple_job with "
               f"{args.batch} jobs, GET /multiple_job count={args.batch} until it has them, "
               f"1 DELETE /multiple_job; its POST/GET/DELETE columns are per call, GET per "
               f"GET call); beanstalkd = {args.bs_procs} greenstalk processes, finished cycles "
               f"summed.")
    client_text = ("Twisted Agent + persistent HTTPConnectionPool" if args.http_client == "agent"
                   else "minimal keep-alive HTTP/1.1 Twisted protocol (--http-client raw)")
    out.append(f"load: {args.procs} load-generator process(es), {client_text}, one "
               f"connection per worker, workers split evenly.")
    out.append("CPU: allq-client / allq-server (beanstalkd for its row) / all load "
               f"generators / rest of the machine, during the window; 100% = one core of "
               f"{os.cpu_count()}. cli us/call: the allq-client's CPU time per HTTP call "
               f"in the window (median over repeats).")
    for mode, ratio in best.items():
        out.append(f"best {mode}: {ratio:.3f}x beanstalkd, target >= {TARGETS[mode]:g}x: "
                   f"{'PASS' if ratio >= TARGETS[mode] else 'MISS'}")
    if longpolls:
        out.append("")
        lp = longpolls
        total = lambda f: sum(r[f] for r in lp)  # noqa: E731
        m = lambda f: statistics.median(r[f] for r in lp)  # noqa: E731
        ok = not (total("errors") or total("duplicates") or total("missing")
                  or total("put_unanswered"))
        out.append(
            f"long-poll: {lp[0]['workers']:,} workers holding GET /job?tube=LP&wait="
            f"{args.lp_wait:g} on one allq-client; producer puts {lp[0]['jobs']:,} jobs at "
            f"{lp[0]['rate']:,.0f}/s; {len(lp)} run(s), totals over runs:")
        out.append(
            f"  errors {total('errors')} (must be 0)   delivered {total('delivered'):,}   "
            f"duplicates {total('duplicates')} (must be 0)   never delivered "
            f"{total('missing')}   puts: {total('put_ok'):,} answered 200 of "
            f"{total('put_issued'):,} sent ({total('jobs'):,} meant), "
            f"{total('put_unanswered')} unanswered at the end")
        out.append(
            f"  wait-to-delivery (POST sent -> worker has the job): p50 {_ms(m('wait_p50'))} ms,"
            f" p99 {_ms(m('wait_p99'))} ms, max {_ms(max(r['wait_max'] for r in lp))} ms; "
            f"POST p50/p99 {_ms(m('put_p50'))}/{_ms(m('put_p99'))} ms; puts took "
            f"{m('spread'):.1f} s (achieved {m('put_issued') / max(m('spread'), 1e-9):,.0f}/s, "
            f"at most {LP_PRODUCER_CONNECTIONS} in flight)")
        out.append(
            f"  empty polls (wait ran out) {total('empty_polls')}; CPU during the puts: "
            f"client {m('client_cpu'):.0%}, server {m('server_cpu'):.0%}, generators "
            f"{m('gen_cpu'):.0%}, other {m('other_cpu'):.0%}; "
            f"verdict: {'PASS' if ok else 'FAIL'}")
        if any(r["first_error"] for r in lp):
            out.append("  first error: " + next(r["first_error"] for r in lp if r["first_error"]))
    problems = common.run_warnings(
        runs, lambda key: f"{key[0]} x{key[1]}", "workers undrained",
        f": on this {os.cpu_count()}-core machine the figures are depressed and noisy")
    if problems:
        out.append("")
        out.append("warnings:")
        out.extend(problems)
    out.append("")
    options = " ".join(args.client_option) or "(none)"
    out.append(f"allq-client pid {facts['client_pid']} (extra options: {options}; its CPU "
               f"includes its worker processes), allq-server pid {facts['server_pid']}, "
               f"beanstalkd {facts['bs_binary']} ({facts['bs_version']}); body "
               f"{BODY_BYTES} bytes")
    return "\n".join(out)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_window_options(parser, quick_warmup=0.5,
                              quick_help="1 s windows, 1 repeat, 1,000 long-poll jobs")
    parser.add_argument("--workers", default="1,10,100,1000",
                        help="single-job worker counts (1,10,100,1000)")
    parser.add_argument("--batch-workers", default="10,100",
                        help="batched worker counts (10,100)")
    parser.add_argument("--batch", type=int, default=100,
                        help="jobs per batched round: per POST / DELETE /multiple_job (100)")
    parser.add_argument("--procs", type=int, default=1,
                        help="load-generator processes the workers are split over (1)")
    parser.add_argument("--http-client", choices=("agent", "raw"), default="raw",
                        help="load generators' HTTP client: a minimal keep-alive HTTP/1.1 "
                             "protocol that costs far less CPU per call (raw, the default), or "
                             "Twisted Agent + persistent HTTPConnectionPool (agent)")
    parser.add_argument("--bs-procs", type=int, default=8,
                        help="greenstalk processes for the beanstalkd reference (8)")
    parser.add_argument("--lp-workers", type=int, default=1000, help="long-poll workers (1000)")
    parser.add_argument("--lp-jobs", type=int, default=None,
                        help="jobs the long-poll producer puts (5000; quick 1000)")
    parser.add_argument("--lp-rate", type=float, default=100.0,
                        help="long-poll producer puts per second (100: each job costs the "
                             "client 3 HTTP calls; keep it well under its capacity)")
    parser.add_argument("--lp-runs", type=int, default=1,
                        help="long-poll runs, after the repeats (1)")
    parser.add_argument("--lp-wait", type=float, default=10.0, help="long-poll wait= (10)")
    parser.add_argument("--no-longpoll", action="store_true", help="skip the long-poll test")
    parser.add_argument("--no-beanstalkd", action="store_true",
                        help="skip the beanstalkd reference (e.g. while profiling allq)")
    parser.add_argument("--client-option", action="append", default=[],
                        help="extra allq-client option (repeatable), e.g. --client-option=--max-body=4096")
    parser.add_argument("--client-profile", metavar="FILE",
                        help="run allq-client under cProfile (CPU time); pstats written to "
                             "FILE when it stops")
    parser.add_argument("--server-profile", metavar="FILE",
                        help="the same for allq-server")
    parser.add_argument("--json", metavar="PATH", help="also write every run as JSON here")
    args = parser.parse_args(argv)
    common.settle_window_options(args, quick_warmup=0.5)
    if args.quick:
        args.lp_runs = 1
    if args.lp_jobs is None:
        args.lp_jobs = 1000 if args.quick else 5000
    try:
        args.workers = [int(x) for x in args.workers.split(",") if x.strip()]
        args.batch_workers = [int(x) for x in args.batch_workers.split(",") if x.strip()]
    except ValueError:
        parser.error("--workers and --batch-workers take comma-separated integers")
    for name in ("seconds", "repeats", "batch", "procs", "bs_procs", "lp_workers", "lp_jobs",
                 "lp_rate", "lp_wait", "lp_runs"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if any(n <= 0 for n in args.workers + args.batch_workers):
        parser.error("worker counts must be positive")
    if args.batch > 1000:
        parser.error("--batch is at most 1000 (GET /multiple_job's count limit)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    common.stop_on_signals()
    most_connections = max(args.workers + args.batch_workers + [args.lp_workers])
    # Children (daemons, load generators) inherit this limit: each side of every
    # connection is one descriptor, plus the pools' spares.
    nofile = _raise_nofile(most_connections * 2 + 1024)
    common.print_header(
        "rest_cycles: REST cycles/s through allq-client (one allq-server) vs beanstalkd",
        f"open-file limit: {nofile}")
    if most_connections * 2 + 64 > nofile:
        print(f"warning: open-file limit {nofile} is low for {most_connections} connections",
              file=sys.stderr)
    bs_binary, bs_version = common.reference_beanstalkd()
    ctx = mp.get_context("spawn")
    try:
        with common.session("allq-rest-bench-") as (procs, tmp):
            measure_all(ctx, procs, tmp, args, bs_binary, bs_version)
    finally:
        for what, path in (("allq-client", args.client_profile),
                           ("allq-server", args.server_profile)):
            if path:
                print(f"{what} CPU profile (written if it stopped in order): {path}")
    return 0


def measure_all(ctx, procs: common.Processes, tmp: Path, args, bs_binary: str,
                bs_version: str) -> None:
    """Start the daemons, run every measurement and print the report."""
    runs: dict[tuple[str, int], list[dict]] = {}
    longpolls: list[dict] = []
    daemons = start_allq(procs, tmp, args.client_option, args.client_profile,
                         args.server_profile)
    bs_proc, bs_port = common.start_beanstalkd(procs, tmp, bs_binary)
    print(f"allq-server pid {daemons['server'].pid} on 127.0.0.1:{daemons['server_port']};"
          f" allq-client pid {daemons['client'].pid} on {daemons['base']}; "
          f"beanstalkd pid {bs_proc.pid} on 127.0.0.1:{bs_port}", flush=True)

    def alive() -> None:
        for what, proc, log in (("allq-server", daemons["server"], daemons["server_log"]),
                                ("allq-client", daemons["client"], daemons["client_log"])):
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited; its log ends:\n{common.tail(log)}")

    plan = [] if args.no_beanstalkd else [("beanstalkd", args.bs_procs)]
    plan += [("single", n) for n in args.workers]
    plan += [("batched", n) for n in args.batch_workers]
    for repeat in range(args.repeats):
        for mode, workers in plan:
            alive()
            label = f"{mode}-{workers}-{repeat}"
            if mode == "beanstalkd":
                r = run_beanstalkd(ctx, procs, bs_proc, bs_port, args, label)
            else:
                r = run_rest(ctx, procs, daemons, args, mode, workers, label)
            runs.setdefault((mode, workers), []).append(r)
            unit = "jobs/s" if mode == "batched" else "cycles/s"
            print(f"  [{repeat + 1}/{args.repeats}] {mode:<10} x{workers:<5} "
                  f"{r['rate']:>9,.0f} {unit:<8} (client CPU {r['client_cpu']:.0%}, "
                  f"server {r['server_cpu']:.0%}, generators {r['gen_cpu']:.0%}, "
                  f"other {r['other_cpu']:.0%}; errors {r['errors']})", flush=True)
    for run in range(0 if args.no_longpoll else args.lp_runs):
        alive()
        r = run_longpoll(ctx, procs, daemons, args, f"{run}")
        longpolls.append(r)
        print(f"  [{run + 1}/{args.lp_runs}] long-poll  x{args.lp_workers:<5} "
              f"delivered {r['delivered']:,} (put {r['put_ok']:,}), duplicates "
              f"{r['duplicates']}, errors {r['errors']}, wait p50/p99 "
              f"{_ms(r['wait_p50'])}/{_ms(r['wait_p99'])} ms (client CPU "
              f"{r['client_cpu']:.0%}, other {r['other_cpu']:.0%})", flush=True)
    alive()
    print()
    for what, log in (("allq-client", daemons["client_log"]),
                      ("allq-server", daemons["server_log"])):
        problems = _log_problems(log)
        if problems:
            print(f"{what} log, warning/error lines:")
            print("\n".join("  " + line[:300] for line in problems))
    print(report(args, runs, longpolls, {
        "client_pid": daemons["client"].pid, "server_pid": daemons["server"].pid,
        "bs_binary": bs_binary, "bs_version": bs_version}))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"args": vars(args), "facts": common.machine_facts(),
             "runs": {f"{m}/{w}": rs for (m, w), rs in runs.items()},
             "longpoll": longpolls}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
