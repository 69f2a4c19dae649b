"""What the bench scripts share: starting and stopping daemons, client processes, CPU
sampling, the beanstalkd reference and the machine facts.

The scripts import this module as ``common`` (their own folder is on ``sys.path``,
also in the ``spawn`` children of ``multiprocessing``, which get the parent's path).

The rules every script keeps, and why they live here:

* every process a script starts is recorded in one :class:`Processes` and stopped
  by PID in a ``finally`` (:func:`session`), also on Ctrl-C, SIGTERM or an error,
  so a benchmark never leaves daemons behind on a shared machine;
* client processes speak one small protocol with the parent (:func:`measure`):
  ``("ready", name)`` on ``ready_q``, wait for ``go``, start at ``go_at``, then one
  ``("result", name, payload)`` or ``("error", name, text)`` on ``result_q``;
* every wait is bounded in time (:data:`START_TIMEOUT`, the reactor limit of
  :func:`run_reactor_child`, the result timeout of :func:`measure`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import queue as queue_module
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BODY_BYTES = 100
START_TIMEOUT = 30.0  # seconds for a daemon to come up / client processes to get ready
SERVER_LISTENING = re.compile(r"allq-server \S+ id (\S+) listening on (\S+):(\d+)")


def add_window_options(parser, quick_warmup: float,
                       quick_help: str = "1 s windows, 1 repeat") -> None:
    """``--seconds``, ``--repeats``, ``--quick`` and ``--warmup``: how long and how often
    each thing is measured; :func:`settle_window_options` fills them in after parsing."""
    parser.add_argument("--seconds", type=float, default=5.0, help="measured window (5)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats; medians shown (3)")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--warmup", type=float, default=None,
                        help=f"warm-up seconds (1; quick {quick_warmup:g})")


def settle_window_options(args, quick_warmup: float) -> None:
    """``--quick`` means 1 s windows and 1 repeat, a smoke test; the warm-up is 1 s,
    ``quick_warmup`` with ``--quick``, unless given."""
    if args.quick:
        args.seconds, args.repeats = 1.0, 1
    if args.warmup is None:
        args.warmup = quick_warmup if args.quick else 1.0


def use_source_tree() -> None:
    """Import ``allq`` from this checkout's ``src/``, installed or not, so a bench run
    always measures the tree it sits in."""
    src = str(ROOT / "src")
    if src not in sys.path:
        sys.path.insert(0, src)


# -- client processes ---------------------------------------------------------------------


def ignore_sigint() -> None:
    """Children leave Ctrl-C to the parent, which stops them by PID."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def wait_until(deadline: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``deadline`` (at once if it has)."""
    delay = deadline - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def announce_ready(ready_q, go, name: str) -> bool:
    """Tell the parent this process is ready, then block until it says go.

    Blocking (also a reactor) is fine here: nothing is in flight yet. False when no
    go came in time, so an orphaned child still ends.
    """
    ready_q.put(("ready", name))
    return go.wait(START_TIMEOUT * 2)


class ReactorChild:
    """What a reactor-driven client process reports back: a result or an error."""

    def __init__(self, reactor, spec: dict, ready_q, go) -> None:
        self.reactor = reactor
        self.name = spec["name"]
        self.outcome: dict = {}
        self._ready_q, self._go = ready_q, go

    def ready(self) -> bool:
        """:func:`announce_ready`; when no go comes, end with an error."""
        if announce_ready(self._ready_q, self._go, self.name):
            return True
        self.fail("never told to start")
        return False

    def finish(self, result: dict, after: float = 0.05) -> None:
        """Keep ``result`` and stop the reactor ``after`` seconds later (replies in
        flight, e.g. connection closes, get that long)."""
        self.outcome["result"] = result
        self.reactor.callLater(after, self.reactor.stop)

    def fail(self, error: str) -> None:
        """Keep the first error and stop the reactor now."""
        self.outcome.setdefault("error", error)
        self.reactor.stop()


def run_reactor_child(spec: dict, ready_q, go, result_q, limit: float, what: str,
                      prepare: Callable[[ReactorChild], None]) -> None:
    """The life of a client process that runs a Twisted reactor.

    ``prepare(child)`` schedules the work before the reactor starts (an exception
    there becomes this process's error instead of a hang); the work ends with
    ``child.finish(result)`` or ``child.fail(error)``. The reactor runs at most
    ``limit`` seconds, so a stuck process still reports, and without Twisted's
    signal handlers: the parent stops children by PID.
    """
    ignore_sigint()
    try:
        from twisted.internet import reactor

        child = ReactorChild(reactor, spec, ready_q, go)
        prepare(child)
        reactor.callLater(limit, child.fail, f"{what} ran out of time")
        reactor.run(installSignalHandlers=False)
        if "result" in child.outcome:
            result_q.put(("result", child.name, child.outcome["result"]))
        else:
            result_q.put(("error", child.name, child.outcome.get("error", "no result")))
    except BaseException:
        result_q.put(("error", spec["name"], traceback.format_exc()))


class WindowCounts:
    """What one client process counts inside the measured window, after the warm-up.

    ``active`` is the number of chains / workers still running: after the window
    the process waits for it to reach 0 (drain), so every measurement leaves its
    tube empty.
    """

    def __init__(self, warm_end: float, end: float) -> None:
        self.warm_end = warm_end
        self.end = end
        self.stopping = False
        self.cycles = 0
        self.errors = 0
        self.empty_gets = 0
        self.first_error: str | None = None
        self.active = 0

    def inside(self, at: float) -> bool:
        return self.warm_end <= at < self.end

    def error(self, what: str) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = what[:300]

    def schedule(self, reactor, drain_timeout: float, done: Callable[[float], None]) -> None:
        """Sample this process's CPU over the window, set ``stopping`` when it closes,
        and call ``done(cpu_seconds)`` once the chains have drained, or
        ``drain_timeout`` seconds later (``active`` then says how many did not)."""
        cpu: dict[str, float] = {}

        def opens() -> None:
            cpu["start"] = time.process_time()

        def closes() -> None:
            cpu["end"] = time.process_time()
            self.stopping = True
            drained(time.monotonic() + drain_timeout)

        def drained(deadline: float) -> None:
            if self.active > 0 and time.monotonic() < deadline:
                reactor.callLater(0.01, drained, deadline)
                return
            done(cpu.get("end", 0.0) - cpu.get("start", cpu.get("end", 0.0)))

        now = time.monotonic()
        reactor.callLater(max(self.warm_end - now, 0), opens)
        reactor.callLater(max(self.end - now, 0), closes)


def greenstalk_worker(spec: dict, ready_q, go, go_at, result_q) -> None:
    """The beanstalkd reference client: lock-step put / reserve(timeout=0) / delete
    over one greenstalk connection until the window ends."""
    ignore_sigint()
    name = spec["name"]
    try:
        import greenstalk

        body = b"x" * BODY_BYTES
        tube = spec["tube"]
        with greenstalk.Client(("127.0.0.1", spec["port"]), use=tube, watch=tube) as client:
            if not announce_ready(ready_q, go, name):
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


# -- the parent: processes --------------------------------------------------------------------


def _die_with_parent() -> None:
    """In a started daemon: get SIGTERM if the script dies without cleaning up."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    """A loopback port free right now (for daemons that cannot report the one they bound)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 20) -> str:
    """The end of a daemon's log, for the error raised when it did not come up or died."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Processes:
    """Every process a script starts, so ``stop_all`` can end each by PID."""

    def __init__(self) -> None:
        self._servers: list[subprocess.Popen] = []
        self._children: list = []  # multiprocessing.Process

    def start_server(self, argv: list[str], log: Path, env: dict | None = None):
        """A daemon in its own session (a terminal's Ctrl-C does not hit it), output
        to ``log``, told to die with this process."""
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
        """Give the children ``timeout`` seconds to exit on their own, then stop them."""
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
        """Children, then daemons: SIGTERM, and SIGKILL for what is still there after 5 s."""
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


def stop_on_signals() -> None:
    """Turn SIGTERM into ``SystemExit(128 + signal)`` and restore Ctrl-C, so both reach
    the ``finally`` of :func:`session` (even when started with SIGINT ignored, as
    ``&`` in a shell does)."""
    def terminated(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminated)
    signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def session(prefix: str) -> Iterator[tuple[Processes, Path]]:
    """``(processes, temporary directory)`` for one run; whatever way the block ends,
    every process is stopped by PID and the directory removed.

    Ctrl-C ends the run with exit status 130, a signal from :func:`stop_on_signals`
    with 128 + its number; each says so in one line on stderr.
    """
    procs = Processes()
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield procs, tmp
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr)
        raise SystemExit(130) from None
    except SystemExit as e:
        if isinstance(e.code, int) and e.code > 128:
            print(f"\nsignal {e.code - 128}; stopping everything", file=sys.stderr)
        raise
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


# -- the parent: allq daemons -------------------------------------------------------------------


def daemon_env() -> dict[str, str]:
    """The environment of a started daemon: this checkout's code, and none of the
    variables that configure allq (a stray ``ALLQ_*`` in the caller's shell must not
    change what is measured)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ALLQ_", "A_CURVE_"))
           and k not in ("SERVER_PORT", "SERVER_STRING", "HTTP_SERVER_PORT", "SIZE_LIMIT",
                         "DEFAULT_TTL", "CONFIG_ONLY", "PYTHONPATH")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "src")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


#: twistd under cProfile with a CPU-time clock. ``twistd --profile`` uses wall time,
#: which on a shared machine charges other processes' time slices (and the wait in
#: epoll) to whatever function was running. The stats are written at reactor shutdown.
_CPU_PROFILED_TWISTD = """\
import cProfile, sys, time
out = sys.argv.pop(1)
from twisted.internet import reactor
profile = cProfile.Profile(time.process_time)
def dump():
    profile.disable()
    profile.dump_stats(out)
reactor.addSystemEventTrigger("after", "shutdown", dump)
profile.enable()
from twisted.scripts.twistd import run
run()
"""


def twistd(profile: str | Path | None = None) -> list[str]:
    """The command that runs twistd with this Python; with ``profile``, under a
    CPU-time cProfile that writes its pstats to that file when the daemon stops."""
    if profile:
        return [sys.executable, "-c", _CPU_PROFILED_TWISTD, str(Path(profile).resolve())]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def wait_for_log(proc: subprocess.Popen, log: Path, pattern: re.Pattern, what: str) -> re.Match:
    """Wait for ``pattern`` in a daemon's log: daemons listen on port 0 and log the
    port they got, which is how a script learns it (no race for a free port)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        match = pattern.search(log.read_text(errors="replace"))
        if match:
            return match
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not come up; its log ends:\n{tail(log)}")


def generate_keys(tmp: Path) -> Path:
    """A fresh key set in ``tmp/keys``, made by ``allq keys generate`` as a user would."""
    keys = tmp / "keys"
    made = subprocess.run([sys.executable, "-m", "allq.cli", "keys", "generate", str(keys)],
                          env=daemon_env(), capture_output=True, text=True, timeout=60)
    if made.returncode != 0:
        raise RuntimeError(f"allq keys generate failed: {made.stderr[-2000:]}")
    return keys


def start_allq_server(procs: Processes, tmp: Path, keys: Path, *, name: str = "allq-server",
                      options: tuple[str, ...] | list[str] = (),
                      profile: str | Path | None = None) -> tuple[subprocess.Popen, int]:
    """``twistd -n allq-server`` with ``keys`` on a free loopback port; its log is
    ``tmp/<name>.log``.

    :param options: extra allq-server options (e.g. ``--data-dir``, ``--fsync``).
    :param profile: run it under :func:`twistd`'s CPU profiler, stats to this file.
    :returns: the process and the port it listens on.
    """
    log = tmp / f"{name}.log"
    proc = procs.start_server(
        [*twistd(profile), "-n", "--pidfile=", "allq-server", "--keys", str(keys),
         "--listen", "tcp:0:interface=127.0.0.1", *options], log, daemon_env())
    match = wait_for_log(proc, log, SERVER_LISTENING, name)
    return proc, int(match.group(3))


# -- the parent: beanstalkd ---------------------------------------------------------------------


def reference_beanstalkd() -> tuple[str, str]:
    """The beanstalkd binary to compare with, and its version for the report."""
    binary = find_beanstalkd()
    return binary, subprocess.run([binary, "-v"], capture_output=True, text=True,
                                  timeout=10).stdout.strip()


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


def start_beanstalkd(procs: Processes, tmp: Path, binary: str, name: str = "beanstalkd",
                     options: list[str] | None = None) -> tuple[subprocess.Popen, int]:
    """A beanstalkd on a free loopback port; with ``options``, a binlog in a fresh
    ``tmp/binlog-<name>`` (``options`` then says how it syncs, e.g. ``["-f", "0"]``).

    beanstalkd cannot listen on port 0, so a free port is picked and tried, up to 5
    times (another process may take it in between).
    """
    extra = [] if options is None else ["-b", str(tmp / f"binlog-{name}"), *options]
    if options is not None:
        (tmp / f"binlog-{name}").mkdir()
    log = tmp / f"{name}.log"
    for _attempt in range(5):
        port = free_port()
        proc = procs.start_server([binary, "-l", "127.0.0.1", "-p", str(port), *extra], log)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return proc, port
            time.sleep(0.05)
        if proc.poll() is None:
            raise RuntimeError(f"{name} did not accept connections:\n{tail(log)}")
    raise RuntimeError(f"{name} would not start; its log ends:\n{tail(log)}")


# -- the parent: one measurement -----------------------------------------------------------------


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy so far, from the first line of /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds so far of a process and of its child processes
    (an ``allq-client --workers N`` is one process tree; Linux /proc)."""
    try:
        total = _own_cpu_ticks(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, IndexError, ValueError):
        return float("nan")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            if int(text.rpartition(")")[2].split()[1]) == pid:
                total += _own_cpu_ticks(text)
        except (OSError, IndexError, ValueError):
            continue  # it exited meanwhile
    return total / os.sysconf("SC_CLK_TCK")


def _own_cpu_ticks(stat: str) -> int:
    fields = stat.rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def raise_child_errors(result_q) -> None:
    """Raise the first error a client process has sent so far (before go: it failed
    to connect or to start)."""
    with contextlib.suppress(queue_module.Empty):
        while True:
            kind, name, payload = result_q.get_nowait()
            if kind == "error":
                raise RuntimeError(f"process {name} failed:\n{payload}")


def split(total: int, parts: int) -> list[int]:
    """``total`` spread as evenly as can be over at most ``parts`` non-empty parts."""
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def measure(ctx, procs: Processes, jobs: list[tuple[object, dict]], pids: dict[str, int],
            window: tuple[float, float], result_timeout: float) -> dict:
    """Start the processes in ``jobs``, let them get ready, start them together, collect.

    Starting them all first and releasing them at one ``go_at`` keeps process
    start-up and connecting out of the window.

    :param jobs: (target, spec) per process; a target is called with
        ``(spec, ready_q, go, go_at, result_q)`` and speaks the protocol in this
        module's docstring.
    :param pids: processes whose CPU is sampled over ``window``.
    :param window: (start, end) seconds after ``go_at`` over which CPU is sampled.
    :param result_timeout: seconds after the window's end the results may take.
    :returns: ``results`` (one payload per process, in ``jobs`` order), ``cpu`` (the
        CPU share of each pid; 1.0 = one core), ``gen_cpu`` (all the client
        processes), ``busy`` (the whole machine) and ``other_cpu`` (the rest of it).
    """
    ready_q, result_q = ctx.Queue(), ctx.Queue()
    go, go_at = ctx.Event(), ctx.Value("d", 0.0)
    names = []
    for target, spec in jobs:
        names.append(spec["name"])
        procs.start_child(ctx, target, (spec, ready_q, go, go_at, result_q))
    try:
        ready, deadline = 0, time.monotonic() + START_TIMEOUT * 2
        while ready < len(jobs):
            try:
                ready_q.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue_module.Empty:
                raise_child_errors(result_q)
                raise RuntimeError(f"{len(jobs) - ready} process(es) never got ready") from None
            ready += 1
        raise_child_errors(result_q)
        go_at.value = time.monotonic() + 0.1
        go.set()
        wait_until(go_at.value + window[0])
        cpu0 = {k: cpu_seconds(pid) for k, pid in pids.items()}
        busy0 = machine_busy_seconds()
        wait_until(go_at.value + window[1])
        cpu1 = {k: cpu_seconds(pid) for k, pid in pids.items()}
        busy1 = machine_busy_seconds()
        results: dict[str, dict] = {}
        deadline = time.monotonic() + result_timeout
        while len(results) < len(jobs):
            try:
                kind, name, payload = result_q.get(
                    timeout=max(deadline - time.monotonic(), 0.01))
            except queue_module.Empty:
                raise RuntimeError(f"{len(jobs) - len(results)} process(es) "
                                   "sent no result in time") from None
            if kind == "error":
                raise RuntimeError(f"process {name} failed:\n{payload}")
            results[name] = payload
    except BaseException:
        procs.stop_children()  # interrupted or failed: no grace period
        raise
    procs.reap_children()
    span = window[1] - window[0]
    cpu = {k: (cpu1[k] - cpu0[k]) / span for k in pids}
    generators = sum(r.get("cpu", 0.0) for r in results.values()) / span
    busy = (busy1 - busy0) / span
    return {"results": [results[n] for n in names], "cpu": cpu, "gen_cpu": generators,
            "busy": busy, "other_cpu": max(busy - sum(cpu.values()) - generators, 0.0)}


# -- the report ------------------------------------------------------------------------------------


def machine_facts() -> list[str]:
    """Cores, Python, CPU model, load and package versions: what a figure depends on."""
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


def print_machine_facts() -> None:
    """The facts, indented under a script's title line."""
    for fact in machine_facts():
        print("  " + fact)


def print_header(title: str, *extra: str) -> None:
    """A script's first lines: its title, the machine facts (and ``extra`` facts)
    under it, a blank line; flushed, as the runs take a while."""
    print(title)
    print_machine_facts()
    for fact in extra:
        print("  " + fact)
    print(flush=True)


def run_warnings(runs: dict, label: Callable[[object], str], undrained: str, busy: str,
                 empty_gets: bool = True) -> list[str]:
    """The warnings a report ends with, sorted, one line each: runs with errors or
    chains that did not drain, gets that found no job (none are expected), and a
    machine busy with other work (every figure is then depressed).

    :param runs: key -> the runs measured under it.
    :param label: how a key is named in a line.
    :param undrained: what did not drain, e.g. ``"chains undrained"``.
    :param busy: the rest of the busy-machine line, after "during a window".
    """
    problems = []
    for key, rs in runs.items():
        for r in rs:
            if r["errors"] or r["undrained"]:
                problems.append(f"  {label(key)}: {r['errors']} errors, {r['undrained']} "
                                f"{undrained}, first: {r['first_error']}")
            if empty_gets and r["empty_gets"]:
                problems.append(f"  {label(key)}: {r['empty_gets']} gets found no job")
    busiest = max(r["other_cpu"] for rs in runs.values() for r in rs)
    if busiest > 0.5:
        problems.append(f"  other work used up to {busiest:.0%} CPU during a window{busy}")
    return sorted(set(problems))
