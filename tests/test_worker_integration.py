"""allq.worker against real daemons: the client's calls, coalesced puts, failover, and
the synchronous and Twisted workers (prefetch, batched acks, touch, backoff and bury,
graceful stop).

Blocking calls from the test thread (the daemons are other processes); every wait
is bounded. The Twisted worker runs in a child process (examples are tested in
``test_examples.py``), the synchronous one in a thread of the test.
"""

import threading
import time

import pytest

from allq.errors import BadRequest, NotFound, WrongState
from allq.worker import BatchError, Client, ClientUnreachable, TubePolicy, Worker

from tests.allq_daemons import fresh_tube
from tests.test_client_integration import wait_for

pytestmark = pytest.mark.integration

DEAD_URL = "http://127.0.0.1:9"  # the discard port: nothing listens there


def tube_counts(client: Client, tube: str) -> dict:
    for server in client.stats():
        for entry in server["stats"]:
            if entry["tube"] == tube:
                return entry
    return {"ready": 0, "reserved": 0, "delayed": 0, "buried": 0}


def start_worker(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run, kwargs={"handle_signals": False})
    thread.start()
    return thread


def stop_worker(worker: Worker, thread: threading.Thread, timeout: float = 20.0) -> float:
    """Stop the worker; how long its run took to return."""
    started = time.monotonic()
    worker.stop()
    thread.join(timeout)
    assert not thread.is_alive(), "the worker did not stop"
    return time.monotonic() - started


# -- the client --------------------------------------------------------------------------------


def test_client_round_trip(allq_url):
    """put, peek, get, touch, release, bury with an error, kick, done: as the REST API."""
    tube = fresh_tube()
    with Client(allq_url) as client:
        job_id = client.put(tube, "hello", ttl=30, priority=3)
        peeked = client.peek(tube)
        assert (peeked.id, peeked.body, peeked.ttl, peeked.priority) == (job_id, "hello", 30, 3)
        job = client.get(tube)
        assert job.id == job_id and client.get(tube) is None
        client.touch(job_id)
        client.release(job_id)
        assert client.get(tube).releases == 1
        client.bury(job_id, error="ValueError: nope")
        assert client.peek(tube, buried=True).error == "ValueError: nope"
        client.kick(job_id)
        again = client.get(tube)
        assert (again.id, again.error) == (job_id, "ValueError: nope")
        client.done(job_id)
        assert client.peek(tube) is None


def test_client_errors_are_allq_errors(allq_url):
    """A 4xx answer raises the matching allq error; a bad put is refused before sending."""
    tube = fresh_tube()
    with Client(allq_url) as client:
        job_id = client.put(tube, "x")
        with pytest.raises(WrongState):
            client.touch(job_id)  # not reserved
        client.done(job_id)
        with pytest.raises(NotFound):
            client.done(job_id)
        with pytest.raises(BadRequest, match="priority"):
            client.put(tube, "x", priority=-1)
        with pytest.raises(BadRequest, match="unknown put option"):
            client.put(tube, "x", colour="red")
        with pytest.raises(BatchError) as caught:
            client.done_many([job_id, job_id])
        assert [type(r) for r in caught.value.results] == [NotFound, NotFound]


def test_coalesced_puts_each_get_their_own_id(allq_url):
    """Puts from many threads at once share batches: fewer requests than puts, every
    caller its own id, every job stored once."""
    tube = fresh_tube()
    calls = []
    with Client(allq_url) as client:
        send = client._transport.call

        def counting(call):
            calls.append(call.path)
            return send(call)

        client._puts._send = counting
        with __import__("concurrent.futures").futures.ThreadPoolExecutor(16) as pool:
            ids = list(pool.map(lambda i: client.put(tube, f"job {i}"), range(400)))
        assert len(set(ids)) == 400
        assert set(calls) == {"/multiple_job"} and len(calls) < 400
        assert tube_counts(client, tube)["ready"] == 400
        taken = client.get_many(tube, 1000, delete=True)
        assert sorted(job.body for job in taken) == sorted(f"job {i}" for i in range(400))


def test_a_bad_put_in_a_coalesced_batch_fails_alone(allq_url):
    """A job the servers refuse (too large) fails its own put, not its neighbours'."""
    tube = fresh_tube()
    with Client(allq_url, put_linger=0.05) as client:
        futures = [client.put_async(tube, "fine"), client.put_async(tube, "x" * 2_000_000),
                   client.put_async(tube, "fine too")]
        assert futures[0].result() and futures[2].result()
        error = futures[1].exception()
        assert error is not None and error.code == "too_large"
        assert tube_counts(client, tube)["ready"] == 2


def test_put_many_and_done_many(allq_url):
    """Batches of up to 1,000, split as needed; ids in order."""
    tube = fresh_tube()
    with Client(allq_url) as client:
        ids = client.put_many([{"body": f"{i}", "ttl": 60} for i in range(1500)], tube=tube)
        assert len(ids) == 1500
        jobs = client.get_many(tube, 1000) + client.get_many(tube, 1000)
        assert [job.body for job in jobs] == [f"{i}" for i in range(1500)]
        assert client.done_many([job.id for job in jobs]) == [job.id for job in jobs]


def test_failover_to_the_next_allq_client(allq_url):
    """An unreachable allq-client is skipped; when none answers, ClientUnreachable."""
    tube = fresh_tube()
    with Client([DEAD_URL, allq_url]) as client:
        job_id = client.put(tube, "x")
        assert client.get(tube).id == job_id
    with Client(DEAD_URL, timeout=2) as client:
        with pytest.raises(ClientUnreachable):
            client.put(tube, "x")
        with pytest.raises(ClientUnreachable):
            client.stats()


# -- the synchronous worker ------------------------------------------------------------------


def test_worker_does_every_job_once_and_acknowledges_them(allq_url):
    """300 jobs, 8 threads: each handled once, the tube empty afterwards."""
    tube = fresh_tube()
    seen = []
    with Client(allq_url) as client:
        client.put_many([f"{i}" for i in range(300)], tube=tube)
        worker = Worker(tube, lambda job: seen.append(job.body), client=client, concurrency=8)
        thread = start_worker(worker)
        try:
            wait_for(lambda: len(seen), lambda n: n >= 300, what="300 jobs handled")
            wait_for(lambda: tube_counts(client, tube),
                     lambda c: c["ready"] == c["reserved"] == 0, what="every job acknowledged")
        finally:
            stop_worker(worker, thread)
        assert sorted(seen) == sorted(f"{i}" for i in range(300))
        assert worker.stats.done == 300


def test_failures_back_off_then_bury_with_the_error(allq_url):
    """A handler that always raises: released with backoff, buried at the 3rd failure,
    its traceback recorded as the job's last error."""
    tube = fresh_tube()
    attempts = []

    def flaky(job):
        attempts.append(time.monotonic())
        raise RuntimeError(f"cannot handle {job.body}")

    with Client(allq_url) as client:
        client.put(tube, "poison")
        worker = Worker(tube, flaky, client=client,
                        policies={tube: TubePolicy(max_failures=3, backoff=0.3)})
        thread = start_worker(worker)
        try:
            buried = wait_for(lambda: client.peek(tube, buried=True), bool,
                              what="the job buried", timeout=15)
        finally:
            stop_worker(worker, thread)
        assert len(attempts) == 3
        # The second attempt came after the 0.3 s backoff, the third after 0.6 s.
        assert attempts[1] - attempts[0] >= 0.3 and attempts[2] - attempts[1] >= 0.6
        assert "RuntimeError: cannot handle poison" in buried.error
        assert (worker.stats.released, worker.stats.buried) == (2, 1)


def test_a_long_handler_is_touched_before_its_ttl_runs_out(allq_url):
    """A 1 s ttl, a 2.5 s handler: touched, never handed out twice, done once."""
    tube = fresh_tube()
    runs = []
    with Client(allq_url) as client:
        client.put(tube, "slow", ttl=1)
        worker = Worker(tube, lambda job: (runs.append(job.id), time.sleep(2.5)), client=client,
                        concurrency=2)
        thread = start_worker(worker)
        try:
            wait_for(lambda: worker.stats.done, lambda n: n == 1, what="the job done",
                     timeout=15)
            wait_for(lambda: tube_counts(client, tube)["reserved"], lambda n: n == 0,
                     what="the job acknowledged")
        finally:
            stop_worker(worker, thread)
        assert len(runs) == 1 and worker.stats.touched >= 2
        assert tube_counts(client, tube)["ready"] == 0


def test_stop_releases_prefetched_jobs_and_finishes_the_running_one(allq_url):
    """One slow handler, ten jobs prefetched: stopping finishes the running job,
    hands the nine others back at once (ready, not left to their ttl) and returns
    within the grace."""
    tube = fresh_tube()
    started = threading.Event()

    def slow(job):
        started.set()
        time.sleep(1.0)

    with Client(allq_url) as client:
        client.put_many([f"{i}" for i in range(10)], tube=tube)
        worker = Worker(tube, slow, client=client, concurrency=1, prefetch=9, grace=10,
                        poll_wait=0.5)
        thread = start_worker(worker)
        assert started.wait(10)
        wait_for(lambda: tube_counts(client, tube)["reserved"], lambda n: n == 10,
                 what="ten jobs held")
        took = stop_worker(worker, thread)
        assert took < 5
        counts = tube_counts(client, tube)
        assert (counts["ready"], counts["reserved"]) == (9, 0)
        assert (worker.stats.done, worker.stats.released) == (1, 9)


def test_stop_after_the_grace_releases_a_handler_still_running(allq_url):
    """A handler that outlives the grace: its job is released, the worker returns."""
    tube = fresh_tube()
    release = threading.Event()
    with Client(allq_url) as client:
        client.put(tube, "stuck")
        worker = Worker(tube, lambda job: release.wait(30), client=client, concurrency=1,
                        grace=0.5, poll_wait=0.2)
        thread = start_worker(worker)
        wait_for(lambda: tube_counts(client, tube)["reserved"], lambda n: n == 1,
                 what="the job held")
        try:
            assert stop_worker(worker, thread) < 5
        finally:
            release.set()
        assert tube_counts(client, tube)["ready"] == 1


def test_worker_waits_out_an_unreachable_client(allq_url):
    """No allq-client answers: the worker keeps retrying and still stops on request."""
    worker = Worker(fresh_tube(), lambda job: None, url=DEAD_URL, poll_wait=0.2)
    thread = start_worker(worker)
    time.sleep(0.3)
    assert stop_worker(worker, thread) < 15
    assert worker.stats.fetched == 0
