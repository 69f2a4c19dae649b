"""Put jobs on allq with allq.worker: one at a time, from many threads, or in a batch.

    python examples/producer.py 1000        # ALLQ_URL names the allq-client(s)

Puts made at about the same time travel in one POST /multiple_job: a web app's
request threads calling ``client.put`` share batches without knowing it, and a
loop of ``put_async`` fills whole batches. Each put still gets its own id (or
its own error).
"""

import os
import sys
from concurrent.futures import ThreadPoolExecutor

from allq.worker import Client

TUBE = os.environ.get("ALLQ_TUBE", "emails")


def main(count: int) -> None:
    with Client() as client:  # $ALLQ_URL, else http://127.0.0.1:8090
        # One put: waits for its id.
        first = client.put(TUBE, "welcome #0", ttl=60)
        # Many threads putting at once: their puts are coalesced into batches.
        with ThreadPoolExecutor(8) as pool:
            threaded = list(pool.map(lambda i: client.put(TUBE, f"welcome #{i}", ttl=60),
                                     range(1, count // 2)))
        # One thread, no waiting: futures, resolved as their batches come back.
        futures = [client.put_async(TUBE, f"welcome #{i}", ttl=60)
                   for i in range(count // 2, count)]
        ids = [first, *threaded, *(future.result() for future in futures)]
    print(f"put {len(ids)} jobs on {TUBE}, first {ids[0]}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
