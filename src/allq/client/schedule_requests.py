"""Pure parsing of the schedule routes' requests (REST and JSON lines alike).

The edge checks shapes and the vocabulary's limits; a cron expression and a time
zone are checked by the server that keeps the schedule (one reader of cron, the
core's), and come back as ``bad_request`` (400) with the reason.
"""

from collections.abc import Mapping

from allq import vocabulary
from allq.client.rest_requests import (
    check_keys,
    field_body,
    field_expired_limit,
    field_int,
    field_seconds,
    field_str,
)
from allq.errors import BadRequest

NEW_SCHEDULE_KEYS = frozenset({
    "name", "cron", "every", "timezone", "missed", "tube", "body", "body_base64",
    "priority", "ttl", "delay", "expired_limit",
})


def new_schedule(obj: Mapping) -> dict:
    """Validate a ``NewSchedule`` body; the ``schedule_add`` params it stands for."""
    check_keys(obj, NEW_SCHEDULE_KEYS)
    name = vocabulary.check_schedule_name(obj.get("name"))
    tube = vocabulary.check_tube(obj.get("tube"))
    cron, every = field_str(obj, "cron"), obj.get("every")
    if (cron is None) == (every is None):
        raise BadRequest("give exactly one of cron and every")
    if every is not None:
        every = vocabulary.check_every(every)
    body = field_body(obj)
    missed = obj.get("missed")
    priority = field_int(obj, "priority")
    expired_limit = field_expired_limit(obj)
    return {
        "name": name, "tube": tube, "cron": cron, "every": every,
        "timezone": field_str(obj, "timezone"),
        "missed": None if missed is None else vocabulary.check_missed_policy(missed),
        "body": "" if body is None else body,
        "priority": None if priority is None else vocabulary.check_priority(priority),
        "ttl": field_seconds(obj, "ttl", positive=True),
        "delay": field_seconds(obj, "delay"),
        "expired_limit": expired_limit,
    }
