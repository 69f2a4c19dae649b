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
this script imports; daemon start-up and process bookkeeping come from ``common.py``):

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
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (bench/common.py: processes, daemons, measurement)
import server_cycles as sc  # noqa: E402  (the sibling benchmark's client processes)

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


def allq_options(tmp: Path, name: str, fsync: str | None) -> list[str]:
    """allq-server options for one row: with ``fsync``, a fresh data directory."""
    if fsync is None:
        return []
    return ["--data-dir", str(tmp / f"data-{name}"), "--fsync", fsync]


def specs_for(args, mode: str, side: str, port: int, keys: str, label: str) -> list[dict]:
    shared = {"warmup": args.warmup, "seconds": args.seconds}
    tube = f"bench-{mode}-{re.sub('[^a-z0-9]+', '-', label)}"
    if side == "allq":
        if mode == "lockstep":
            return [dict(shared, name="allq-lockstep", port=port, keys=keys, tube=tube,
                         connections=1, depth=1, batch=0)]
        procs = max(1, min(args.allq_procs, args.connections))
        return [dict(shared, name=f"allq-{i}", port=port, keys=keys, tube=tube,
                     connections=n, depth=args.depth, batch=0)
                for i, n in enumerate(common.split(args.connections, procs))]
    count = 1 if mode == "lockstep" else args.bs_procs
    return [dict(shared, name=f"bs-{i}", port=port, tube=tube) for i in range(count)]


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
    problems = common.run_warnings(
        runs, str, "undrained",
        f" (of {os.cpu_count() * 100}%): absolute figures are depressed; the interleaved "
        f"ratios hold up better", empty_gets=False)
    if problems:
        out.append("warnings:")
        out.extend(problems)
        out.append("")
    out.append(f"beanstalkd {bs_version}; body {common.BODY_BYTES} bytes; data on "
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


def cycle_options(description: str) -> argparse.ArgumentParser:
    """The options of a cycles benchmark (this one, ``replication.py``)."""
    parser = argparse.ArgumentParser(description=description)
    common.add_window_options(parser, quick_warmup=0.3)
    parser.add_argument("--connections", type=int, default=8, help="allq connections (8)")
    parser.add_argument("--depth", type=int, default=64, help="chains per connection (64)")
    parser.add_argument("--allq-procs", type=int, default=2, help="allq client processes (2)")
    parser.add_argument("--bs-procs", type=int, default=8, help="greenstalk processes (8)")
    parser.add_argument("--modes", default="pipelined",
                        help="comma-separated subset of pipelined,lockstep (pipelined)")
    return parser


def settle_cycle_options(parser: argparse.ArgumentParser, argv=None):
    """Parse and check what :func:`cycle_options` (and a caller) defined."""
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or set(args.modes) - {"pipelined", "lockstep"}:
        parser.error("--modes: pipelined and/or lockstep")
    common.settle_window_options(args, quick_warmup=0.3)
    return args


def parse_args(argv=None):
    return settle_cycle_options(cycle_options(__doc__.split("\n\n")[0]), argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    common.stop_on_signals()
    common.print_header(
        "persistence: put -> get -> done cycles/s by fsync policy, allq vs beanstalkd")
    bs_binary, bs_version = common.reference_beanstalkd()
    ctx = mp.get_context("spawn")
    runs: dict[tuple[str, str, str], list[dict]] = {}
    with common.session("allq-bench-persist-") as (procs, tmp):
        keys = common.generate_keys(tmp)
        servers = []
        for i, (label, fsync) in enumerate(ALLQ_CONFIGS):
            proc, port = common.start_allq_server(procs, tmp, keys, name=f"allq-a{i}",
                                                  options=allq_options(tmp, f"a{i}", fsync))
            servers.append(("allq", label, proc, port))
        for i, (label, options) in enumerate(BEANSTALKD_CONFIGS):
            proc, port = common.start_beanstalkd(procs, tmp, bs_binary, f"beanstalkd-b{i}",
                                                 options)
            servers.append(("beanstalkd", label, proc, port))
        for repeat in range(args.repeats):
            for mode in args.modes:
                for side, label, proc, port in servers:
                    if proc.poll() is not None:
                        raise RuntimeError(f"{side} {label} exited")
                    worker = sc.allq_worker if side == "allq" else common.greenstalk_worker
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


if __name__ == "__main__":
    sys.exit(main())
