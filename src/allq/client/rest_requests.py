"""Reading REST requests: query parameters and JSON bodies into federation arguments.

Pure parsing at the REST edge, one function per shape: AllQueue's spellings
(``tube`` or ``tube_name``, booleans as ``true/1/yes``, numbers sent as strings
by old Ruby clients) become typed values checked by the shared rules of
:mod:`allq.vocabulary`, or a :class:`BadRequest` naming the field. Nothing here
touches the federation or writes a response.
"""

import re
from collections.abc import Mapping

from twisted.web.iweb import IRequest

from allq import vocabulary
from allq.errors import BadRequest
from allq.wire.bodies import BASE64, decode_body

MAX_SERVER_REF = 255
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
_INTEGER = re.compile(r"-?[0-9]{1,20}")
_NUMBER = re.compile(r"-?[0-9]{1,20}(?:\.[0-9]{1,9})?")
NEW_JOB_KEYS = frozenset({
    "tube", "body", "body_base64", "ttl", "delay", "run_at", "priority", "expired_limit", "parent_id",
    "shard_key", "idempotency_key", "unique_key", "concurrency_key",
})
NEW_PARENT_JOB_KEYS = (NEW_JOB_KEYS - {"idempotency_key", "unique_key", "concurrency_key"}
                       | {"timeout", "run_on_timeout", "limit", "noop", "id"})
#: A caller's idempotency key: printable ASCII without spaces.
IDEMPOTENCY_KEY = re.compile(r"[!-~]{1,200}")


# -- query parameters ------------------------------------------------------------


def arg(request: IRequest, *names: str) -> str | None:
    """The value of the first of ``names`` present in the query string, or ``None``."""
    for name in names:
        values = request.args.get(name.encode("ascii"))
        if values is None:
            continue
        if len(values) > 1:
            raise BadRequest(f"{name} is given more than once")
        try:
            return values[0].decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"{name} is not valid UTF-8") from None
    return None


def required_arg(request: IRequest, *names: str) -> str:
    value = arg(request, *names)
    if value is None:
        raise BadRequest(f"{names[0]} is required")
    return value


def tube_arg(request: IRequest) -> str:
    return vocabulary.check_tube(required_arg(request, "tube", "tube_name"))


def job_id_arg(request: IRequest) -> str:
    return check_job_id(required_arg(request, "job_id"))


def bool_arg(request: IRequest, name: str) -> bool:
    value = arg(request, name)
    return False if value is None else parse_bool(name, value)


def int_arg(request: IRequest, name: str, *, default: int, minimum: int, maximum: int) -> int:
    value = arg(request, name)
    if value is None:
        return default
    if not _INTEGER.fullmatch(value):
        raise BadRequest(f"{name} must be an integer")
    number = int(value)
    if not minimum <= number <= maximum:
        raise BadRequest(f"{name} must be between {minimum} and {maximum}")
    return number


def seconds_arg(request: IRequest, name: str, *, maximum: float | None = None) -> float:
    value = arg(request, name)
    if value is None:
        return 0
    if not _NUMBER.fullmatch(value):
        raise BadRequest(f"{name} must be a number of seconds")
    seconds = vocabulary.check_seconds(name, to_number(value))
    if maximum is not None and seconds > maximum:
        raise BadRequest(f"{name} must be at most {maximum:g} seconds")
    return seconds


def max_size_arg(request: IRequest) -> int | None:
    """``max_size``: a tube bound from 1 to :data:`~allq.vocabulary.MAX_TUBE_SIZE`;
    empty or absent for none."""
    text = arg(request, "max_size")
    if not text:
        return None
    if not _INTEGER.fullmatch(text) or not 1 <= int(text) <= vocabulary.MAX_TUBE_SIZE:
        raise BadRequest(f"max_size must be an integer from 1 to {vocabulary.MAX_TUBE_SIZE}, "
                         "or empty for no bound")
    return int(text)


def check_job_id(job_id: object, name: str = "job_id", *, in_query: bool = True) -> str:
    """Validate a job id, ``<server_id>,<number>`` (:class:`allq.vocabulary.JobRef`).

    :param in_query: the id came in a query string (where its comma is encoded).
    :raises BadRequest: anything else.
    """
    try:
        return vocabulary.check_job_id(job_id, name)
    except BadRequest:
        hint = " (URL-encoded)" if in_query else ""
        raise BadRequest(f"{name} must look like <server_id>,<number>{hint}") from None


def check_parent_ref(ref: object, name: str = "job_id", *, in_query: bool = True) -> str:
    """A waiting parent, by job id or by the caller-chosen id its put gave it.

    :raises BadRequest: neither.
    """
    if vocabulary.is_parent_alias(ref):
        return ref  # type: ignore[return-value]
    try:
        return vocabulary.check_job_id(ref, name)
    except BadRequest:
        hint = " (URL-encoded)" if in_query else ""
        raise BadRequest(f"{name} must look like <server_id>,<number>{hint}, or be the id "
                         "a parent was put with") from None


def parent_ref_arg(request: IRequest) -> str:
    return check_parent_ref(required_arg(request, "job_id"))


def parse_bool(name: str, value: str) -> bool:
    """Parse ``true/false/1/0/yes/no`` (any case); AllQueue deleted on ``false``.

    :raises BadRequest: any other text.
    """
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise BadRequest(f"{name} must be true or false")


def to_number(text: str) -> int | float:
    return float(text) if "." in text else int(text)



def field_str(obj: Mapping, name: str) -> str | None:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    if not value.isascii():
        # JSON's "\ud800" escapes decode to lone surrogates, which UTF-8 (and so
        # the wire to the servers) cannot carry.
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(f"{name} must be valid Unicode text (no lone surrogates)") from None
    return value


def field_int(obj: Mapping, name: str) -> int | None:
    """An integer given as a JSON number or a numeric string (old Ruby clients send "5")."""
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} must be an integer")
    return value


def field_seconds(obj: Mapping, name: str, *, positive: bool = False,
                   maximum: float | None = None) -> float | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        if not _NUMBER.fullmatch(value):
            raise BadRequest(f"{name} must be a number of seconds")
        value = to_number(value)
    if maximum is None:
        return vocabulary.check_seconds(name, value, positive=positive)
    return vocabulary.check_seconds(name, value, positive=positive, maximum=maximum)



def field_body(obj: Mapping) -> str | bytes | None:
    """``body`` (text) or ``body_base64`` (decoded to bytes), not both; ``None``
    when neither is given."""
    body = field_str(obj, "body")
    binary = field_str(obj, "body_base64")
    if binary is not None:
        if body is not None:
            raise BadRequest("give body or body_base64, not both")
        body = decode_body(binary, BASE64)
    return body


def field_expired_limit(obj: Mapping) -> int | None:
    """``expired_limit``, within the vocabulary's bound (``None``: the default)."""
    expired_limit = field_int(obj, "expired_limit")
    if expired_limit is not None:
        vocabulary.check_count("expired_limit", expired_limit,
                               maximum=vocabulary.MAX_EXPIRED_LIMIT)
    return expired_limit


def field_start(obj: Mapping) -> tuple[float, float | None]:
    """``(delay, run_at)``: when a new job becomes ready, by one or the other."""
    delay = field_seconds(obj, "delay") or 0
    run_at = field_seconds(obj, "run_at", maximum=vocabulary.MAX_RUN_AT)
    if run_at is not None and delay:
        raise BadRequest("give delay or run_at, not both")
    return delay, run_at

def field_bool(obj: Mapping, name: str) -> bool | None:
    value = obj.get(name)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return parse_bool(name, value)
    raise BadRequest(f"{name} must be true or false")


def check_keys(obj: Mapping, allowed: frozenset) -> None:
    unknown = obj.keys() - allowed
    if unknown:
        raise BadRequest(f"unknown field {sorted(unknown)[0][:40]!r}")


def new_job(obj: Mapping, allowed: frozenset = NEW_JOB_KEYS) -> dict:
    """Validate the fields of a ``NewJob`` body; returns the federation put's arguments."""
    check_keys(obj, allowed)
    tube = vocabulary.check_tube(obj.get("tube"))
    body = field_body(obj)
    priority = field_int(obj, "priority")
    expired_limit = field_expired_limit(obj)
    delay, run_at = field_start(obj)
    # "" means "none" in AllQueue, and Swagger clients may send it.
    parent_id = field_str(obj, "parent_id") or None
    if parent_id is not None:
        check_parent_ref(parent_id, "parent_id", in_query=False)
    return {
        "tube": tube,
        "body": "" if body is None else body,  # AllQueue's default body
        "priority": None if priority is None else vocabulary.check_priority(priority),  # null: default
        "ttl": field_seconds(obj, "ttl", positive=True),
        "delay": delay,
        "expired_limit": expired_limit,
        "run_at": run_at,
        "shard_key": field_str(obj, "shard_key") or None,
        "parent_id": parent_id,
        "idempotency_key": _idempotency_key(obj),
        **_job_keys(obj, parent_id),
    }


def _job_keys(obj: Mapping, parent_id: str | None) -> dict:
    """The ``unique_key`` and ``concurrency_key`` given (only those: a parent put
    takes neither)."""
    keys = {}
    for name in ("unique_key", "concurrency_key"):
        if obj.get(name) is not None:
            keys[name] = vocabulary.check_job_key(name, obj[name])
            if parent_id is not None:
                raise BadRequest(f"a child job goes to its parent's server: it cannot "
                                 f"carry a {name}")
    return keys


def _idempotency_key(obj: Mapping) -> str | None:
    key = obj.get("idempotency_key")
    if key is not None and (not isinstance(key, str) or not IDEMPOTENCY_KEY.fullmatch(key)):
        raise BadRequest("idempotency_key must be 1-200 printable ASCII characters, no spaces")
    return key


def new_parent_job(obj: Mapping) -> dict:
    """Validate a ``NewParentJob`` body; returns the federation put_parent's arguments."""
    args = new_job(obj, NEW_PARENT_JOB_KEYS)
    delay, run_at = args.pop("delay"), args.pop("run_at")
    del args["idempotency_key"]
    if delay or run_at is not None:
        raise BadRequest("a parent job becomes ready when its children finish: "
                         "delay and run_at do not apply")
    alias = field_str(obj, "id") or None  # "" means none, as for parent_id
    if alias is not None:
        vocabulary.check_parent_alias(alias)
    timeout = field_seconds(obj, "timeout", positive=True)
    limit = field_int(obj, "limit")
    if limit is not None:
        vocabulary.check_count("limit", limit, minimum=0, maximum=vocabulary.MAX_CHILD_LIMIT)
    return {
        **args,
        "timeout": vocabulary.DEFAULT_PARENT_TIMEOUT if timeout is None else timeout,
        "run_on_timeout": bool(field_bool(obj, "run_on_timeout")),
        "limit": limit,
        "noop": bool(field_bool(obj, "noop")),
        "alias": alias,
    }



#: Top-level fields of a batch put that are defaults for each of its jobs.
BATCH_DEFAULT_KEYS = NEW_JOB_KEYS - {"body", "body_base64", "idempotency_key"}


def batch_items(obj: Mapping) -> list[dict]:
    """Validate a batch put body ``{"jobs": [...], <defaults>}``; the federation
    put arguments of each job, in order."""
    check_keys(obj, BATCH_DEFAULT_KEYS | {"jobs"})
    jobs = obj.get("jobs")
    if not isinstance(jobs, list) or not 1 <= len(jobs) <= vocabulary.MAX_BATCH:
        raise BadRequest(f"jobs must be a list of 1 to {vocabulary.MAX_BATCH} jobs")
    defaults = {key: value for key, value in obj.items() if key != "jobs"}
    batch = []
    for index, item in enumerate(jobs):
        if not isinstance(item, dict):
            raise BadRequest(f"jobs[{index}] must be a JSON object")
        try:
            batch.append(new_job({**defaults, **item}))
        except BadRequest as e:
            raise type(e)(f"jobs[{index}]: {e.message}") from None
    return batch


def throttle_body(obj: Mapping) -> tuple[str, float | None]:
    """Validate a ``{"tube", "tps"}`` body; ``tps`` ``None`` (null, or <= 0) removes
    the throttle. AllQueue's clients may send the number as a string."""
    check_keys(obj, frozenset({"tube", "tps"}))
    tube = vocabulary.check_tube(obj.get("tube"))
    if "tps" not in obj:
        raise BadRequest("tps is required (null or 0 removes the throttle)")
    tps = obj["tps"]
    if isinstance(tps, str) and _NUMBER.fullmatch(tps):
        tps = to_number(tps)
    return tube, vocabulary.check_tps(tps)


def job_ids_body(obj: Mapping) -> list[str]:
    """Validate a batch action body ``{"job_ids": [...]}``; the ids, in order."""
    check_keys(obj, frozenset({"job_ids"}))
    job_ids = obj.get("job_ids")
    if not isinstance(job_ids, list) or not 1 <= len(job_ids) <= vocabulary.MAX_BATCH:
        raise BadRequest(f"job_ids must be a list of 1 to {vocabulary.MAX_BATCH} job ids")
    for index, job_id in enumerate(job_ids):
        check_job_id(job_id, f"job_ids[{index}]", in_query=False)
    return job_ids


def check_server_ref(name: str, value: str) -> str:
    """A server named by id or ``host:port`` (the federation finds it)."""
    if not value or len(value) > MAX_SERVER_REF or not value.isprintable():
        raise BadRequest(f"{name} must be 1-{MAX_SERVER_REF} printable characters")
    return value
