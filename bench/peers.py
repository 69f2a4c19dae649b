"""allq.worker beside Dramatiq + Redis: enqueue, then drain, N no-op jobs.

What a Python team compares when it picks a queue, each side used as its own
documentation shows (issue 13's table):

* **Dramatiq** 2.x on Redis (Debian's ``redis-server``, started here on a free
  loopback port): ``noop.send()`` from the bench process, then ``dramatiq
  peers_dramatiq --processes 2 --threads 8`` drains.
* **allq**: one ``allq-server`` and one ``allq-client`` (real keys); producers put
  through :class:`allq.worker.Client` (coalesced into batches), then two processes
  each running a default :class:`allq.worker.Worker` (8 threads, prefetch, batched
  acknowledgements) drain.

Producers are measured two ways on each side: one thread (Dramatiq ``send()`` in a
loop; allq ``put_async`` in a loop, which is what a single-threaded producer uses
to have its puts coalesced) and ``--producer-threads`` (8) threads each calling the
blocking ``send()`` / ``put()``. The drain is timed from the first job taken to the
last one acknowledged (worker start-up excluded), by polling the queue's depth
(Redis ``HLEN`` of the queue's message hash; allq ``/stats`` ready + reserved).
CPU per job: the system under test's processes (broker or servers, workers), from
/proc, and the whole machine's busy time, over the drain.

    .venv/bin/python bench/peers.py                   # 20,000 jobs, 3 repeats
    .venv/bin/python bench/peers.py --jobs 2000 --repeats 1   # a smoke test

Needs ``redis-server`` (``scripts/bootstrap.sh --bench`` installs it) and the
``bench`` extra (``dramatiq[redis]``); without them it measures allq alone.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.use_source_tree()

CLIENT_SERVING = re.compile(r"serving REST on (\S+):(\d+) ")
POLL = 0.02  # seconds between two looks at the queue's depth
DRAIN_TIMEOUT = 300.0
TUBE = "peers"


# -- the allq worker processes ------------------------------------------------------------------


def allq_worker_main(url: str, tube: str) -> None:
    """One process of the allq fleet: a default Worker until SIGTERM."""
    from allq.worker import Worker

    Worker(tube, lambda job: None, url=url).run()


def start_allq_workers(procs: common.Processes, tmp: Path, url: str, count: int) -> list:
    env = common.daemon_env()
    return [procs.start_server([sys.executable, __file__, "--allq-worker", url],
                               tmp / f"allq-worker-{i}.log", env) for i in range(count)]


# -- allq ------------------------------------------------------------------------------------------


def start_allq(procs: common.Processes, tmp: Path) -> dict:
    keys = common.generate_keys(tmp)
    server, port = common.start_allq_server(procs, tmp, keys)
    log = tmp / "allq-client.log"
    client = procs.start_server(
        [*common.twistd(), "-n", "--pidfile=", "allq-client", "--keys", str(keys),
         "--servers", f"127.0.0.1:{port}", "--http", "tcp:0:interface=127.0.0.1"], log,
        common.daemon_env())
    match = common.wait_for_log(client, log, CLIENT_SERVING, "allq-client")
    base = f"http://127.0.0.1:{match.group(2)}"
    deadline = time.monotonic() + common.START_TIMEOUT
    while True:
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"allq-client never reached its server:\n{common.tail(log)}")
        time.sleep(0.1)
    return {"url": base, "pids": {"allq-server": server.pid, "allq-client": client.pid}}


def allq_depth(client) -> int:
    depth = 0
    for server in client.stats():
        for entry in server["stats"]:
            if entry["tube"] == TUBE:
                depth += entry["ready"] + entry["reserved"]
    return depth


def allq_enqueue(url: str, jobs: int, threads: int) -> float:
    """Put ``jobs`` no-op jobs; the rate (jobs/s)."""
    from allq.worker import Client

    with Client(url) as client:
        started = time.perf_counter()
        if threads == 1:
            futures = [client.put_async(TUBE, str(n)) for n in range(jobs)]
            for future in futures:
                future.result()
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda n: client.put(TUBE, str(n)), range(jobs)))
        return jobs / (time.perf_counter() - started)


def allq_run(procs, tmp, daemons: dict, args, threads: int) -> dict:
    from allq.worker import Client

    rate = allq_enqueue(daemons["url"], args.jobs, threads)
    with Client(daemons["url"]) as client:
        workers = start_allq_workers(procs, tmp, daemons["url"], args.worker_processes)
        pids = {**daemons["pids"], **{f"worker-{i}": w.pid for i, w in enumerate(workers)}}
        drained = drain(lambda: allq_depth(client), args.jobs, pids)
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(30)
    return {"enqueue": rate, **drained}


# -- Dramatiq ----------------------------------------------------------------------------------------


def start_redis(procs: common.Processes, tmp: Path) -> dict | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    port = common.free_port()
    proc = procs.start_server([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no"], tmp / "redis.log")
    deadline = time.monotonic() + common.START_TIMEOUT
    import redis

    client = redis.Redis(port=port)
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"redis-server did not start:\n{common.tail(tmp / 'redis.log')}")
            time.sleep(0.05)
    return {"port": port, "url": f"redis://127.0.0.1:{port}/0", "pid": proc.pid,
            "client": client}


def dramatiq_run(procs, tmp, redis_info: dict, args, threads: int) -> dict:
    os.environ["PEERS_REDIS_URL"] = redis_info["url"]
    import peers_dramatiq

    client = redis_info["client"]
    client.flushall()
    messages = f"dramatiq:{peers_dramatiq.QUEUE}.msgs"
    started = time.perf_counter()
    if threads == 1:
        for n in range(args.jobs):
            peers_dramatiq.noop.send(n)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(peers_dramatiq.noop.send, range(args.jobs)))
    rate = args.jobs / (time.perf_counter() - started)
    env = {**common.daemon_env(), "PEERS_REDIS_URL": redis_info["url"],
           "PYTHONPATH": str(Path(__file__).resolve().parent)}
    workers = procs.start_server(
        [sys.executable, "-m", "dramatiq", "peers_dramatiq", "--processes",
         str(args.worker_processes), "--threads", str(args.threads)],
        tmp / "dramatiq.log", env)
    drained = drain(lambda: client.hlen(messages), args.jobs,
                    {"redis": redis_info["pid"], "dramatiq": workers.pid})
    workers.terminate()
    workers.wait(30)
    return {"enqueue": rate, **drained}


# -- the drain -----------------------------------------------------------------------------------------


def drain(depth, jobs: int, pids: dict[str, int]) -> dict:
    """Wait for the queue to start shrinking, then for it to be empty; the rate over
    that span and the CPU it cost."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while (left := depth()) >= jobs:
        if time.monotonic() > deadline:
            raise RuntimeError("the workers never took a job")
        time.sleep(POLL / 4)
    started = time.perf_counter()
    cpu0 = sum(common.cpu_seconds(pid) for pid in pids.values())
    busy0 = common.machine_busy_seconds()
    first = left
    while left > 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{left} jobs never drained")
        time.sleep(POLL)
        left = depth()
    took = time.perf_counter() - started
    cpu = sum(common.cpu_seconds(pid) for pid in pids.values()) - cpu0
    busy = common.machine_busy_seconds() - busy0
    return {"drain": first / took, "cpu_us": cpu / first * 1e6,
            "machine_us": busy / first * 1e6}


# -- the report -------------------------------------------------------------------------------------------


def median(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def report(runs: dict, args) -> str:
    lines = [f"{args.jobs:,} no-op jobs, enqueue then drain; medians of {args.repeats} "
             f"run(s); drain by {args.worker_processes} processes x {args.threads} threads",
             "",
             f"{'system':<44} {'enqueue/s':>10} {'drain/s':>9} {'CPU us/job':>11} "
             f"{'machine us/job':>15}"]
    for key, rs in runs.items():
        if rs:
            lines.append(f"{label(key):<44} {median(rs, 'enqueue'):>10,.0f} "
                         f"{median(rs, 'drain'):>9,.0f} {median(rs, 'cpu_us'):>11,.0f} "
                         f"{median(rs, 'machine_us'):>15,.0f}")
    lines.append("")
    for threads in (1, args.producer_threads):
        allq, peer = runs.get(("allq", threads)), runs.get(("dramatiq", threads))
        if allq and peer:
            lines.append(f"{threads} producer thread(s): allq/Dramatiq enqueue "
                         f"{median(allq, 'enqueue') / median(peer, 'enqueue'):.2f}x, drain "
                         f"{median(allq, 'drain') / median(peer, 'drain'):.2f}x")
    return "\n".join(lines)


def label(key) -> str:
    system, threads = key
    producer = ("send() loop" if system == "dramatiq" else "put_async loop") if threads == 1 \
        else f"{threads} threads x " + ("send()" if system == "dramatiq" else "put()")
    name = "Dramatiq + Redis" if system == "dramatiq" else "allq.worker"
    return f"{name}, {producer}"


def versions() -> str:
    """The peer's versions, for the report's header."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for dist in ("dramatiq", "redis"):
        try:
            found.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            found.append(f"{dist} missing")
    server = shutil.which("redis-server")
    if server:
        found.append(subprocess.run([server, "--version"], capture_output=True, text=True,
                                    timeout=10).stdout.split(" sha=")[0].strip())
    return "peers: " + ", ".join(found)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker-processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8, help="threads per worker process")
    parser.add_argument("--producer-threads", type=int, default=8)
    parser.add_argument("--json", metavar="PATH", help="write every run to PATH")
    parser.add_argument("--allq-worker", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.allq_worker:
        allq_worker_main(args.allq_worker, TUBE)
        return 0
    common.stop_on_signals()
    common.print_header("bench/peers.py: allq.worker beside Dramatiq + Redis", versions())
    keys = [(system, threads) for threads in (1, args.producer_threads)
            for system in ("dramatiq", "allq")]
    runs: dict = {key: [] for key in keys}
    with common.session("allq-peers-") as (procs, tmp):
        daemons = start_allq(procs, tmp)
        redis_info = start_redis(procs, tmp)
        if redis_info is None:
            print("redis-server not found (scripts/bootstrap.sh --bench installs it): "
                  "measuring allq alone\n", flush=True)
        for repeat in range(args.repeats):
            for system, threads in keys:
                if system == "dramatiq" and redis_info is None:
                    continue
                if system == "dramatiq":
                    result = dramatiq_run(procs, tmp, redis_info, args, threads)
                else:
                    result = allq_run(procs, tmp, daemons, args, threads)
                runs[(system, threads)].append(result)
                print(f"  run {repeat + 1}: {label((system, threads))}: "
                      f"enqueue {result['enqueue']:,.0f}/s, drain {result['drain']:,.0f}/s, "
                      f"{result['cpu_us']:,.0f} us/job", flush=True)
    print()
    print(report(runs, args))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": {
            label(key): rs for key, rs in runs.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
