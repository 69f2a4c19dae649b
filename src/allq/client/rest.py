"""The REST facade of ``twistd allq-client``: AllQueue's HTTP API, with real status codes.

:class:`RestApi` is a Klein app bound to a federation object (see
:class:`Federation` below for the interface it needs) and a clock. Each route
validates its input at the edge (tube names, job ids, booleans, counts,
seconds, JSON shape and size), makes one federation call and encodes the reply
in AllQueue's shape (``ALLQ-REFERENCE.md`` §9.2), so the Ruby ``allq_rest``
clients keep working. It differs from AllQueue where §15 marks a FIX:

* errors are HTTP 4xx/5xx with a JSON body ``{"error": <code>, "detail": <text>}``
  (400 bad input, 404 unknown job or route, 405 wrong method, 409 wrong state,
  413 too large, 503 no server reachable, 504 timeout, 500 a bug), never an
  empty 200;
* ``delete``/``buried`` are parsed as booleans (``delete=false`` no longer deletes);
* ``GET /multiple_job`` always answers ``{"jobs": [...]}``, ``count`` defaults to 1;
* ``PUT /kick?tube=`` kicks buried jobs of a tube, ``PUT /release`` takes ``delay``,
  ``GET /peek`` takes ``offset``; admin routes ``/update_servers``, ``/drain``,
  ``/undrain``, ``/add_server`` and ``/health`` exist;
* a throttle is split over the healthy servers in fractional shares, so the
  federation as a whole hands out at most ``tps`` jobs per second (§15 items
  16, 32); pause is sent to every server (§15 item 13); drain exists per tube
  and per server and really refuses new jobs (§15 item 30); ``PUT /pause``,
  ``/unpause``, ``/fair`` and ``/max_size`` are new;
* a child put naming a missing parent stores nothing and answers 404 (§15 item 9);
* parent jobs with ``noop`` or a caller-chosen ``id`` answer 400 ``not_supported``
  instead of being silently ignored;
* ``GET /openapi.json`` describes exactly the routes served (:mod:`allq.client.openapi`).

Every federation call is bounded by ``request_timeout`` (plus the long-poll
``wait``) on the injected clock, so a hung call ends as a 504 rather than a
request that never answers. No queue logic and no server knowledge lives here.
"""

import json
import math
import os
import re
from collections.abc import Awaitable, Mapping
from typing import Any, Protocol

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound as NoRoute
from werkzeug.routing import RequestRedirect

from allq.client import openapi
from allq.client.expiry import Expiry
from allq.client.http_request import when_done
from allq.vocabulary import CLEAR_STATES, MAX_COUNT, check_priority, check_seconds, check_tube
from allq.errors import AllQError, BadRequest, Timeout, TooLarge
from allq.wire.messages import dumps

SECONDS = 1.0
KIB = 1024
MIB = 1024 * KIB
DEFAULT_PORT = 8090
#: Twice the server's default maximum job size, plus room for the JSON envelope.
DEFAULT_MAX_BODY = 2 * MIB + 64 * KIB
#: The longest long poll a ``wait`` parameter may ask for.
MAX_WAIT = 60 * SECONDS
#: How long one federation call may take (on top of its ``wait``) before a 504.
DEFAULT_REQUEST_TIMEOUT = 60 * SECONDS
#: ``<server_id>,<number>``; server ids are URL-safe (``allq.server.tap.SERVER_ID``).
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64},[0-9]{1,20}")
MAX_KICK_COUNT = 2**31
MAX_OFFSET = 2**31
MAX_SERVER_REF = 255
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
_INTEGER = re.compile(r"-?[0-9]{1,20}")
_NUMBER = re.compile(r"-?[0-9]{1,20}(?:\.[0-9]{1,9})?")
_DETAIL_LIMIT = 500
_NEW_JOB_KEYS = frozenset({
    "tube", "body", "ttl", "delay", "run_at", "priority", "expired_limit", "parent_id",
    "shard_key",
})
_NEW_PARENT_JOB_KEYS = _NEW_JOB_KEYS | {"timeout", "run_on_timeout", "limit", "noop", "id"}
#: The latest ``run_at`` accepted (unix seconds), as the servers check it.
MAX_RUN_AT = 2**40
#: The largest ``max_size`` of a tube, as the servers check it.
MAX_TUBE_SIZE = 2**40
#: ``policy`` values of ``PUT /fair``: the server's policies, ``off`` and ``default``
#: (back to the name convention, e.g. ``fq-`` tubes are round robin).
FAIR_SETTINGS = ("round_robin", "weighted", "off", "default")
DEFAULT_PARENT_TIMEOUT = 3600 * SECONDS


_log = Logger()


class NotSupported(BadRequest):
    """The request asks for a feature this version does not have yet."""

    code = "not_supported"


class Federation(Protocol):
    """What the facade needs from the federation layer (``allq.client.federation``).

    Coroutine methods raise :class:`allq.errors.AllQError` subclasses:
    ``BadRequest``, ``NotFound``, ``WrongState``, ``TooLarge``, ``Draining``,
    ``QueueFull``, ``Unavailable`` (including "no server reachable") and
    ``Timeout``. The tube-setting methods return how many servers applied it.
    They must be cancellable: the facade cancels a call when its HTTP client goes
    away or its time is up.
    """

    async def put(self, tube: str, body: str, *, priority: int | None = None,
                  ttl: float | None = None, delay: float = 0,
                  expired_limit: int | None = None, run_at: float | None = None,
                  shard_key: str | None = None, parent_id: str | None = None) -> str: ...

    async def put_parent(self, tube: str, body: str, *, priority: int | None = None,
                         ttl: float | None = None, expired_limit: int | None = None,
                         shard_key: str | None = None, parent_id: str | None = None,
                         timeout: float | None = None, run_on_timeout: bool = False,
                         limit: int | None = None) -> str: ...

    async def get(self, tube: str, *, count: int = 1, delete: bool = False,
                  wait: float = 0) -> list[dict]: ...

    async def put_many(self, jobs: list[dict]) -> list[str | AllQError]: ...

    async def job_action(self, action: str, job_id: str, **params: Any) -> dict: ...

    async def job_action_many(self, action: str, job_ids: list[str],
                              **params: Any) -> list[dict | AllQError]: ...

    async def kick_tube(self, tube: str, count: int = 1) -> list[str]: ...

    async def peek(self, tube: str, *, buried: bool = False, offset: int = 0) -> dict | None: ...

    async def clear(self, tube: str, state: str = "all") -> int: ...

    async def throttle(self, tube: str, tps: float | None) -> int: ...

    async def pause(self, tube: str, paused: bool = True) -> int: ...

    async def drain_tube(self, tube: str, draining: bool = True) -> int: ...

    async def fair(self, tube: str, policy: str) -> int: ...

    async def max_size(self, tube: str, max_size: int | None) -> int: ...

    async def stats(self) -> list[dict]: ...

    def health(self) -> dict: ...

    def add_server(self, address: str) -> None: ...

    def update_servers(self, addresses: list[str]) -> None: ...

    async def drain_server(self, server: str, draining: bool = True) -> bool: ...


# -- JSON in and out -------------------------------------------------------------


def json_response(request: IRequest, obj: object, code: int = 200) -> bytes:
    """Encode ``obj`` as the JSON body of the response to ``request``.

    :param request: the request being answered; its status and content type are set.
    :param obj: any JSON-encodable value.
    :param code: the HTTP status.
    :returns: the body bytes, for a Klein route or error handler to return.
    """
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    try:
        data = dumps(obj)
    except UnicodeEncodeError:
        # A lone surrogate (from a "\ud800" escape) has no UTF-8 form; JSON's
        # \u escapes can still carry it.
        data = json.dumps(obj, separators=(",", ":")).encode("ascii")
    # A known length spares the chunked framing of a deferred answer.
    request.setHeader(b"content-length", b"%d" % len(data))
    return data


def read_body(request: IRequest, max_size: int) -> bytes:
    """The raw request body, refusing more than ``max_size`` bytes before reading it all.

    :raises TooLarge: ``Content-Length`` or the body itself exceeds ``max_size``.
    :raises BadRequest: ``Content-Length`` is not a number.
    """
    declared = request.getHeader(b"content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise BadRequest("Content-Length must be a number")
        if int(declared) > max_size:
            raise TooLarge(f"request body is larger than {max_size} bytes")
    content = getattr(request, "content", None)
    if content is None:
        return b""
    data = content.read(max_size + 1)
    if len(data) > max_size:
        raise TooLarge(f"request body is larger than {max_size} bytes")
    return data


def parse_json_object(data: bytes) -> dict:
    """Decode a request body that must be one JSON object.

    :raises BadRequest: not UTF-8, not JSON (``NaN`` and ``Infinity`` included),
        nested too deeply, or not an object.
    """
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"request body is not valid JSON: {str(e)[:80]}") from None
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None
    if not isinstance(obj, dict):
        raise BadRequest("request body must be a JSON object")
    return obj


def read_json(request: IRequest, max_size: int) -> dict:
    """Read and decode a JSON object request body of at most ``max_size`` bytes.

    :raises TooLarge: the body is larger than ``max_size`` (checked before parsing).
    :raises BadRequest: the body is not a JSON object.
    """
    return parse_json_object(read_body(request, max_size))


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not allowed")


def error_body(error: AllQError) -> dict:
    """The JSON body of an error response: ``{"error": code, "detail": message}``."""
    return {"error": error.code, "detail": error.message[:_DETAIL_LIMIT]}


# -- query parameters ------------------------------------------------------------


def _arg(request: IRequest, *names: str) -> str | None:
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


def _required_arg(request: IRequest, *names: str) -> str:
    value = _arg(request, *names)
    if value is None:
        raise BadRequest(f"{names[0]} is required")
    return value


def _tube_arg(request: IRequest) -> str:
    return check_tube(_required_arg(request, "tube", "tube_name"))


def _job_id_arg(request: IRequest) -> str:
    return check_job_id(_required_arg(request, "job_id"))


def _bool_arg(request: IRequest, name: str) -> bool:
    value = _arg(request, name)
    return False if value is None else parse_bool(name, value)


def _int_arg(request: IRequest, name: str, *, default: int, minimum: int, maximum: int) -> int:
    value = _arg(request, name)
    if value is None:
        return default
    if not _INTEGER.fullmatch(value):
        raise BadRequest(f"{name} must be an integer")
    number = int(value)
    if not minimum <= number <= maximum:
        raise BadRequest(f"{name} must be between {minimum} and {maximum}")
    return number


def _seconds_arg(request: IRequest, name: str, *, maximum: float | None = None) -> float:
    value = _arg(request, name)
    if value is None:
        return 0
    if not _NUMBER.fullmatch(value):
        raise BadRequest(f"{name} must be a number of seconds")
    seconds = check_seconds(name, _to_number(value))
    if maximum is not None and seconds > maximum:
        raise BadRequest(f"{name} must be at most {maximum:g} seconds")
    return seconds


def check_job_id(job_id: object, name: str = "job_id", *, in_query: bool = True) -> str:
    """Validate a client-side job id, ``<server_id>,<number>``.

    :param in_query: the id came in a query string (where its comma is encoded).
    :raises BadRequest: anything else.
    """
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        hint = " (URL-encoded)" if in_query else ""
        raise BadRequest(f"{name} must look like <server_id>,<number>{hint}")
    return job_id


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


def _to_number(text: str) -> int | float:
    return float(text) if "." in text else int(text)


# -- JSON body fields --------------------------------------------------------------


def _field_str(obj: Mapping, name: str) -> str | None:
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


def _field_int(obj: Mapping, name: str) -> int | None:
    """An integer given as a JSON number or a numeric string (old Ruby clients send "5")."""
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} must be an integer")
    return value


def _field_seconds(obj: Mapping, name: str, *, positive: bool = False,
                   maximum: float | None = None) -> float | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        if not _NUMBER.fullmatch(value):
            raise BadRequest(f"{name} must be a number of seconds")
        value = _to_number(value)
    if maximum is None:
        return check_seconds(name, value, positive=positive)
    return check_seconds(name, value, positive=positive, maximum=maximum)


def _field_bool(obj: Mapping, name: str) -> bool | None:
    value = obj.get(name)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return parse_bool(name, value)
    raise BadRequest(f"{name} must be true or false")


def _check_keys(obj: Mapping, allowed: frozenset) -> None:
    unknown = obj.keys() - allowed
    if unknown:
        raise BadRequest(f"unknown field {sorted(unknown)[0][:40]!r}")


def _new_job(obj: Mapping, allowed: frozenset = _NEW_JOB_KEYS) -> dict:
    """Validate the fields of a ``NewJob`` body; returns the federation put's arguments."""
    _check_keys(obj, allowed)
    tube = check_tube(obj.get("tube"))
    body = _field_str(obj, "body")
    priority = _field_int(obj, "priority")
    expired_limit = _field_int(obj, "expired_limit")
    if expired_limit is not None and not 1 <= expired_limit <= 2**31:
        raise BadRequest(f"expired_limit must be between 1 and {2**31}")
    delay = _field_seconds(obj, "delay") or 0
    run_at = _field_seconds(obj, "run_at", maximum=MAX_RUN_AT)
    if run_at is not None:
        if delay:
            raise BadRequest("give delay or run_at, not both")
    # "" means "none" in AllQueue, and Swagger clients may send it.
    parent_id = _field_str(obj, "parent_id") or None
    if parent_id is not None:
        check_job_id(parent_id, "parent_id", in_query=False)
    return {
        "tube": tube,
        "body": "" if body is None else body,  # AllQueue's default body
        "priority": None if priority is None else check_priority(priority),  # null: default
        "ttl": _field_seconds(obj, "ttl", positive=True),
        "delay": delay,
        "expired_limit": expired_limit,
        "run_at": run_at,
        "shard_key": _field_str(obj, "shard_key") or None,
        "parent_id": parent_id,
    }


def _new_parent_job(obj: Mapping) -> dict:
    """Validate a ``NewParentJob`` body; returns the federation put_parent's arguments."""
    args = _new_job(obj, _NEW_PARENT_JOB_KEYS)
    delay, run_at = args.pop("delay"), args.pop("run_at")
    if delay or run_at is not None:
        raise BadRequest("a parent job becomes ready when its children finish: "
                         "delay and run_at do not apply")
    if _field_bool(obj, "noop"):
        raise NotSupported("noop parents are not supported: put a parent with a body "
                           "that does nothing")
    if _field_str(obj, "id"):
        raise NotSupported("job ids are chosen by the server: leave id out")
    timeout = _field_seconds(obj, "timeout", positive=True)
    limit = _field_int(obj, "limit")
    if limit is not None and not 0 <= limit <= 2**31:
        raise BadRequest(f"limit must be between 0 and {2**31}")
    return {
        **args,
        "timeout": DEFAULT_PARENT_TIMEOUT if timeout is None else timeout,
        "run_on_timeout": bool(_field_bool(obj, "run_on_timeout")),
        "limit": limit,
    }


def rest_job(job: Mapping) -> dict:
    """A job as the federation returns it, in AllQueue's REST ``JobResponse`` shape."""
    return {
        "id": job["job_id"],
        "body": job["body"],
        "tube": job["tube"],
        "expireds": int(job["expireds"]),
        "releases": int(job["releases"]),
    }


def rest_stats(server: Mapping) -> dict:
    """One server's stats in AllQueue's REST ``StatsResults`` shape."""
    totals = server["global"]
    tubes = []
    for tube in server["tubes"]:
        entry = {
            "tube": tube["tube"],
            "ready": int(tube["ready"]),
            "reserved": int(tube["reserved"]),
            "delayed": int(tube["delayed"]),
            "buried": int(tube["buried"]),
            "parents": int(tube["parents"]),
        }
        if tube.get("throttle_size") is not None:
            entry["throttle_size"] = _int_if_whole(tube["throttle_size"])
        entry["avg"] = round(float(tube["avg"]), 2)
        entry["tps"] = round(float(tube["tps"]), 2)
        entry["paused"] = bool(tube.get("paused", False))
        entry["draining"] = bool(tube.get("draining", False))
        entry["fair"] = tube.get("fair")
        entry["max_size"] = tube.get("max_size")
        tubes.append(entry)
    return {
        "server_name": f"{server['server_id']},{server['address']}",
        "action_count": int(totals["action_count"]),
        "job_put": int(totals["job_put"]),
        "job_get": int(totals["job_get"]),
        "draining": bool(totals.get("draining", False)),
        "stats": tubes,
    }


def _int_if_whole(value: float) -> int | float:
    """A throttle share: AllQueue showed whole numbers; a split may be fractional."""
    value = float(value)
    return int(value) if value.is_integer() else value


#: Top-level fields of a batch put that are defaults for each of its jobs.
_BATCH_DEFAULT_KEYS = _NEW_JOB_KEYS - {"body"}


def _batch_items(obj: Mapping) -> list[dict]:
    """Validate a batch put body ``{"jobs": [...], <defaults>}``; the federation
    put arguments of each job, in order."""
    _check_keys(obj, _BATCH_DEFAULT_KEYS | {"jobs"})
    jobs = obj.get("jobs")
    if not isinstance(jobs, list) or not 1 <= len(jobs) <= MAX_COUNT:
        raise BadRequest(f"jobs must be a list of 1 to {MAX_COUNT} jobs")
    defaults = {key: value for key, value in obj.items() if key != "jobs"}
    batch = []
    for index, item in enumerate(jobs):
        if not isinstance(item, dict):
            raise BadRequest(f"jobs[{index}] must be a JSON object")
        try:
            batch.append(_new_job({**defaults, **item}))
        except BadRequest as e:
            raise type(e)(f"jobs[{index}]: {e.message}") from None
    return batch


def _put_reply(job_id: str, request: IRequest) -> bytes:
    return json_response(request, {"action": "put", "job_id": job_id})


def _action_reply(result: Mapping, request: IRequest, action: str) -> bytes:
    return json_response(request, {"action": action, "job_id": result["job_id"]})


def _job_reply(jobs: list, request: IRequest) -> bytes:
    return json_response(request, rest_job(jobs[0]) if jobs else {})


def _jobs_reply(jobs: list, request: IRequest) -> bytes:
    return json_response(request, {"jobs": [rest_job(job) for job in jobs]})


def _batch_reply(outcomes: list, request: IRequest, action: str) -> bytes:
    """200 with every job id when each job succeeded; otherwise the first failure's
    status and error, with ``job_ids`` (``null`` where that job failed) and an
    ``errors`` entry per failed job, so a caller knows exactly what was done.

    :param outcomes: per job, its id (a put), the server's result (an action) or
        the :class:`AllQError` it failed with.
    """
    job_ids: list[str | None] = []
    errors: list[dict] = []
    first: AllQError | None = None
    for index, outcome in enumerate(outcomes):
        if not isinstance(outcome, AllQError):
            job_ids.append(outcome if isinstance(outcome, str) else outcome["job_id"])
            continue
        job_ids.append(None)
        first = first or outcome
        errors.append({"index": index, **error_body(outcome)})
    if first is None:
        return json_response(request, {"action": action, "job_ids": job_ids})
    return json_response(request, {**error_body(first), "action": action,
                                   "job_ids": job_ids, "errors": errors}, first.http_status)


# -- the facade --------------------------------------------------------------------


class RestApi:
    """The HTTP API of the client daemon.

    :param federation: the federation layer (see :class:`Federation`).
    :param clock: bounds every federation call (``request_timeout`` + ``wait``).
    :param max_body: the largest request body accepted, in bytes (413 beyond).
    :param request_timeout: seconds a federation call may take, not counting the
        long-poll ``wait`` it was asked for, before the request fails with 504.
    """

    app = Klein()

    def __init__(
        self,
        federation: Federation,
        clock: IReactorTime,
        *,
        max_body: int = DEFAULT_MAX_BODY,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        self._federation = federation
        self._clock = clock
        self._max_body = max_body
        self._request_timeout = request_timeout
        self._expiry = Expiry(clock)
        self._openapi = openapi.document(
            max_body=max_body, max_wait=MAX_WAIT, job_id_pattern=JOB_ID.pattern,
            max_kick_count=MAX_KICK_COUNT, max_offset=MAX_OFFSET, max_run_at=MAX_RUN_AT,
            max_tube_size=MAX_TUBE_SIZE, fair_settings=FAIR_SETTINGS,
        )

    def resource(self) -> IResource:
        """The resource to serve, e.g. ``Site(RestApi(federation, reactor).resource())``."""
        return _Router(self, self.app.resource())

    def _bounded(self, call: Awaitable | Deferred, wait: float = 0) -> Deferred:
        """One federation call as a Deferred that fails with 504 once its time is up."""
        limit = self._request_timeout + wait
        d = call if isinstance(call, Deferred) else ensureDeferred(call)
        return self._expiry.watch(d, limit, lambda: Timeout(
            f"the federation did not answer within {limit:g} seconds"))

    # -- jobs ------------------------------------------------------------------
    # The routes of /job and /multiple_job are plain functions returning a
    # Deferred: :class:`_Router` calls them without Klein (see there).

    @app.route("/job", methods=["POST"])
    def put_job(self, request: IRequest) -> Deferred:
        """Put a job (``NewJob`` body) → ``{"action": "put", "job_id"}``."""
        args = _new_job(read_json(request, self._max_body))
        tube, body = args.pop("tube"), args.pop("body")
        d = self._bounded(self._federation.put(tube, body, **args))
        return d.addCallback(_put_reply, request)

    @app.route("/multiple_job", methods=["POST"])
    def put_jobs(self, request: IRequest) -> Deferred:
        """Put a batch of jobs (``{"jobs": [NewJob, ...]}``, top-level fields being
        defaults for each) → ``{"action": "put", "job_ids": [...]}`` in order."""
        batch = _batch_items(read_json(request, self._max_body))
        d = self._bounded(self._federation.put_many(batch))
        return d.addCallback(_batch_reply, request, "put")

    @app.route("/job", methods=["GET"])
    def get_job(self, request: IRequest) -> Deferred:
        """Reserve (or with ``delete`` take) the next job of a tube → job or ``{}``."""
        tube = _tube_arg(request)
        delete = _bool_arg(request, "delete")
        wait = _seconds_arg(request, "wait", maximum=MAX_WAIT)
        d = self._bounded(self._federation.get(tube, count=1, delete=delete, wait=wait), wait)
        return d.addCallback(_job_reply, request)

    @app.route("/multiple_job", methods=["GET"])
    def get_multiple_jobs(self, request: IRequest) -> Deferred:
        """Reserve up to ``count`` jobs → ``{"jobs": [...]}`` (always a list)."""
        tube = _tube_arg(request)
        count = _int_arg(request, "count", default=1, minimum=1, maximum=MAX_COUNT)
        delete = _bool_arg(request, "delete")
        wait = _seconds_arg(request, "wait", maximum=MAX_WAIT)
        d = self._bounded(
            self._federation.get(tube, count=count, delete=delete, wait=wait), wait)
        return d.addCallback(_jobs_reply, request)

    @app.route("/job", methods=["DELETE"])
    def delete_job(self, request: IRequest) -> Deferred:
        """Finish or remove a job (``tube`` is optional and only checked)."""
        job_id = _job_id_arg(request)
        if _arg(request, "tube", "tube_name") is not None:
            _tube_arg(request)
        return self._job_action(request, "delete", job_id)

    @app.route("/multiple_job", methods=["DELETE"])
    def delete_jobs(self, request: IRequest) -> Deferred:
        """Finish or remove a batch of jobs (``{"job_ids": [...]}``)
        → ``{"action": "delete", "job_ids": [...]}``."""
        obj = read_json(request, self._max_body)
        _check_keys(obj, frozenset({"job_ids"}))
        job_ids = obj.get("job_ids")
        if not isinstance(job_ids, list) or not 1 <= len(job_ids) <= MAX_COUNT:
            raise BadRequest(f"job_ids must be a list of 1 to {MAX_COUNT} job ids")
        for index, job_id in enumerate(job_ids):
            check_job_id(job_id, f"job_ids[{index}]", in_query=False)
        d = self._bounded(self._federation.job_action_many("delete", job_ids))
        return d.addCallback(_batch_reply, request, "delete")

    @app.route("/touch", methods=["PUT"])
    async def touch_job(self, request: IRequest) -> bytes:
        """Restart a reserved job's ttl."""
        return await self._job_action(request, "touch", _job_id_arg(request))

    @app.route("/release", methods=["PUT"])
    async def release_job(self, request: IRequest) -> bytes:
        """Give a reserved job back, ready at once or after ``delay`` seconds."""
        job_id = _job_id_arg(request)
        delay = _seconds_arg(request, "delay")
        return await self._job_action(request, "release", job_id, delay=delay)

    @app.route("/bury", methods=["PUT"])
    async def bury_job(self, request: IRequest) -> bytes:
        """Bury a reserved job."""
        return await self._job_action(request, "bury", _job_id_arg(request))

    @app.route("/kick", methods=["PUT"])
    async def kick(self, request: IRequest) -> bytes:
        """Kick one job (``job_id``), or up to ``count`` buried jobs of ``tube``."""
        if _arg(request, "job_id") is not None:
            job_id = _job_id_arg(request)
            if _arg(request, "tube", "tube_name") is not None:
                _tube_arg(request)
            return await self._job_action(request, "kick", job_id)
        if _arg(request, "tube", "tube_name") is None:
            raise BadRequest("tube or job_id is required")
        tube = _tube_arg(request)
        count = _int_arg(request, "count", default=1, minimum=1, maximum=MAX_KICK_COUNT)
        job_ids = await self._bounded(self._federation.kick_tube(tube, count))
        return json_response(request, {"action": "kick", "job_ids": list(job_ids)})

    @app.route("/set_children_started", methods=["PUT"])
    async def set_children_started(self, request: IRequest) -> bytes:
        """Say every child of a waiting parent (``job_id``) has been put."""
        return await self._job_action(request, "set_children_started", _job_id_arg(request))

    def _job_action(self, request: IRequest, action: str, job_id: str, **params) -> Deferred:
        d = self._bounded(self._federation.job_action(action, job_id, **params))
        return d.addCallback(_action_reply, request, action)

    @app.route("/peek", methods=["GET"])
    async def peek(self, request: IRequest) -> bytes:
        """The next ready (or buried) job of a tube without reserving it, or ``{}``."""
        tube = _tube_arg(request)
        buried = _bool_arg(request, "buried")
        offset = _int_arg(request, "offset", default=0, minimum=0, maximum=MAX_OFFSET)
        job = await self._bounded(self._federation.peek(tube, buried=buried, offset=offset))
        return json_response(request, {} if job is None else rest_job(job))

    # -- tubes -----------------------------------------------------------------

    @app.route("/tube", methods=["DELETE"])
    async def clear_tube(self, request: IRequest) -> bytes:
        """Drop a tube's jobs in one state (``cache_type``, default all) on every server."""
        tube = _tube_arg(request)
        state = _arg(request, "cache_type")
        state = "all" if state is None else state
        if state not in CLEAR_STATES:
            raise BadRequest(f"cache_type must be one of {', '.join(CLEAR_STATES)}")
        cleared = await self._bounded(self._federation.clear(tube, state))
        return json_response(request, {"action": "clear", "cleared": cleared})

    @app.route("/parent_job", methods=["POST"])
    async def put_parent_job(self, request: IRequest) -> bytes:
        """Put a parent job (``NewParentJob`` body) → ``{"action": "set_parent",
        "job_id", "job"}``; it becomes ready when ``limit`` children are finished."""
        args = _new_parent_job(read_json(request, self._max_body))
        tube, body = args.pop("tube"), args.pop("body")
        job_id = await self._bounded(self._federation.put_parent(tube, body, **args))
        job = {"job_id": job_id, "tube": tube, "body": body, "expireds": 0, "releases": 0}
        return json_response(request, {"action": "set_parent", "job_id": job_id, "job": job})

    @app.route("/throttle", methods=["POST"])
    async def throttle(self, request: IRequest) -> bytes:
        """Cap the jobs per second a tube hands out over the whole federation
        (``{"tube", "tps"}``; ``tps`` null or <= 0 removes the cap)."""
        obj = read_json(request, self._max_body)
        _check_keys(obj, frozenset({"tube", "tps"}))
        tube = check_tube(obj.get("tube"))
        if "tps" not in obj:
            raise BadRequest("tps is required (null or 0 removes the throttle)")
        tps = obj["tps"]
        if isinstance(tps, str) and _NUMBER.fullmatch(tps):
            tps = _to_number(tps)
        if tps is not None and (isinstance(tps, bool) or not isinstance(tps, int | float)
                                or not math.isfinite(tps)):
            raise BadRequest("tps must be a number or null")
        if tps is not None and tps <= 0:
            tps = None
        servers = await self._bounded(self._federation.throttle(tube, tps))
        # "value": "true" is AllQueue's whole reply; old clients look for it.
        return json_response(request, {"action": "throttle", "value": "true", "tube": tube,
                                       "tps": tps, "servers": servers})

    @app.route("/pause", methods=["PUT"])
    async def pause(self, request: IRequest) -> bytes:
        """Stop handing out a tube's jobs on every server (puts are still taken)."""
        return await self._tube_setting(request, "pause", self._federation.pause, True)

    @app.route("/unpause", methods=["PUT"])
    async def unpause(self, request: IRequest) -> bytes:
        """Hand out a paused tube's jobs again, on every server."""
        return await self._tube_setting(request, "unpause", self._federation.pause, False)

    @app.route("/fair", methods=["PUT"])
    async def fair(self, request: IRequest) -> bytes:
        """Set a tube's fair-queuing ``policy`` on every server."""
        tube = _tube_arg(request)
        policy = _required_arg(request, "policy")
        if policy not in FAIR_SETTINGS:
            raise BadRequest(f"policy must be one of {', '.join(FAIR_SETTINGS)}")
        servers = await self._bounded(self._federation.fair(tube, policy))
        return json_response(request, {"action": "fair", "tube": tube, "policy": policy,
                                       "servers": servers})

    @app.route("/max_size", methods=["PUT"])
    async def max_size(self, request: IRequest) -> bytes:
        """Bound a tube to ``max_size`` jobs on each server (empty or absent: unbounded)."""
        tube = _tube_arg(request)
        text = _arg(request, "max_size")
        size = None
        if text:
            if not _INTEGER.fullmatch(text) or not 1 <= int(text) <= MAX_TUBE_SIZE:
                raise BadRequest(f"max_size must be an integer from 1 to {MAX_TUBE_SIZE}, "
                                 "or empty for no bound")
            size = int(text)
        servers = await self._bounded(self._federation.max_size(tube, size))
        return json_response(request, {"action": "max_size", "tube": tube, "max_size": size,
                                       "servers": servers})

    async def _tube_setting(self, request: IRequest, action: str, call, flag: bool) -> bytes:
        tube = _tube_arg(request)
        servers = await self._bounded(call(tube, flag))
        return json_response(request, {"action": action, "tube": tube, "servers": servers})

    # -- servers ---------------------------------------------------------------

    @app.route("/stats", methods=["GET"])
    async def stats(self, request: IRequest) -> bytes:
        """Per-server counters and per-tube counts of every reachable server."""
        servers = await self._bounded(self._federation.stats())
        return json_response(request, [rest_stats(server) for server in servers])

    @app.route("/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        """The federation's view of its servers: 200 when one is up, else 503; ``pid``
        names the client process that answered (one of several with ``--workers``)."""
        report = {**self._federation.health(), "pid": os.getpid()}
        return json_response(request, report, 200 if report["up"] > 0 else 503)

    @app.route("/update_servers", methods=["PUT"])
    def update_servers(self, request: IRequest) -> bytes:
        """Replace the set of servers with ``server_urls`` (``h:p,h:p``)."""
        urls = [url.strip() for url in _required_arg(request, "server_urls").split(",")]
        self._federation.update_servers([url for url in urls if url])
        return json_response(request, {})

    @app.route("/drain", methods=["PUT"])
    async def drain(self, request: IRequest) -> bytes:
        """Drain a tube on every server (``tube``), or a whole server (``server_id``:
        its id or ``host:port``): no new jobs are taken, jobs held are still handed out."""
        return await self._drain(request, True)

    @app.route("/undrain", methods=["PUT"])
    async def undrain(self, request: IRequest) -> bytes:
        """Take new jobs again in a tube (``tube``) or on a server (``server_id``)."""
        return await self._drain(request, False)

    async def _drain(self, request: IRequest, draining: bool) -> bytes:
        action = "drain" if draining else "undrain"
        server = _arg(request, "server_id")
        has_tube = _arg(request, "tube", "tube_name") is not None
        if (server is None) == (not has_tube):
            raise BadRequest("give either tube or server_id")
        if server is None:
            return await self._tube_setting(request, action, self._federation.drain_tube,
                                            draining)
        server = _check_server_ref("server_id", server)
        notified = await self._bounded(self._federation.drain_server(server, draining))
        return json_response(request, {"action": action, "server_id": server,
                                       "draining": draining, "notified": notified})

    @app.route("/add_server", methods=["POST"])
    def add_server(self, request: IRequest) -> bytes:
        """Add a server, from a ``{"server_url"}`` body or a ``server_url`` query parameter."""
        data = read_body(request, self._max_body)
        url = None
        if data.strip():
            obj = parse_json_object(data)
            _check_keys(obj, frozenset({"server_url"}))
            url = _field_str(obj, "server_url")
        if url is None:
            url = _required_arg(request, "server_url")
        url = _check_server_ref("server_url", url)
        self._federation.add_server(url)
        return json_response(request, {"server_url": url})

    @app.route("/openapi.json", methods=["GET"])
    def openapi_json(self, request: IRequest) -> bytes:
        """This API's OpenAPI 3.1 document."""
        return json_response(request, self._openapi)

    # -- errors (order matters: Klein tries the handlers top to bottom) --------

    @app.handle_errors(AllQError)
    def _allq_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        return json_response(request, error_body(error), error.http_status)

    def failed(self, failure: Failure, request: IRequest) -> bytes:
        """The error response for ``failure`` (a route's, outside Klein)."""
        if failure.check(AllQError):
            return self._allq_error(request, failure)
        return self._unexpected(request, failure)

    @app.handle_errors(NoRoute)
    def _no_route(self, request: IRequest, failure: Failure) -> bytes:
        detail = f"no route {request.method.decode('ascii', 'replace')} {_path(request)}"
        return json_response(request, {"error": "not_found", "detail": detail}, 404)

    @app.handle_errors(MethodNotAllowed)
    def _wrong_method(self, request: IRequest, failure: Failure) -> bytes:
        allowed = sorted(failure.value.valid_methods or ())
        request.setHeader(b"allow", ", ".join(allowed).encode("ascii"))
        detail = (f"{_path(request)} does not accept "
                  f"{request.method.decode('ascii', 'replace')[:20]}; use {', '.join(allowed)}")
        return json_response(request, {"error": "method_not_allowed", "detail": detail}, 405)

    @app.handle_errors(HTTPException)
    def _other_http_error(self, request: IRequest, failure: Failure) -> bytes:
        # e.g. werkzeug's redirect of "//job" to "/job" (merge_slashes).
        error = failure.value
        if isinstance(error, RequestRedirect):
            request.setHeader(b"location", error.new_url.encode("utf-8"))
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", type(error).__name__).lower()
        return json_response(request, {"error": name, "detail": str(error.description)},
                             error.code or 500)

    @app.handle_errors
    def _unexpected(self, request: IRequest, failure: Failure) -> bytes:
        _log.failure(
            "unhandled error serving {method} {path}", failure,
            method=request.method.decode("ascii", "replace"), path=_path(request))
        return json_response(
            request, {"error": "internal_error", "detail": "internal error (logged)"}, 500)


def _check_server_ref(name: str, value: str) -> str:
    if not value or len(value) > MAX_SERVER_REF or not value.isprintable():
        raise BadRequest(f"{name} must be 1-{MAX_SERVER_REF} printable characters")
    return value


def _path(request: IRequest) -> str:
    return request.path.decode("utf-8", "replace")[:200]


class _Router(Resource):
    """Serves the job routes directly and every other request through Klein.

    Klein binds a werkzeug URL map, adapts the request and wraps the handler in
    two ``maybeDeferred`` per call, about a fifth of a ``/job`` call's CPU. The
    routes in ``_FAST`` are the very methods Klein serves (Klein still answers
    their 405s and other spellings of their paths); here they are looked up by
    exact method and path, and their Deferred is answered as Klein would: an
    error becomes its JSON body, and a client that goes away cancels the call.

    It also answers a JSON 400 for a URL Klein cannot decode (Klein would log an
    error and answer plain text).
    """

    isLeaf = True
    _FAST = {
        (b"POST", b"/job"): RestApi.put_job,
        (b"GET", b"/job"): RestApi.get_job,
        (b"DELETE", b"/job"): RestApi.delete_job,
        (b"POST", b"/multiple_job"): RestApi.put_jobs,
        (b"GET", b"/multiple_job"): RestApi.get_multiple_jobs,
        (b"DELETE", b"/multiple_job"): RestApi.delete_jobs,
    }

    def __init__(self, api: RestApi, klein: Resource) -> None:
        super().__init__()
        self._api = api
        self._klein = klein

    def render(self, request: IRequest) -> bytes | int:
        route = self._FAST.get((request.method, request.path))
        if route is None:
            return self._render_klein(request)
        try:
            d = route(self._api, request)
        except Exception:
            return self._api.failed(Failure(), request)
        _Answer(self._api, request, d)
        return NOT_DONE_YET

    def _render_klein(self, request: IRequest) -> bytes | int:
        try:
            for segment in request.prepath + request.postpath:
                segment.decode("utf-8")
            request.getRequestHostname().decode("utf-8")
        except UnicodeDecodeError:
            return json_response(
                request, {"error": "bad_request", "detail": "the URL is not valid UTF-8"}, 400)
        return self._klein.render(request)


class _Answer:
    """Writes a fast route's outcome to its request, unless the client is gone."""

    __slots__ = ("_api", "_request", "_call", "_gone")

    def __init__(self, api: RestApi, request: IRequest, call: Deferred) -> None:
        self._api = api
        self._request = request
        self._call = call
        self._gone = False
        when_done(request, self._ended)
        call.addCallbacks(self._write, self._failed)

    def _ended(self, completed: bool) -> None:
        if not completed:
            self._gone = True
            self._call.cancel()

    def _failed(self, failure: Failure) -> None:
        if not self._gone:
            self._write(self._api.failed(failure, self._request))
        elif not failure.check(CancelledError):
            _log.failure("error after the client went away from {path}", failure,
                         path=_path(self._request))

    def _write(self, data: bytes) -> None:
        if not self._gone:
            self._request.write(data)
            self._request.finish()


def _drop_implicit_head(app: Klein) -> None:
    """Serve exactly the documented methods.

    werkzeug adds HEAD to every GET rule; a HEAD of ``/job`` would reserve a job
    and throw its body away, so HEAD is refused (405) like any other method.
    """
    for rule in app.url_map.iter_rules():
        if rule.methods is not None:
            rule.methods.discard("HEAD")


_drop_implicit_head(RestApi.app)
