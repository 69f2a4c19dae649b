"""JSON-lines cycles per second through ``allq-client``, beside REST and beanstalkd.

Run from the repository root::

    .venv/bin/python bench/jsonl_cycles.py [--seconds S] [--repeats R] [--quick]

Starts ONE ``allq-server``, ONE ``allq-client`` serving both REST and AllQueue's
JSON-lines API (``--jsonl`` on a free loopback port), and ONE beanstalkd, all on
127.0.0.1 with a fresh key set, then measures, R repeats of S seconds each,
interleaved, after a warm-up (medians are shown):

``jsonl-1``        one connection, one cycle at a time: ``put`` line, reply, ``get``
                   line, reply, ``done`` line, reply (AllQueue's gem, minus its
                   process per call).
``jsonl-pipe``     one connection carrying ``--depth`` (64) such cycles at once: the
                   lines of different cycles interleave, replies come back in order.
``jsonl-100``      ``--connections`` (100) connections, one cycle at a time each.
``rest-1``         the REST single-job cycle of ``rest_cycles.py`` with 1 worker:
                   ``POST /job``, ``GET /job``, ``DELETE /job``, keep-alive.
``rest-100``       the same with 100 workers (one connection each).
``beanstalkd``     ``--bs-procs`` (8) greenstalk processes, lock-step put / reserve /
                   delete, cycles/s summed (``common.greenstalk_worker``).

The report gives each median, its ratio to beanstalkd, and JSON lines against
REST at the same concurrency (1 and 100): the line protocol has no HTTP to
parse, so its single-connection cycle should be well above REST's.

Daemon start-up, the REST load generator and the beanstalkd reference are
``rest_cycles.py``'s and ``common.py``'s; this script adds the JSON-lines load
generator (a Twisted process; ``--procs`` of them share the connections).
Every process it starts is stopped by PID in a ``finally``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (bench/common.py: processes, daemons, measurement)
import rest_cycles  # noqa: E402  (the REST load generator and daemon start-up)
from common import BODY_BYTES, START_TIMEOUT  # noqa: E402

DRAIN_TIMEOUT = 30.0
JSONL_SERVING = re.compile(r"serving JSON lines on (\S+):(\d+)")


# -- the JSON-lines load generator (a child process) -------------------------------------


def jsonl_worker(spec: dict, ready_q, go, go_at, result_q) -> None:
    """One load-generator process: ``spec["connections"]`` connections, each with
    ``spec["depth"]`` put -> get -> done chains in flight."""

    def prepare(child: common.ReactorChild) -> None:
        from twisted.internet.defer import Deferred, gatherResults
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
        from twisted.protocols.basic import LineOnlyReceiver

        reactor = child.reactor
        window: common.WindowCounts | None = None

        class Lines(LineOnlyReceiver):
            delimiter = b"\n"
            MAX_LENGTH = 1 << 20

            def __init__(self) -> None:
                self.waiting: list[Deferred] = []
                self.head = 0

            def ask(self, action: str, params: dict) -> Deferred:
                d = Deferred()
                self.waiting.append(d)
                self.sendLine(json.dumps({"action": action, "params": params}).encode())
                return d

            def lineReceived(self, line: bytes) -> None:
                d = self.waiting[self.head]
                self.head += 1
                if self.head > 1024:  # drop answered entries now and then
                    del self.waiting[:self.head]
                    self.head = 0
                d.callback(json.loads(line))

        body = "x" * BODY_BYTES
        tube = spec["tube"]

        async def chain(lines: Lines) -> None:
            window.active += 1
            try:
                while not window.stopping:
                    put = await lines.ask("put", {"tube": tube, "body": body})
                    if "job" not in put:
                        window.error(f"put: {put}")
                        continue
                    got = await lines.ask("get", {"tube": tube})
                    job = got.get("job")
                    if job is None:
                        window.error(f"get: {got}")
                        continue
                    if not job:
                        window.empty_gets += 1
                        continue
                    done = await lines.ask("done", {"job_id": job["job_id"]})
                    if "error" in done.get("response", {}):
                        window.error(f"done: {done}")
                        continue
                    if window.inside(time.monotonic()):
                        window.cycles += 1
            finally:
                window.active -= 1

        connections: list[Lines] = []

        def started(_) -> None:
            nonlocal window
            if not child.ready():
                return
            warm_end = go_at.value + spec["warmup"]
            window = common.WindowCounts(warm_end, warm_end + spec["seconds"])

            def drained(cpu: float) -> None:
                for lines in connections:
                    lines.transport.loseConnection()
                child.finish({"cycles": window.cycles, "errors": window.errors,
                              "empty_gets": window.empty_gets,
                              "first_error": window.first_error,
                              "undrained": window.active, "cpu": cpu})

            window.schedule(reactor, DRAIN_TIMEOUT, drained)
            for lines in connections:
                for _ in range(spec["depth"]):
                    Deferred.fromCoroutine(chain(lines)).addErrback(
                        lambda f: window.error(f"chain crashed: {f.getTraceback()}"))

        def connect() -> None:
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", spec["port"],
                                          timeout=START_TIMEOUT)
            d = gatherResults([connectProtocol(endpoint, Lines())
                               for _ in range(spec["connections"])], consumeErrors=True)
            d.addCallback(connections.extend).addCallbacks(
                started, lambda f: child.fail(f"could not connect: {f.getTraceback()}"))

        rest_cycles._raise_nofile(spec["connections"] + 256)
        reactor.callWhenRunning(connect)

    common.run_reactor_child(
        spec, ready_q, go, result_q,
        START_TIMEOUT * 3 + spec["warmup"] + spec["seconds"] + DRAIN_TIMEOUT,
        "JSON-lines load generator", prepare)


# -- the parent ---------------------------------------------------------------------------


def run_jsonl(ctx, procs, daemons, args, connections: int, depth: int, label: str) -> dict:
    warmup = args.warmup + connections * depth / 500
    shared = {"warmup": warmup, "seconds": args.seconds, "port": daemons["jsonl_port"],
              "tube": f"bench-{label}", "depth": depth}
    jobs = [(jsonl_worker, dict(shared, name=f"{label}-{i}", connections=n))
            for i, n in enumerate(common.split(connections, args.procs))]
    m = common.measure(ctx, procs, jobs,
                       {"client": daemons["client"].pid, "server": daemons["server"].pid},
                       (warmup, warmup + args.seconds), warmup + args.seconds + DRAIN_TIMEOUT + 30)
    rs = m["results"]
    return {
        "rate": sum(r["cycles"] for r in rs) / args.seconds,
        "errors": sum(r["errors"] for r in rs),
        "empty_gets": sum(r["empty_gets"] for r in rs),
        "undrained": sum(r["undrained"] for r in rs),
        "first_error": next((r["first_error"] for r in rs if r["first_error"]), None),
        "client_cpu": m["cpu"]["client"], "server_cpu": m["cpu"]["server"],
        "gen_cpu": m["gen_cpu"], "other_cpu": m["other_cpu"],
    }


def plan(args) -> list[tuple[str, str, int, int]]:
    """(key, kind, connections/workers, depth) in the order each repeat runs them."""
    runs = [("jsonl-1", "jsonl", 1, 1), ("rest-1", "rest", 1, 1),
            ("jsonl-pipe", "jsonl", 1, args.depth),
            (f"jsonl-{args.connections}", "jsonl", args.connections, 1),
            (f"rest-{args.connections}", "rest", args.connections, 1)]
    if not args.no_beanstalkd:
        runs.insert(0, ("beanstalkd", "beanstalkd", args.bs_procs, 1))
    return runs


def report(args, runs: dict, facts: dict) -> str:
    med = {key: statistics.median(r["rate"] for r in rs) for key, rs in runs.items()}
    cpu = {key: (statistics.median(r["client_cpu"] for r in rs),
                 statistics.median(r["server_cpu"] for r in rs),
                 statistics.median(r["gen_cpu"] for r in rs),
                 statistics.median(r["other_cpu"] for r in rs)) for key, rs in runs.items()}
    bs = med.get("beanstalkd", float("nan"))
    out = [f"{'run':<14} {'cycles/s':>10} {'x bstalk':>9} {'cli ms/cyc':>10}   {'runs':<28} "
           f"{'CPU cli/srv/gen/other':>22}"]
    out.append("-" * len(out[0]))
    for key, rs in runs.items():
        c = cpu[key]
        cpu_text = (f"{c[0]:.0%}/{c[1]:.0%}/{c[2]:.0%}/{c[3]:.0%}" if key != "beanstalkd"
                    else f"-/{c[1]:.0%}/{c[2]:.0%}/{c[3]:.0%}")
        each = ", ".join(f"{r['rate']:,.0f}" for r in rs)
        per_cycle = (f"{c[0] / med[key] * 1000:.2f}" if key != "beanstalkd" and med[key]
                     else "-")
        out.append(f"{key:<14} {med[key]:>10,.0f} {med[key] / bs:>9.3f} {per_cycle:>10}   "
                   f"{each:<28} {cpu_text:>22}")
    out.append("")
    n = args.connections
    for jsonl, rest, what in (("jsonl-1", "rest-1", "one connection, lock-step"),
                              (f"jsonl-{n}", f"rest-{n}", f"{n} connections, lock-step")):
        if jsonl in med and rest in med:
            cost = (cpu[rest][0] / med[rest]) / (cpu[jsonl][0] / med[jsonl])
            out.append(f"JSON lines / REST, {what}: {med[jsonl] / med[rest]:.2f}x the "
                       f"cycles/s, {cost:.2f}x fewer allq-client CPU seconds per cycle")
    if "jsonl-pipe" in med and "jsonl-1" in med:
        out.append(f"pipelining (depth {args.depth}) on one connection: "
                   f"{med['jsonl-pipe'] / med['jsonl-1']:.2f}x the lock-step connection")
    out.append("")
    out.append(f"rate: median of {args.repeats} repeat(s) of {args.seconds:g} s after the "
               f"warm-up; a cycle = put, get, done (REST: POST, GET, DELETE /job; "
               f"beanstalkd: put, reserve, delete), {BODY_BYTES}-byte bodies. cli ms/cyc: "
               f"allq-client CPU milliseconds per cycle (holds up better than the rate "
               f"on a busy machine: a lock-step cycle is six process hops). CPU: "
               f"allq-client / allq-server (beanstalkd for its row) / load generators / rest "
               f"of the machine; 100% = one core.")
    problems = common.run_warnings(
        runs, str, "chains undrained", ": the figures are depressed and noisy")
    if problems:
        out += ["", "warnings:", *problems]
    out.append("")
    out.append(f"allq-client pid {facts['client_pid']}, allq-server pid {facts['server_pid']},"
               f" beanstalkd {facts['bs_binary']} ({facts['bs_version']})")
    return "\n".join(out)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_window_options(parser, quick_warmup=0.5)
    parser.add_argument("--connections", type=int, default=100,
                        help="connections (JSON lines) and workers (REST) of the wide runs (100)")
    parser.add_argument("--depth", type=int, default=64,
                        help="cycles in flight on the pipelined connection (64)")
    parser.add_argument("--procs", type=int, default=1,
                        help="load-generator processes the connections are split over (1)")
    parser.add_argument("--bs-procs", type=int, default=8,
                        help="greenstalk processes for the beanstalkd reference (8)")
    parser.add_argument("--no-beanstalkd", action="store_true", help="skip beanstalkd")
    parser.add_argument("--json", metavar="PATH", help="also write every run as JSON here")
    args = parser.parse_args(argv)
    common.settle_window_options(args, quick_warmup=0.5)
    for name in ("seconds", "repeats", "connections", "depth", "procs", "bs_procs"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    # What rest_cycles' REST runs read.
    args.http_client, args.batch = "raw", 100
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    common.stop_on_signals()
    nofile = rest_cycles._raise_nofile(args.connections * 4 + 1024)
    common.print_header("jsonl_cycles: JSON-lines vs REST cycles/s through allq-client "
                        "(one allq-server) vs beanstalkd", f"open-file limit: {nofile}")
    bs_binary, bs_version = common.reference_beanstalkd()
    ctx = mp.get_context("spawn")
    runs: dict[str, list[dict]] = {}
    with common.session("allq-jsonl-bench-") as (procs, tmp):
        daemons = rest_cycles.start_allq(
            procs, tmp, ["--jsonl", "tcp:0:interface=127.0.0.1", "--unix", "none"])
        daemons["jsonl_port"] = int(common.wait_for_log(
            daemons["client"], daemons["client_log"], JSONL_SERVING, "allq-client").group(2))
        bs_proc, bs_port = common.start_beanstalkd(procs, tmp, bs_binary)
        for repeat in range(args.repeats):
            for key, kind, width, depth in plan(args):
                for what, proc in (("allq-server", daemons["server"]),
                                   ("allq-client", daemons["client"])):
                    if proc.poll() is not None:
                        raise RuntimeError(f"{what} exited")
                label = f"{key}-{repeat}"
                if kind == "jsonl":
                    r = run_jsonl(ctx, procs, daemons, args, width, depth, label)
                elif kind == "rest":
                    r = rest_cycles.run_rest(ctx, procs, daemons, args, "single", width, label)
                else:
                    r = rest_cycles.run_beanstalkd(ctx, procs, bs_proc, bs_port, args, label)
                runs.setdefault(key, []).append(r)
                print(f"  [{repeat + 1}/{args.repeats}] {key:<14} {r['rate']:>9,.0f} cycles/s "
                      f"(client CPU {r['client_cpu']:.0%}, server {r['server_cpu']:.0%}, "
                      f"generators {r['gen_cpu']:.0%}, other {r['other_cpu']:.0%}; errors "
                      f"{r['errors']})", flush=True)
        print()
        print(report(args, runs, {"client_pid": daemons["client"].pid,
                                  "server_pid": daemons["server"].pid,
                                  "bs_binary": bs_binary, "bs_version": bs_version}))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"args": vars(args), "facts": common.machine_facts(), "runs": runs}, indent=2,
            default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
