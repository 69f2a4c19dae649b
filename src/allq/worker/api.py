"""The allq-client's REST API as the worker library speaks it: calls, replies, errors.

Pure: what to send for each operation (:class:`Call`) and what an answer means
(a value, or an :mod:`allq.errors` exception rebuilt from the JSON error body),
so the synchronous and the Twisted transports only move bytes. Puts are checked
here before they are sent, because a coalesced batch is refused whole when one
of its jobs is malformed.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from allq.errors import AllQError, BadRequest, Unavailable, UnknownOutcome, error_for_code
from allq.vocabulary import (
    MAX_BATCH,
    MAX_EXPIRED_LIMIT,
    MAX_RUN_AT,
    check_concurrency,
    check_count,
    check_job_id,
    check_job_key,
    check_priority,
    check_seconds,
    check_shard_key,
    check_tube,
)

#: Where the allq-client serves REST by default, and the variable naming others
#: (``ALLQ_URL=http://10.0.0.5:8090,http://10.0.0.6:8090`` lists several).
DEFAULT_URL = "http://127.0.0.1:8090"
ENV_URL = "ALLQ_URL"
#: The options a put takes (``POST /job``'s fields besides ``tube`` and ``body``).
PUT_OPTIONS = frozenset({"ttl", "delay", "run_at", "priority", "expired_limit", "shard_key",
                         "parent_id", "idempotency_key", "unique_key", "concurrency_key"})
_IDEMPOTENCY_KEY = re.compile(r"[!-~]{1,200}")


class JobId(str):
    """A put's job id (a ``str``). :attr:`duplicate` is true when the put's
    ``unique_key`` found a live job of its tube: nothing was stored, and the id
    is that job's."""

    __slots__ = ()
    duplicate = False


class DuplicateJobId(JobId):
    """The id of the live job a put's ``unique_key`` found (``duplicate`` true)."""

    __slots__ = ()
    duplicate = True


def mark_id(text: str, duplicate: bool = False) -> JobId:
    """A job id marked as new or as a duplicate."""
    return DuplicateJobId(text) if duplicate else JobId(text)


class ClientUnreachable(Unavailable):
    """No allq-client answered (connection refused, reset, or timed out)."""

    code = "client_unreachable"


class BatchError(AllQError):
    """Some jobs of a batch failed.

    :ivar results: per job, in order, its id or the :class:`AllQError` it failed with.
    """

    code = "batch_failed"

    def __init__(self, message: str, results: list) -> None:
        super().__init__(message)
        self.results = results


# -- the clients to talk to --------------------------------------------------------------


def client_urls(url: str | Sequence[str] | None = None) -> list[str]:
    """The allq-client base URLs to use, in order of preference.

    :param url: one URL, several separated by commas, or a list; ``None``:
        ``$ALLQ_URL``, else :data:`DEFAULT_URL`. ``host:port`` means ``http://host:port``.
    :raises ValueError: a URL that is not ``http://host[:port]``.
    """
    if url is None:
        url = os.environ.get(ENV_URL) or DEFAULT_URL
    items = url.split(",") if isinstance(url, str) else list(url)
    urls = []
    for item in (part.strip() for part in items):
        if not item:
            continue
        if "://" not in item:
            item = "http://" + item
        parts = urllib.parse.urlsplit(item)
        try:
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            raise ValueError(f"bad port in allq-client URL {item!r}") from None
        if parts.scheme != "http" or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(f"allq-client URL must look like http://host:port, not {item!r}")
        urls.append(f"http://{parts.netloc}{parts.path.rstrip('/')}")
    if not urls:
        raise ValueError("no allq-client URL given")
    return urls


# -- calls ------------------------------------------------------------------------------------


@attrs.frozen
class Call:
    """One REST request.

    :ivar wait: seconds the allq-client may hold it (a long poll), on top of the
        transport's timeout.
    """

    method: str
    path: str
    query: tuple[tuple[str, str], ...] = ()
    body: Any = None
    wait: float = 0.0

    @property
    def target(self) -> str:
        """The path with its query string."""
        if not self.query:
            return self.path
        return f"{self.path}?{urllib.parse.urlencode(self.query)}"


def _query(**params: object) -> tuple[tuple[str, str], ...]:
    pairs = []
    for name, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        pairs.append((name, str(value)))
    return tuple(pairs)


def new_job(tube: str, body: str, options: Mapping[str, Any]) -> dict:
    """A ``NewJob`` for ``POST /job`` or a batch, checked here as the allq-client
    checks it (a bad job in a coalesced batch would fail its neighbours too).

    :raises BadRequest: an unknown option or a value out of bounds.
    """
    check_tube(tube)
    if not isinstance(body, str):
        raise BadRequest("body must be a string")
    unknown = options.keys() - PUT_OPTIONS
    if unknown:
        raise BadRequest(f"unknown put option {sorted(unknown)[0]!r}")
    job = {"tube": tube, "body": body}
    for name, value in options.items():
        if value is None:
            continue
        if name == "priority":
            check_priority(value)
        elif name == "ttl":
            check_seconds("ttl", value, positive=True)
        elif name == "delay":
            check_seconds("delay", value)
        elif name == "run_at":
            check_seconds("run_at", value, maximum=MAX_RUN_AT)
        elif name == "expired_limit":
            check_count("expired_limit", value, maximum=MAX_EXPIRED_LIMIT)
        elif name == "shard_key":
            check_shard_key(value)
        elif name == "parent_id":
            check_job_id(value, "parent_id")
        elif name in ("unique_key", "concurrency_key"):
            check_job_key(name, value)
        elif not isinstance(value, str) or not _IDEMPOTENCY_KEY.fullmatch(value):
            raise BadRequest("idempotency_key must be 1-200 printable ASCII characters, "
                             "no spaces")
        job[name] = value
    if job.get("delay") and job.get("run_at") is not None:
        raise BadRequest("give delay or run_at, not both")
    if job.get("parent_id") and ("unique_key" in job or "concurrency_key" in job):
        raise BadRequest("a child job goes to its parent's server: it cannot carry "
                         "a unique_key or a concurrency_key")
    return job


def new_jobs(jobs: Iterable[Mapping[str, Any] | str], tube: str | None,
             defaults: Mapping[str, Any]) -> Iterable[dict]:
    """Checked ``NewJob`` s for a batch: each item a mapping or a plain body; ``tube``
    and ``defaults`` fill in what an item does not give."""
    for item in jobs:
        fields = {**defaults, **({"body": item} if isinstance(item, str) else item)}
        job_tube = fields.pop("tube", tube)
        if job_tube is None:
            raise BadRequest("a job names no tube (give tube=)")
        yield new_job(job_tube, fields.pop("body", ""), fields)


def put(job: dict) -> Call:
    return Call("POST", "/job", body=job)


def put_batch(jobs: list[dict]) -> Call:
    if not 1 <= len(jobs) <= MAX_BATCH:
        raise BadRequest(f"a batch holds 1 to {MAX_BATCH} jobs")
    return Call("POST", "/multiple_job", body={"jobs": jobs})


def put_reply(reply: dict) -> JobId:
    """The id a ``POST /job`` answered, marked as a duplicate when it was one."""
    return mark_id(reply["job_id"], bool(reply.get("duplicate")))


def concurrency(tube: str, limit: int) -> Call:
    check_tube(tube)
    check_concurrency(limit)
    return Call("PUT", "/concurrency", _query(tube=tube, limit=limit))


def event(data: Mapping[str, Any], options: Mapping[str, Any]) -> Call:
    """``POST /event``: ``data`` and the event's options (``priority``, ``ttl``,
    ``delay``, ``run_at``, ``expired_limit``, ``shard_key``, ``idempotency_key``,
    ``scope``, ``unmatched``), checked by the allq-client."""
    if not isinstance(data, Mapping):
        raise BadRequest("an event's data must be a JSON object")
    return Call("POST", "/event", body={"data": dict(data),
                                        **{k: v for k, v in options.items() if v is not None}})


def set_interest(tube: str, interests: Mapping[str, str] | str) -> Call:
    check_tube(tube)
    if interests != "*" and not isinstance(interests, Mapping):
        raise BadRequest('interests must be "*" or a mapping of field: regex')
    body = {"tube": tube, "interests": interests if interests == "*" else dict(interests)}
    return Call("PUT", "/interest", body=body)


def schedule(name: str, tube: str, fields: Mapping[str, Any]) -> Call:
    """``POST /schedule``: ``every`` or ``cron`` (+ ``timezone``, ``missed``) and
    the job's options, checked by the allq-client."""
    return Call("POST", "/schedule", body={"name": name, "tube": tube,
                                           **{k: v for k, v in fields.items() if v is not None}})


def get(tube: str, count: int, *, wait: float = 0, delete: bool = False) -> Call:
    check_tube(tube)
    check_count("count", count, maximum=MAX_BATCH)
    return Call("GET", "/multiple_job",
                _query(tube=tube, count=count, delete=delete or None, wait=wait or None),
                wait=wait)


def done_batch(job_ids: list[str]) -> Call:
    if not 1 <= len(job_ids) <= MAX_BATCH:
        raise BadRequest(f"a batch holds 1 to {MAX_BATCH} job ids")
    return Call("DELETE", "/multiple_job", body={"job_ids": job_ids})


def job_action(action: str, job_id: str, **params: object) -> Call:
    """``done`` (``DELETE /job``), ``touch``, ``release`` (``delay``), ``bury``
    (``error``, sent as a JSON body: a traceback is too long for a URL), ``kick``."""
    check_job_id(job_id)
    if action == "done":
        return Call("DELETE", "/job", _query(job_id=job_id))
    if action == "bury" and params.get("error") is not None:
        return Call("PUT", "/bury", _query(job_id=job_id), body={"error": params["error"]})
    return Call("PUT", f"/{action}", _query(job_id=job_id, **params))


def tube_call(method: str, path: str, **params: object) -> Call:
    """A call naming a tube or server in its query (peek, kick, pause, drain, ...)."""
    return Call(method, path, _query(**params))


# -- replies ------------------------------------------------------------------------------


def reply_json(data: bytes) -> object:
    """A reply body's JSON, or ``None`` when it is empty or not JSON (its status
    still says what happened)."""
    try:
        return json.loads(data) if data else None
    except ValueError:
        return None


def error_from(status: int, reply: object) -> AllQError:
    """The exception an error answer stands for."""
    if isinstance(reply, dict) and isinstance(reply.get("error"), str):
        detail = reply.get("detail")
        error = error_for_code(reply["error"], detail if isinstance(detail, str) else "")
        if isinstance(error, UnknownOutcome):
            error.idempotency_key = reply.get("idempotency_key")
        return error
    error = AllQError(f"HTTP {status} without an allq error body")
    error.code = f"http_{status}"
    return error


def value(status: int, reply: object) -> Any:
    """The answer's JSON value when the call succeeded.

    :raises AllQError: the error the allq-client answered with.
    """
    if status == 200:
        return reply
    raise error_from(status, reply)


def should_fail_over(error: BaseException) -> bool:
    """Whether another allq-client may do better: this one is unreachable, or
    reaches no server (another may reach others)."""
    return isinstance(error, ClientUnreachable) or (
        isinstance(error, AllQError) and error.code in ("unavailable", "connection_lost"))


def batch_outcomes(status: int, reply: object, count: int) -> list:
    """Per item of a batch (put or delete), its job id or its :class:`AllQError`.

    A batch refused whole (bad input, no server) gives every item that error.
    """
    if status == 200 and isinstance(reply, dict) and isinstance(reply.get("job_ids"), list):
        return list(reply["job_ids"])
    if (isinstance(reply, dict) and isinstance(reply.get("job_ids"), list)
            and len(reply["job_ids"]) == count and isinstance(reply.get("errors"), list)):
        outcomes: list = list(reply["job_ids"])
        for entry in reply["errors"]:
            outcomes[entry["index"]] = error_from(status, entry)
        return outcomes
    error = error_from(status, reply)
    return [error] * count


def put_outcomes(status: int, reply: object, count: int) -> list:
    """:func:`batch_outcomes` of a put batch, each id a :class:`JobId` (marked
    when the reply's ``duplicates`` lists its index)."""
    outcomes = batch_outcomes(status, reply, count)
    duplicates = reply.get("duplicates") if isinstance(reply, dict) else None
    marked = set(duplicates) if isinstance(duplicates, list) else set()
    return [outcome if isinstance(outcome, AllQError) else mark_id(outcome, index in marked)
            for index, outcome in enumerate(outcomes)]


def raise_for_batch(outcomes: list, action: str) -> list[str]:
    """The ids, when every item succeeded; else :class:`BatchError`."""
    failed = [outcome for outcome in outcomes if isinstance(outcome, AllQError)]
    if failed:
        raise BatchError(f"{action}: {len(failed)} of {len(outcomes)} jobs failed "
                         f"(first: {failed[0].code}: {failed[0].message})", outcomes)
    return outcomes


def chunks(items: Iterable, size: int = MAX_BATCH) -> Iterable[list]:
    """``items`` in lists of at most ``size``."""
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
