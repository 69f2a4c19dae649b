"""The words every layer shares: limits, validators and job references.

Ground floor: the standard library, attrs and :mod:`allq.errors` only, so the
queue core, the wire, the server and every client front-end check a value by
the same rule and quote the same limit in their messages (and the OpenAPI
document states them). A request is validated at its edge (a front-end, or the
server's dispatcher) with these functions, and once more by the core.
"""

import math
import re

import attrs

from allq.errors import BadRequest

SECONDS = 1.0

# -- limits -------------------------------------------------------------------------

#: Priorities: 0 is the most urgent.
MAX_PRIORITY = 2**32 - 1
#: The longest duration (ttl, delay, timeout) anywhere: ten years.
MAX_SECONDS = 10 * 365 * 24 * 3600 * SECONDS
#: The latest ``run_at`` (unix seconds).
MAX_RUN_AT = 2**40
#: The most jobs one get hands out, and the most jobs in one batch put or delete.
MAX_COUNT = 1000
MAX_BATCH = MAX_COUNT
#: The longest long poll a ``wait`` may ask for.
MAX_WAIT = 60 * SECONDS
#: Counts that are not batch sizes: a tube kick, a peek offset, an expiry limit,
#: a parent's child limit.
MAX_KICK_COUNT = 2**31
MAX_OFFSET = 2**31
MAX_EXPIRED_LIMIT = 2**31
MAX_CHILD_LIMIT = 2**31
#: The longest error text a ``bury`` may record on a job (its last error), in characters.
MAX_ERROR_LENGTH = 2000
#: The largest ``max_size`` of a tube.
MAX_TUBE_SIZE = 2**40
#: How long a parent waits for its children unless told otherwise.
DEFAULT_PARENT_TIMEOUT = 3600 * SECONDS
#: A client's time limit on one request to one server: past it the outcome is
#: unknown (a put is retried with its idempotency key).
SERVER_REQUEST_TIMEOUT = 10 * SECONDS
#: A front-end's time limit on one federation call, on top of its long-poll
#: ``wait``: past it the caller is told the outcome is unknown (HTTP 504).
FRONTEND_REQUEST_TIMEOUT = 60 * SECONDS

#: Letters, digits and ``_.:@$!#=+/-``, 1..200 characters, not starting with ``-``.
TUBE_NAME = re.compile(r"[A-Za-z0-9_.:@$!#=+/][A-Za-z0-9_.:@$!#=+/-]{0,199}")
#: ``shard_key``: what AllQueue's true round robin allowed, a little wider.
SHARD_KEY = re.compile(r"[A-Za-z0-9_.:@$!#=+/-]{1,200}")
#: A server id: URL-safe, so a job id needs no escaping in a path.
SERVER_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: ``<server_id>,<number>`` (a server also takes a bare number as one of its own).
JOB_ID = re.compile(r"([A-Za-z0-9_-]{1,64}),([0-9]{1,20})")
_OWN_JOB_ID = re.compile(r"(?:([A-Za-z0-9_-]{1,64}),)?([0-9]{1,20})")
#: A caller-chosen parent id (AllQueue's ``set_parent_job`` ``id``): no comma, so
#: never a ``<server_id>,<number>`` job id, and not digits only (a server reads
#: a bare number as one of its own job numbers).
PARENT_ALIAS = re.compile(r"(?=.*[^0-9])[A-Za-z0-9_.:@=+/-]{1,200}")
#: What ``clear`` may drop.
CLEAR_STATES = ("all", "ready", "delayed", "buried", "reserved", "parents")
#: Fair-queuing settings of a tube: the server's policies, ``off`` and ``default``
#: (back to the name convention, e.g. ``fq-`` tubes are round robin).
FAIR_POLICIES = ("round_robin", "weighted")
FAIR_SETTINGS = (*FAIR_POLICIES, "off", "default")
#: The states a tube's jobs can be listed in (``GET /jobs``), and the most jobs one
#: page of that list holds.
LIST_STATES = ("ready", "delayed", "reserved", "buried")
MAX_LIST_LIMIT = 200


# -- job references -------------------------------------------------------------------


@attrs.frozen
class JobRef:
    """Where a job lives and which it is there: the id callers see is
    ``"<server_id>,<number>"`` (:meth:`parse` and :func:`str` are inverses)."""

    server_id: str
    number: int

    @classmethod
    def parse(cls, text: object, name: str = "job_id", *,
              own_server: str | None = None) -> "JobRef":
        """Read a job id.

        :param name: what the value is called in the error message.
        :param own_server: the reader's own server id: a bare ``<number>`` is
            then accepted as a job of that server.
        :raises BadRequest: not a string of the form ``<server_id>,<number>``.
        """
        pattern = JOB_ID if own_server is None else _OWN_JOB_ID
        match = pattern.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise BadRequest(f"{name} must look like <server_id>,<number>")
        return cls(match[1] or own_server, int(match[2]))

    def __str__(self) -> str:
        return f"{self.server_id},{self.number}"


def check_job_id(text: object, name: str = "job_id") -> str:
    """Validate a job id and return it as given."""
    JobRef.parse(text, name)
    return text  # type: ignore[return-value]


def is_parent_alias(text: object) -> bool:
    """Whether ``text`` is a caller-chosen parent id rather than a job id."""
    return isinstance(text, str) and PARENT_ALIAS.fullmatch(text) is not None


def check_parent_alias(alias: object, name: str = "id") -> str:
    """Validate a caller-chosen parent id.

    :raises BadRequest: not 1-200 letters, digits or ``_.:@=+/-``, or digits only.
    """
    if not is_parent_alias(alias):
        raise BadRequest(f"{name} must be 1-200 letters, digits or _.:@=+/- "
                         "(no comma, not digits only)")
    return alias  # type: ignore[return-value]


# -- validators --------------------------------------------------------------------------


def check_tube(tube: object) -> str:
    """Validate a tube name.

    :raises BadRequest: not a string matching :data:`TUBE_NAME`.
    """
    if not isinstance(tube, str) or not TUBE_NAME.fullmatch(tube):
        raise BadRequest(
            "tube must be 1-200 characters of letters, digits and _.:@$!#=+/- "
            "(not starting with -)"
        )
    return tube


def check_shard_key(shard_key: object) -> str:
    if not isinstance(shard_key, str) or not SHARD_KEY.fullmatch(shard_key):
        raise BadRequest("shard_key must be 1-200 characters of letters, digits and "
                         "_.:@$!#=+/-")
    return shard_key


def check_priority(priority: object) -> int:
    """Validate a priority: an integer from 0 (most urgent) to 2**32-1."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise BadRequest("priority must be an integer")
    if not 0 <= priority <= MAX_PRIORITY:
        raise BadRequest(f"priority must be between 0 and {MAX_PRIORITY}")
    return priority


def check_seconds(
    name: str, value: object, *, positive: bool = False, maximum: float = MAX_SECONDS
) -> float:
    """Validate a duration (or time) in seconds: int or float, finite, not negative."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{name} must be a number of seconds")
    # Checked before math.isfinite, which overflows on an int beyond a float's range.
    if not (0 <= value <= maximum) or (positive and value <= 0) or not math.isfinite(value):
        qualifier = "greater than 0" if positive else "0 or more"
        raise BadRequest(f"{name} must be {qualifier} and at most {maximum:.0f} seconds")
    return value


def check_count(name: str, value: object, *, minimum: int = 1, maximum: int) -> int:
    """Validate an integer count within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} must be an integer")
    if not minimum <= value <= maximum:
        raise BadRequest(f"{name} must be between {minimum} and {maximum}")
    return value


def check_clear_state(state: object) -> str:
    if state not in CLEAR_STATES:
        raise BadRequest(f"cache_type must be one of {', '.join(CLEAR_STATES)}")
    return state  # type: ignore[return-value]


def check_fair_setting(policy: object) -> str:
    if policy not in FAIR_SETTINGS:
        raise BadRequest(f"policy must be one of {', '.join(FAIR_SETTINGS)}")
    return policy  # type: ignore[return-value]


def check_tps(tps: object) -> float | None:
    """A throttle in jobs per second: a finite number, or ``None`` (or <= 0) for none."""
    if tps is None:
        return None
    if isinstance(tps, bool) or not isinstance(tps, int | float):
        raise BadRequest("tps must be a number or null")
    try:
        tps = float(tps)
    except OverflowError:
        raise BadRequest("tps is too large") from None
    if not math.isfinite(tps):
        raise BadRequest("tps must be a number or null")
    return tps if tps > 0 else None


def check_error_text(error: object) -> str:
    """Validate the error text a ``bury`` records on a job: a string of 1 to
    :data:`MAX_ERROR_LENGTH` characters (a worker cuts a longer traceback itself)."""
    if not isinstance(error, str) or not 0 < len(error) <= MAX_ERROR_LENGTH:
        raise BadRequest(f"error must be a string of 1 to {MAX_ERROR_LENGTH} characters")
    return error


# -- recurring schedules (allq.core.schedules) -------------------------------------------

#: A schedule's name: what names it in every route, and what places it on a server.
SCHEDULE_NAME = re.compile(r"[A-Za-z0-9_.:@=+/-]{1,200}")
#: The shortest and longest ``every`` period: a firing per second at most (a tighter
#: loop is a job for a worker, not a schedule), one a year at least.
MIN_EVERY = 1.0
MAX_EVERY = 366 * 24 * 3600.0
#: What a schedule does about firings it missed while its server was down.
MISSED_POLICIES = ("once", "skip")


def check_schedule_name(name: object, what: str = "name") -> str:
    """Validate a schedule's name: 1-200 letters, digits or ``_.:@=+/-``."""
    if not isinstance(name, str) or not SCHEDULE_NAME.fullmatch(name):
        raise BadRequest(f"{what} must be 1-200 letters, digits or _.:@=+/-")
    return name


def check_every(every: object) -> float:
    """Validate a schedule's period in seconds: from :data:`MIN_EVERY` to :data:`MAX_EVERY`."""
    if isinstance(every, bool) or not isinstance(every, int | float) or not (
            MIN_EVERY <= every <= MAX_EVERY):  # NaN fails the comparison
        raise BadRequest(f"every must be a number of seconds from {MIN_EVERY:g} to "
                         f"{MAX_EVERY:.0f}")
    return float(every)


def check_missed_policy(policy: object) -> str:
    if policy not in MISSED_POLICIES:
        raise BadRequest(f"missed must be one of {', '.join(MISSED_POLICIES)}")
    return policy  # type: ignore[return-value]


# -- interest routing ---------------------------------------------------------------------

#: The most fields one tube's interests may name (each a regex over one event field).
MAX_INTEREST_FIELDS = 32
#: The longest interest pattern, in characters (RE2 is linear in the text, but a
#: pattern's compiled program grows with its length).
MAX_INTEREST_PATTERN = 1000
#: The most tubes with interests (deleted ones included: a deletion is kept as a
#: tombstone, so a server that missed it learns it on reconnect).
MAX_INTEREST_TUBES = 10_000
#: An interest's field name: what a top-level key of an event's data may be called.
INTEREST_FIELD = re.compile(r"[^\x00-\x1f]{1,200}")
#: The most top-level fields an event's data may have.
MAX_EVENT_FIELDS = 1000
#: How an event's fields combine: ``any`` (couchqueue's OR) or ``all`` (AND).
EVENT_SCOPES = ("any", "all")
#: What happens to an event no tube is interested in: ``drop`` (counted; couchqueue's
#: rule) or ``error`` (the publisher is told, HTTP 404).
EVENT_UNMATCHED = ("drop", "error")


def check_event_scope(scope: object) -> str:
    """Validate an event's ``scope``.

    :raises BadRequest: not one of :data:`EVENT_SCOPES`.
    """
    if scope not in EVENT_SCOPES:
        raise BadRequest("scope must be \"any\" or \"all\"")
    return scope  # type: ignore[return-value]


def check_event_data(data: object) -> dict:
    """Validate an event's ``data``: a JSON object of at most :data:`MAX_EVENT_FIELDS`
    fields (its size is bounded as a job body's is, by the server).

    :raises BadRequest: not an object, or too many fields.
    """
    if not isinstance(data, dict):
        raise BadRequest("data must be a JSON object")
    if len(data) > MAX_EVENT_FIELDS:
        raise BadRequest(f"data may have at most {MAX_EVENT_FIELDS} fields")
    return data


# -- unique jobs and concurrency keys --------------------------------------------

#: The longest ``unique_key`` or ``concurrency_key``, in characters.
MAX_JOB_KEY_LENGTH = 200
#: The largest per-tube concurrency limit (jobs of one key reserved at once).
MAX_CONCURRENCY = 10_000
#: A tube's concurrency limit until set: one job of a key at a time.
DEFAULT_CONCURRENCY = 1
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def check_job_key(name: str, key: object) -> str:
    """Validate a ``unique_key`` or ``concurrency_key``: 1 to
    :data:`MAX_JOB_KEY_LENGTH` characters, no control characters."""
    if (not isinstance(key, str) or not 0 < len(key) <= MAX_JOB_KEY_LENGTH
            or _CONTROL_CHARACTERS.search(key)):
        raise BadRequest(f"{name} must be a string of 1-{MAX_JOB_KEY_LENGTH} characters "
                         "without control characters")
    return key


def check_concurrency(limit: object) -> int:
    """Validate a tube's concurrency limit: an integer from 1 to :data:`MAX_CONCURRENCY`."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_CONCURRENCY:
        raise BadRequest(f"limit must be an integer from 1 to {MAX_CONCURRENCY}")
    return limit


def check_list_state(state: object) -> str:
    """A state a tube's jobs can be listed in (:data:`LIST_STATES`)."""
    if state not in LIST_STATES:
        raise BadRequest(f"state must be one of {', '.join(LIST_STATES)}")
    return state
