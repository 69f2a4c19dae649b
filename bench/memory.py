"""Memory and speed of the queue core with many queued jobs.

Puts N jobs with distinct 100-byte bodies into one :class:`allq.core.queue.Queue`
(4 tubes, 4 priorities) with the arguments a server's put passes (a fresh ``str``
for the body and for the tube name, as its JSON decoder gives them) and reports
the process RSS before and after, the bytes per queued job, the time per put
(whole batch) and the time per get (median of 3 runs of 100,000 single-job
reservations). Two variants, each measured in a fresh process so one does not
inflate the other's RSS:

* ``ready``: every job is ready;
* ``half-delayed``: half the jobs of each tube have a delay, so half the jobs also hold an
  entry in the deadline heap (and the gets, which reserve, add more).

The requirement it checks: 1,000,000 queued 100-byte jobs in well under 1 GiB RSS.
Usage::

    .venv/bin/python bench/memory.py [--jobs N] [--variant ready|half-delayed|both]

Linux only (reads ``VmRSS`` from ``/proc/self/status``). Uses the core
directly: no reactor, no network.
"""

import argparse
import gc
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BODY_BYTES, use_source_tree  # noqa: E402  (bench/common.py)

use_source_tree()
from allq.core.queue import Queue  # noqa: E402

TUBES = ("bench-0", "bench-1", "bench-2", "bench-3")
PRIORITIES = (0, 1, 2, 3)
GET_RUNS = 3
GET_BATCH = 100_000
START = 1_700_000_000.0
MIB = 1024 * 1024


def rss_bytes() -> int:
    """The resident set size of this process, from ``/proc/self/status``."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def mib(n: float) -> str:
    return f"{n / MIB:8.1f} MiB"


def body_for(number: int) -> str:
    """A distinct 100-character ASCII body (a fresh str object, as a real put has)."""
    head = f"{number:012d}"
    return head + "x" * (BODY_BYTES - len(head))


def tube_for(number: int) -> str:
    """The job's tube name as a fresh str, as each request to a server decodes it."""
    return TUBES[number % len(TUBES)].encode().decode()


def fill(queue: Queue, jobs: int, delayed: bool) -> float:
    """Put ``jobs`` jobs; returns the seconds it took."""
    put = queue.put
    started = time.perf_counter()
    for number in range(jobs):
        # A fresh float per put, as clock.seconds() gives, so ``created`` and
        # the deadlines are real per-job objects.
        now = START + number * 1e-6
        # Tube, delay and priority vary independently, so every tube gets half
        # its jobs delayed and every priority among its ready jobs.
        rounds = number // len(TUBES)
        delay = 3600 + number % 1000 if delayed and rounds % 2 else 0
        put(
            tube_for(number),
            body_for(number),
            now=now,
            priority=PRIORITIES[(rounds // 2) % len(PRIORITIES)],
            delay=delay,
        )
    return time.perf_counter() - started


def time_gets(queue: Queue, first: int, batch: int) -> float:
    """Reserve ``batch`` jobs one at a time, tubes in turn; returns seconds per get.

    :param first: how many gets earlier runs made (keeps the tubes' turns even).
    """
    get = queue.get
    tubes = TUBES
    offset = START + 10
    started = time.perf_counter()
    for number in range(first, first + batch):
        got = get(tubes[number % len(tubes)], now=offset + number * 1e-6)
        if not got:
            raise RuntimeError("ran out of ready jobs; use more --jobs")
    return (time.perf_counter() - started) / batch


def per_job_breakdown(queue: Queue, delayed: bool) -> list[tuple[str, float]]:
    """Rough bytes per job by component (sys.getsizeof, which counts GC headers)."""
    jobs = queue._jobs
    count = len(jobs)
    job = next(iter(jobs.values()))
    parts = [
        (f"Job object ({len(type(job).__slots__)} slots, GC-tracked)", sys.getsizeof(job)),
        ("body str (100 ASCII chars)", sys.getsizeof(job.body)),
        ("id int", sys.getsizeof(job.id)),
        ("created float", sys.getsizeof(job.created)),
        ("Queue._jobs dict slot", sys.getsizeof(jobs) / count),
        ("ready deque slot", 8.0 * (0.5 if delayed else 1.0)),
    ]
    if delayed:
        heap = queue._deadlines._heap
        entry = heap[0]
        parts.append(
            (
                "deadline float + heap tuple + list slot (half the jobs)",
                (sys.getsizeof(0.5) + sys.getsizeof(entry)) * 0.5
                + sys.getsizeof(heap) / count,
            )
        )
    return parts


def run_variant(jobs: int, variant: str) -> None:
    """Measure one variant in this process and print the figures."""
    delayed = variant == "half-delayed"
    ready_jobs = jobs // 2 if delayed else jobs
    # Stay clear of the last round of puts, which may fill the tubes unevenly.
    batch = min(GET_BATCH, max(ready_jobs - 2 * len(TUBES), 0) // GET_RUNS)
    print(f"== variant {variant}: {jobs:,} jobs of {BODY_BYTES}-byte bodies, "
          f"{len(TUBES)} tubes, priorities {PRIORITIES[0]}..{PRIORITIES[-1]}"
          + (", half of each tube delayed" if delayed else ""))
    gc.collect()
    before = rss_bytes()
    queue = Queue(started=START)
    put_seconds = fill(queue, jobs, delayed)
    gc.collect()
    after = rss_bytes()
    grown = after - before
    parts = per_job_breakdown(queue, delayed)
    print(f"RSS before puts:  {mib(before)}")
    print(f"RSS after puts:   {mib(after)}   (+{grown / MIB:.1f} MiB, "
          f"{grown / jobs:.0f} bytes/job)")
    print(f"put: {put_seconds / jobs * 1e6:6.2f} us/job   "
          f"({jobs:,} puts in {put_seconds:.2f} s)")
    if batch:
        runs = [
            time_gets(queue, run * batch, batch) for run in range(GET_RUNS)
        ]
        print(f"get: {statistics.median(runs) * 1e6:6.2f} us/job   "
              f"(median of {GET_RUNS} runs of {batch:,} reserving gets: "
              + ", ".join(f"{r * 1e6:.2f}" for r in runs) + " us)")
        print(f"RSS after gets:   {mib(rss_bytes())}   "
              f"({GET_RUNS * batch:,} jobs now reserved, each with a ttl deadline)")
    print("estimated bytes per queued job, by component:")
    total = sum(size for _, size in parts)
    for name, size in parts:
        print(f"  {size:7.1f}  {name}")
    print(f"  {total:7.1f}  total estimated (pymalloc rounding and arena slack come on top)")
    print()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000, help="jobs to queue")
    parser.add_argument(
        "--variant", choices=("ready", "half-delayed", "both"), default="both",
        help="which variant; 'both' runs each in a fresh process",
    )
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.variant != "both":
        run_variant(args.jobs, args.variant)
        return
    print(f"python {sys.version.split()[0]}")
    for variant in ("ready", "half-delayed"):
        subprocess.run(
            [sys.executable, __file__, "--jobs", str(args.jobs), "--variant", variant],
            check=True,
        )


if __name__ == "__main__":
    main()
