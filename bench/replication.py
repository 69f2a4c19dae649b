"""What replication costs: put -> get -> done cycles/s with replication off, strict and
available, with fsync never and always, beside beanstalkd.

Run from the repository root::

    .venv/bin/python bench/replication.py [--seconds S] [--repeats R] [--quick]
                                          [--modes pipelined,lockstep]

One run starts, side by side: per fsync policy (``never``, ``always``) three allq
primaries with a fresh ``--data-dir`` each (no ``--replica``; ``--replica`` with
``--replication strict``; with ``--replication available``), each strict/available
one with its own backup; and two beanstalkd servers (``-b DIR -F`` and ``-b DIR -f
0``, binlog never / always fsynced) for reference. It measures them one at a time,
interleaved, R times, and prints the median cycles/s of each, its cost against the
same fsync policy without replication, and allq / beanstalkd for the matching
policy.

The backup: a real ``allq-server`` (``--keys`` of the same key directory, whose
``authorized_keys`` holds ``server.pub``); ``--backup standin`` uses
``tests/replica_fake.py`` instead, a stand-in that acknowledges every stream message
without applying it, to tell the primary's own cost from the backup's (the report
says which ran).
A primary is measured only once its log says the backup holds a full replica.

Client processes and measurement: ``server_cycles.py`` / ``persistence.py``;
daemon start-up and process bookkeeping: ``common.py``. Every process it starts is
stopped by PID in a ``finally``; temporary directories are removed.
"""

from __future__ import annotations

import multiprocessing as mp
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import persistence  # noqa: E402  (the sibling benchmark's client specs)
import server_cycles as sc  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STANDIN = ROOT / "tests" / "replica_fake.py"
REPLICATION = ("off", "strict", "available")
FSYNC = ("never", "always")
BEANSTALKD_CONFIGS = {"never": ["-F"], "always": ["-f", "0"]}
SYNCED = re.compile(r"holds a full replica")
STANDIN_PORT = re.compile(r"listening on (\d+)")


def start_backup(procs, tmp: Path, keys: Path, kind: str, name: str) -> int:
    """A backup on a free loopback port; returns its port."""
    if kind == "real":
        _, port = common.start_allq_server(procs, tmp, keys, name=name, options=[
            "--data-dir", str(tmp / f"data-{name}"), "--fsync", "never"])
        return port
    log = tmp / f"{name}.log"
    proc = procs.start_server([sys.executable, str(STANDIN), str(keys), "-", "0"], log,
                              common.daemon_env())
    return int(common.wait_for_log(proc, log, STANDIN_PORT, name).group(1))


def start_primary(procs, tmp: Path, keys: Path, name: str, fsync: str, replication: str,
                  backup_port: int | None):
    options = ["--data-dir", str(tmp / f"data-{name}"), "--fsync", fsync]
    if replication != "off":
        options += ["--server-id", name, "--replica", f"127.0.0.1:{backup_port}",
                    "--replication", replication]
    proc, port = common.start_allq_server(procs, tmp, keys, name=name, options=options)
    if replication != "off":
        common.wait_for_log(proc, tmp / f"{name}.log", SYNCED, name)
    return proc, port


def report(args, runs: dict, bs_version: str, backup: str) -> str:
    def median(key):
        return statistics.median(r["cycles_per_s"] for r in runs[key])

    out = []
    for mode in args.modes:
        out.append(f"mode {mode}: medians of {args.repeats} x {args.seconds:g} s")
        out.append(f"  {'fsync':<8}{'replication':<13}{'cycles/s':>10}{'vs off':>8}"
                   f"  | {'beanstalkd':<12}{'cycles/s':>10}  | {'allq/bs':>7}")
        for fsync in FSYNC:
            off = median((mode, "allq", f"{fsync}/off"))
            bs = median((mode, "beanstalkd", fsync))
            for replication in REPLICATION:
                value = median((mode, "allq", f"{fsync}/{replication}"))
                out.append(f"  {fsync:<8}{replication:<13}{value:>10,.0f}{value / off:>8.2f}"
                           f"  | {' '.join(BEANSTALKD_CONFIGS[fsync]):<12}{bs:>10,.0f}"
                           f"  | {value / bs:>7.2f}")
        out.append("")
    problems = common.run_warnings(runs, str, "undrained", "", empty_gets=False)
    if problems:
        out.append("warnings:")
        out.extend(problems)
        out.append("")
    out.append(f"backup: {backup}; beanstalkd {bs_version}; body {common.BODY_BYTES} bytes")
    return "\n".join(out)


def parse_args(argv=None):
    parser = persistence.cycle_options(__doc__.split("\n\n")[0])
    parser.add_argument("--backup", choices=("real", "standin"), default="real",
                        help="the backup: a real allq-server, or tests/replica_fake.py "
                             "that acknowledges without applying (real)")
    return persistence.settle_cycle_options(parser, argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    common.stop_on_signals()
    common.print_header("replication: put -> get -> done cycles/s, replication off / "
                        "strict / available, fsync never / always, vs beanstalkd",
                        f"backup: {args.backup}")
    bs_binary, bs_version = common.reference_beanstalkd()
    ctx = mp.get_context("spawn")
    runs: dict[tuple[str, str, str], list[dict]] = {}
    with common.session("allq-bench-repl-") as (procs, tmp):
        keys = common.generate_keys(tmp)
        servers = []
        for fsync in FSYNC:
            for replication in REPLICATION:
                name = f"p-{fsync}-{replication}"
                backup = (None if replication == "off"
                          else start_backup(procs, tmp, keys, args.backup, f"b-{fsync}-{replication}"))
                proc, port = start_primary(procs, tmp, keys, name, fsync, replication, backup)
                servers.append(("allq", f"{fsync}/{replication}", proc, port))
            proc, port = common.start_beanstalkd(procs, tmp, bs_binary, f"beanstalkd-{fsync}",
                                                 BEANSTALKD_CONFIGS[fsync])
            servers.append(("beanstalkd", fsync, proc, port))
        time.sleep(0.5)  # let every primary's start-up settle before measuring
        for repeat in range(args.repeats):
            for mode in args.modes:
                for side, label, proc, port in servers:
                    if proc.poll() is not None:
                        raise RuntimeError(f"{side} {label} exited")
                    worker = sc.allq_worker if side == "allq" else common.greenstalk_worker
                    specs = persistence.specs_for(args, mode, side, port, str(keys), label)
                    result = sc.measure(ctx, procs, worker, specs, proc.pid, args)
                    runs.setdefault((mode, side, label), []).append(result)
                    print(f"  [{repeat + 1}/{args.repeats}] {mode:<9} {side:<10} {label:<18} "
                          f"{result['cycles_per_s']:>9,.0f} cycles/s (server CPU "
                          f"{result['server_cpu']:.0%})", flush=True)
        print()
        print(report(args, runs, bs_version, args.backup))
    return 0


if __name__ == "__main__":
    sys.exit(main())
