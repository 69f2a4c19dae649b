"""Reading interest and event requests (REST bodies and JSON-lines params).

Pure parsing at the edge, as :mod:`allq.client.rest_requests` does for jobs: the
shapes and types are checked here; the regexes themselves are checked by the
servers (:mod:`allq.core.interests`), which answer 400 for a bad one.
"""

from collections.abc import Mapping

from allq import vocabulary
from allq.client.rest_requests import (
    _idempotency_key,
    check_keys,
    field_expired_limit,
    field_int,
    field_seconds,
    field_start,
    field_str,
)
from allq.errors import BadRequest

INTEREST_KEYS = frozenset({"tube", "interests"})
EVENT_KEYS = frozenset({"data", "scope", "unmatched", "priority", "ttl", "delay", "run_at",
                        "expired_limit", "shard_key", "idempotency_key"})


def interest_body(obj: Mapping) -> tuple[str, object]:
    """``{"tube", "interests"}`` → ``(tube, interests)`` (``"*"`` or an object)."""
    check_keys(obj, INTEREST_KEYS)
    tube = vocabulary.check_tube(obj.get("tube"))
    interests = obj.get("interests")
    if interests != "*" and not isinstance(interests, dict):
        raise BadRequest('interests must be "*" or an object of field: regex')
    if isinstance(interests, dict):
        if not interests:
            raise BadRequest("interests must name at least one field (or be \"*\")")
        if len(interests) > vocabulary.MAX_INTEREST_FIELDS:
            raise BadRequest(
                f"interests may name at most {vocabulary.MAX_INTEREST_FIELDS} fields")
        if not all(isinstance(pattern, str) for pattern in interests.values()):
            raise BadRequest("each interest must be a regex, as a string")
    return tube, interests


def event_body(obj: Mapping) -> dict:
    """A ``POST /event`` body → :meth:`Federation.publish_event`'s arguments."""
    check_keys(obj, EVENT_KEYS)
    data = vocabulary.check_event_data(obj.get("data"))
    scope = vocabulary.check_event_scope(obj.get("scope", "any"))
    unmatched = obj.get("unmatched", "drop")
    if unmatched not in vocabulary.EVENT_UNMATCHED:
        raise BadRequest('unmatched must be "drop" or "error"')
    priority = field_int(obj, "priority")
    expired_limit = field_expired_limit(obj)
    delay, run_at = field_start(obj)
    shard_key = field_str(obj, "shard_key") or None
    if shard_key is not None:
        vocabulary.check_shard_key(shard_key)
    return {
        "data": data, "scope": scope, "unmatched": unmatched,
        "priority": None if priority is None else vocabulary.check_priority(priority),
        "ttl": field_seconds(obj, "ttl", positive=True), "delay": delay,
        "run_at": run_at, "expired_limit": expired_limit, "shard_key": shard_key,
        "idempotency_key": _idempotency_key(obj),
    }
