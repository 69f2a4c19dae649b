"""allq.worker and the newer REST features: keyed puts (their duplicate flag,
through every put path), concurrency limits, events, interests and schedules."""

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from allq.errors import BadRequest, NotFound
from allq.worker import Client, JobId, api
from allq.worker.coalesce import PutCoalescer
from allq.worker.tx import TxClient, TxPutCoalescer


def test_keys_are_put_options_checked_before_sending():
    job = api.new_job("t", "b", {"unique_key": "report 7", "concurrency_key": "acct-42"})
    assert job == {"tube": "t", "body": "b", "unique_key": "report 7",
                   "concurrency_key": "acct-42"}
    for options in [{"unique_key": ""}, {"unique_key": "x" * 201},
                    {"concurrency_key": "a\nb"}, {"unique_key": 7},
                    {"unique_key": "k", "parent_id": "Kx3c0VtQ1a,1763900000000001"}]:
        with pytest.raises(BadRequest):
            api.new_job("t", "b", options)


def test_put_outcomes_mark_the_duplicates_by_index():
    ids = api.put_outcomes(200, {"job_ids": ["a,1", "a,2", "a,3"], "duplicates": [1]}, 3)
    assert ids == ["a,1", "a,2", "a,3"]
    assert [i.duplicate for i in ids] == [False, True, False]
    assert all(isinstance(i, JobId) and isinstance(i, str) for i in ids)
    partial = api.put_outcomes(413, {"error": "too_large", "detail": "x", "job_ids": [
        "a,1", None], "errors": [{"index": 1, "error": "too_large", "detail": "big"}],
        "duplicates": [0]}, 2)
    assert partial[0].duplicate and isinstance(partial[1], api.AllQError)
    single = api.put_reply({"action": "put", "job_id": "a,9", "duplicate": True})
    assert single == "a,9" and single.duplicate
    assert not api.put_reply({"action": "put", "job_id": "a,9"}).duplicate


def test_calls_for_concurrency_events_interests_and_schedules():
    assert api.concurrency("sync", 2).target == "/concurrency?tube=sync&limit=2"
    for limit in (0, True, "2"):
        with pytest.raises(BadRequest):
            api.concurrency("sync", limit)
    call = api.event({"action": "userCreated"}, {"priority": 3, "ttl": None})
    assert (call.method, call.path, call.body) == (
        "POST", "/event", {"data": {"action": "userCreated"}, "priority": 3})
    with pytest.raises(BadRequest):
        api.event(["not", "an", "object"], {})
    assert api.set_interest("audit", "*").body == {"tube": "audit", "interests": "*"}
    with pytest.raises(BadRequest):
        api.set_interest("audit", ["action"])
    call = api.schedule("sweep", "maint", {"every": 300, "body": "s", "cron": None})
    assert call.body == {"name": "sweep", "tube": "maint", "every": 300, "body": "s"}


def test_each_coalesced_put_gets_its_own_duplicate_flag():
    def send(call):
        assert call.path == "/multiple_job"
        jobs = call.body["jobs"]
        return 200, {"job_ids": [f"a,{i}" for i in range(len(jobs))],
                     "duplicates": [i for i, job in enumerate(jobs) if job["body"] == "again"]}

    coalescer = PutCoalescer(send, linger=10, senders=1)
    coalescer._in_flight = 1  # as if a batch were in flight: the three wait together
    futures = [coalescer.submit({"tube": "t", "body": body, "unique_key": "k"})
               for body in ("first", "again", "other")]
    coalescer._in_flight = 0
    coalescer.close()
    assert [f.result().duplicate for f in futures] == [False, True, False]


def test_a_put_sent_alone_after_a_refused_batch_keeps_its_flag():
    def send(call):
        if call.path == "/multiple_job":
            return 400, {"error": "bad_request", "detail": "jobs[1]: nope"}
        return 200, {"job_id": "a,1", "duplicate": call.body["body"] == "again"}

    coalescer = PutCoalescer(send, linger=10, senders=1)
    coalescer._in_flight = 1
    futures = [coalescer.submit({"tube": "t", "body": b}) for b in ("first", "again")]
    coalescer._in_flight = 0
    coalescer.close()
    assert [f.result().duplicate for f in futures] == [False, True]


class FakeTransport:
    """Answers each call from ``replies`` (path → reply), recording it."""

    def __init__(self, replies):
        self.replies = replies
        self.calls = []

    def call(self, call):
        self.calls.append(call)
        status, reply = self.replies[call.path]
        return status, reply(call) if callable(reply) else reply

    def close(self):
        pass


def _client(replies):
    client = Client("http://127.0.0.1:1")
    client._transport = FakeTransport(replies)
    client._puts = PutCoalescer(client._transport.call, linger=0, senders=1)
    return client


def test_sync_client_methods():
    client = _client({
        "/multiple_job": (200, {"job_ids": ["a,1", "a,2"], "duplicates": [1]}),
        "/concurrency": (200, {"action": "concurrency", "tube": "sync", "limit": 2,
                               "servers": 1}),
        "/event": (404, {"error": "not_found", "detail": "no tube is interested"}),
        "/interest": (200, {"action": "interest"}),
        "/interests": (200, {"interests": [{"tube": "audit", "interests": "*"}]}),
        "/schedule": (200, {"action": "schedule", "schedule": {"name": "sweep"}}),
        "/schedules": (200, {"schedules": [{"name": "sweep"}]}),
    })
    with client:
        ids = client.put_many(["a", "b"], tube="t", unique_key="k")
        assert [i.duplicate for i in ids] == [False, True]
        assert client.concurrency("sync", 2)["limit"] == 2
        with pytest.raises(NotFound):
            client.event({"action": "x"}, unmatched="error")
        client.set_interest("audit", {"action": "^x$"})
        assert client.interests() == [{"tube": "audit", "interests": "*"}]
        assert client.schedule("sweep", "maint", every=300) == {"name": "sweep"}
        assert client.schedules() == [{"name": "sweep"}]
        with pytest.raises(BadRequest):  # checked here: nothing sent
            client.put("t", "b", concurrency_key="")
    paths = [call.path for call in client._transport.calls]
    assert paths == ["/multiple_job", "/concurrency", "/event", "/interest", "/interests",
                     "/schedule", "/schedules"]
    assert client._transport.calls[3].body == {"tube": "audit", "interests": {"action": "^x$"}}


class TxKeyedPutTests(SynchronousTestCase):
    def test_each_put_of_a_batch_gets_its_own_flag(self):
        clock = Clock()
        calls = []

        def send(call):
            d = Deferred()
            calls.append((call, d))
            return d

        coalescer = TxPutCoalescer(send, clock, senders=1)
        ds = [coalescer.submit({"tube": "t", "body": b, "unique_key": "k"})
              for b in ("a", "b", "c")]
        clock.advance(0)
        calls[0][1].callback((200, {"job_ids": ["s,1", "s,1", "s,1"], "duplicates": [1, 2]}))
        self.assertEqual([self.successResultOf(d).duplicate for d in ds], [False, True, True])

    def test_tx_client_methods(self):
        client = TxClient(Clock(), "http://127.0.0.1:1")
        calls = []

        def call(c):
            calls.append(c)
            return succeed((200, {"/concurrency": {"limit": 3},
                                  "/event": {"matched": 0, "copies": []},
                                  "/interests": {"interests": []},
                                  "/schedules": {"schedules": []}}[c.path]))

        client._transport.call = call
        self.assertEqual(self.successResultOf(client.concurrency("t", 3)), {"limit": 3})
        self.assertEqual(self.successResultOf(client.event({"a": 1}))["matched"], 0)
        self.assertEqual(self.successResultOf(client.interests()), [])
        self.assertEqual(self.successResultOf(client.schedules()), [])
        self.failureResultOf(client.concurrency("t", 0), BadRequest)
        self.failureResultOf(client.put("t", "b", unique_key=""), BadRequest)
        self.assertEqual([c.path for c in calls],
                         ["/concurrency", "/event", "/interests", "/schedules"])
