"""A worker with allq.worker's Twisted flavour: handlers that return Deferreds or
are ``async def``, 32 jobs in flight, nothing blocking the reactor.

    python examples/twisted_worker.py       # ALLQ_URL names the allq-client(s)

The same behaviour as examples/sync_worker.py: batched acknowledgements after the
handler finished, touches, backoff and bury, and on SIGTERM or Ctrl-C a bounded,
graceful stop before the reactor exits.
"""

import os
import sys

from twisted.internet import task
from twisted.logger import globalLogBeginner, textFileLogObserver

from allq.worker import Job, TubePolicy, WorkerStats
from allq.worker.tx import TxClient, TxWorker

TUBE = os.environ.get("ALLQ_TUBE", "emails")


def main(reactor):
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])

    async def send_email(job: Job) -> None:
        """The work: yours goes here. An exception fails the job (retried, buried at last)."""
        if not job.body.strip():
            raise ValueError("empty email body")
        await task.deferLater(reactor, 0.01, lambda: None)  # the I/O of your work
        print(f"sent: {job.body}", flush=True)

    def stopped(stats: WorkerStats) -> None:
        print(f"worker stopped: {stats.done} done, {stats.released} released, "
              f"{stats.buried} buried", flush=True)

    client = TxClient(reactor)  # $ALLQ_URL, else http://127.0.0.1:8090
    worker = TxWorker(reactor, TUBE, send_email, client=client, concurrency=32,
                      policy=TubePolicy(max_failures=3,
                                        backoff=float(os.environ.get("ALLQ_BACKOFF", "5"))))
    # Runs until the reactor stops (SIGTERM, Ctrl-C), which waits for the worker to stop.
    return worker.run().addCallback(stopped)


if __name__ == "__main__":
    task.react(main)
