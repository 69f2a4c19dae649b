"""Tests of bad requests through :class:`allq.server.dispatch.Dispatcher`.

Unknown actions, missing, ill-typed or unknown params (of every action, the
operator features' too), requests without a readable id and bodies that cannot
be sent back. Each gets an error reply naming what is wrong. Harness:
:mod:`dispatchers`.
"""

import pytest

from dispatchers import Harness


@pytest.fixture
def h() -> Harness:
    return Harness()


# -- bad requests -----------------------------------------------------------------


def test_an_unknown_action_echoes_the_id(h):
    """An unknown action gets code unknown_action under the request's own id."""
    reply = h.dispatcher.handle({"id": 42, "action": "explode", "params": {}})
    assert reply["id"] == 42
    assert reply["error"]["code"] == "unknown_action"
    assert "explode" in reply["error"]["message"]


@pytest.mark.parametrize(
    "action, params, named",
    [
        ("put", {"tube": "t"}, "body"),
        ("put", {"body": "x"}, "tube"),
        ("put", {"tube": "t", "body": 5}, "body"),
        ("put", {"tube": "t", "body": "x", "priority": "1"}, "priority"),
        ("put", {"tube": "t", "body": "x", "priority": True}, "priority"),
        ("put", {"tube": "t", "body": "x", "priority": -1}, "priority"),
        ("put", {"tube": "t", "body": "x", "ttl": 0}, "ttl"),
        ("put", {"tube": "t", "body": "x", "colour": "red"}, "colour"),
        ("get", {"tube": "t", "count": 1.5}, "count"),
        ("get", {"tube": "t", "delete": "yes"}, "delete"),
        ("release", {"job_id": "1", "delay": "soon"}, "delay"),
        ("peek", {"tube": "t", "offset": -1}, "offset"),
        ("done", {}, "job_id"),
        ("done", {"job_id": 7}, "job_id"),
    ],
)
def test_missing_ill_typed_or_unknown_params_name_the_param(h, action, params, named):
    """A missing, ill-typed, out-of-range or unknown param gets bad_request naming it."""
    error = h.error(action, **params)
    assert error["code"] == "bad_request"
    assert named in error["message"]


def test_params_that_are_not_an_object_are_a_bad_request(h):
    """params must be a JSON object."""
    reply = h.dispatcher.handle({"id": 3, "action": "ping", "params": [1]})
    assert (reply["id"], reply["error"]["code"]) == (3, "bad_request")
    assert "params" in reply["error"]["message"]


@pytest.mark.parametrize(
    "request_",
    ["ping", 7, None, ["nested"], {"action": "ping"}, {"id": "1", "action": "ping"},
     {"id": True, "action": "ping"}, {"id": 1.0, "action": "ping"}],
)
def test_a_request_without_a_readable_id_gets_an_error_with_id_null(h, request_):
    """A non-object request, or one whose id is not an integer, gets an error reply with id null."""
    reply = h.dispatcher.handle(request_)
    assert reply["id"] is None
    assert reply["error"]["code"] == "bad_request"


def test_a_lone_surrogate_body_is_refused(h):
    """A body that is not encodable as UTF-8 is refused at put, so no get can fail on it."""
    error = h.error("put", tube="t", body="\ud800")
    assert error["code"] == "bad_request"
    assert "body" in error["message"]
    assert len(h.queue) == 0


# -- ill-typed params -------------------------------------------------------------------


@pytest.mark.parametrize(
    "action, params, named",
    [
        ("put", {"tube": "t", "body": "x", "run_at": "soon"}, "run_at"),
        ("put", {"tube": "t", "body": "x", "run_at": -5}, "run_at"),
        ("put", {"tube": "t", "body": "x", "shard_key": 5}, "shard_key"),
        ("put", {"tube": "t", "body": "x", "parent_id": 5}, "parent_id"),
        ("put_parent", {"tube": "t"}, "body"),
        ("put_parent", {"tube": "t", "body": "p", "limit": 1.5}, "limit"),
        ("put_parent", {"tube": "t", "body": "p", "limit": -1}, "limit"),
        ("put_parent", {"tube": "t", "body": "p", "timeout": "60"}, "timeout"),
        ("put_parent", {"tube": "t", "body": "p", "timeout": 0}, "timeout"),
        ("put_parent", {"tube": "t", "body": "p", "run_on_timeout": "true"}, "run_on_timeout"),
        ("put_parent", {"tube": "t", "body": "p", "delay": 5}, "delay"),
        ("set_children_started", {}, "job_id"),
        ("set_children_started", {"job_id": 7}, "job_id"),
        ("throttle", {"tps": 5}, "tube"),
        ("throttle", {"tube": "t", "tps": "5"}, "tps"),
        ("throttle", {"tube": "t", "tps": True}, "tps"),
        ("pause", {}, "tube"),
        ("unpause", {"tube": 5}, "tube"),
        ("pause", {"tube": "bad tube"}, "tube"),
        ("drain", {"tube": 5}, "tube"),
        ("undrain", {"tube": ["t"]}, "tube"),
        ("fair", {"tube": "t"}, "policy"),
        ("fair", {"tube": "t", "policy": 1}, "policy"),
        ("max_size", {"tube": "t", "max_size": "3"}, "max_size"),
        ("max_size", {"tube": "t", "max_size": 0}, "max_size"),
        ("max_size", {"tube": "t", "max_size": 2.5}, "max_size"),
    ],
)
def test_ill_typed_feature_params_are_bad_requests(h, action, params, named):
    """A missing, ill-typed, out-of-range or unknown param of a new action gets bad_request."""
    error = h.error(action, **params)
    assert error["code"] == "bad_request"
    assert named in error["message"]
    assert len(h.queue) == 0
