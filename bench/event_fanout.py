"""The cost of an event fanned out to 10 tubes, beside a plain put, through REST.

Run from the repository root::

    .venv/bin/python bench/event_fanout.py [--seconds S] [--repeats R] [--procs P]

Starts ONE ``allq-server`` and ONE ``allq-client`` on 127.0.0.1 (fresh keys, free
ports; ``rest_cycles.start_allq``), registers interest ``"*"`` for ten tubes, then
measures, R times interleaved, for S seconds each after a short warm-up:

``put``    P load processes, each one keep-alive connection running lock-step
           ``POST /job`` (a 100-byte body).
``event``  the same with ``POST /event`` (data of about 100 bytes as JSON): each
           request stores ten jobs, one per tube, on one server, in one journal
           commit when persistence is on.

Reports requests/s and jobs stored/s (medians of the repeats) and the ratio
event/put of each. The tubes are cleared between measurements. Every process is
stopped by PID in a ``finally``; every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import rest_cycles  # noqa: E402

TUBES = [f"fan{i}" for i in range(10)]
BODY = "x" * 100
DATA = {"action": "userCreated", "user": "u" * 70, "n": 1}


def _load(port: int, mode: str, seconds: float, warmup: float, out) -> None:
    """One load process: lock-step requests; counts those answered in the window."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    if mode == "put":
        path, body = "/job", json.dumps({"tube": "plain", "body": BODY})
    else:
        path, body = "/event", json.dumps({"data": DATA})
    headers = {"content-type": "application/json"}
    start = time.monotonic()
    window_start, end = start + warmup, start + warmup + seconds
    done = 0
    while True:
        connection.request("POST", path, body, headers)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"{mode}: HTTP {response.status}")
        now = time.monotonic()
        if now >= end:
            break
        if now >= window_start:
            done += 1
    connection.close()
    out.put(done)


def _call(base: str, method: str, path: str, body: object = None) -> object:
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request(method, path, None if body is None else json.dumps(body),
                       {"content-type": "application/json"})
    response = connection.getresponse()
    reply = json.loads(response.read() or b"null")
    connection.close()
    if response.status != 200:
        raise RuntimeError(f"{method} {path}: HTTP {response.status} {reply}")
    return reply


def measure(base: str, mode: str, args) -> float:
    port = int(base.rsplit(":", 1)[1])
    out = mp.Queue()
    workers = [mp.Process(target=_load, args=(port, mode, args.seconds, args.warmup, out))
               for _ in range(args.procs)]
    for worker in workers:
        worker.start()
    try:
        counts = [out.get(timeout=args.seconds + args.warmup + 60) for _ in workers]
    finally:
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.terminate()
    for tube in ("plain", *TUBES):
        _call(base, "DELETE", f"/tube?tube={tube}")
    return sum(counts) / args.seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--procs", type=int, default=4)
    args = parser.parse_args(argv)
    common.use_source_tree()
    runs: dict[str, list[float]] = {"put": [], "event": []}
    with common.session("allq-event-bench-") as (procs, tmp):
        allq = rest_cycles.start_allq(procs, tmp, [])
        base = allq["base"]
        for tube in TUBES:
            _call(base, "PUT", "/interest", {"tube": tube, "interests": "*"})
        for _ in range(args.repeats):
            for mode in ("put", "event"):
                runs[mode].append(measure(base, mode, args))
                print(f"  {mode}: {runs[mode][-1]:.0f} requests/s", flush=True)
    put, event = statistics.median(runs["put"]), statistics.median(runs["event"])
    print(f"\nmedians of {args.repeats} x {args.seconds:g} s, {args.procs} lock-step "
          "connections, one server, one client:")
    print(f"  plain put            {put:8.0f} requests/s  {put:8.0f} jobs/s")
    print(f"  event -> 10 tubes    {event:8.0f} requests/s  {event * 10:8.0f} jobs/s")
    print(f"  ratio event/put      {event / put:8.2f} (requests)   {event * 10 / put:5.2f} (jobs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
