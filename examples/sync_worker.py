"""A worker with allq.worker, in threads: the jobs of one tube, eight at a time.

    python examples/sync_worker.py          # ALLQ_URL names the allq-client(s)

A handler that returns finishes its job (acknowledged in batches); one that
raises has its job released with exponential backoff and, at the third failure,
buried with the traceback recorded (``allq peek emails --buried`` shows it).
Long jobs are touched before their ttl runs out. SIGTERM (docker stop, systemd)
or Ctrl-C: no new jobs are started, running ones finish (up to 30 s), jobs
fetched ahead are handed back at once, and the worker exits.
"""

import logging
import os

from allq.worker import Job, TubePolicy, Worker

TUBE = os.environ.get("ALLQ_TUBE", "emails")


def send_email(job: Job) -> None:
    """The work: yours goes here. An exception fails the job (retried, buried at last)."""
    if not job.body.strip():
        raise ValueError("empty email body")
    # One write per line: handlers run in threads, and print() writes the text and
    # its newline apart, so two threads' lines could run into each other.
    print(f"sent: {job.body}\n", end="", flush=True)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    worker = Worker(TUBE, send_email, concurrency=8,
                    policy=TubePolicy(max_failures=3, backoff=float(
                        os.environ.get("ALLQ_BACKOFF", "5"))))
    stats = worker.run()  # until SIGTERM or Ctrl-C
    print(f"worker stopped: {stats.done} done, {stats.released} released, "
          f"{stats.buried} buried", flush=True)


if __name__ == "__main__":
    main()
