"""The cost of a put with ``unique_key`` (and ``concurrency_key``) beside a plain put.

Run from the repository root::

    .venv/bin/python bench/keyed_puts.py [--jobs N] [--cycles N] [--repeats R] [--quick]

Two measurements, each R times (default 3) with the variants interleaved, medians
and the ratio to the plain put of the same repeat shown:

``core``  ``Queue.put`` of N (100,000) jobs into a fresh in-process queue, plain,
          with a distinct ``unique_key`` each, with a ``concurrency_key`` out of
          100, and a put whose ``unique_key`` is live (the duplicate answer, through
          the server's ``Dispatcher``, beside a plain put through it). Also the
          memory per keyed job (tracemalloc, index entries only).
``rest``  lock-step REST cycles (``POST /job``, ``GET /job``, ``DELETE /job``) on
          one keep-alive connection through ONE ``allq-client`` and ONE
          ``allq-server`` (started here on free loopback ports, stopped by PID):
          plain puts beside puts with a distinct ``unique_key`` each.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (bench/common.py: processes, daemons)
from rest_cycles import start_allq  # noqa: E402

common.use_source_tree()

from twisted.internet.task import Clock  # noqa: E402

from allq.core.queue import Queue  # noqa: E402
from allq.server.dispatch import Dispatcher  # noqa: E402


def core_puts(variant: str, jobs: int) -> float:
    """Seconds per put (microseconds come out of the report)."""
    queue = Queue()
    put = queue.put
    if variant == "plain":
        started = time.perf_counter()
        for n in range(jobs):
            put("t", "x", now=0.0)
    elif variant == "unique_key":
        keys = [f"k{n}" for n in range(jobs)]
        started = time.perf_counter()
        for key in keys:
            put("t", "x", now=0.0, unique_key=key)
    else:  # concurrency_key
        keys = [f"c{n % 100}" for n in range(jobs)]
        started = time.perf_counter()
        for key in keys:
            put("t", "x", now=0.0, concurrency_key=key)
    return (time.perf_counter() - started) / jobs


def dispatched_puts(variant: str, jobs: int) -> float:
    """Seconds per put request through the server's dispatcher (decode, core, reply)."""
    clock = Clock()
    dispatcher = Dispatcher(Queue(), clock, lambda: "bench")
    if variant == "duplicate":
        dispatcher.handle({"id": 0, "action": "put",
                           "params": {"tube": "t", "body": "x", "unique_key": "same"}})
    requests = [{"id": n, "action": "put",
                 "params": {"tube": "t", "body": "x",
                            **({"unique_key": "same"} if variant == "duplicate" else {})}}
                for n in range(jobs)]
    started = time.perf_counter()
    for request in requests:
        dispatcher.handle(request)
    return (time.perf_counter() - started) / jobs


def keyed_bytes(jobs: int) -> tuple[float, float]:
    """Bytes per job of the key indexes: a unique key each, a concurrency key of 100."""
    out = []
    for field, key in (("unique_key", "u{}"), ("concurrency_key", "c{}")):
        queue = Queue()
        keys = [key.format(n if field == "unique_key" else n % 100) for n in range(jobs)]
        plain = Queue()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(jobs):
            plain.put("t", "x", now=0.0)
        plain_bytes = tracemalloc.get_traced_memory()[0] - before
        before = tracemalloc.get_traced_memory()[0]
        for k in keys:
            queue.put("t", "x", now=0.0, **{field: k})
        keyed = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        out.append((keyed - plain_bytes) / jobs)
    return out[0], out[1]


def rest_cycles(base: str, cycles: int, unique: bool, run: int) -> float:
    """Cycles per second of put / get / delete on one keep-alive connection."""
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    headers = {"content-type": "application/json"}

    def call(method: str, path: str, body: dict | None = None) -> dict:
        connection.request(method, path, None if body is None else json.dumps(body), headers)
        answer = connection.getresponse()
        data = answer.read()
        if answer.status != 200:
            raise RuntimeError(f"{method} {path}: {answer.status} {data[:200]!r}")
        return json.loads(data) if data else {}

    tube = f"bench{run}{'u' if unique else 'p'}"
    started = time.perf_counter()
    for n in range(cycles):
        job = {"tube": tube, "body": "x" * 100}
        if unique:
            job["unique_key"] = f"r{run}-{n}"
        call("POST", "/job", job)
        got = call("GET", f"/job?tube={tube}")
        call("DELETE", f"/job?job_id={got['id'].replace(',', '%2C')}")
    elapsed = time.perf_counter() - started
    connection.close()
    return cycles / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="10,000 jobs, 200 cycles, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.cycles, args.repeats = 10_000, 200, 1

    core: dict[str, list[float]] = {v: [] for v in ("plain", "unique_key", "concurrency_key")}
    dispatched: dict[str, list[float]] = {"plain": [], "duplicate": []}
    for _ in range(args.repeats):
        for variant in core:
            core[variant].append(core_puts(variant, args.jobs))
        for variant in dispatched:
            dispatched[variant].append(dispatched_puts(variant, args.jobs))
    unique_bytes, concurrency_bytes = keyed_bytes(min(args.jobs, 50_000))

    rest: dict[str, list[float]] = {"plain": [], "unique_key": []}
    stop = common.stop_on_signals
    stop()
    with common.session("allq-keyed-") as (procs, tmp):
        allq = start_allq(procs, tmp, [])
        rest_cycles(allq["base"], min(args.cycles, 200), False, -1)  # warm-up
        for run in range(args.repeats):
            rest["plain"].append(rest_cycles(allq["base"], args.cycles, False, run))
            rest["unique_key"].append(rest_cycles(allq["base"], args.cycles, True, run))

    def line(name: str, values: list[float], peer: list[float], unit: str, scale: float,
             higher_is_better: bool = False) -> str:
        median, base = statistics.median(values), statistics.median(peer)
        ratios = [v / p for v, p in zip(values, peer)]
        return (f"  {name:<22} {median * scale:10.2f} {unit}   ratio to plain "
                f"{statistics.median(ratios):.2f}x (per repeat: "
                f"{', '.join(f'{r:.2f}' for r in ratios)})")

    print(f"core Queue.put, {args.jobs} jobs, median of {args.repeats}:")
    for variant, values in core.items():
        print(line(variant, values, core["plain"], "us/put", 1e6))
    print(f"server Dispatcher put request, {args.jobs} requests, median of {args.repeats}:")
    for variant, values in dispatched.items():
        print(line(variant, values, dispatched["plain"], "us/put", 1e6))
    print(f"index memory per keyed job: unique_key {unique_bytes:.0f} B, "
          f"concurrency_key (100 keys) {concurrency_bytes:.0f} B beyond a plain job")
    print(f"REST lock-step cycles (put/get/delete), {args.cycles} per run, "
          f"median of {args.repeats}:")
    for variant, values in rest.items():
        print(line(variant, values, rest["plain"], "cycles/s", 1.0))


if __name__ == "__main__":
    main()
