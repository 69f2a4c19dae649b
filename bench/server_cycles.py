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

Process bookkeeping, daemon start-up, the greenstalk reference worker, CPU
sampling and machine facts come from ``common.py``; this script keeps the allq
client processes (``allq_worker``), which ``persistence.py`` and
``profile_server.py`` reuse.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (bench/common.py: processes, daemons, measurement)

DRAIN_TIMEOUT = 10.0  # seconds in-flight cycles may take to finish after the window
TARGETS = {"pipelined": 0.5, "batched": 1.0}


# -- client processes: allq over Twisted ------------------------------------------------------


class _Window(common.WindowCounts):
    """Counts, for one allq client process, what completes inside the window."""

    def count(self, n: int = 1) -> None:
        if self.inside(time.monotonic()):
            self.cycles += n

    def failed(self, failure) -> None:
        self.error(f"{failure.type.__name__}: {failure.getErrorMessage()}")


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
        self._send_put().addCallbacks(self._get, self._fail)

    def _send_put(self):
        return self._conn.request("put", self._put_params)

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


class _BatchChain(_Chain):
    """Batch of puts -> get(count) -> batch of dones, one round after another."""

    def __init__(self, connection, window: _Window, tube: str, body: str, size: int) -> None:
        super().__init__(connection, window, tube, body)
        self._puts = [("put", self._put_params)] * size
        self._get_params = {"tube": tube, "count": size}

    def _send_put(self):
        return self._conn.batch(self._puts)

    def _get(self, outcomes) -> None:
        self._note_errors(outcomes)
        super()._get(outcomes)

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


def allq_worker(spec: dict, ready_q, go, go_at, result_q) -> None:
    """Open ``spec["connections"]`` connections and run the mode's chains on them."""

    def prepare(child: common.ReactorChild) -> None:
        common.use_source_tree()
        from twisted.internet.defer import gatherResults

        from allq.peer.connection import connect
        from allq.client.keys import load_client_keys

        reactor = child.reactor
        keys = load_client_keys(spec["keys"], {})
        endpoint = f"tcp:host=127.0.0.1:port={spec['port']}"
        body = "x" * common.BODY_BYTES

        def connected(connections) -> None:
            if not child.ready():
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

            def drained(cpu: float) -> None:
                for connection in connections:
                    connection.close()
                child.finish({
                    "cycles": window.cycles, "errors": window.errors,
                    "empty_gets": window.empty_gets, "first_error": window.first_error,
                    "undrained": window.active, "cpu": cpu,
                })

            window.schedule(reactor, DRAIN_TIMEOUT, drained)
            for chain in chains:
                chain.start()

        def start() -> None:
            d = gatherResults(
                [connect(reactor, endpoint, keys, request_timeout=30.0)
                 for _ in range(spec["connections"])],
                consumeErrors=True,
            )
            d.addCallback(connected).addErrback(lambda failure: child.fail(failure.getTraceback()))

        reactor.callWhenRunning(start)

    # Bound the whole process: start-up, go, warm-up, window and drain.
    common.run_reactor_child(
        spec, ready_q, go, result_q,
        common.START_TIMEOUT * 3 + spec["warmup"] + spec["seconds"] + DRAIN_TIMEOUT,
        "allq worker", prepare)


# -- the parent: one measurement -------------------------------------------------------------


def measure(ctx, procs: common.Processes, target, specs: list[dict], server_pid: int,
            args) -> dict:
    """Run one measurement's client processes; cycles/s summed, and the CPU shares."""
    m = common.measure(ctx, procs, [(target, spec) for spec in specs], {"server": server_pid},
                       (args.warmup, args.warmup + args.seconds), DRAIN_TIMEOUT + 20)
    results = m["results"]
    return {
        "cycles_per_s": sum(r["cycles"] for r in results) / args.seconds,
        "errors": sum(r["errors"] for r in results),
        "empty_gets": sum(r["empty_gets"] for r in results),
        "undrained": sum(r.get("undrained", 0) for r in results),
        "first_error": next((r["first_error"] for r in results if r["first_error"]), None),
        "server_cpu": m["cpu"]["server"],
        "client_cpu": m["gen_cpu"],
        "machine_busy": m["busy"],
        # What the rest of the machine (other users, this parent) burnt meanwhile.
        "other_cpu": m["other_cpu"],
    }


def plans(args, allq_port: int, keys: str, bs_port: int) -> list[tuple[str, str, object, list]]:
    """(mode, side, worker, specs) for each measurement of one repeat."""
    shared = {"warmup": args.warmup, "seconds": args.seconds}
    procs_per = max(1, min(args.allq_procs, args.connections))

    def allq(mode: str, procs: int, connections: int, depth: int, batch: int) -> list[dict]:
        return [
            dict(shared, name=f"allq-{mode}-{i}", port=allq_port, keys=keys,
                 tube=f"bench-{mode}", connections=n, depth=depth, batch=batch)
            for i, n in enumerate(common.split(connections, procs))
        ]

    def greenstalk(label: str, count: int) -> list[dict]:
        return [dict(shared, name=f"bs-{label}-{i}", port=bs_port, tube=f"bench-{label}")
                for i in range(count)]

    wanted = set(args.modes)
    if wanted & {"pipelined", "batched"}:
        wanted.add("multi")  # their beanstalkd reference
    every = [
        ("lockstep", "allq", allq_worker, allq("lockstep", 1, 1, 1, 0)),
        ("lockstep", "beanstalkd", common.greenstalk_worker, greenstalk("lockstep", 1)),
        ("pipelined", "allq", allq_worker,
         allq("pipelined", procs_per, args.connections, args.depth, 0)),
        ("batched", "allq", allq_worker,
         allq("batched", procs_per, args.connections, args.batch_depth, args.batch)),
        ("multi", "beanstalkd", common.greenstalk_worker, greenstalk("multi", args.bs_procs)),
    ]
    return [plan for plan in every if plan[0] in wanted]


# -- the parent: report ---------------------------------------------------------------------


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
    problems = common.run_warnings(
        runs, lambda key: f"{key[1]} {key[0]}", "chains undrained",
        f": the figures are depressed and the ratios unreliable on this {os.cpu_count()}-core "
        f"machine; compare 'cycles per server CPU-second', or rerun when it is quiet")
    if problems:
        out.append("")
        out.append("warnings:")
        out.extend(problems)
    out.append("")
    out.append(f"beanstalkd: {bs_binary} ({bs_version}); body {common.BODY_BYTES} bytes; "
               f"each side ran alone while measured; all clients are Python processes")
    return "\n".join(out)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_window_options(parser, quick_warmup=0.3)
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
    common.settle_window_options(args, quick_warmup=0.3)
    for name in ("seconds", "repeats", "connections", "depth", "batch", "batch_depth",
                 "allq_procs", "bs_procs"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.batch > 1000:
        parser.error("--batch is at most 1000 (the server's batch limit)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    common.stop_on_signals()
    common.print_header(
        "server_cycles: full put -> get -> done cycles/s, one allq server vs one beanstalkd")
    bs_binary, bs_version = common.reference_beanstalkd()
    ctx = mp.get_context("spawn")
    runs: dict[tuple[str, str], list[dict]] = {}
    with common.session("allq-bench-") as (procs, tmp):
        keys = common.generate_keys(tmp)
        allq_proc, allq_port = common.start_allq_server(procs, tmp, keys)
        bs_proc, bs_port = common.start_beanstalkd(procs, tmp, bs_binary)
        print(f"allq server pid {allq_proc.pid} on 127.0.0.1:{allq_port}; "
              f"beanstalkd pid {bs_proc.pid} on 127.0.0.1:{bs_port}", flush=True)
        for repeat in range(args.repeats):
            for mode, side, worker, specs in plans(args, allq_port, str(keys), bs_port):
                server = allq_proc if side == "allq" else bs_proc
                if server.poll() is not None:
                    raise RuntimeError(f"the {side} server exited; its log ends:\n"
                                       f"{common.tail(tmp / 'allq-server.log')}")
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
                {"args": vars(args), "facts": common.machine_facts(),
                 "runs": {f"{side}/{mode}": rs for (mode, side), rs in runs.items()}},
                indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
