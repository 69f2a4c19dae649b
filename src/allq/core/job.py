"""The job record and its states.

A job is a slotted attrs class, not a state machine object: at a million queued
jobs every byte per job counts (see ``bench/memory.py``), so the state is a small
enum field and :class:`allq.core.queue.Queue` enforces the transitions.

What a job is put with and never changes (priority, ttl, expiry limit, shard
key, parent) lives in one :class:`JobOptions` that jobs put alike share, so a
job holds ten slots (112 bytes) rather than fourteen (144 bytes).
Pure: no I/O, no clock.
"""

import enum
import functools

import attrs


#: Distinct option sets kept for sharing. Most jobs use a few (the defaults, a
#: few priorities); past this many, new sets are still right, just not shared.
_SHARED_OPTIONS = 4096


class JobState(enum.Enum):
    """Where a job is in its lifecycle (beanstalkd terms)."""

    READY = "ready"
    DELAYED = "delayed"
    RESERVED = "reserved"
    BURIED = "buried"
    WAITING = "waiting"  # a parent job waiting for its children ("parents" in stats)
    DELETED = "deleted"


@attrs.frozen(weakref_slot=False)
class JobOptions:
    """What a job was put with: fixed for its life and shared between jobs.

    ``parent_id`` is the number of the parent job a child counts toward;
    ``shard_key`` picks the job's line in a fair tube.
    """

    priority: int
    ttl: float
    expired_limit: int
    shard_key: str | None = None
    parent_id: int | None = None


# typed: a ttl of 60 and one of 60.0 stay apart, so a job gives back what it was given.
@functools.lru_cache(maxsize=_SHARED_OPTIONS, typed=True)
def job_options(priority: int, ttl: float, expired_limit: int,
                shard_key: str | None, parent_id: int | None) -> JobOptions:
    """The shared :class:`JobOptions` for these values."""
    return JobOptions(priority, ttl, expired_limit, shard_key, parent_id)


@attrs.define(eq=False, weakref_slot=False, init=False)
class Job:
    """One unit of work held by a server.

    ``deadline`` means "becomes ready at" while delayed, "expires at" while
    reserved and "times out at" while waiting for children; it is ``None``
    otherwise. ``id`` is the server-local number; the server adds its own id in
    front (``"<server_id>,<id>"``) on the wire. ``priority``, ``ttl``,
    ``expired_limit``, ``shard_key`` and ``parent_id`` are read from ``options``.
    """

    id: int
    tube: str
    #: ``str`` when the body is UTF-8 text, ``bytes`` otherwise (a binary body).
    body: str | bytes
    created: float
    options: JobOptions
    state: JobState
    deadline: float | None
    reserved_at: float | None
    expireds: int
    releases: int

    def __init__(
        self,
        id: int,  # noqa: A002 - the field's name
        tube: str,
        body: str | bytes,
        priority: int,
        ttl: float,
        expired_limit: int,
        created: float,
        state: JobState = JobState.READY,
        deadline: float | None = None,
        reserved_at: float | None = None,
        expireds: int = 0,
        releases: int = 0,
        shard_key: str | None = None,
        parent_id: int | None = None,
    ) -> None:
        self.id = id
        self.tube = tube
        self.body = body
        self.created = created
        self.options = job_options(priority, ttl, expired_limit, shard_key, parent_id)
        self.state = state
        self.deadline = deadline
        self.reserved_at = reserved_at
        self.expireds = expireds
        self.releases = releases

    @property
    def priority(self) -> int:
        return self.options.priority

    @property
    def ttl(self) -> float:
        return self.options.ttl

    @property
    def expired_limit(self) -> int:
        return self.options.expired_limit

    @property
    def shard_key(self) -> str | None:
        return self.options.shard_key

    @property
    def parent_id(self) -> int | None:
        return self.options.parent_id
