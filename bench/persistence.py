"""What persistence costs: put -> get -> done cycles/s per fsync policy, allq vs beanstalkd.

Run from the repository root::

    .venv/bin/python bench/persistence.py [--seconds S] [--repeats R] [--quick]
                                          [--modes pipelined,lockstep]

One run starts, side by side, four allq servers (memory only; ``--data-dir`` with
``--fsync never``, ``interval:50`` and ``always``) and four beanstalkd servers (no
binlog; ``-b DIR -F``: binlog, never fsync; ``-b DIR -f 50``: fsync at most every
50 ms, beanstalkd's default once ``-b`` is given; ``-b DIR -f 0``: fsync on every
write). Every data directory is a fresh temporary one on the same file system.
It measures them one at a time, interleaved (all eight, then again, R times), and
prints the median cycles/s of each, its cost against the same server without
persistence, and allq / beanstalkd for the matching policy.

Modes (as in ``server_cycles.py``, whose client processes and measurement code
this script imports):

``pipelined``  allq: ``--connections`` (8) connections over ``--allq-procs`` (2)
               Twisted processes, ``--depth`` (64) cycle chains in flight on each.
               beanstalkd: ``--bs-procs`` (8) lock-step greenstalk processes.
``lockstep``   one connection / one greenstalk client, one request at a time: the
               latency a lone client sees (with ``always``, two fsyncs per cycle).

Every process it starts is stopped by PID in a ``finally``; temporary directories
are removed.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import server_cycles as sc  # noqa: E402 - the sibling benchmark's helpers

ROOT = sc.ROOT
#: (label, allq-server options) and (label, beanstalkd options), paired by row.
ALLQ_CONFIGS = [
    ("memory only", None),
    ("--fsync never", "never"),
    ("--fsync interval:50", "interval:50"),
    ("--fsync always", "always"),
]
BEANSTALKD_CONFIGS = [
    ("no binlog", None),
    ("-b DIR -F", ["-F"]),
    ("-b DIR -f 50", ["-f", "50"]),
    ("-b DIR -f 0", ["-f", "0"]),
]


def start_allq(procs: sc.Processes, tmp: Path, keys: Path, name: str,
               fsync: str | None) -> tuple[subprocess.Popen, int]:
    """An ``allq-server`` on a free port; with ``fsync``, on a fresh data directory."""
    twistd = Path(sys.executable).parent / "twistd"
    if not twistd.exists():
        twistd = Path(shutil.which("twistd") or "twistd")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(ROOT / "src")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    argv = [str(twistd), "-n", "--pidfile=", "allq-server", "--keys", str(keys),
            "--listen", "tcp:0:interface=127.0.0.1"]
    if fsync is not None:
        argv += ["--data-dir", str(tmp / f"data-{name}"), "--fsync", fsync]
    log = tmp / f"allq-{name}.log"
    proc = procs.start_server(argv, log, env)
    deadline = time.monotonic() + sc.START_TIMEOUT
    while time.monotonic() < deadline:
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read_text(errors="replace"))
        if match:
            return proc, int(match.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"allq server {name} did not come up; its log ends:\n{sc._tail(log)}")


def start_beanstalkd(procs: sc.Processes, tmp: Path, binary: str, name: str,
                     options: list[str] | None) -> tuple[subprocess.Popen, int]:
    """A beanstalkd on a free port; with ``options``, a binlog in a fresh directory."""
    extra = [] if options is None else ["-b", str(tmp / f"binlog-{name}"), *options]
    if options is not None:
        (tmp / f"binlog-{name}").mkdir()
    for _attempt in range(5):
        port = sc.free_port()
        log = tmp / f"beanstalkd-{name}.log"
        proc = procs.start_server([binary, "-l", "127.0.0.1", "-p", str(port), *extra], log)
        deadline = time.monotonic() + sc.START_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return proc, port
            time.sleep(0.05)
        if proc.poll() is None:
            raise RuntimeError(f"beanstalkd {name} did not accept connections:\n{sc._tail(log)}")
    raise RuntimeError(f"beanstalkd {name} would not start; its log ends:\n{sc._tail(log)}")


def specs_for(args, mode: str, side: str, port: int, keys: str, label: str) -> list[dict]:
    common = {"warmup": args.warmup, "seconds": args.seconds}
    tube = f"bench-{mode}-{re.sub('[^a-z0-9]+', '-', label)}"
    if side == "allq":
        if mode == "lockstep":
            return [dict(common, name="allq-lockstep", port=port, keys=keys, tube=tube,
                         connections=1, depth=1, batch=0)]
        procs = max(1, min(args.allq_procs, args.connections))
        return [dict(common, name=f"allq-{i}", port=port, keys=keys, tube=tube,
                     connections=n, depth=args.depth, batch=0)
                for i, n in enumerate(sc._split(args.connections, procs))]
    count = 1 if mode == "lockstep" else args.bs_procs
    return [dict(common, name=f"bs-{i}", port=port, tube=tube) for i in range(count)]


def report(args, runs: dict, bs_version: str) -> str:
    def median(key):
        return statistics.median(r["cycles_per_s"] for r in runs[key])

    def per_cpu(key):
        """Cycles per server CPU-second: steadier than cycles/s on a busy machine,
        but meaningless where the server waits for the disk (fsync on every write)."""
        return statistics.median(r["cycles_per_s"] / r["server_cpu"] for r in runs[key]
                                 if r["server_cpu"] > 0)

    out = []
    for mode in args.modes:
        out.append(f"mode {mode}: medians of {args.repeats} x {args.seconds:g} s; "
                   f"/cpu-s = cycles per server CPU-second")
        out.append(f"  {'allq-server':<20}{'cycles/s':>9}{'vs mem':>7}{'/cpu-s':>8}{'vs mem':>7}"
                   f"  | {'beanstalkd':<13}{'cycles/s':>9}{'vs mem':>7}{'/cpu-s':>8}"
                   f"  | {'allq/bs':>7}")
        a0, b0 = (mode, "allq", ALLQ_CONFIGS[0][0]), (mode, "beanstalkd", BEANSTALKD_CONFIGS[0][0])
        for (a_label, _), (b_label, _) in zip(ALLQ_CONFIGS, BEANSTALKD_CONFIGS):
            a, b = (mode, "allq", a_label), (mode, "beanstalkd", b_label)
            out.append(
                f"  {a_label:<20}{median(a):>9,.0f}{median(a) / median(a0):>7.2f}"
                f"{per_cpu(a):>8,.0f}{per_cpu(a) / per_cpu(a0):>7.2f}"
                f"  | {b_label:<13}{median(b):>9,.0f}{median(b) / median(b0):>7.2f}"
                f"{per_cpu(b):>8,.0f}  | {median(a) / median(b):>7.2f}")
        out.append("")
    problems = []
    for key, rs in runs.items():
        for r in rs:
            if r["errors"] or r["undrained"]:
                problems.append(f"  {key}: {r['errors']} errors, {r['undrained']} undrained, "
                                f"first: {r['first_error']}")
    busiest = max(r["other_cpu"] for rs in runs.values() for r in rs)
    if busiest > 0.5:
        problems.append(f"  other work used up to {busiest:.0%} CPU during a window (of "
                        f"{os.cpu_count() * 100}%): absolute figures are depressed; the "
                        f"interleaved ratios hold up better")
    if problems:
        out.append("warnings:")
        out.extend(sorted(set(problems)))
        out.append("")
    out.append(f"beanstalkd {bs_version}; body {sc.BODY_BYTES} bytes; data on "
               f"{filesystem_of(tempfile.gettempdir())}")
    return "\n".join(out)


def filesystem_of(path: str) -> str:
    """The device and type of the file system holding ``path`` (from /proc/mounts)."""
    best = ("?", "?", "")
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, kind, *_ = line.split()
            if path.startswith(mount) and len(mount) >= len(best[2]):
                best = (device, kind, mount)
    return f"{best[0]} ({best[1]})"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured window (5)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats; medians shown (3)")
    parser.add_argument("--quick", action="store_true", help="1 s windows, 1 repeat")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up seconds (1)")
    parser.add_argument("--connections", type=int, default=8, help="allq connections (8)")
    parser.add_argument("--depth", type=int, default=64, help="chains per connection (64)")
    parser.add_argument("--allq-procs", type=int, default=2, help="allq client processes (2)")
    parser.add_argument("--bs-procs", type=int, default=8, help="greenstalk processes (8)")
    parser.add_argument("--modes", default="pipelined",
                        help="comma-separated subset of pipelined,lockstep (pipelined)")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or set(args.modes) - {"pipelined", "lockstep"}:
        parser.error("--modes: pipelined and/or lockstep")
    if args.quick:
        args.seconds, args.repeats = 1.0, 1
    if args.warmup is None:
        args.warmup = 0.3 if args.quick else 1.0
    return args


def main(argv=None) -> int:
    args = parse_args(argv)

    def terminated(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminated)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print("persistence: put -> get -> done cycles/s by fsync policy, allq vs beanstalkd")
    for fact in sc.machine_facts():
        print("  " + fact)
    print(flush=True)
    bs_binary = sc.find_beanstalkd()
    bs_version = subprocess.run([bs_binary, "-v"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
    ctx = mp.get_context("spawn")
    procs = sc.Processes()
    tmp = Path(tempfile.mkdtemp(prefix="allq-bench-persist-"))
    runs: dict[tuple[str, str, str], list[dict]] = {}
    try:
        sys.path[:0] = [str(ROOT / "src")]
        from allq.wire.keys import generate_keys

        keys = tmp / "keys"
        generate_keys(str(keys))
        servers = []
        for i, (label, fsync) in enumerate(ALLQ_CONFIGS):
            proc, port = start_allq(procs, tmp, keys, f"a{i}", fsync)
            servers.append(("allq", label, proc, port))
        for i, (label, options) in enumerate(BEANSTALKD_CONFIGS):
            proc, port = start_beanstalkd(procs, tmp, bs_binary, f"b{i}", options)
            servers.append(("beanstalkd", label, proc, port))
        for repeat in range(args.repeats):
            for mode in args.modes:
                for side, label, proc, port in servers:
                    if proc.poll() is not None:
                        raise RuntimeError(f"{side} {label} exited")
                    worker = sc.allq_worker if side == "allq" else sc.greenstalk_worker
                    specs = specs_for(args, mode, side, port, str(keys), label)
                    result = sc.measure(ctx, procs, worker, specs, proc.pid, args)
                    runs.setdefault((mode, side, label), []).append(result)
                    print(f"  [{repeat + 1}/{args.repeats}] {mode:<9} {side:<10} {label:<20} "
                          f"{result['cycles_per_s']:>9,.0f} cycles/s (server CPU "
                          f"{result['server_cpu']:.0%}, clients {result['client_cpu']:.0%}, "
                          f"others {result['other_cpu']:.0%})", flush=True)
        print()
        print(report(args, runs, bs_version))
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
