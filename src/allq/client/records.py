"""What the federation hands its front-ends: typed records, not wire dicts.

A server answers in JSON objects (``allq.wire.messages``); the federation turns
the ones that cross into a front-end into these records, once, so the REST
facade, the metrics and the next front-ends read attributes whose names and
types are stated here rather than keys of a dict.
"""

from collections.abc import Mapping
from typing import Any

import attrs

from allq.vocabulary import DEFAULT_CONCURRENCY
from allq.wire.bodies import decode_body


class DuplicateJobId(str):
    """The id a put with a ``unique_key`` answers when the key's job is live: that
    job's id, marked so a front-end can say nothing new was stored (REST
    ``"duplicate": true``). A ``str`` everywhere else."""

    __slots__ = ()


@attrs.frozen
class FetchedJob:
    """A job as a server handed it out (reserved, taken, or peeked at).

    ``body`` is ``str`` when the job's body is UTF-8 text and ``bytes`` otherwise
    (a binary body, any byte; :mod:`allq.wire.bodies`). A front-end that speaks
    text writes a ``bytes`` body its own way (REST: ``body_base64`` beside
    ``"body_encoding": "base64"``); one that speaks bytes encodes a ``str`` body
    as UTF-8.
    """

    job_id: str
    tube: str
    body: str | bytes
    priority: int
    ttl: float
    expireds: int
    releases: int
    #: The last error a bury recorded on the job, if any.
    error: str | None = None

    @classmethod
    def from_reply(cls, job: Mapping[str, Any]) -> "FetchedJob":
        return cls(job["job_id"], job["tube"],
                   decode_body(job["body"], job.get("body_encoding")), job["priority"],
                   job["ttl"], int(job["expireds"]), int(job["releases"]),
                   job.get("error"))


@attrs.frozen
class JobStats:
    """What a server says of one job (beanstalkd's ``stats-job``): its state,
    seconds (``age`` since put, ``time_left`` until its delay or ttl ends, 0
    otherwise, the last ``delay`` it was given) and counts since the server
    started."""

    job_id: str
    tube: str
    state: str
    priority: int
    age: float
    delay: float
    ttl: float
    time_left: float
    reserves: int
    timeouts: int
    releases: int
    buries: int
    kicks: int

    @classmethod
    def from_reply(cls, reply: Mapping[str, Any]) -> "JobStats":
        return cls(**{field.name: reply[field.name] for field in attrs.fields(cls)})


@attrs.frozen
class TubeStats:
    """One tube's counts and settings on one server (optional fields: ``None``
    when the server does not send them)."""

    tube: str
    ready: int
    reserved: int
    delayed: int
    buried: int
    parents: int
    tps: float
    avg: float
    throttle_size: float | None = None
    paused: bool = False
    draining: bool = False
    fair: str | None = None
    max_size: int | None = None
    pause_time_left: float = 0.0
    #: Jobs of one ``concurrency_key`` reserved at once (the tube's limit).
    concurrency: int = DEFAULT_CONCURRENCY


@attrs.frozen
class ServerStats:
    """One server's ``stats`` reply, with the address this client knows it by.

    :ivar totals: the server-wide counters (``action_count``, ``job_put``,
        ``job_get``, ``uptime``, ``jobs``, ``draining``, ...), as sent.
    :ivar reply: the reply itself, for consumers of the wire shape
        (:func:`allq.stats_metrics.stats_families`).
    """

    address: str
    server_id: str
    totals: Mapping[str, Any]
    tubes: tuple[TubeStats, ...]
    reply: Mapping[str, Any] = attrs.field(repr=False, eq=False)

    @classmethod
    def from_reply(cls, address: str, reply: Mapping[str, Any]) -> "ServerStats":
        tubes = tuple(
            TubeStats(
                tube=t["tube"], ready=int(t["ready"]), reserved=int(t["reserved"]),
                delayed=int(t["delayed"]), buried=int(t["buried"]), parents=int(t["parents"]),
                tps=float(t["tps"]), avg=float(t["avg"]), throttle_size=t.get("throttle_size"),
                paused=bool(t.get("paused", False)), draining=bool(t.get("draining", False)),
                fair=t.get("fair"), max_size=t.get("max_size"),
                pause_time_left=float(t.get("pause_time_left", 0.0)),
                concurrency=int(t.get("concurrency", DEFAULT_CONCURRENCY)))
            for t in reply["tubes"])
        return cls(address, reply["server_id"], reply["global"], tubes,
                   {**reply, "address": address})
