"""Tests of batches and counting in :class:`allq.server.dispatch.Dispatcher`.

A batch frame gets its replies in order (one bad request spoils nothing), a
single frame a single reply, and every request counts as an action. Harness:
:mod:`dispatchers`.
"""

import pytest

from dispatchers import SERVER_ID, Harness


@pytest.fixture
def h() -> Harness:
    return Harness()


# -- batches and counting ---------------------------------------------------------


def test_a_batch_gets_its_replies_in_order_and_one_bad_request_spoils_nothing(h):
    """A list of requests gets the list of replies in order; a bad one errs alone."""
    frame = [
        h.request("put", tube="t", body="a"),
        h.request("put", tube="t"),
        "not a request",
        h.request("ping"),
    ]
    replies = h.dispatcher.handle_frame(frame)
    expected_ids = [frame[0]["id"], frame[1]["id"], None, frame[3]["id"]]
    assert [reply["id"] for reply in replies] == expected_ids
    assert "result" in replies[0] and "result" in replies[3]
    assert replies[1]["error"]["code"] == replies[2]["error"]["code"] == "bad_request"
    assert len(h.queue) == 1


def test_a_single_request_frame_gets_a_single_reply(h):
    """handle_frame on one object returns one reply object, not a list."""
    assert h.dispatcher.handle_frame(h.request("ping"))["result"] == {"server_id": SERVER_ID}


def test_action_count_counts_every_request(h):
    """Every request counts, good or bad, alone or in a batch."""
    h.reply("ping")
    h.reply("explode")
    h.dispatcher.handle("garbage")
    h.dispatcher.handle_frame([h.request("ping"), h.request("ping")])
    assert h.queue.action_count == 5
    assert h.ok("stats")["global"]["action_count"] == 6
