"""What a worker holds and how it treats a failure: the job record, the per-tube
retry policy, and the error text a bury records.

Pure: no I/O, no clock, no threads; shared by the synchronous and the Twisted
flavours of :mod:`allq.worker`.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from typing import Any

import attrs

from allq.vocabulary import MAX_ERROR_LENGTH, check_count, check_seconds


@attrs.frozen
class Job:
    """A job as the allq-client handed it out (REST ``GET /job`` shape).

    :ivar id: ``"<server_id>,<number>"``: every later call names the job by it.
    :ivar ttl: seconds the job may run before the server gives it to another
        worker (``None`` from an allq-client that does not say).
    :ivar releases: how often it was released (failures so far, for a worker
        that releases on failure).
    :ivar error: the last error a bury recorded, if any.
    """

    id: str
    tube: str
    body: str
    ttl: float | None = None
    expireds: int = 0
    releases: int = 0
    error: str | None = None
    priority: int | None = None

    @classmethod
    def from_rest(cls, reply: Mapping[str, Any]) -> Job:
        return cls(reply["id"], reply["tube"], reply["body"], reply.get("ttl"),
                   int(reply.get("expireds", 0)), int(reply.get("releases", 0)),
                   reply.get("error"), reply.get("priority"))


def _positive_count(instance: object, attribute: attrs.Attribute, value: object) -> None:
    check_count(attribute.name, value, maximum=2**31)


def _seconds(instance: object, attribute: attrs.Attribute, value: object) -> None:
    check_seconds(attribute.name, value)


def _fraction(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if not isinstance(value, int | float) or not 0 < value < 1:
        raise ValueError(f"{attribute.name} must be between 0 and 1 (exclusive)")


@attrs.frozen
class TubePolicy:
    """How a worker retries the jobs of one tube.

    A handler that raises gets its job released with a delay of
    ``backoff * backoff_factor ** (failures - 1)`` seconds (at most
    ``max_backoff``), so a failing job backs off exponentially; the
    ``max_failures``-th failure buries it with the error recorded as its last
    error. Failures are counted by the server (the job's ``releases``), so they
    add up over every worker and restart; a kick starts the count again.

    :param max_failures: the failure that buries the job (1: bury at once). The
        server buries a job by itself past twice its expiry limit (3) of
        releases, so values above 6 need a larger ``expired_limit`` on the put.
    :param touch_at: the fraction of its ttl after which a held job is touched
        (its ttl restarted), as often as needed while the handler runs.
    """

    max_failures: int = attrs.field(default=5, validator=_positive_count)
    backoff: float = attrs.field(default=1.0, validator=_seconds)
    backoff_factor: float = attrs.field(default=2.0, validator=_seconds)
    max_backoff: float = attrs.field(default=300.0, validator=_seconds)
    touch_at: float = attrs.field(default=0.5, validator=_fraction)

    def after_failure(self, releases: int) -> float | None:
        """What to do with a job that just failed, having been released
        ``releases`` times before: the release delay in seconds, or ``None``
        to bury it."""
        failures = releases + 1
        if failures >= self.max_failures:
            return None
        return min(self.max_backoff, self.backoff * self.backoff_factor ** (failures - 1))


def error_text(error: BaseException) -> str:
    """A handler's exception as a bury records it: the traceback, its end kept
    when it is longer than the server takes (the last lines say the most)."""
    text = "".join(traceback.format_exception(error)).strip() or repr(error)
    if len(text) > MAX_ERROR_LENGTH:
        text = "…" + text[-(MAX_ERROR_LENGTH - 1):]
    return text
