"""Full put -> get -> done cycles per second: one allq server vs one beanstalkd.

Run from the repository root::

    .venv/bin/python bench/server_cycles.py [--seconds S] [--repeats R] [--quick]

The script starts ONE allq server (``twistd allq-server`` with a fresh key set in a
temporary directory) and ONE beanstalkd, both on 127.0.0.1 with free ports, then
measures, R times each and interleaved, the modes below and prints the median
cycles/s of each side and their ratio. A cycle is one job put, got (reserved) and
finished (``done`` / ``delete``); only cycles whose last reply arrives inside the
measured window (after a warm-up) are counted.

Modes (allq side; beanstalkd reference in brackets):

``lockstep``   one connection, one cycle at a time: put, get, done, each awaiting
               its reply  [one greenstalk client: put / reserve(timeout=0) / delete]
``pipelined``  ``--connections`` connections (8) spread over ``--allq-procs`` (2)
               Twisted client processes, each connection with ``--depth`` (64)
               cycle chains in flight, matched to replies by request id
               [``--bs-procs`` (8) greenstalk processes, each lock-step, summed]
``batched``    the same connections, each running: one batch frame of ``--batch``
               (100) puts, one ``get`` with count=100, one batch frame of 100 dones
               [the same 8-process greenstalk figure]

Every client runs in its own process (multiprocessing, spawn), so this process
never runs a reactor: it only starts, synchronises, samples and stops things.
Every process it starts is stopped by PID in a ``finally`` (also on Ctrl-C,
SIGTERM or an error), and every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import multiprocessing as mp
import os
import platform
import queue as queue_module
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BODY_BYTES = 100
START_TIMEOUT = 30.0  # seconds for a server to come up / clients to connect
DRAIN_TIMEOUT = 10.0  # seconds in-flight cycles may take to finish after the window
TARGETS = {"pipelined": 0.5, "batched": 1.0}


# -- helpers shared by parent and children ---------------------------------------------


def _ignore_sigint() -> None:
    """Children leave Ctrl-C to the parent, which stops them by PID."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _wait_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        time.sleep(delay)


# -- client processes: greenstalk ---------------------------------------------------------


def greenstalk_worker(spec: dict, ready_q, go, go_at, result_q) -> None:
    """Lock-step put / reserve(timeout=0) / delete until the window ends."""
    _ignore_sigint()
    name = spec["name"]
    try:
        import greenstalk

        body = b"x" * BODY_BYTES
        tube = spec["tube"]
        with greenstalk.Client(("127.0.0.1", spec["port"]), use=tube, watch=tube) as client:
            ready_q.put(("ready", name))
            if not go.wait(START_TIMEOUT * 2):
                return
            warm_end = go_at.value + spec["warmup"]
            end = warm_end + spec["seconds"]
            cycles = empty = 0
            cpu_start = cpu_end = None
            while True:
                now = time.monotonic()
                if now >= end:
                    break
                if cpu_start is None and now >= warm_end:
                    cpu_start = time.process_time()
                client.put(body)
                try:
                    job = client.reserve(timeout=0)
                except greenstalk.TimedOutError:
                    empty += 1
                    continue
                client.delete(job)
                done_at = time.monotonic()
                if warm_end <= done_at < end:
                    cycles += 1
            cpu_end = time.process_time()
            result_q.put(("result", name, {
                "cycles": cycles, "errors": 0, "empty_gets": empty, "first_error": None,
                "cpu": cpu_end - (cpu_start if cpu_start is not None else cpu_end),
            }))
    except BaseException:
        result_q.put(("error", name, traceback.format_exc()))


# -- client processes: allq over Twisted ------------------------------------------------------


class _Window:
    """Counts, for one allq client process, what completes inside the window."""

    def __init__(self, warm_end: float, end: float) -> None:
        self.warm_end = warm_end
        self.end = end
        self.stopping = False
        self.cycles = 0
        self.errors = 0
        self.empty_gets = 0
        self.first_error: str | None = None
        self.active = 0

    def count(self, n: int = 1) -> None:
        now = time.monotonic()
        if self.warm_end <= now < self.end:
            self.cycles += n

    def failed(self, failure) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = f"{failure.type.__name__}: {failure.getErrorMessage()}"


class _Chain:
    """One put -> get -> done cycle after another on one connection (depth 1)."""

    def __init__(self, connection, window: _Window, tube: str, body: str) -> None:
        self._conn = connection
        self._window = window
        self._put_params = {"tube": tube, "body": body}
        self._get_params = {"tube": tube, "count": 1}

    def start(self) -> None:
        self._window.active += 1
        self._put()

    def _put(self, _=None) -> None:
        if self._window.stopping:
            self._window.active -= 1
            return
        self._conn.request("put", self._put_params).addCallbacks(self._get, self._fail)

    def _get(self, _result) -> None:
        self._conn.request("get", self._get_params).addCallbacks(self._done, self._fail)

    def _done(self, result) -> None:
        jobs = result["jobs"]
        if not jobs:
            self._window.empty_gets += 1
            self._put()
            return
        self._conn.request("done", {"job_id": jobs[0]["job_id"]}).addCallbacks(
            self._finished, self._fail)

    def _finished(self, _result) -> None:
        self._window.count()
        self._put()

    def _fail(self, failure) -> None:
        self._window.failed(failure)
        self._window.active -= 1  # a failing chain stops: no tight error loops


class _BatchChain:
    """Batch of puts -> get(count) -> batch of dones, one round after another."""

    def __init__(self, connection, window: _Window, tube: str, body: str, size: int) -> None:
        self._conn = connection
        self._window = window
        self._puts = [("put", {"tube": tube, "body": body})] * size
        self._get_params = {"tube": tube, "count": size}

    def start(self) -> None:
        self._window.active += 1
        self._put()

    def _put(self, _=None) -> None:
        if self._window.stopping:
            self._window.active -= 1
            return
        self._conn.batch(self._puts).addCallbacks(self._get, self._fail)

    def _get(self, outcomes) -> None:
        self._note_errors(outcomes)
        self._conn.request("get", self._get_params).addCallbacks(self._done, self._fail)

    def _done(self, result) -> None:
        jobs = result["jobs"]
        if len(jobs) < len(self._puts):
            self._window.empty_gets += len(self._puts) - len(jobs)
        if not jobs:
            self._put()
            return
        dones = [("done", {"job_id": job["job_id"]}) for job in jobs]
        self._conn.batch(dones).addCallbacks(self._finished, self._fail)

    def _finished(self, outcomes) -> None:
        self._window.count(len(outcomes) - self._note_errors(outcomes))
        self._put()

    def _note_errors(self, outcomes) -> int:
        errors = [o for o in outcomes if isinstance(o, Exception)]
        if errors:
            self._window.errors += len(errors)
            if self._window.first_error is None:
                self._window.first_error = f"{type(errors[0]).__name__}: {errors[0]}"
        return len(errors)

    def _fail(self, failure) -> None:
        self._window.failed(failure)
        self._window.active -= 1


def allq_worker(spec: dict, ready_q, go, go_at, result_q) -> None:
    """Open ``spec["connections"]`` connections and run the mode's chains on them."""
    _ignore_sigint()
    name = spec["name"]
    try:
        sys.path[:0] = [str(ROOT / "src")]
        from twisted.internet import reactor
        from twisted.internet.defer import gatherResults

        from allq.client.connection import connect
        from allq.wire.keys import load_client_keys

        keys = load_client_keys(spec["keys"], {})
        endpoint = f"tcp:host=127.0.0.1:port={spec['port']}"
        body = "x" * BODY_BYTES
        outcome: dict = {}

        def connected(connections) -> None:
            ready_q.put(("ready", name))
            # Blocking the reactor here is fine: nothing is in flight yet.
            if not go.wait(START_TIMEOUT * 2):
                outcome["error"] = "never told to start"
                reactor.stop()
                return
            warm_end = go_at.value + spec["warmup"]
            window = _Window(warm_end, warm_end + spec["seconds"])
            chains = []
            for connection in connections:
                for _ in range(spec["depth"]):
                    if spec["batch"]:
                        chains.append(_BatchChain(connection, window, spec["tube"], body,
                                                  spec["batch"]))
                    else:
                        chains.append(_Chain(connection, window, spec["tube"], body))
            cpu = {}

            def window_opens() -> None:
                cpu["start"] = time.process_time()

            def window_closes() -> None:
                cpu["end"] = time.process_time()
                window.stopping = True
                drain_deadline = time.monotonic() + DRAIN_TIMEOUT
                check_drained(drain_deadline)

            def check_drained(drain_deadline: float) -> None:
                if window.active > 0 and time.monotonic() < drain_deadline:
                    reactor.callLater(0.01, check_drained, drain_deadline)
                    return
                outcome["result"] = {
                    "cycles": window.cycles, "errors": window.errors,
                    "empty_gets": window.empty_gets, "first_error": window.first_error,
                    "undrained": window.active,
                    "cpu": cpu.get("end", 0.0) - cpu.get("start", cpu.get("end", 0.0)),
                }
                for connection in connections:
                    connection.close()
                reactor.callLater(0.05, reactor.stop)

            now = time.monotonic()
            reactor.callLater(max(warm_end - now, 0), window_opens)
            reactor.callLater(max(window.end - now, 0), window_closes)
            for chain in chains:
                chain.start()

        def failed(failure) -> None:
            outcome["error"] = failure.getTraceback()
            reactor.stop()

        def start() -> None:
            d = gatherResults(
                [connect(reactor, endpoint, keys, request_timeout=30.0)
                 for _ in range(spec["connections"])],
                consumeErrors=True,
            )
            d.addCallback(connected).addErrback(failed)

        reactor.callWhenRunning(start)
        # Bound the whole process: start-up, go, warm-up, window and drain.
        reactor.callLater(
            START_TIMEOUT * 3 + spec["warmup"] + spec["seconds"] + DRAIN_TIMEOUT,
            lambda: (outcome.setdefault("error", "allq worker ran out of time"),
                     reactor.stop()))
        reactor.run(installSignalHandlers=False)
        if "result" in outcome:
            result_q.put(("result", name, outcome["result"]))
        else:
            result_q.put(("error", name, outcome.get("error", "no result")))
    except BaseException:
        result_q.put(("error", name, traceback.format_exc()))


# -- the parent: servers ---------------------------------------------------------------------


def _die_with_parent() -> None:
    """In a started server: get SIGTERM if this script dies without cleaning up."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Processes:
    """Every process this script starts, so ``stop_all`` can end each by PID."""

    def __init__(self) -> None:
        self._servers: list[subprocess.Popen] = []
        self._children: list = []  # multiprocessing.Process

    def start_server(self, argv: list[str], log: Path, env: dict | None = None):
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=ROOT, start_new_session=True, preexec_fn=_die_with_parent,
            )
        self._servers.append(proc)
        return proc

    def start_child(self, ctx, target, args):
        proc = ctx.Process(target=target, args=args, daemon=True)
        proc.start()
        self._children.append(proc)
        return proc

    def reap_children(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        for proc in self._children:
            proc.join(max(deadline - time.monotonic(), 0.01))
        self.stop_children()

    def stop_children(self) -> None:
        for proc in self._children:
            if proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        for proc in self._children:
            proc.join(2.0)
            if proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.join(2.0)
        self._children = []

    def stop_all(self) -> None:
        self.stop_children()
        for proc in self._servers:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        for proc in self._servers:
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5.0)
        self._servers = []


def find_beanstalkd() -> str:
    """The beanstalkd binary, installing the Debian package when run as root."""
    def look() -> str | None:
        for candidate in ("/usr/sbin/beanstalkd", "/usr/bin/beanstalkd"):
            if os.access(candidate, os.X_OK):
                return candidate
        return shutil.which("beanstalkd")

    found = look()
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit(
            "beanstalkd is not installed. Install it with `sudo apt-get install -y "
            "beanstalkd` (or run this script as root and it will), then run again.")
    print("beanstalkd not found; running `apt-get install -y beanstalkd` ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = subprocess.run(["apt-get", "install", "-y", "beanstalkd"], env=env,
                             capture_output=True, text=True, timeout=600)
    if install.returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
        install = subprocess.run(["apt-get", "install", "-y", "beanstalkd"], env=env,
                                 capture_output=True, text=True, timeout=600)
    found = look()
    if not found:
        raise SystemExit(f"could not install beanstalkd:\n{install.stdout[-2000:]}"
                         f"{install.stderr[-2000:]}")
    # The package's service may have been started; ours listens on its own port anyway.
    return found


def start_allq(
    procs: Processes,
    tmp: Path,
    twistd_options: tuple[str, ...] = (),
    twistd_command: list[str] | None = None,
) -> tuple[subprocess.Popen, int, str]:
    """Start ``twistd allq-server`` on a free port with fresh keys under ``tmp``.

    :param twistd_options: extra twistd options (before the plugin name).
    :param twistd_command: what runs twistd (default: the ``twistd`` script beside
        this Python), e.g. a wrapper that profiles it.
    :returns: the process, its port and the key directory.
    """
    sys.path[:0] = [str(ROOT / "src")]
    from allq.wire.keys import generate_keys

    keys = tmp / "keys"
    generate_keys(str(keys))
    twistd = Path(sys.executable).parent / "twistd"
    if not twistd.exists():
        twistd = Path(shutil.which("twistd") or "twistd")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(ROOT / "src")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    log = tmp / "allq-server.log"
    proc = procs.start_server(
        [*(twistd_command or [str(twistd)]), "-n", "--pidfile=", *twistd_options,
         "allq-server", "--keys", str(keys),
         "--listen", "tcp:0:interface=127.0.0.1"],
        log, env)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read_text(errors="replace"))
        if match:
            return proc, int(match.group(1)), str(keys)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"allq server did not come up; its log ends:\n{_tail(log)}")


def start_beanstalkd(procs: Processes, tmp: Path, binary: str) -> tuple[subprocess.Popen, int]:
    for _attempt in range(5):
        port = free_port()
        log = tmp / f"beanstalkd-{port}.log"
        proc = procs.start_server([binary, "-l", "127.0.0.1", "-p", str(port)], log)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return proc, port
            time.sleep(0.05)
        if proc.poll() is None:
            raise RuntimeError(f"beanstalkd did not accept connections:\n{_tail(log)}")
    raise RuntimeError(f"beanstalkd would not start; its log ends:\n{_tail(log)}")


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy so far, from the first line of /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


# -- the parent: one measurement -------------------------------------------------------------


def measure(ctx, procs: Processes, target, specs: list[dict], server_pid: int, args) -> dict:
    """Start the client processes, let them connect, open the window, sum their counts."""
    ready_q, result_q = ctx.Queue(), ctx.Queue()
    go, go_at = ctx.Event(), ctx.Value("d", 0.0)
    for spec in specs:
        procs.start_child(ctx, target, (spec, ready_q, go, go_at, result_q))
    try:
        ready, deadline = 0, time.monotonic() + START_TIMEOUT * 2
        while ready < len(specs):
            try:
                kind, name, *rest = ready_q.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue_module.Empty:
                _raise_child_errors(result_q)
                raise RuntimeError(f"{len(specs) - ready} client process(es) never connected")
            ready += 1
        _raise_child_errors(result_q)
        go_at.value = time.monotonic() + 0.1
        go.set()
        warm_end = go_at.value + args.warmup
        end = warm_end + args.seconds
        _wait_until(warm_end)
        server_cpu0, busy0 = cpu_seconds(server_pid), machine_busy_seconds()
        _wait_until(end)
        server_cpu1, busy1 = cpu_seconds(server_pid), machine_busy_seconds()
        results, deadline = [], end + DRAIN_TIMEOUT + 20
        while len(results) < len(specs):
            try:
                kind, name, payload = result_q.get(
                    timeout=max(deadline - time.monotonic(), 0.01))
            except queue_module.Empty:
                raise RuntimeError(f"{len(specs) - len(results)} client process(es) "
                                   "sent no result in time") from None
            if kind == "error":
                raise RuntimeError(f"client process {name} failed:\n{payload}")
            results.append(payload)
    except BaseException:
        procs.stop_children()  # interrupted or failed: no grace period
        raise
    procs.reap_children()
    total = {
        "cycles_per_s": sum(r["cycles"] for r in results) / args.seconds,
        "errors": sum(r["errors"] for r in results),
        "empty_gets": sum(r["empty_gets"] for r in results),
        "undrained": sum(r.get("undrained", 0) for r in results),
        "first_error": next((r["first_error"] for r in results if r["first_error"]), None),
        "server_cpu": (server_cpu1 - server_cpu0) / args.seconds,
        "client_cpu": sum(r["cpu"] for r in results) / args.seconds,
        "machine_busy": (busy1 - busy0) / args.seconds,
    }
    # What the rest of the machine (other users, this parent) burnt meanwhile.
    total["other_cpu"] = max(
        total["machine_busy"] - total["server_cpu"] - total["client_cpu"], 0.0)
    return total


def _raise_child_errors(result_q) -> None:
    with contextlib.suppress(queue_module.Empty):
        while True:
            kind, name, payload = result_q.get_nowait()
            if kind == "error":
                raise RuntimeError(f"client process {name} failed:\n{payload}")


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def plans(args, allq_port: int, keys: str, bs_port: int) -> list[tuple[str, str, object, list]]:
    """(mode, side, worker, specs) for each measurement of one repeat."""
    common = {"warmup": args.warmup, "seconds": args.seconds}
    procs_per = max(1, min(args.allq_procs, args.connections))

    def allq(mode: str, procs: int, connections: int, depth: int, batch: int) -> list[dict]:
        return [
            dict(common, name=f"allq-{mode}-{i}", port=allq_port, keys=keys,
                 tube=f"bench-{mode}", connections=n, depth=depth, batch=batch)
            for i, n in enumerate(_split(connections, procs))
        ]

    def greenstalk(label: str, count: int) -> list[dict]:
        return [dict(common, name=f"bs-{label}-{i}", port=bs_port, tube=f"bench-{label}")
                for i in range(count)]

    wanted = set(args.modes)
    if wanted & {"pipelined", "batched"}:
        wanted.add("multi")  # their beanstalkd reference
    every = [
        ("lockstep", "allq", allq_worker, allq("lockstep", 1, 1, 1, 0)),
        ("lockstep", "beanstalkd", greenstalk_worker, greenstalk("lockstep", 1)),
        ("pipelined", "allq", allq_worker,
         allq("pipelined", procs_per, args.connections, args.depth, 0)),
        ("batched", "allq", allq_worker,
         allq("batched", procs_per, args.connections, args.batch_depth, args.batch)),
        ("multi", "beanstalkd", greenstalk_worker, greenstalk("multi", args.bs_procs)),
    ]
    return [plan for plan in every if plan[0] in wanted]


# -- the parent: report ---------------------------------------------------------------------


def machine_facts() -> list[str]:
    facts = [
        f"nproc: {os.cpu_count()} (usable: {len(os.sched_getaffinity(0))})",
        f"python: {sys.version.split()[0]} ({platform.python_implementation()}) "
        f"on {platform.platform()}",
    ]
    with contextlib.suppress(OSError):
        model = next((line.split(":", 1)[1].strip()
                      for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), None)
        if model:
            facts.append(f"cpu: {model}")
    with contextlib.suppress(OSError):
        facts.append("load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    versions = []
    for dist in ("twisted", "pynacl", "greenstalk"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version
            versions.append(f"{dist} {version(dist)}")
    facts.append("packages: " + ", ".join(versions))
    return facts


def _runs_text(rs: list[dict]) -> str:
    return ", ".join(f"{r['cycles_per_s']:,.0f}" for r in rs)


def _per_cpu(rs: list[dict]) -> str:
    """Median cycles per server CPU-second: the server's own cost, robust to contention."""
    values = [r["cycles_per_s"] / r["server_cpu"] for r in rs if r["server_cpu"] > 0]
    return f"{statistics.median(values):,.0f}" if values else "n/a"


def report(args, runs: dict, bs_binary: str, bs_version: str) -> str:
    def med(key: tuple[str, str], field: str = "cycles_per_s") -> float:
        return statistics.median(r[field] for r in runs[key])

    conn_desc = (f"{args.connections} conns over {max(1, min(args.allq_procs, args.connections))}"
                 f" client proc(s)")
    rows = [
        ("lockstep", ("lockstep", "allq"), "1 conn, 1 cycle in flight",
         ("lockstep", "beanstalkd"), "1 greenstalk client"),
        ("pipelined", ("pipelined", "allq"), f"{conn_desc}, {args.depth} cycles in flight each",
         ("multi", "beanstalkd"), f"{args.bs_procs} greenstalk procs"),
        ("batched", ("batched", "allq"),
         f"{conn_desc}, batch {args.batch} x {args.batch_depth} in flight each",
         ("multi", "beanstalkd"), f"{args.bs_procs} greenstalk procs"),
    ]
    out = []
    header = (f"{'mode':<10} {'allq cyc/s':>10} {'bstalk cyc/s':>12} {'ratio':>6} "
              f"{'target':>7} {'':<4}  {'allq srv/cli':>12} {'bstalk srv/cli':>14} "
              f"{'others a/b':>11}")
    out.append(header)
    out.append("-" * len(header))
    details = []

    def pair(key_1, field_1, key_2, field_2) -> str:
        return f"{med(key_1, field_1):.0%}/{med(key_2, field_2):.0%}"

    for mode, akey, adesc, bkey, bdesc in rows:
        if akey not in runs:
            continue
        a, b = med(akey), med(bkey)
        ratio = a / b if b else float("nan")
        target = TARGETS.get(mode)
        verdict = "" if target is None else ("PASS" if ratio >= target else "MISS")
        target_text = "-" if target is None else f">={target:g}x"
        out.append(
            f"{mode:<10} {a:>10,.0f} {b:>12,.0f} {ratio:>6.3f} {target_text:>7} {verdict:<4}  "
            f"{pair(akey, 'server_cpu', akey, 'client_cpu'):>12} "
            f"{pair(bkey, 'server_cpu', bkey, 'client_cpu'):>14} "
            f"{pair(akey, 'other_cpu', bkey, 'other_cpu'):>11}")
        details.append(
            f"  {mode:<10} allq:       {adesc}\n"
            f"  {'':<10}             runs {_runs_text(runs[akey])}; "
            f"{_per_cpu(runs[akey])} cycles per server CPU-second\n"
            f"  {'':<10} beanstalkd: {bdesc}\n"
            f"  {'':<10}             runs {_runs_text(runs[bkey])}; "
            f"{_per_cpu(runs[bkey])} cycles per server CPU-second")
    out.append("")
    out.append(f"medians of {args.repeats} repeat(s) of {args.seconds:g} s each "
               f"(after {args.warmup:g} s warm-up); ratio = allq median / beanstalkd median.")
    out.append("srv/cli: CPU of the server / of all its client processes during the window "
               "(100% = one core).")
    out.append("others a/b: CPU the rest of the machine (other users, kernel) used meanwhile, "
               f"during the allq / beanstalkd runs (of {os.cpu_count() * 100}%).")
    out.append("")
    out.extend(details)
    problems = []
    for key, rs in runs.items():
        for r in rs:
            if r["errors"] or r["undrained"]:
                problems.append(f"  {key[1]} {key[0]}: {r['errors']} errors, "
                                f"{r['undrained']} chains undrained, first: {r['first_error']}")
            if r["empty_gets"]:
                problems.append(f"  {key[1]} {key[0]}: {r['empty_gets']} gets found no job")
    busiest = max(r["other_cpu"] for rs in runs.values() for r in rs)
    if busiest > 0.5:
        problems.append(
            f"  other work used up to {busiest:.0%} CPU during a window: the figures are "
            f"depressed and the ratios unreliable on this {os.cpu_count()}-core machine; "
            f"compare 'cycles per server CPU-second', or rerun when it is quiet")
    if problems:
        out.append("")
        out.append("warnings:")
        out.extend(sorted(set(problems)))
    out.append("")
    out.append(f"beanstalkd: {bs_binary} ({bs_version}); body {BODY_BYTES} bytes; "
               f"each side ran alone while measured; all clients are Python processes")
    return "\n".join(out)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured window (5)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats; medians are shown (3)")
    parser.add_argument("--quick", action="store_true", help="1 s windows, 1 repeat")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up seconds (1; quick 0.3)")
    parser.add_argument("--connections", type=int, default=8,
                        help="allq connections in pipelined and batched modes (8)")
    parser.add_argument("--depth", type=int, default=64,
                        help="cycles in flight per connection, pipelined mode (64)")
    parser.add_argument("--batch", type=int, default=100, help="jobs per batch frame (100)")
    parser.add_argument("--batch-depth", type=int, default=1,
                        help="batch rounds in flight per connection, batched mode (1)")
    parser.add_argument("--allq-procs", type=int, default=2,
                        help="allq client processes sharing the connections in pipelined and "
                             "batched modes (2: one Twisted process cannot keep the server "
                             "busy, see bench/README.md)")
    parser.add_argument("--bs-procs", type=int, default=8,
                        help="greenstalk processes for the multi-client reference (8)")
    parser.add_argument("--modes", default="lockstep,pipelined,batched",
                        help="comma-separated subset of lockstep,pipelined,batched (all)")
    parser.add_argument("--json", metavar="PATH", help="also write every run as JSON here")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(args.modes) - {"lockstep", "pipelined", "batched"}
    if unknown or not args.modes:
        parser.error(f"--modes: unknown mode(s) {', '.join(sorted(unknown)) or '(none given)'}")
    if args.quick:
        args.seconds, args.repeats = 1.0, 1
    if args.warmup is None:
        args.warmup = 0.3 if args.quick else 1.0
    for name in ("seconds", "repeats", "connections", "depth", "batch", "batch_depth",
                 "allq_procs", "bs_procs"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.batch > 1000:
        parser.error("--batch is at most 1000 (the server's batch limit)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)

    def terminated(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminated)
    # Ctrl-C must reach the finally below even when started with SIGINT ignored (e.g. `&`).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print("server_cycles: full put -> get -> done cycles/s, one allq server vs one beanstalkd")
    for fact in machine_facts():
        print("  " + fact)
    print(flush=True)
    bs_binary = find_beanstalkd()
    bs_version = subprocess.run([bs_binary, "-v"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
    ctx = mp.get_context("spawn")
    procs = Processes()
    runs: dict[tuple[str, str], list[dict]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="allq-bench-"))
    try:
        allq_proc, allq_port, keys = start_allq(procs, tmp)
        bs_proc, bs_port = start_beanstalkd(procs, tmp, bs_binary)
        print(f"allq server pid {allq_proc.pid} on 127.0.0.1:{allq_port}; "
              f"beanstalkd pid {bs_proc.pid} on 127.0.0.1:{bs_port}", flush=True)
        for repeat in range(args.repeats):
            for mode, side, worker, specs in plans(args, allq_port, keys, bs_port):
                server = allq_proc if side == "allq" else bs_proc
                if server.poll() is not None:
                    raise RuntimeError(f"the {side} server exited; its log ends:\n"
                                       f"{_tail(tmp / 'allq-server.log')}")
                result = measure(ctx, procs, worker, specs, server.pid, args)
                runs.setdefault((mode, side), []).append(result)
                print(f"  [{repeat + 1}/{args.repeats}] {side:<10} {mode:<9} "
                      f"{result['cycles_per_s']:>10,.0f} cycles/s  "
                      f"(server CPU {result['server_cpu']:.0%}, "
                      f"clients CPU {result['client_cpu']:.0%}, "
                      f"everything else {result['other_cpu']:.0%})", flush=True)
        print()
        print(report(args, runs, bs_binary, bs_version))
        if args.json:
            Path(args.json).write_text(json.dumps(
                {"args": vars(args), "facts": machine_facts(),
                 "runs": {f"{side}/{mode}": rs for (mode, side), rs in runs.items()}},
                indent=2))
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr)
        return 130
    except SystemExit as e:
        if isinstance(e.code, int) and e.code > 128:
            print(f"\nsignal {e.code - 128}; stopping everything", file=sys.stderr)
        raise
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
