"""allq.worker: a Python library for allq producers and workers.

Two flavours with the same concepts:

* synchronous (threads, the standard library's HTTP client):
  :class:`Client` and :class:`Worker`, exported here;
* Twisted (treq): :class:`allq.worker.tx.TxClient` and :class:`allq.worker.tx.TxWorker`.

::

    from allq.worker import Client, Worker

    client = Client("http://127.0.0.1:8090")      # or a list: failover between them
    job_id = client.put("emails", "send #42", ttl=60)

    def send(job):                                  # raise to retry (backoff), bury at last
        print("sending", job.body)

    Worker("emails", send, concurrency=8).run()     # until SIGTERM / Ctrl-C

Puts made close together travel in one ``POST /multiple_job``; a worker
prefetches with long polls, acknowledges in batches only after the handler
returned (at least once), touches long-running jobs, releases failed ones with
exponential backoff and buries them with their error after
:attr:`TubePolicy.max_failures`. It talks to the allq-client's REST API only.
"""

from allq.worker.api import DEFAULT_URL, ENV_URL, BatchError, ClientUnreachable, JobId
from allq.worker.client import Client
from allq.worker.jobs import Job, TubePolicy
from allq.worker.worker import Worker, WorkerStats

__all__ = ["DEFAULT_URL", "ENV_URL", "BatchError", "Client", "ClientUnreachable", "Job",
           "JobId", "TubePolicy", "Worker", "WorkerStats"]
