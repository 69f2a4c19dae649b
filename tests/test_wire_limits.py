"""Tests of the number and nesting limits of :mod:`allq.wire.messages` (issue 10)."""

import pytest

from allq.errors import BadRequest, UnknownAction
from allq.wire.messages import WIRE_NUMBER_MAX, decode_request, loads, request_id_of


def put(**params):
    return {"id": 1, "action": "put", "params": {"tube": "t", "body": "x", **params}}


@pytest.mark.parametrize("value", [10**309, -(10**309), WIRE_NUMBER_MAX + 1,
                                   float("inf"), float("-inf"), float("nan"), 1e300])
@pytest.mark.parametrize("name", ["ttl", "delay", "priority", "run_at", "expired_limit"])
def test_numbers_beyond_the_wire_range_are_bad_requests(name, value):
    """A number that is not finite or beyond ±(2**63-1) is refused, for int and number
    params alike (an int param refuses floats anyway)."""
    with pytest.raises(BadRequest) as caught:
        decode_request(put(**{name: value}))
    assert name in caught.value.message


@pytest.mark.parametrize("value", [WIRE_NUMBER_MAX, -WIRE_NUMBER_MAX, 0, 12.5])
def test_numbers_at_the_edge_of_the_range_pass_the_wire(value):
    """The range is inclusive; what the core thinks of the value is the core's business."""
    params = {"ttl": value} if isinstance(value, float) else {"priority": value}
    assert decode_request(put(**params)).params == {**decode_request(put()).params, **params}


@pytest.mark.parametrize("request_id", [10**309, WIRE_NUMBER_MAX + 1, -(10**20)])
def test_a_request_id_beyond_the_range_is_refused_and_not_echoed(request_id):
    """An id that could not be echoed safely is a bad request, answered with id null."""
    obj = {"id": request_id, "action": "ping"}
    with pytest.raises(BadRequest):
        decode_request(obj)
    assert request_id_of(obj) is None


def test_a_non_string_action_is_named_by_its_json_type():
    """A nested or huge action is not repr'd into the message."""
    with pytest.raises(UnknownAction, match="not an array"):
        decode_request({"id": 1, "action": [[[]]]})
    with pytest.raises(UnknownAction, match="not a number"):
        decode_request({"id": 1, "action": 10**309})


@pytest.mark.parametrize("data", [b"[" * 100_000 + b"]" * 100_000,
                                  b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
                                  b" " + b"[" * 100_000 + b"]" * 100_000])
def test_deep_nesting_is_a_bad_request(data):
    """A frame nested beyond the decoder's recursion limit is a BadRequest, not a
    RecursionError (fast path and json.loads path alike)."""
    with pytest.raises(BadRequest, match="nested too deeply"):
        loads(data)


def test_an_integer_beyond_the_conversion_limit_is_a_bad_request():
    """More than 4300 digits: Python's int conversion limit is a BadRequest."""
    with pytest.raises(BadRequest, match="not valid JSON"):
        loads(b'{"id":' + b"9" * 5000 + b"}")


def test_non_finite_json_constants_decode_but_never_pass_a_param():
    """NaN/Infinity decode (json's extension) and are then refused as params."""
    obj = loads(b'{"id":1,"action":"release","params":{"job_id":"s,1","delay":NaN}}')
    with pytest.raises(BadRequest, match="delay"):
        decode_request(obj)
