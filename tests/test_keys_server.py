"""Unique and concurrency keys on a server: the dispatcher's replies, and the
journal (a restart, a kill -9 and a compaction keep the keys and the limits)."""

import pytest

from allq.core.job import JobState

from tests.dispatchers import Harness
from tests.test_journal import Server, drain_compaction, server  # noqa: F401 - a fixture


# -- the dispatcher --------------------------------------------------------------


def test_a_second_put_with_a_live_unique_key_answers_the_first_job_as_a_duplicate():
    h = Harness()
    first = h.ok("put", tube="t", body="a", unique_key="report-7")
    assert first == {"job_id": first["job_id"]}
    again = h.ok("put", tube="t", body="b", unique_key="report-7")
    assert again == {"job_id": first["job_id"], "duplicate": True}
    assert len(h.queue) == 1
    (job,) = h.get()
    h.ok("done", job_id=job["job_id"])
    third = h.ok("put", tube="t", body="c", unique_key="report-7")
    assert third["job_id"] != first["job_id"] and "duplicate" not in third


def test_a_retried_keyed_put_gets_its_own_job_back_not_a_duplicate():
    h = Harness()
    first = h.ok("put", tube="t", body="a", unique_key="k", idempotency_key="try-1")
    assert h.ok("put", tube="t", body="a", unique_key="k", idempotency_key="try-1") == first
    assert h.ok("put", tube="t", body="a", unique_key="k", idempotency_key="try-2") == {
        **first, "duplicate": True}


@pytest.mark.parametrize("params, message", [
    ({"unique_key": 7}, "unique_key must be a string"),
    ({"unique_key": "x" * 201}, "unique_key must be a string of 1-200"),
    ({"concurrency_key": ""}, "concurrency_key must be a string of 1-200"),
    ({"concurrency_key": ["k"]}, "concurrency_key must be a string"),
])
def test_bad_keys_are_bad_requests(params, message):
    h = Harness()
    error = h.error("put", tube="t", body="x", **params)
    assert error["code"] == "bad_request" and message in error["message"]
    assert len(h.queue) == 0


def test_the_concurrency_action_sets_a_tube_limit():
    h = Harness()
    for i in range(3):
        h.put(str(i), concurrency_key="k")
    assert len(h.get(count=10)) == 1
    assert h.tube_stats("t")["concurrency"] == 1
    assert h.ok("concurrency", tube="t", limit=2) == {"tube": "t", "limit": 2}
    assert h.tube_stats("t")["concurrency"] == 2
    assert len(h.get(count=10)) == 1
    assert h.error("concurrency", tube="t", limit=0)["code"] == "bad_request"
    assert h.ok("concurrency", tube="t") == {"tube": "t", "limit": 1}


# -- the journal ------------------------------------------------------------------


def _keyed_state(server: Server) -> Server:
    q, now = server.queue, server.now
    q.set_concurrency("t", 2)
    q.put("t", "u", now=now, unique_key="only-one")
    for i in range(4):
        q.put("t", str(i), now=now, concurrency_key="k")
    q.put("t", "late", now=now, unique_key="later", delay=60)
    gone = q.put("t", "gone", now=now, unique_key="gone")
    q.delete(gone.id, now=now)
    q.get("t", now=now, count=10)  # the unique one and two of "k"
    return server


def _check_restored(server: Server) -> None:
    q, now = server.queue, server.now
    assert q.concurrency("t") == 2
    assert q.unique_job("t", "only-one") is not None
    assert q.unique_job("t", "later").state is JobState.DELAYED
    assert q.unique_job("t", "gone") is None
    got = q.get("t", now=now, count=10)
    # Reserved jobs came back ready; two of "k" at most at once, in put order.
    assert [job.body for job in got] == ["u", "0", "1"]
    assert q.keyed_jobs() == 6


def test_keys_and_limits_survive_an_orderly_restart(server):
    restarted = _keyed_state(server).restart()
    _check_restored(restarted)
    restarted.journal.close()


def test_keys_and_limits_survive_a_kill(server, tmp_path):
    copy = _keyed_state(server).crash_copy(tmp_path / "killed")
    _check_restored(copy)
    copy.journal.close()


def test_keys_and_limits_survive_a_compaction(server):
    _keyed_state(server)
    drain_compaction(server.clock, server.journal.compact())
    restarted = server.restart()
    assert restarted.recovered.snapshot_bytes > 0
    _check_restored(restarted)
    restarted.journal.close()
