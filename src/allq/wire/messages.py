"""The allq wire protocol: message vocabulary and codecs (the spec lives here).

Transport
    TCP, lines ending in ``\\n``. The server sends ``ALLQ1 <challenge>``; the client
    answers ``HELLO <client-public-key> <proof>``; from then on every line is a NaCl
    box (Curve25519/XSalsa20-Poly1305) with a per-session counter nonce, base64
    encoded (see :mod:`allq.wire.crypto`). Before the handshake completes, or when a
    frame cannot be decrypted, the server writes ``ERROR <code> <message>`` in clear
    text and closes the connection. Lines longer than the negotiated maximum are
    refused the same way.

Envelope (JSON, inside a box)
    The first frame from the server is ``{"welcome": {"server_id", "version",
    "max_job_size", "max_line_length"}}``. A request is ``{"id": <int>, "action":
    <name>, "params": {...}}``; its reply carries the same id: ``{"id": N, "result":
    {...}}`` or ``{"id": N, "error": {"code": <code>, "message": <text>}}``. Ids let a
    client pipeline many requests on one connection; the server answers in order.
    A frame may also hold a JSON list of requests (a batch); the reply frame holds
    the list of replies in the same order. A request that cannot be decoded gets an
    error reply with ``"id": null`` when its id is unreadable; the connection stays
    open.

Actions (params; ``?`` marks optional ones) and results
    ``interest_merge``  entries (``[[tube, interests or null, version], ...]``) →
                   ``{"changed"}``: merged last-writer-wins (:mod:`allq.core.interests`)
    ``interests``  → ``{"entries": [...], "events", "events_unmatched"}`` (tombstones too)
    ``event``      data (object), scope? ("any"), priority?, ttl?, delay?, run_at?,
                   expired_limit?, idempotency_key? → ``{"copies": [{"tube",
                   "job_id"}, ...]}``: one job per tube whose interests match, its
                   body the data as JSON text; all or none stored
    ``put``        tube, body, body_encoding?, priority?, ttl?, delay?, run_at?,
                   expired_limit?, shard_key?, parent_id?, idempotency_key? →
                   ``{"job_id"}``. ``body_encoding: "base64"`` marks a binary body
                   sent as base64 (:mod:`allq.wire.bodies`). A put
                   repeated with the same idempotency_key within the server's
                   memory window returns the first job id and stores nothing new.
                   ``run_at`` is a unix time (instead of ``delay``); ``shard_key`` is
                   required in fair tubes; ``parent_id`` names a waiting parent.
                   unique_key?, concurrency_key?: while a live job of the tube holds
                   ``unique_key`` the put stores nothing and answers ``{"job_id":
                   <that job>, "duplicate": true}``; at most the tube's concurrency
                   limit of the jobs sharing a ``concurrency_key`` are reserved at once.
    ``put_parent`` tube, body, priority?, ttl?, expired_limit?, shard_key?, parent_id?,
                   idempotency_key?, timeout? (3600), run_on_timeout? (false), limit?
                   noop? (false), alias? → ``{"job_id"}``: a parent waiting for
                   ``limit`` finished children; a ``noop`` one finishes instead of
                   running; ``alias`` is a caller-chosen id unique among the
                   server's waiting parents.
    ``find_parent``  alias → ``{"job_id"}`` of the waiting parent it names (or not_found)
    ``set_children_started``  job_id → ``{"job_id"}`` (limit := children put so far)
    ``throttle``   tube, tps? (null or <= 0 removes) → ``{"tube", "tps"}``
    ``pause``      tube, delay? (seconds: the pause then ends by itself) → ``{"tube", "paused"}``
    ``unpause``    tube → ``{"tube", "paused"}``
    ``drain``, ``undrain``    tube? (none: the whole server) → ``{"tube"?, "draining"}``
    ``fair``       tube, policy (round_robin | weighted | off | default) → ``{"tube", "fair"}``
    ``max_size``   tube, max_size? (null: unbounded) → ``{"tube", "max_size"}``
    ``concurrency``  tube, limit? (1) → ``{"tube", "limit"}``: how many jobs of one
                   concurrency key are reserved at once
    ``get``        tube, count? (1), delete? (false) → ``{"jobs": [job, ...]}``
    ``get_any``    tubes (list), count? (1), delete? (false) → ``{"jobs": [...]}``: the
                   best jobs across the tubes (priority, then put order)
    ``peek_job``   job_id → ``{"job": job}``: a job by its id, in any state
    ``reserve_job``  job_id → ``{"job": job}``: reserves a ready, delayed or buried job
    ``job_stats``  job_id → ``{"job_id", "tube", "state", "priority", "age", "delay",
                   "ttl", "time_left", "reserves", "timeouts", "releases", "buries",
                   "kicks"}`` (seconds as numbers; counts since the server started)
    ``done``, ``delete``, ``bury``, ``touch``, ``kick``   job_id → ``{"job_id"}``
    ``bury``       also error? (text up to ``MAX_ERROR_LENGTH``): kept as the job's
                   last error until the job is gone
    ``release``    job_id, delay? (0) → ``{"job_id"}``
    ``kick_tube``  tube, count? (1), delayed? (false: buried jobs; true: delayed ones,
                   soonest first) → ``{"job_ids": [...]}``
    ``peek``       tube, buried? (false), offset? (0), delayed? (false: true gives the
                   delayed job due soonest) → ``{"job": job | null}``
    ``clear``      tube, state? ("all") → ``{"cleared": n}``
    ``list_jobs``  tube, state (ready | delayed | reserved | buried), offset? (0),
                   limit? (50, at most ``MAX_LIST_LIMIT``) → ``{"jobs": [job, ...],
                   "total": n}``: a page of the tube's jobs in that state
    ``stats``      → ``{"server_id", "global": {...}, "tubes": [{...}, ...]}``
    ``ping``       → ``{"server_id"}``
    ``schedule_add``  name, tube, body, body_encoding?, cron? | every?, timezone? ("UTC"),
                   missed? ("once" | "skip"), priority?, ttl?, delay?, expired_limit? →
                   ``{"schedule": schedule}``: creates or replaces a recurring schedule
                   (:mod:`allq.core.schedules`); a bad cron or unknown timezone is
                   ``bad_request``
    ``schedule_list``  → ``{"schedules": [schedule, ...]}``
    ``schedule_pause``, ``schedule_resume``  name → ``{"schedule": schedule}``
    ``schedule_remove``  name → ``{"name", "removed": true}``; an unknown name is
                   ``not_found`` for these three

    A schedule is ``{"name", "tube", "body", "cron", "every", "timezone", "missed",
    "priority", "ttl", "delay", "expired_limit", "paused", "next_run" (unix time, null
    while paused), "next_run_local" (ISO 8601 in its zone), "fired", "last_fired",
    "missed_total"}`` (:func:`allq.server.schedules.describe`).

    A job is ``{"job_id": "<server_id>,<n>", "tube", "body", "priority", "ttl",
    "expireds", "releases"}``, plus ``"body_encoding": "base64"`` when its body is
    binary (then ``body`` is its base64), and ``"error"`` when a bury recorded one.
    Error codes are those of :mod:`allq.errors`.

Limits
    Every number in a request (the id included) must be finite and within
    ±(2**63 - 1); JSON's ``NaN``/``Infinity`` and integers beyond that get a
    ``bad_request`` reply (a bigger integer cannot become a float, and the core
    computes deadlines in floats). A frame nesting deeper than the decoder's
    recursion limit, or holding an integer of more than 4300 digits (Python's
    conversion limit), gets a ``bad_request`` reply with ``"id": null``. Neither
    closes the connection.

Pure: no I/O.
"""

import json
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from allq.errors import AllQError, BadRequest, UnknownAction
from allq.speedups import compact_json_encoder

PROTOCOL_VERSION = 1


def _is_str(value: object) -> bool:
    return isinstance(value, str)


#: The largest magnitude of a number on the wire (a signed 64-bit integer).
WIRE_NUMBER_MAX = 2**63 - 1


def _in_range(value: int | float) -> bool:
    """Finite and within :data:`WIRE_NUMBER_MAX` (NaN fails both comparisons; a huge
    int compares exactly, without a float conversion that would overflow)."""
    return -WIRE_NUMBER_MAX <= value <= WIRE_NUMBER_MAX


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and _in_range(value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and _in_range(value)


def _is_bool(value: object) -> bool:
    return isinstance(value, bool)


#: The most names a list of tubes (``get_any``'s) may hold.
MAX_TUBES = 1000


def _is_strs(value: object) -> bool:
    return (isinstance(value, list) and 0 < len(value) <= MAX_TUBES
            and all(isinstance(item, str) for item in value))


_TYPES: dict[str, tuple[Callable[[object], bool], str]] = {
    "str": (_is_str, "a string"),
    "int": (_is_int, "an integer"),
    "number": (_is_number, "a number"),
    "bool": (_is_bool, "true or false"),
    "strs": (_is_strs, f"a list of 1 to {MAX_TUBES} strings"),
    "object": (lambda value: isinstance(value, dict), "a JSON object"),
    "list": (lambda value: isinstance(value, list), "a JSON array"),
}

_REQUIRED = object()

#: action -> {param: (type, default)}; ``_REQUIRED`` marks a mandatory param.
ACTIONS: dict[str, dict[str, tuple[str, object]]] = {
    "put": {
        "tube": ("str", _REQUIRED),
        "body": ("str", _REQUIRED),
        "body_encoding": ("str", None),
        "priority": ("int", None),
        "ttl": ("number", None),
        "delay": ("number", 0),
        "expired_limit": ("int", None),
        "idempotency_key": ("str", None),
        "run_at": ("number", None),
        "shard_key": ("str", None),
        "parent_id": ("str", None),
        "unique_key": ("str", None),
        "concurrency_key": ("str", None),
    },
    "put_parent": {
        "tube": ("str", _REQUIRED),
        "body": ("str", _REQUIRED),
        "body_encoding": ("str", None),
        "priority": ("int", None),
        "ttl": ("number", None),
        "expired_limit": ("int", None),
        "idempotency_key": ("str", None),
        "shard_key": ("str", None),
        "parent_id": ("str", None),
        "timeout": ("number", 3600),
        "run_on_timeout": ("bool", False),
        "limit": ("int", None),
        "noop": ("bool", False),
        "alias": ("str", None),
    },
    "find_parent": {"alias": ("str", _REQUIRED)},
    "set_children_started": {"job_id": ("str", _REQUIRED)},
    "throttle": {"tube": ("str", _REQUIRED), "tps": ("number", None)},
    "pause": {"tube": ("str", _REQUIRED), "delay": ("number", None)},
    "unpause": {"tube": ("str", _REQUIRED)},
    "drain": {"tube": ("str", None)},
    "undrain": {"tube": ("str", None)},
    "fair": {"tube": ("str", _REQUIRED), "policy": ("str", _REQUIRED)},
    "max_size": {"tube": ("str", _REQUIRED), "max_size": ("int", None)},
    "concurrency": {"tube": ("str", _REQUIRED), "limit": ("int", 1)},
    "get": {"tube": ("str", _REQUIRED), "count": ("int", 1), "delete": ("bool", False)},
    "get_any": {"tubes": ("strs", _REQUIRED), "count": ("int", 1), "delete": ("bool", False)},
    "reserve_job": {"job_id": ("str", _REQUIRED)},
    "job_stats": {"job_id": ("str", _REQUIRED)},
    "peek_job": {"job_id": ("str", _REQUIRED)},
    "done": {"job_id": ("str", _REQUIRED)},
    "delete": {"job_id": ("str", _REQUIRED)},
    "bury": {"job_id": ("str", _REQUIRED), "error": ("str", None)},
    "touch": {"job_id": ("str", _REQUIRED)},
    "kick": {"job_id": ("str", _REQUIRED)},
    "release": {"job_id": ("str", _REQUIRED), "delay": ("number", 0)},
    "kick_tube": {"tube": ("str", _REQUIRED), "count": ("int", 1), "delayed": ("bool", False)},
    "peek": {"tube": ("str", _REQUIRED), "buried": ("bool", False), "offset": ("int", 0),
             "delayed": ("bool", False)},
    "clear": {"tube": ("str", _REQUIRED), "state": ("str", "all")},
    "list_jobs": {"tube": ("str", _REQUIRED), "state": ("str", _REQUIRED), "offset": ("int", 0),
                  "limit": ("int", 50)},
    "stats": {},
    "ping": {},
    # Interest routing (allq.core.interests): entries are [tube, interests|null, version].
    "interest_merge": {"entries": ("list", _REQUIRED)},
    "interests": {},
    "event": {
        "data": ("object", _REQUIRED),
        "scope": ("str", "any"),
        "priority": ("int", None),
        "ttl": ("number", None),
        "delay": ("number", 0),
        "expired_limit": ("int", None),
        "run_at": ("number", None),
        "shard_key": ("str", None),
        "idempotency_key": ("str", None),
    },
}


# Recurring schedules (allq.core.schedules), kept apart from the job actions above.
ACTIONS.update({
    "schedule_add": {
        "name": ("str", _REQUIRED),
        "tube": ("str", _REQUIRED),
        "body": ("str", _REQUIRED),
        "body_encoding": ("str", None),
        "cron": ("str", None),
        "every": ("number", None),
        "timezone": ("str", None),
        "missed": ("str", None),
        "priority": ("int", None),
        "ttl": ("number", None),
        "delay": ("number", None),
        "expired_limit": ("int", None),
    },
    "schedule_list": {},
    "schedule_pause": {"name": ("str", _REQUIRED)},
    "schedule_resume": {"name": ("str", _REQUIRED)},
    "schedule_remove": {"name": ("str", _REQUIRED)},
})

# Replication (docs/replication.md): a primary's stream to its backup (replicate,
# replica_records, replica_synced), and what a client asks a backup in a failover.
ACTIONS.update({
    "replicate": {"primary": ("str", _REQUIRED), "epoch": ("int", None),
                  "address": ("str", None)},
    "replica_records": {"seq": ("int", _REQUIRED), "lines": ("str", _REQUIRED)},
    "replica_synced": {"seq": ("int", _REQUIRED), "records": ("int", _REQUIRED)},
    "replicas": {},
    "promote": {"server_id": ("str", _REQUIRED)},
    "serve_as": {"server_id": ("str", _REQUIRED)},
})


@attrs.frozen
class Request:
    """One decoded request: its id, action and type-checked params (defaults filled)."""

    id: int
    action: str
    params: Mapping[str, Any]


#: Per type name of :data:`_TYPES`, classes whose exact instances pass its check: the
#: classes JSON decoding produces, so a decoded request never calls the check itself.
#: Anything else (a subclass, a type name added later) goes to the check, as before.
_EXACT_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "number": (int, float),
    "bool": (bool,),
}
#: Exact classes whose values :func:`_in_range` bounds (bool is not one of them).
_NUMBER_TYPES = (int, float)
#: The params of a request without ``params``; never mutated.
_NO_PARAMS: dict = {}


def decode_request(obj: object) -> Request:
    """Check a decoded JSON value against the vocabulary.

    Reads :data:`ACTIONS` on every call (no compiled copy to go stale), so entries
    added at any time apply at once. It runs once per request, hence the fast paths:
    exact-type checks before the :data:`_TYPES` predicates, and a subset test of the
    keys views before building the set of unknown params (only for the error).

    :raises BadRequest: wrong envelope, missing or ill-typed param, unknown param.
    :raises UnknownAction: the action is not one of :data:`ACTIONS`.
    """
    if not isinstance(obj, dict):
        raise BadRequest("a request must be a JSON object")
    request_id = obj.get("id")
    if not _is_int(request_id):
        raise BadRequest(
            f"request id must be an integer within ±{WIRE_NUMBER_MAX}")
    action = obj.get("action")
    if not isinstance(action, str):
        # Not str(action): a deeply nested or huge value must not cost a repr.
        raise UnknownAction(f"action must be a string, not {_json_type(action)}")
    schema = ACTIONS.get(action)
    if schema is None:
        raise UnknownAction(f"unknown action {action[:40]!r}")
    raw = obj.get("params", _NO_PARAMS)
    if not isinstance(raw, dict):
        raise BadRequest("params must be a JSON object")
    if not raw.keys() <= schema.keys():
        unknown = raw.keys() - schema.keys()
        raise BadRequest(f"{action}: unknown param {sorted(unknown)[0][:40]!r}")
    params = {}
    for name, (type_name, default) in schema.items():
        value = raw.get(name)
        if value is None:
            if default is _REQUIRED:
                raise BadRequest(f"{action}: {name} is required")
            params[name] = default
        elif type(value) in _EXACT_TYPES.get(type_name, ()) or _TYPES[type_name][0](value):
            if type(value) in _NUMBER_TYPES and not _in_range(value):
                raise BadRequest(
                    f"{action}: {name} must be finite and within ±{WIRE_NUMBER_MAX}")
            params[name] = value
        else:
            raise BadRequest(f"{action}: {name} must be {_TYPES[type_name][1]}")
    return Request(request_id, action, params)


def _json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "a string"


def request_id_of(obj: object) -> int | None:
    """The id of a request that failed to decode, if it has a readable one (an
    integer within the wire's range: echoing a bigger one could fail to encode)."""
    if isinstance(obj, dict) and _is_int(obj.get("id")):
        return obj["id"]
    return None


def encode_request(request_id: int, action: str, params: Mapping[str, Any]) -> dict:
    """The JSON object for a request (params whose value is ``None`` are left out)."""
    return {
        "id": request_id,
        "action": action,
        "params": {k: v for k, v in params.items() if v is not None},
    }


def result_reply(request_id: int, result: Mapping[str, Any]) -> dict:
    """The JSON object of a successful reply."""
    return {"id": request_id, "result": result}


def error_reply(request_id: int | None, error: AllQError) -> dict:
    """The JSON object of an error reply; the message is truncated, no traceback."""
    return {"id": request_id, "error": {"code": error.code, "message": error.message[:500]}}


def welcome(server_id: str, version: str, max_job_size: int, max_line_length: int,
            **extra: object) -> dict:
    """The first frame a server sends after the handshake.

    :param extra: more fields (a replicating primary's ``epoch`` and ``replica``);
        clients ignore the fields they do not know.
    """
    return {
        "welcome": {
            "server_id": server_id,
            "version": version,
            "protocol": PROTOCOL_VERSION,
            "max_job_size": max_job_size,
            "max_line_length": max_line_length,
            **extra,
        }
    }


# dumps and loads run once per frame on both ends: the encoder is built once
# (allq.speedups), and json.loads on bytes would sniff the encoding first.
_encode = compact_json_encoder(ensure_ascii=False)
#: The C scanner behind json.loads, without its per-call set-up.
_scan_json = json.JSONDecoder().scan_once
_JSON_OPENERS = (b"{", b"[")


def dumps(obj: object) -> bytes:
    """Compact JSON bytes for a frame's plaintext (what ``json.dumps(obj,
    separators=(",", ":"), ensure_ascii=False)`` gives, UTF-8 encoded)."""
    return _encode(obj).encode("utf-8")


def loads(data: bytes) -> object:
    """Parse a frame's plaintext.

    :raises BadRequest: not UTF-8 JSON, nested deeper than the decoder can go
        (:class:`RecursionError`), or an integer beyond Python's 4300-digit
        conversion limit (a :class:`ValueError`).
    """
    try:
        # The fast path takes what json.loads would read as UTF-8 (its encoding sniff
        # looks for BOMs and NUL bytes in the first ones) and that is one JSON object
        # or array with nothing after it. Anything else, errors included, goes the
        # long way, so results and messages stay json.loads' own.
        if data[:1] in _JSON_OPENERS and data[1:2] != b"\x00":
            text = data.decode("utf-8", "surrogatepass")
            try:
                obj, end = _scan_json(text, 0)
            except StopIteration:  # a truncated document; json.loads words the error
                pass
            else:
                if end == len(text):
                    return obj
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"frame is not valid JSON: {str(e)[:80]}") from None
    except RecursionError:
        raise BadRequest("frame is nested too deeply") from None


def max_line_length(max_job_size: int) -> int:
    """The longest encrypted line needed for a put of ``max_job_size`` bytes.

    A body may need up to 6 bytes of JSON escaping per byte (``\\u00XX``), plus the
    envelope; the box adds 40 bytes and base64 a third.
    """
    plaintext = 6 * max_job_size + 4096
    return (plaintext + 40 + 2) // 3 * 4 + 16
