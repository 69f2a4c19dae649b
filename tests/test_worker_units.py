"""allq.worker's pure parts and its Twisted flavour, without a network: the retry
policy, URLs, put checks, batch answers, and the coalescers and TxWorker on a Clock."""

import threading

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase

from allq.errors import BadRequest, NotFound, TooLarge, Unavailable
from allq.vocabulary import MAX_ERROR_LENGTH
from allq.worker import Worker, api
from allq.worker.coalesce import PutCoalescer
from allq.worker.jobs import Job, TubePolicy, error_text
from allq.worker.tx import TxPutCoalescer, TxWorker


# -- policy and errors -------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap_then_buries():
    """Failures 1..4 wait 1, 2, 4, 8 s (capped); the 5th buries."""
    policy = TubePolicy(max_failures=5, backoff=1, max_backoff=5)
    assert [policy.after_failure(releases) for releases in range(6)] == [1, 2, 4, 5, None, None]
    assert TubePolicy(max_failures=1).after_failure(0) is None


@pytest.mark.parametrize("bad", [{"max_failures": 0}, {"backoff": -1}, {"touch_at": 1},
                                 {"touch_at": 0}])
def test_a_bad_policy_is_refused(bad):
    with pytest.raises((BadRequest, ValueError)):
        TubePolicy(**bad)


def test_error_text_keeps_the_end_of_a_long_traceback():
    """The exception's own line (the end) survives the cut to the server's limit."""
    try:
        raise ValueError("x" * 5000 + " the end")
    except ValueError as e:
        text = error_text(e)
    assert len(text) == MAX_ERROR_LENGTH and text.startswith("…") and text.endswith(" the end")


# -- the API's pure helpers --------------------------------------------------------------------


def test_client_urls(monkeypatch):
    monkeypatch.delenv(api.ENV_URL, raising=False)
    assert api.client_urls() == [api.DEFAULT_URL]
    monkeypatch.setenv(api.ENV_URL, "10.0.0.5:8090, http://h:1/prefix/")
    assert api.client_urls() == ["http://10.0.0.5:8090", "http://h:1/prefix"]
    assert api.client_urls(["http://a:1"]) == ["http://a:1"]
    for bad in ("https://a:1", "http://a:x", "http://:1", " , ", "http://a:1?q=1"):
        with pytest.raises(ValueError):
            api.client_urls(bad)


def test_new_job_checks_what_the_client_would():
    assert api.new_job("t", "b", {"ttl": 5, "priority": None}) == {"tube": "t", "body": "b",
                                                                  "ttl": 5}
    for tube, body, options in [("bad tube", "b", {}), ("t", 5, {}), ("t", "b", {"ttl": 0}),
                                ("t", "b", {"delay": 1, "run_at": 5}),
                                ("t", "b", {"parent_id": "nope"}),
                                ("t", "b", {"idempotency_key": "has space"}),
                                ("t", "b", {"colour": "red"})]:
        with pytest.raises(BadRequest):
            api.new_job(tube, body, options)


def test_batch_outcomes():
    """All stored; some failed (per index); refused whole."""
    assert api.batch_outcomes(200, {"job_ids": ["a,1", "a,2"]}, 2) == ["a,1", "a,2"]
    partial = api.batch_outcomes(404, {"error": "not_found", "detail": "x", "job_ids": [
        "a,1", None], "errors": [{"index": 1, "error": "not_found", "detail": "gone"}]}, 2)
    assert partial[0] == "a,1" and isinstance(partial[1], NotFound)
    whole = api.batch_outcomes(503, {"error": "unavailable", "detail": "no server"}, 3)
    assert len(whole) == 3 and all(isinstance(e, Unavailable) for e in whole)
    assert api.batch_outcomes(502, None, 1)[0].code == "http_502"
    assert api.should_fail_over(whole[0]) and not api.should_fail_over(partial[1])


# -- the synchronous coalescer ------------------------------------------------------------------


def test_a_batch_refused_whole_for_bad_input_is_sent_again_job_by_job():
    """One bad job does not fail its neighbours' puts."""
    sent = []

    def send(call):
        sent.append(call)
        if call.path == "/multiple_job":
            return 400, {"error": "bad_request", "detail": "jobs[1]: nope"}
        if call.body["body"] == "bad":
            return 400, {"error": "bad_request", "detail": "nope"}
        return 200, {"job_id": f"a,{len(sent)}"}

    coalescer = PutCoalescer(send, linger=10, senders=1)
    coalescer._in_flight = 1  # as if a batch were in flight: the three wait together
    futures = [coalescer.submit({"tube": "t", "body": body}) for body in ("ok", "bad", "ok2")]
    coalescer._in_flight = 0
    coalescer.close()
    assert [call.path for call in sent] == ["/multiple_job", "/job", "/job", "/job"]
    assert futures[0].result() and futures[2].result()
    assert isinstance(futures[1].exception(), BadRequest)


# -- the Twisted coalescer ------------------------------------------------------------------------


class TxPutCoalescerTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.calls = []
        self.coalescer = TxPutCoalescer(self.send, self.clock, linger=0.002, senders=1)

    def send(self, call):
        d = Deferred()
        self.calls.append((call, d))
        return d

    def answer(self, index, count):
        call, d = self.calls[index]
        d.callback((200, {"job_ids": [f"s,{index}{i}" for i in range(count)]}))

    def test_puts_of_one_turn_leave_together_and_the_next_wait_for_a_sender(self):
        """Three puts in one turn: one batch at the turn's end; puts made while it
        flies wait for it, then go as the next batch; each gets its own id."""
        first = [self.coalescer.submit({"tube": "t", "body": str(i)}) for i in range(3)]
        self.assertEqual(self.calls, [])
        self.clock.advance(0)
        self.assertEqual(len(self.calls), 1)
        self.assertEqual(len(self.calls[0][0].body["jobs"]), 3)
        later = [self.coalescer.submit({"tube": "t", "body": "x"}) for _ in range(2)]
        self.clock.advance(1)
        self.assertEqual(len(self.calls), 1)  # the only sender is busy
        self.answer(0, 3)
        self.assertEqual([self.successResultOf(d) for d in first], ["s,00", "s,01", "s,02"])
        self.clock.advance(0.002)
        self.assertEqual(len(self.calls[1][0].body["jobs"]), 2)
        self.answer(1, 2)
        self.assertEqual([self.successResultOf(d) for d in later], ["s,10", "s,11"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_each_put_gets_its_own_error(self):
        d1 = self.coalescer.submit({"tube": "t", "body": "a"})
        d2 = self.coalescer.submit({"tube": "t", "body": "b"})
        self.clock.advance(0)
        self.calls[0][1].callback((413, {"error": "too_large", "detail": "x", "job_ids": [
            "s,1", None], "errors": [{"index": 1, "error": "too_large", "detail": "big"}]}))
        self.assertEqual(self.successResultOf(d1), "s,1")
        self.failureResultOf(d2, TooLarge)


# -- the Twisted worker ----------------------------------------------------------------------------


class FakeTxClient:
    """An in-memory allq-client: ``jobs`` are handed out once; actions are recorded."""

    def __init__(self, clock, jobs):
        self.clock = clock
        self.jobs = list(jobs)
        self.actions = []

    def get_many(self, tube, count, *, wait=0, delete=False):
        taken, self.jobs = self.jobs[:count], self.jobs[count:]
        if not taken and wait:
            return deferLater(self.clock, wait, lambda: [])  # a long poll, empty
        return succeed(taken)

    def done_many(self, job_ids):
        self.actions.append(("done", list(job_ids)))
        return succeed(list(job_ids))

    def release(self, job_id, *, delay=0):
        self.actions.append(("release", job_id, delay))
        return succeed(None)

    def bury(self, job_id, *, error=None):
        self.actions.append(("bury", job_id, error))
        return succeed(None)

    def touch(self, job_id):
        self.actions.append(("touch", job_id))
        return succeed(None)


def job(n, releases=0, ttl=10):
    return Job(f"s,{n}", "t", f"body {n}", ttl=ttl, releases=releases)


class TxWorkerTests(SynchronousTestCase):
    def worker(self, jobs, handler, **options):
        self.clock = Clock()
        self.client = FakeTxClient(self.clock, jobs)
        options.setdefault("poll_wait", 1.0)
        return TxWorker(self.clock, "t", handler, client=self.client, **options)

    def test_acknowledges_in_batches_after_the_handler_returned(self):
        """Three quick jobs: one DELETE batch after ack_interval, not three."""
        worker = self.worker([job(1), job(2), job(3)], lambda j: None, ack_interval=0.005)
        worker.start()
        self.assertEqual(self.client.actions, [])
        self.clock.advance(0.005)
        self.assertEqual(self.client.actions, [("done", ["s,1", "s,2", "s,3"])])

    def test_waits_for_a_deferred_handler_before_acknowledging(self):
        pending = Deferred()
        worker = self.worker([job(1)], lambda j: pending)
        worker.start()
        self.clock.advance(1)
        self.assertEqual(self.client.actions, [])
        pending.callback(None)
        self.clock.advance(0.005)
        self.assertEqual(self.client.actions, [("done", ["s,1"])])

    def test_failures_release_with_backoff_then_bury(self):
        """releases=0 fails: released after 2 s (backoff 2); releases=2 fails: buried
        (max_failures 3) with the error."""
        def fail(j):
            raise KeyError(j.body)

        worker = self.worker([job(1), job(2, releases=2)], fail,
                             policy=TubePolicy(max_failures=3, backoff=2))
        worker.start()
        self.assertEqual(self.client.actions[0], ("release", "s,1", 2))
        action, job_id, error = self.client.actions[1]
        self.assertEqual((action, job_id), ("bury", "s,2"))
        self.assertIn("KeyError: 'body 2'", error)

    def test_touches_held_jobs_before_their_ttl(self):
        """A job with a 2 s ttl still running after 1 s (touch_at 0.5) is touched."""
        worker = self.worker([job(1, ttl=2)], lambda j: Deferred())
        worker.start()
        self.clock.advance(0.75)
        self.assertEqual(self.client.actions, [])
        self.clock.advance(0.5)
        self.assertEqual(self.client.actions, [("touch", "s,1")])
        worker.stop()
        self.clock.advance(31)

    def test_stop_releases_jobs_not_started_and_leaves_no_timer(self):
        """Concurrency 1: one job runs, two wait; stop lets the first finish within
        the grace, releases the other two at once, flushes the ack, cancels timers."""
        running = Deferred()
        worker = self.worker([job(1), job(2), job(3)],
                             lambda j: running if j.id == "s,1" else None,
                             concurrency=1, grace=5)
        worker.start()
        stopped = worker.stop()
        self.assertNoResult(stopped)
        running.callback(None)
        self.clock.advance(1)  # the fetcher's long poll ends (poll_wait)
        stats = self.successResultOf(stopped)
        self.assertEqual(sorted(self.client.actions), [
            ("done", ["s,1"]), ("release", "s,2", 0), ("release", "s,3", 0)])
        self.assertEqual((stats.done, stats.released), (1, 2))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_handler_past_the_grace_is_released(self):
        worker = self.worker([job(1)], lambda j: Deferred(), grace=5)
        worker.start()
        stopped = worker.stop()
        self.clock.advance(4.9)
        self.assertNoResult(stopped)
        self.clock.advance(0.1)
        self.clock.advance(1)  # the fetcher's long poll ends (poll_wait)
        self.successResultOf(stopped)
        self.assertEqual(self.client.actions, [("release", "s,1", 0)])
        self.assertEqual(self.clock.getDelayedCalls(), [])


# -- the synchronous worker with an in-memory client --------------------------------------------


class FakeClient:
    """The synchronous client's worker-facing methods, in memory, thread-safe enough
    for one fetcher and one acker: ``outages`` acknowledgement calls fail first."""

    def __init__(self, jobs, outages=0):
        self.jobs = list(jobs)
        self.outages = outages
        self.done = []
        self.attempts = 0

    def get_many(self, tube, count, *, wait=0, delete=False):
        taken, self.jobs = self.jobs[:count], self.jobs[count:]
        if not taken and wait:
            threading.Event().wait(wait)  # a long poll that finds nothing
        return taken

    def done_many(self, job_ids):
        self.attempts += 1
        if self.outages:
            self.outages -= 1
            raise api.ClientUnreachable("down for a moment")
        self.done += job_ids
        return list(job_ids)

    def release(self, job_id, *, delay=0):
        pass


def test_acknowledgements_wait_out_a_short_outage():
    """The allq-client is unreachable for the first two acknowledgements: the batch is
    sent again (after short pauses) instead of leaving the jobs to their ttl."""
    client = FakeClient([job(n) for n in range(5)], outages=2)
    worker = Worker("t", lambda j: None, client=client, concurrency=2, poll_wait=0.01)
    thread = threading.Thread(target=worker.run, kwargs={"handle_signals": False})
    thread.start()
    try:
        for _ in range(200):  # bounded: the retries pause 0.2 s then 0.5 s
            if len(client.done) == 5:
                break
            threading.Event().wait(0.05)
    finally:
        worker.stop()
        thread.join(10)
    assert sorted(client.done) == [f"s,{n}" for n in range(5)]
    assert client.attempts >= 3 and worker.stats.done == 5
