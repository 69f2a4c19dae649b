"""greenstalk put / reserve / delete cycles: allq's beanstalkd front-end vs beanstalkd.

Run from the repository root::

    .venv/bin/python bench/beanstalk_cycles.py [--seconds S] [--repeats R] [--quick]

Starts ONE ``allq-server``, ONE ``allq-client`` (``--beanstalk`` on a free port,
REST on another) and ONE beanstalkd, all on 127.0.0.1, then measures, R repeats
of S seconds each, interleaved (medians are shown):

``beanstalkd``  ``--bs-procs`` (8) greenstalk processes doing lock-step
                put / reserve(timeout=0) / delete against beanstalkd itself
                (``common.greenstalk_worker``);
``allq-bs``     the same processes and code against allq-client's beanstalkd port;
``rest``        allq's own REST single-call cycle (``POST /job``, ``GET /job``,
                ``DELETE /job``) with ``--rest-workers`` (8) workers, measured by
                ``rest_cycles.py``'s code.

Targets: allq-bs >= 0.4x beanstalkd and >= 3x rest. Also reported: the
allq-client's CPU per beanstalkd command (its CPU share / commands per second,
three commands per cycle). Every process started is stopped by PID when it ends.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import rest_cycles  # noqa: E402

BEANSTALK_SERVING = re.compile(r"serving the beanstalkd protocol on .*?port=(\d+)")


def run_allq_beanstalk(ctx, procs, daemons, port: int, args, label: str) -> dict:
    shared = {"warmup": args.warmup, "seconds": args.seconds, "port": port,
              "tube": f"bench-{label}"}
    jobs = [(common.greenstalk_worker, dict(shared, name=f"{label}-{i}"))
            for i in range(args.bs_procs)]
    m = common.measure(ctx, procs, jobs,
                       {"client": daemons["client"].pid, "server": daemons["server"].pid},
                       (args.warmup, args.warmup + args.seconds),
                       args.warmup + args.seconds + 60)
    rs = m["results"]
    return {"rate": sum(r["cycles"] for r in rs) / args.seconds,
            "empty_gets": sum(r["empty_gets"] for r in rs),
            "client_cpu": m["cpu"]["client"], "server_cpu": m["cpu"]["server"],
            "gen_cpu": m["gen_cpu"]}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bs-procs", type=int, default=8)
    parser.add_argument("--rest-workers", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="1 repeat of 2 s")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.repeats, args.warmup = 2.0, 1, 0.5
    # What rest_cycles.run_rest reads.
    args.http_client, args.procs, args.batch = "raw", 2, 100
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    common.stop_on_signals()
    common.print_header("beanstalk_cycles: greenstalk cycles/s, allq's beanstalkd "
                        "front-end vs beanstalkd (and allq REST)")
    bs_binary, bs_version = common.reference_beanstalkd()
    ctx = mp.get_context("spawn")
    runs: dict[str, list[dict]] = {"beanstalkd": [], "allq-bs": [], "rest": []}
    with common.session("allq-beanstalk-bench-") as (procs, tmp):
        daemons = rest_cycles.start_allq(
            procs, tmp, ["--beanstalk", "tcp:0:interface=127.0.0.1"])
        match = common.wait_for_log(daemons["client"], daemons["client_log"],
                                    BEANSTALK_SERVING, "allq-client beanstalk port")
        allq_port = int(match.group(1))
        bs_proc, bs_port = common.start_beanstalkd(procs, tmp, bs_binary)
        for repeat in range(args.repeats):
            for mode in runs:
                label = f"{mode}-{repeat}"
                if mode == "beanstalkd":
                    r = rest_cycles.run_beanstalkd(ctx, procs, bs_proc, bs_port, args, label)
                elif mode == "allq-bs":
                    r = run_allq_beanstalk(ctx, procs, daemons, allq_port, args, label)
                else:
                    r = rest_cycles.run_rest(ctx, procs, daemons, args, "single",
                                             args.rest_workers, label)
                runs[mode].append(r)
                print(f"  [{repeat + 1}/{args.repeats}] {mode:<10} {r['rate']:>9,.0f} cycles/s"
                      f" (allq-client CPU {r['client_cpu']:.0%}, server "
                      f"{r['server_cpu']:.0%}, generators {r['gen_cpu']:.0%})", flush=True)
                time.sleep(0.5)
    median = {mode: statistics.median(r["rate"] for r in rs) for mode, rs in runs.items()}
    ours = runs["allq-bs"]
    cpu_per_command = statistics.median(
        r["client_cpu"] / (3 * r["rate"]) for r in ours if r["rate"]) * 1e6
    print()
    print(f"beanstalkd {bs_version}: {median['beanstalkd']:,.0f} cycles/s "
          f"({args.bs_procs} greenstalk processes)")
    print(f"allq beanstalkd front-end: {median['allq-bs']:,.0f} cycles/s = "
          f"{median['allq-bs'] / median['beanstalkd']:.2f}x beanstalkd (target >= 0.4x), "
          f"{median['allq-bs'] / median['rest']:.2f}x allq REST (target >= 3x)")
    print(f"allq REST single-call cycle: {median['rest']:,.0f} cycles/s "
          f"({args.rest_workers} workers)")
    print(f"allq-client CPU per beanstalkd command: {cpu_per_command:.0f} µs (median)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
