"""The job record and its states.

A job is a slotted attrs class, not a state machine object: at a million queued
jobs every byte per job counts (see ``bench/memory.py``), so the state is a small
enum field and :class:`allq.core.queue.Queue` enforces the transitions.
Pure: no I/O, no clock.
"""

import enum

import attrs

# The journal and recovery import ParentInfo from here, beside Job.
from allq.core.parents import ParentInfo  # noqa: F401


class JobState(enum.Enum):
    """Where a job is in its lifecycle (beanstalkd terms)."""

    READY = "ready"
    DELAYED = "delayed"
    RESERVED = "reserved"
    BURIED = "buried"
    WAITING = "waiting"  # a parent job waiting for its children ("parents" in stats)
    DELETED = "deleted"


@attrs.define(slots=True, eq=False, weakref_slot=False)
class Job:
    """One unit of work held by a server.

    ``deadline`` means "becomes ready at" while delayed, "expires at" while
    reserved and "times out at" while waiting for children; it is ``None``
    otherwise. ``parent_id`` is the number of the parent job a child counts
    toward; ``shard_key`` picks the job's line in a fair tube. ``id`` is the server-local number; the
    server adds its own id in front (``"<server_id>,<id>"``) on the wire.
    """

    id: int
    tube: str
    body: str
    priority: int
    ttl: float
    expired_limit: int
    created: float
    state: JobState = JobState.READY
    deadline: float | None = None
    reserved_at: float | None = None
    expireds: int = 0
    releases: int = 0
    shard_key: str | None = None
    parent_id: int | None = None
