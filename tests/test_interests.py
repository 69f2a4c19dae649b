"""Interest routing on one server: the core's table and matcher
(:mod:`allq.core.interests`), the dispatcher's ``interest_merge``, ``interests``
and ``event`` actions (:mod:`allq.server.events`), and the journal keeping the
table and an event's copies through restarts, crashes and compactions."""

import json
import time

import pytest
from twisted.internet.task import Clock

from allq.core.idempotency import IdempotencyKeys
from allq.core.interests import InterestTable, check_interests
from allq.core.queue import Queue, QueueConfig
from allq.errors import BadRequest
from allq.server.dispatch import Dispatcher
from allq.server.recovery import restore_interests
from allq.vocabulary import MAX_EVENT_FIELDS, MAX_INTEREST_FIELDS, MAX_INTEREST_PATTERN

from tests.test_journal import Server, drain_compaction, server  # noqa: F401 (fixture)


def table(*records):
    t = InterestTable()
    t.merge([list(record) for record in records])
    return t


# -- matching -------------------------------------------------------------------------


def test_any_ors_the_fields_and_all_ands_them():
    t = table(("emails", {"email": "^.*evan.*"}, 1),
              ("points", {"action": "^userCreated$", "userId": "."}, 1),
              ("everything", "*", 1))
    assert t.match({"email": "evan@example.com"}, "any") == ["emails", "everything"]
    assert t.match({"action": "userCreated"}, "any") == ["everything", "points"]
    assert t.match({"action": "userCreated"}, "all") == ["everything"]
    assert t.match({"action": "userCreated", "userId": 7}, "all") == ["everything", "points"]
    assert t.match({"other": 1}, "any") == ["everything"]


def test_values_are_matched_as_text_and_a_missing_field_never_matches():
    t = table(("n", {"count": "^4[0-9]$"}, 1), ("flag", {"ok": "^true$"}, 1),
              ("nested", {"user": '"id":7'}, 1), ("nul", {"x": "^null$"}, 1))
    assert t.match({"count": 42}, "any") == ["n"]
    assert t.match({"ok": True}, "any") == ["flag"]
    assert t.match({"user": {"name": "a", "id": 7}}, "any") == ["nested"]
    assert t.match({"x": None}, "any") == ["nul"]
    assert t.match({}, "all") == []


def test_unmatched_events_are_counted():
    t = table(("a", {"k": "^yes$"}, 1))
    t.match({"k": "no"}, "any")
    t.match({"k": "yes"}, "any")
    assert (t.events, t.events_unmatched) == (2, 1)


def test_a_pathological_regex_finishes_fast():
    """``(a+)+$`` backtracks exponentially in Python's re; RE2 is linear."""
    t = table(("evil", {"x": "(a+)+$"}, 1), ("evil2", {"x": "^(a|a)*c$"}, 1))
    started = time.process_time()
    assert t.match({"x": "a" * 200_000 + "!"}, "any") == []
    assert time.process_time() - started < 2.0  # Python's re would take forever


@pytest.mark.parametrize("interests, words", [
    ({"f": "(unclosed"}, "not a valid RE2 regex"),
    ({"f": r"(a)\1"}, "not a valid RE2 regex"),  # backreferences are not linear
    ({"f": "(?=look)"}, "not a valid RE2 regex"),
    ({"f": "x" * (MAX_INTEREST_PATTERN + 1)}, "at most"),
    ({"f": 5}, "must be a regex"),
    ({"": "x"}, "field name"),
    ({f"f{i}": "x" for i in range(MAX_INTEREST_FIELDS + 1)}, "at most"),
    ({}, "must be"),
    ("**", "must be"),
    (["x"], "must be"),
])
def test_bad_interests_are_refused(interests, words):
    with pytest.raises(BadRequest, match=words):
        check_interests(interests)


# -- merging --------------------------------------------------------------------------


def test_later_versions_win_in_any_order_and_tombstones_delete():
    records = [["t", {"a": "x"}, 1.0], ["t", None, 3.0], ["t", "*", 2.0], ["u", "*", 1.0]]
    forward, backward = InterestTable(), InterestTable()
    forward.merge(records)
    backward.merge(list(reversed(records)))
    backward.merge(records)  # twice changes nothing
    for t in (forward, backward):
        assert [e.record() for e in t.entries()] == [["t", None, 3.0], ["u", "*", 1.0]]
        assert [e.tube for e in t.live()] == ["u"]
        assert len(t) == 1


def test_equal_versions_settle_the_same_everywhere():
    a, b = InterestTable(), InterestTable()
    a.merge([["t", {"k": "1"}, 5.0]])
    a.merge([["t", {"k": "2"}, 5.0]])
    b.merge([["t", {"k": "2"}, 5.0]])
    b.merge([["t", {"k": "1"}, 5.0]])
    assert list(a.entries()) == list(b.entries())


def test_a_merge_with_one_bad_record_applies_none():
    t = table(("keep", "*", 1))
    with pytest.raises(BadRequest):
        t.merge([["new", "*", 2], ["bad", {"f": "("}, 2]])
    with pytest.raises(BadRequest):
        t.merge([["-bad tube", "*", 2]])
    with pytest.raises(BadRequest):
        t.merge([["t", "*"]])
    assert [e.tube for e in t.entries()] == ["keep"]


# -- the dispatcher ---------------------------------------------------------------------


class OneServer:
    def __init__(self, queue=None, keys=None, interests=None):
        self.clock = Clock()
        self.clock.advance(1000)
        self.queue = queue if queue is not None else Queue(started=self.clock.seconds())
        self.dispatcher = Dispatcher(self.queue, self.clock, lambda: "s1",
                                     keys or IdempotencyKeys(), interests=interests)
        self.ids = iter(range(1, 10_000))

    def call(self, action, **params):
        reply = self.dispatcher.handle({"id": next(self.ids), "action": action,
                                        "params": params})
        if "error" in reply:
            return reply["error"]
        return reply["result"]


def test_an_event_is_stored_once_in_every_interested_tube():
    s = OneServer()
    assert s.call("interest_merge", entries=[["a", "*", 1], ["b", {"k": "^v"}, 1],
                                             ["c", {"k": "^w"}, 1]]) == {"changed": 3}
    reply = s.call("event", data={"k": "value", "n": 1}, priority=5, idempotency_key="e1")
    assert [c["tube"] for c in reply["copies"]] == ["a", "b"]
    for copy in reply["copies"]:
        job = s.call("peek_job", job_id=copy["job_id"])["job"]
        assert json.loads(job["body"]) == {"k": "value", "n": 1}
        assert job["priority"] == 5
    # The retry gets the same copies, and stores nothing new.
    assert s.call("event", data={"k": "value", "n": 1}, idempotency_key="e1") == reply
    assert len(s.queue) == 2
    stats = s.call("stats")["global"]
    assert (stats["events"], stats["events_unmatched"]) == (2, 0)


def test_a_retry_after_a_new_interest_only_adds_that_tube():
    s = OneServer()
    s.call("interest_merge", entries=[["a", "*", 1]])
    first = s.call("event", data={}, idempotency_key="k")["copies"]
    s.call("interest_merge", entries=[["b", "*", 2]])
    second = s.call("event", data={}, idempotency_key="k")["copies"]
    assert second[0] == first[0] and [c["tube"] for c in second] == ["a", "b"]
    assert len(s.queue) == 2


def test_an_event_nobody_wants_is_dropped_and_counted():
    s = OneServer()
    s.call("interest_merge", entries=[["a", {"k": "^x$"}, 1]])
    assert s.call("event", data={"k": "y"}) == {"copies": []}
    assert len(s.queue) == 0
    assert s.call("interests")["events_unmatched"] == 1


def test_a_refused_copy_undoes_the_others():
    """All or none: tube "b" is full, so "a"'s copy is taken back."""
    s = OneServer()
    s.call("interest_merge", entries=[["a", "*", 1], ["b", "*", 1]])
    s.call("max_size", tube="b", max_size=1)
    s.call("put", tube="b", body="filler")
    assert s.call("event", data={}, idempotency_key="k")["code"] == "full"
    assert len(s.queue) == 1
    s.call("max_size", tube="b", max_size=None)
    assert len(s.call("event", data={}, idempotency_key="k")["copies"]) == 2
    assert len(s.queue) == 3


@pytest.mark.parametrize("params, code", [
    ({"data": []}, "bad_request"),
    ({"data": {}, "scope": "most"}, "bad_request"),
    ({"data": {str(i): i for i in range(MAX_EVENT_FIELDS + 1)}}, "bad_request"),
    ({"data": {"x": "y" * 5000}}, "too_large"),
    ({"data": {}, "ttl": -1}, "bad_request"),
])
def test_bad_events_get_errors(params, code):
    s = OneServer(queue=Queue(QueueConfig(max_job_size=1024), started=0.0))
    s.call("interest_merge", entries=[["a", "*", 1]])
    assert s.call("event", **params)["code"] == code
    assert len(s.queue) == 0


def test_bad_interest_entries_get_errors():
    s = OneServer()
    assert s.call("interest_merge", entries=[["a", {"f": "(("}, 1]])["code"] == "bad_request"
    assert s.call("interest_merge", entries="nope")["code"] == "bad_request"
    assert s.call("interests")["entries"] == []


# -- the journal ----------------------------------------------------------------------


def attach(server):
    """``server`` (tests.test_journal.Server) with an interest table, restored."""
    server.interests = InterestTable()
    restore_interests(server.interests, server.recovered)
    server.journal.attach(server.queue, server.keys, server.interests)
    server.dispatcher = Dispatcher(server.queue, server.clock, lambda: "s1", server.keys,
                                   interests=server.interests)
    return server


def event(server, key):
    reply = server.dispatcher.handle({"id": 1, "action": "event",
                                      "params": {"data": {"k": "v"}, "idempotency_key": key}})
    return reply["result"]["copies"]


def test_interests_and_event_copies_survive_a_crash(server, tmp_path):
    s = attach(server)
    s.interests.merge([["a", "*", 1.0], ["b", {"k": "^v$"}, 1.0], ["gone", "*", 1.0]])
    s.interests.merge([["gone", None, 2.0]])
    copies = event(s, "once")
    crashed = attach(s.crash_copy(tmp_path / "crashed"))
    assert [e.record() for e in crashed.interests.entries()] == [
        ["a", "*", 1.0], ["b", {"k": "^v$"}, 1.0], ["gone", None, 2.0]]
    assert len(crashed.queue) == 2
    assert event(crashed, "once") == copies  # the retry finds the copies
    assert len(crashed.queue) == 2
    crashed.journal.close()
    s.journal.close()


def test_interests_survive_compaction(server):
    s = attach(server)
    s.interests.merge([["a", {"k": "x"}, 1.0], ["b", "*", 1.0], ["b", None, 2.0]])
    assert drain_compaction(s.clock, s.journal.compact()) is True
    restarted = attach(s.restart())
    assert [e.record() for e in restarted.interests.entries()] == [
        ["a", {"k": "x"}, 1.0], ["b", None, 2.0]]
    restarted.journal.close()


def test_an_event_with_a_lone_surrogate_is_refused():
    s = OneServer()
    s.call("interest_merge", entries=[["a", "*", 1]])
    assert s.call("event", data={"x": "\ud800"})["code"] == "bad_request"
    assert len(s.queue) == 0
