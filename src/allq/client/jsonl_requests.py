"""Reading JSON-lines requests: one line into an action and typed arguments.

Pure parsing at the JSON-lines edge. A line is ``{"action": NAME, "params":
{...}}``; the params are read with the REST edge's field readers
(:mod:`allq.client.rest_requests`), which already take AllQueue's spellings:
numbers sent as strings (AllQueue stringified every value), booleans as
``true``/``"true"``, ``tube`` or ``tube_name``, ``""`` for "no parent". Each
function returns the federation call's arguments or raises a
:class:`BadRequest` naming the field. Nothing here touches the federation.
"""

from collections.abc import Mapping

from allq import vocabulary
from allq.client.http import parse_json_object
from allq.client.rest_requests import (
    check_job_id,
    check_parent_ref,
    check_server_ref,
    field_bool,
    field_int,
    field_seconds,
    field_str,
)
from allq.errors import BadRequest


def parse_line(line: bytes) -> tuple[str, dict]:
    """A request line's action and params.

    :raises BadRequest: not UTF-8 JSON, not an object, no string ``action``, or
        ``params`` not an object (absent or ``null``: no params).
    """
    obj = parse_json_object(line)
    action = obj.get("action")
    if not isinstance(action, str) or not action:
        raise BadRequest('a request is {"action": NAME, "params": {...}}: action is missing')
    params = obj.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise BadRequest("params must be a JSON object")
    return action[:64], params


def tube(params: Mapping) -> str:
    """``tube`` (or AllQueue's ``tube_name``), required."""
    name = params.get("tube", params.get("tube_name"))
    if name is None:
        raise BadRequest("tube is required")
    return vocabulary.check_tube(name)


def job_id(params: Mapping, name: str = "job_id") -> str:
    value = params.get(name)
    if value is None or value == "":
        raise BadRequest(f"{name} is required")
    return check_job_id(value, name, in_query=False)


def parent_ref(params: Mapping) -> str:
    """``set_children_started``'s ``job_id``: a job id, or the id the parent was put with."""
    value = params.get("job_id")
    if value is None or value == "":
        raise BadRequest("job_id is required")
    return check_parent_ref(value, in_query=False)


def flag(params: Mapping, name: str) -> bool:
    """A boolean param (``true``, ``"true"``, ``1``, ...); absent or null is false."""
    value = params.get(name)
    if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
        return bool(value)
    return bool(field_bool(params, name))


def count(params: Mapping) -> tuple[int, bool]:
    """A get's ``count`` and whether the answer is the single-job shape: as in
    AllQueue, only a count of 1 (the default) answers ``job``; any other
    count answers ``jobs`` (0: an empty list)."""
    number = field_int(params, "count")
    if number is None:
        return 1, True
    return vocabulary.check_count("count", number, minimum=0,
                                  maximum=vocabulary.MAX_BATCH), number == 1


def wait(params: Mapping) -> float:
    """A get's long-poll ``wait`` (an allq extra), 0 when absent."""
    return field_seconds(params, "wait", maximum=vocabulary.MAX_WAIT) or 0


def seconds(params: Mapping, name: str) -> float:
    return field_seconds(params, name) or 0


def offset(params: Mapping) -> int:
    number = field_int(params, "offset")
    if number is None:
        return 0
    return vocabulary.check_count("offset", number, minimum=0, maximum=vocabulary.MAX_OFFSET)


def kick_count(params: Mapping) -> int:
    number = field_int(params, "count")
    if number is None:
        return 1
    return vocabulary.check_count("count", number, maximum=vocabulary.MAX_KICK_COUNT)


def clear_state(params: Mapping) -> str:
    """``cache_type``: which jobs a clear drops (AllQueue ignored it; ``all`` by default)."""
    state = field_str(params, "cache_type")
    return "all" if state is None else vocabulary.check_clear_state(state)


def tps(params: Mapping) -> float | None:
    """A throttle's ``tps``, required; null or <= 0 removes the throttle."""
    if "tps" not in params:
        raise BadRequest("tps is required (null or 0 removes the throttle)")
    value = params["tps"]
    if isinstance(value, str):
        value = field_seconds(params, "tps")
    return vocabulary.check_tps(value)


def max_size(params: Mapping) -> int | None:
    size = params.get("max_size")
    if size is None or size == "":
        return None
    size = field_int(params, "max_size")
    return vocabulary.check_count("max_size", size, maximum=vocabulary.MAX_TUBE_SIZE)


def concurrency_limit(params: Mapping) -> int:
    """A tube's concurrency limit (absent: 1, the default); numbers as strings too."""
    if params.get("limit") is None or params.get("limit") == "":
        return vocabulary.DEFAULT_CONCURRENCY
    return vocabulary.check_concurrency(field_int(params, "limit"))


def fair_policy(params: Mapping) -> str:
    policy = field_str(params, "policy")
    if policy is None:
        raise BadRequest("policy is required")
    return vocabulary.check_fair_setting(policy)


def server_ref(params: Mapping, name: str) -> str | None:
    value = field_str(params, name)
    return None if value is None else check_server_ref(name, value)


def server_list(params: Mapping) -> list[str]:
    """``update_servers``' ``servers``: a comma list (AllQueue) or a JSON list."""
    value = params.get("servers")
    if isinstance(value, list):
        items = value
    elif isinstance(value, str):
        items = value.split(",")
    else:
        raise BadRequest("servers must be a comma-separated list of host:port")
    addresses = []
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise BadRequest(f"servers[{index}] must be a string")
        if item.strip():
            addresses.append(check_server_ref("servers", item.strip()))
    if not addresses:
        raise BadRequest("servers must name at least one host:port")
    return addresses


def job_fields(params: Mapping) -> dict:
    """A put's or parent's fields, with ``""`` read as absent: AllQueue turned
    JSON ``null`` into ``""``, and its clients send ``"limit": ""`` for "no limit"."""
    return {key: value for key, value in params.items() if value != "" or key == "body"}
