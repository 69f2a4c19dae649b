"""The journal's record codec: lines, records and file names. Pure.

Shared by :mod:`allq.server.journal` (which writes) and
:mod:`allq.server.recovery` (which reads); the file layout and every record
are described in :mod:`allq.server.journal`. Record framing: one line per
record, ``<crc32 of payload, 8 hex digits> <payload>\\n``, the payload a
compact JSON array.

What it must not do: any I/O, or know anything of the queue beyond the
fields of a job, a waiting parent, a tube and a schedule.
"""

from __future__ import annotations

import json
import zlib

from allq.core.job import Job
from allq.core.parents import ParentInfo
from allq.core.schedules import Schedule, ScheduleSpec
from allq.errors import AllQError
from allq.speedups import compact_json_encoder
from allq.wire.bodies import decode_body, encode_body

FORMAT_VERSION = 1
LOCK_FILE = "lock"

#: The journal encodes one or two records per request: an encoder built once.
_encode_json = compact_json_encoder(ensure_ascii=True)
#: The C scanner behind ``json.loads``, without its per-call overhead (recovery
#: decodes millions of lines).
_scan_json = json.JSONDecoder().scan_once
_crc32 = zlib.crc32


def frame(record: list) -> bytes:
    """One journal line for ``record``: CRC32, a space, compact JSON, a newline."""
    payload = _encode_json(record).encode("ascii")
    return b"%08x %s\n" % (_crc32(payload), payload)


def frame_deleted(job_id: int) -> bytes:
    """``frame(["d", job_id])``, three times faster: one per finished job."""
    payload = b'["d",%d]' % job_id
    return b"%08x %s\n" % (_crc32(payload), payload)


def unframe(line: bytes) -> list | None:
    """The record in one line (with its newline), or ``None`` if it is torn or damaged."""
    if len(line) < 11 or line[-1:] != b"\n" or line[8:9] != b" ":
        return None
    payload = line[9:-1]
    try:
        if int(line[:8], 16) != _crc32(payload):
            return None
        text = payload.decode("ascii")
        record, end = _scan_json(text, 0)
    except (ValueError, StopIteration):  # UnicodeDecodeError is a ValueError
        return None
    if (end != len(text) or type(record) is not list or not record
            or type(record[0]) is not str):
        return None
    return record


def parent_fields(info: ParentInfo | None) -> list | None:
    """A waiting parent's counters as stored (``None`` for other jobs)."""
    if info is None:
        return None
    fields = [info.timeout, info.run_on_timeout, info.limit, info.children_put,
              info.children_done]
    if info.noop or info.alias is not None:  # older journals have five fields
        fields += [info.noop, info.alias]
    return fields


def stored_body(body: str | bytes) -> str | list:
    """A body as a ``j`` record holds it: text as it is, a binary body as
    ``["base64", <its base64>]`` (the marker of :mod:`allq.wire.bodies`)."""
    if type(body) is bytes:
        return list(encode_body(body))[::-1]
    return body


def body_from_record(stored: object) -> str | bytes:
    """The body a ``j`` record's body field stands for.

    :raises ValueError: neither text nor a well-formed base64 pair.
    """
    if type(stored) is str:
        return stored
    if (type(stored) is list and len(stored) == 2 and type(stored[0]) is str
            and type(stored[1]) is str):
        try:
            return decode_body(stored[1], stored[0])
        except AllQError as e:
            raise ValueError(e.message) from None
    raise ValueError("a job body must be text or [\"base64\", text]")


def job_record(job: Job, parent: ParentInfo | None) -> list:
    """The ``j`` record: a whole job."""
    return ["j", job.id, job.tube, stored_body(job.body), job.priority, job.ttl, job.expired_limit,
            job.created, job.shard_key, job.parent_id, job.state.value, job.deadline,
            job.expireds, job.releases, parent_fields(parent)]


def state_record(job: Job, parent: ParentInfo | None) -> list:
    """The ``s`` record: the fields of a job that change after its put."""
    return ["s", job.id, job.state.value, job.deadline, job.expireds, job.releases,
            parent_fields(parent)]


def error_record(job_id: int, error: str) -> list:
    """The ``e`` record: the error a bury recorded on a job (its last error)."""
    return ["e", job_id, error]


def keys_record(job_id: int, keys: tuple[str | None, str | None]) -> list:
    """The ``u`` record: a keyed job's unique and concurrency keys (after its ``j``)."""
    return ["u", job_id, keys[0], keys[1]]


def concurrency_record(tube: str, limit: int) -> list:
    """The ``c`` record: a tube's concurrency limit."""
    return ["c", tube, limit]


def tube_record(tube) -> list:
    """The ``t`` record: a tube's settings."""
    throttle = None if tube.throttle is None else tube.throttle.rate
    # A pause with a delay ends by itself and is not kept across a restart.
    paused = tube.paused and tube.paused_until is None
    return ["t", tube.name, throttle, paused, tube.draining, tube.fair_setting,
            tube.max_size]


def has_settings(tube) -> bool:
    """Whether a tube has any setting a snapshot must keep."""
    return bool(tube.throttle is not None or tube.paused or tube.draining
                or tube.fair_setting is not None or tube.max_size is not None)


def journal_name(generation: int) -> str:
    return f"journal.{generation}.log"


def snapshot_name(generation: int) -> str:
    return f"snapshot.{generation}"


def generation_of(name: str) -> int | None:
    """The generation in a journal or snapshot file name (``None``: not one of those;
    a ``.corrupt-`` copy is kept)."""
    for prefix, suffixes in (("journal.", (".log",)), ("snapshot.", ("", ".tmp"))):
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix):]
        for suffix in suffixes:
            number = rest[:len(rest) - len(suffix)] if suffix else rest
            if (not suffix or rest.endswith(suffix)) and number.isdigit():
                return int(number)
    return None


#: The fields of a schedule's spec in its ``R`` record, besides its name and body.
_SPEC_FIELDS = ("tube", "cron", "every", "timezone", "missed", "priority", "ttl", "delay",
                "expired_limit")
_PROGRESS_FIELDS = ("anchor", "next_fire", "paused", "fired", "last_fired", "missed_total")


def schedule_record(name: str, schedule: Schedule | None) -> list:
    """The ``R`` record: a recurring schedule, whole (``None``: removed)."""
    if schedule is None:
        return ["R", name, None]
    spec = schedule.spec
    state = {field: getattr(spec, field) for field in _SPEC_FIELDS}
    state["body"] = stored_body(spec.body)
    state.update((field, getattr(schedule, field)) for field in _PROGRESS_FIELDS)
    return ["R", name, state]


def schedule_from_record(record: list) -> Schedule:
    """The schedule an ``R`` record holds (not ``None``).

    :raises ValueError: a field is missing or malformed.
    """
    _, name, state = record
    try:
        spec = ScheduleSpec(name=name, body=body_from_record(state["body"]),
                            **{field: state[field] for field in _SPEC_FIELDS})
        return Schedule(spec, **{field: state[field] for field in _PROGRESS_FIELDS})
    except (KeyError, TypeError) as e:
        raise ValueError(f"schedule record {name!r}: {e}") from None
