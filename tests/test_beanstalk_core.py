"""What the beanstalkd front-end needs of the core, dispatcher and journal.

Binary bodies (core, wire codec, journal and recovery), reserves over several
tubes by priority, reserve by id, per-job counters, peek and kick of delayed
jobs, and a pause that ends by itself.
"""

import pytest

from allq.core.job import JobState
from allq.core.queue import Queue
from allq.errors import BadRequest, NotFound, TooLarge, WrongState
from allq.server.records import body_from_record, stored_body
from allq.wire.bodies import decode_body, encode_body, normal_body

from queues import T0, make_queue
from test_journal import drain_compaction, server  # noqa: F401 - the fixture

BINARY = bytes(range(256)) + b"\r\n\x00"


# -- binary bodies ------------------------------------------------------------------------


def test_a_body_is_text_when_utf8_and_bytes_otherwise():
    assert normal_body("é".encode()) == "é"
    assert normal_body(b"\xff") == b"\xff"
    assert decode_body(*encode_body(BINARY)) == BINARY
    assert encode_body("text") == ("text", None)


@pytest.mark.parametrize("text, encoding", [("@@", "base64"), ("aGk=", "hex"), ("é", "base64")])
def test_a_bad_encoded_body_is_a_bad_request(text, encoding):
    with pytest.raises(BadRequest):
        decode_body(text, encoding)


def test_the_core_stores_a_binary_body_and_bounds_it_in_bytes():
    q = Queue()
    job = q.put("t", BINARY, now=T0)
    assert q.get("t", now=T0)[0].body == BINARY
    small = Queue(config=type(q.config)(max_job_size=4))
    small.put("t", b"\xff" * 4, now=T0)
    with pytest.raises(TooLarge):
        small.put("t", b"\xff" * 5, now=T0)
    assert job.body is BINARY


def test_journal_body_field_round_trips_and_refuses_garbage():
    assert body_from_record(stored_body(BINARY)) == BINARY
    assert body_from_record(stored_body("text")) == "text"
    for bad in (["base64"], ["rot13", "x"], ["base64", "@@"], 5):
        with pytest.raises(ValueError):
            body_from_record(bad)


def test_binary_jobs_survive_a_restart_and_a_compaction(server):  # noqa: F811
    q, now = server.queue, server.now
    ready = q.put("t", BINARY, now=now)
    delayed = q.put("t", b"\xfe\r\n", now=now, delay=60)
    restarted = server.restart()
    assert restarted.queue.job(ready.id).body == BINARY
    assert restarted.queue.job(delayed.id).body == b"\xfe\r\n"
    assert drain_compaction(restarted.clock, restarted.journal.compact()) is True
    again = restarted.restart()
    assert again.queue.get("t", now=now)[0].body == BINARY
    again.journal.close()


# -- reserving ----------------------------------------------------------------------------


def test_get_any_serves_by_priority_then_put_order_across_tubes():
    q = make_queue()
    a1 = q.put("a", "a1", now=T0, priority=5)
    b1 = q.put("b", "b1", now=T0, priority=1)
    a2 = q.put("a", "a2", now=T0, priority=1)
    q.put("c", "c1", now=T0, priority=0)
    assert q.get_any(["a", "b", "missing"], now=T0, count=3) == [b1, a2, a1]
    assert q.get_any(["a", "b"], now=T0) == []


def test_get_any_passes_over_paused_and_throttled_tubes():
    q = make_queue()
    q.put("a", "a", now=T0, priority=0)
    b = q.put("b", "b", now=T0, priority=9)
    q.set_paused("a", True)
    assert q.get_any(["a", "b"], now=T0) == [b]
    q.set_paused("a", False)
    q.set_throttle("a", 1, now=T0)
    q.get("a", now=T0)  # the bucket is empty now
    q.put("a", "a2", now=T0, priority=0)
    assert q.get_any(["a"], now=T0) == []
    with pytest.raises(BadRequest):
        q.get_any([], now=T0)


def test_reserve_job_takes_a_ready_delayed_or_buried_job_by_id():
    q = make_queue()
    first, second = q.put("t", "1", now=T0), q.put("t", "2", now=T0)
    assert q.reserve_job(second.id, now=T0).state is JobState.RESERVED
    assert q.get("t", now=T0) == [first]
    delayed = q.put("t", "d", now=T0, delay=30)
    assert q.reserve_job(delayed.id, now=T0).state is JobState.RESERVED
    q.bury(delayed.id, now=T0)
    q.reserve_job(delayed.id, now=T0)
    with pytest.raises(WrongState):
        q.reserve_job(delayed.id, now=T0)
    with pytest.raises(NotFound):
        q.reserve_job(999, now=T0)
    q.release(second.id, now=T0)  # back in the ready line once, not twice
    assert q.get("t", now=T0, count=5) == [second]


# -- counters, delayed jobs, pauses ---------------------------------------------------------


def test_counters_count_every_change_and_go_with_the_job():
    q = make_queue()
    job = q.put("t", "x", now=T0, ttl=10, delay=5)
    assert q.counters(job.id).delay == 5
    q.kick(job.id, now=T0)
    q.get("t", now=T0)
    q.expire(T0 + 11)  # a ttl timeout
    q.get("t", now=T0 + 11)
    q.release(job.id, now=T0 + 11)
    q.get("t", now=T0 + 11)
    q.bury(job.id, now=T0 + 11)
    c = q.counters(job.id)
    assert (c.reserves, c.timeouts, c.releases, c.buries, c.kicks) == (3, 1, 1, 1, 1)
    q.delete(job.id, now=T0 + 11)
    with pytest.raises(NotFound):
        q.counters(job.id)
    assert len(q._counters) == 0


def test_peek_and_kick_delayed_jobs_soonest_first():
    q = make_queue()
    late = q.put("t", "late", now=T0, delay=50)
    soon = q.put("t", "soon", now=T0, delay=10)
    q.put("other", "x", now=T0, delay=1)
    assert q.peek_delayed("t") is soon
    assert q.kick_tube("t", now=T0, count=1, delayed=True) == [soon]
    assert q.peek_delayed("t") is late
    assert q.peek_delayed("none") is None


def test_a_pause_with_a_delay_ends_by_itself():
    q = make_queue()
    q.put("t", "x", now=T0)
    q.set_paused("t", True, until=T0 + 5)
    assert q.get("t", now=T0 + 4) == []
    assert q.tube_stats(T0 + 4)[0].pause_time_left == 1
    assert len(q.get("t", now=T0 + 5)) == 1
    assert q.tube_stats(T0 + 5)[0].paused is False


def test_a_job_put_reserved_once_and_deleted_never_gets_a_counter_entry():
    """The common life costs no counter memory; its one reserve is read from its state."""
    q = make_queue()
    job = q.put("t", "x", now=T0)
    q.get("t", now=T0)
    assert q.counters(job.id).reserves == 1 and len(q._counters) == 0
    q.done(job.id, now=T0)
    assert len(q._counters) == 0
