"""Failover time: from a primary's SIGKILL to the first of its jobs served by its backup.

Run from the repository root::

    .venv/bin/python bench/failover.py [--repeats R] [--failover-after S] [--jobs N]

Each repeat starts a backup, a primary (``--replica`` to the backup, its own data
directory) and one ``allq-client`` that knows both (``--failover-after S``). It puts
``--jobs`` jobs on the primary (the backup is drained, so every put goes there),
kills the primary with SIGKILL, deletes its data directory, and polls ``GET /job``
every 10 ms until a job bearing the primary's id comes back. Printed per repeat and
as the median: the time to that job, and how much of it is ``--failover-after`` (the
wait the client is told to allow a server before it gives up on it) versus the
promotion itself. beanstalkd has no replication or failover to compare with: its
jobs stay lost until the disk comes back.

Every process is stopped by PID in a ``finally``; temporary directories are removed.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import statistics
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (bench/common.py: processes, daemons)

CLIENT_SERVING = re.compile(r"serving REST on (\S+):(\d+) ")
POLL = 0.01


def call(base: str, method: str, path: str, body: object = None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    headers = {} if body is None else {"content-type": "application/json"}
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
    except OSError as e:
        return 0, str(e)


def one_failover(args, procs: common.Processes, tmp: Path, keys: Path, run: int) -> dict:
    backup, backup_port = common.start_allq_server(
        procs, tmp, keys, name=f"backup-{run}", options=["--data-dir", str(tmp / f"b{run}")])
    data = tmp / f"a{run}"
    primary, primary_port = common.start_allq_server(
        procs, tmp, keys, name=f"primary-{run}",
        options=["--data-dir", str(data), "--replica", f"127.0.0.1:{backup_port}",
                 # A primary names itself to its backup before it listens (port 0 here).
                 "--server-id", f"primary{run}"])
    log = tmp / f"client-{run}.log"
    client = procs.start_server(
        [*common.twistd(), "-n", "--pidfile=", "allq-client", "--keys", str(keys),
         "--servers", f"127.0.0.1:{primary_port},127.0.0.1:{backup_port}",
         "--failover-after", str(args.failover_after),
         "--http", "tcp:0:interface=127.0.0.1"], log, common.daemon_env())
    base = f"http://127.0.0.1:{common.wait_for_log(client, log, CLIENT_SERVING, 'allq-client').group(2)}"
    deadline = time.monotonic() + common.START_TIMEOUT
    while True:
        status, health = call(base, "GET", "/health")
        if status == 200 and health.get("up") == 2:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"the client never saw both servers:\n{common.tail(log)}")
        time.sleep(0.05)
    backup_id = next(s["server_id"] for s in health["servers"]
                     if s["address"].endswith(f":{backup_port}"))
    primary_id = next(s["server_id"] for s in health["servers"]
                      if s["address"].endswith(f":{primary_port}"))
    call(base, "PUT", f"/drain?server_id={backup_id}")
    for number in range(args.jobs):
        status, reply = call(base, "POST", "/job", {"tube": "failover", "body": f"job {number}"})
        if status != 200 or not reply["job_id"].startswith(primary_id + ","):
            raise RuntimeError(f"put {number} did not land on the primary: {status} {reply}")
    killed = time.monotonic()
    primary.send_signal(signal.SIGKILL)
    primary.wait(10)
    shutil.rmtree(data)
    polls = 0
    while True:
        polls += 1
        status, job = call(base, "GET", "/job?tube=failover")
        if status == 200 and job:
            if not job["id"].startswith(primary_id + ","):
                raise RuntimeError(f"a job from elsewhere: {job}")
            served = time.monotonic() - killed
            break
        if time.monotonic() - killed > args.limit:
            raise RuntimeError(f"no job served within {args.limit} s:\n{common.tail(log)}")
        time.sleep(POLL)
    for proc in (client, backup):
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    return {"seconds": served, "polls": polls}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--failover-after", type=float, default=1.0)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--limit", type=float, default=60.0)
    args = parser.parse_args(argv)
    common.stop_on_signals()
    common.print_header("allq failover: SIGKILL of a primary (and its data directory) to the "
                        "first of its jobs served by its backup",
                        f"--failover-after {args.failover_after:g} s, {args.jobs} jobs on the "
                        f"primary, {args.repeats} repeats")
    with common.session("allq-failover-") as (procs, tmp):
        keys = common.generate_keys(tmp)
        runs = [one_failover(args, procs, tmp, keys, run) for run in range(args.repeats)]
    for number, run in enumerate(runs, 1):
        print(f"  run {number}: first job served after {run['seconds']:.3f} s")
    median = statistics.median(run["seconds"] for run in runs)
    print(f"median: {median:.3f} s, of which --failover-after {args.failover_after:g} s; "
          f"promotion and the first get: {median - args.failover_after:.3f} s")
    print("beanstalkd: no replication; a lost disk loses its jobs (no figure to compare)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
