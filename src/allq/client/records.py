"""What the federation hands its front-ends: typed records, not wire dicts.

A server answers in JSON objects (``allq.wire.messages``); the federation turns
the ones that cross into a front-end into these records, once, so the REST
facade, the metrics and the next front-ends read attributes whose names and
types are stated here rather than keys of a dict.
"""

from collections.abc import Mapping
from typing import Any

import attrs


@attrs.frozen
class FetchedJob:
    """A job as a server handed it out (reserved, taken, or peeked at)."""

    job_id: str
    tube: str
    body: str
    priority: int
    ttl: float
    expireds: int
    releases: int
    #: The last error a bury recorded on the job, if any.
    error: str | None = None

    @classmethod
    def from_reply(cls, job: Mapping[str, Any]) -> "FetchedJob":
        return cls(job["job_id"], job["tube"], job["body"], job["priority"], job["ttl"],
                   int(job["expireds"]), int(job["releases"]), job.get("error"))


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
                fair=t.get("fair"), max_size=t.get("max_size"))
            for t in reply["tubes"])
        return cls(address, reply["server_id"], reply["global"], tubes,
                   {**reply, "address": address})
