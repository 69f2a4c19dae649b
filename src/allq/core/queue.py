"""The queue core: tubes, jobs and every state transition, with time as an argument.

Synchronous and reactor-free. Each public method takes ``now`` (seconds since
the epoch, as :meth:`IReactorTime.seconds` gives) where time matters, validates
its input, applies one transition and returns the affected job(s), or raises an
:class:`allq.errors.AllQError`. The server's single deadline timer calls
:meth:`Queue.expire` at :meth:`Queue.next_deadline`.

Lifecycle (beanstalkd terms)::

    put ─▶ [delayed] ─(due)─▶ [ready] ─get─▶ [reserved] ─done/delete─▶ gone
                                 ▲               │ ttl elapses: expireds+1
                                 │◀──release─────┤   (expireds >= limit: buried)
                                 │◀──kick──[buried]◀──bury──┘
"""

import math
import re

import attrs

from allq.core.deadlines import Deadlines
from allq.core.job import Job, JobState
from allq.core.tube import Tube
from allq.errors import BadRequest, NotFound, TooLarge, WrongState

SECONDS = 1.0
MIB = 1024 * 1024
DEFAULT_TTL = 3600 * SECONDS
DEFAULT_PRIORITY = 5
DEFAULT_EXPIRED_LIMIT = 3
DEFAULT_MAX_JOB_SIZE = 1 * MIB
MAX_PRIORITY = 2**32 - 1
MAX_SECONDS = 10 * 365 * 24 * 3600 * SECONDS
MAX_COUNT = 1000
#: Letters, digits and ``_.:@$!#=+/-``, 1..200 characters, not starting with ``-``.
TUBE_NAME = re.compile(r"[A-Za-z0-9_.:@$!#=+/][A-Za-z0-9_.:@$!#=+/-]{0,199}")
CLEAR_STATES = ("all", "ready", "delayed", "buried", "reserved", "parents")


@attrs.frozen
class QueueConfig:
    """Server-wide defaults and limits."""

    default_ttl: float = DEFAULT_TTL
    default_priority: int = DEFAULT_PRIORITY
    expired_limit: int = DEFAULT_EXPIRED_LIMIT
    max_job_size: int = DEFAULT_MAX_JOB_SIZE


@attrs.frozen
class Event:
    """Something the deadline sweep did: ``matured`` (delayed → ready),
    ``expired`` (reserved → ready) or ``buried`` (reserved → buried on its last
    allowed expiry)."""

    kind: str
    job_id: int
    tube: str


@attrs.frozen
class TubeStats:
    """Counts and figures of one tube."""

    tube: str
    ready: int
    reserved: int
    delayed: int
    buried: int
    parents: int
    tps: float
    avg: float


@attrs.frozen
class GlobalStats:
    """Server-wide counters."""

    action_count: int
    job_put: int
    job_get: int
    uptime: float


class Queue:
    """All tubes and jobs of one server.

    :param config: defaults and limits.
    :param first_id: the number the first job gets; the server passes a value
        derived from the start time so ids are not reused across restarts.
    :param started: when this queue started (for ``uptime``).
    """

    def __init__(
        self, config: QueueConfig = QueueConfig(), first_id: int = 1, started: float = 0.0
    ) -> None:
        self.config = config
        self._jobs: dict[int, Job] = {}
        self._tubes: dict[str, Tube] = {}
        self._deadlines = Deadlines(self._jobs.get)
        self._next_id = first_id
        self._started = started
        self.action_count = 0
        self.job_put = 0
        self.job_get = 0

    # -- producing -------------------------------------------------------------

    def put(
        self,
        tube: str,
        body: str,
        *,
        now: float,
        priority: int | None = None,
        ttl: float | None = None,
        delay: float = 0,
        expired_limit: int | None = None,
    ) -> Job:
        """Add a job; it is ready at once, or delayed when ``delay > 0``.

        :raises BadRequest: a value is missing, of the wrong type or out of range.
        :raises TooLarge: the body exceeds ``max_job_size`` bytes (UTF-8).
        """
        check_tube(tube)
        self._check_body(body)
        config = self.config
        job = Job(
            id=self._next_id,
            tube=tube,
            body=body,
            priority=config.default_priority if priority is None else check_priority(priority),
            ttl=config.default_ttl if ttl is None else check_seconds("ttl", ttl, positive=True),
            expired_limit=(
                config.expired_limit
                if expired_limit is None
                else check_count("expired_limit", expired_limit, maximum=2**31)
            ),
            created=now,
        )
        delay = check_seconds("delay", delay)
        self._next_id += 1
        self._jobs[job.id] = job
        self.job_put += 1
        tube_ = self._tube(tube)
        if delay > 0:
            job.state = JobState.DELAYED
            tube_.delayed_count += 1
            self._deadlines.schedule(job, now + delay, was_scheduled=False)
        else:
            tube_.push_ready(job)
        return job

    # -- consuming -------------------------------------------------------------

    def get(self, tube: str, *, now: float, count: int = 1, delete: bool = False) -> list[Job]:
        """Reserve up to ``count`` ready jobs of ``tube``, best first.

        With ``delete`` the jobs are removed as they are handed out (AllQueue's
        ``delete=true``), which counts as finishing them.
        :returns: the jobs, possibly none.
        """
        check_tube(tube)
        count = check_count("count", count, maximum=MAX_COUNT)
        tube_ = self._tubes.get(tube)
        if tube_ is None:
            return []
        jobs = []
        while len(jobs) < count:
            job = tube_.pop_ready()
            if job is None:
                break
            if delete:
                job.state = JobState.DELETED
                del self._jobs[job.id]
                tube_.throughput.record(now, None)  # no processing time to average
            else:
                job.state = JobState.RESERVED
                job.reserved_at = now
                tube_.reserved_count += 1
                self._deadlines.schedule(job, now + job.ttl, was_scheduled=False)
            jobs.append(job)
        self.job_get += len(jobs)
        return jobs

    def done(self, job_id: int, *, now: float) -> Job:
        """Finish a reserved job.

        :raises NotFound: no such job.
        :raises WrongState: the job is not reserved.
        """
        job = self._reserved(job_id, "done")
        self._finish(job, now)
        return job

    def delete(self, job_id: int, *, now: float) -> Job:
        """Remove a job in any state (a reserved one counts as finished)."""
        job = self._job(job_id)
        if job.state is JobState.RESERVED:
            self._finish(job, now)
            return job
        tube = self._tubes[job.tube]
        if job.state is JobState.READY:
            tube.ready_count -= 1  # its deque entry is dropped lazily
        elif job.state is JobState.DELAYED:
            tube.delayed_count -= 1
            self._deadlines.cancel(job)
        else:
            del tube.buried[job.id]
        self._forget(job)
        return job

    def release(self, job_id: int, *, now: float, delay: float = 0) -> Job:
        """Give a reserved job back: ready, or delayed by ``delay`` seconds.

        The job keeps its priority. Past ``2 * expired_limit`` releases it is
        buried instead, as AllQueue does (the 7th release with the default 3).
        """
        delay = check_seconds("delay", delay)
        job = self._reserved(job_id, "release")
        tube = self._unreserve(job)
        job.releases += 1
        if job.releases > 2 * job.expired_limit:
            self._bury(job, tube)
        elif delay > 0:
            job.state = JobState.DELAYED
            tube.delayed_count += 1
            self._deadlines.schedule(job, now + delay, was_scheduled=False)
        else:
            self._make_ready(job, tube)
        return job

    def bury(self, job_id: int, *, now: float) -> Job:
        """Move a reserved job to the buried (dead letter) list of its tube."""
        job = self._reserved(job_id, "bury")
        self._bury(job, self._unreserve(job))
        return job

    def touch(self, job_id: int, *, now: float) -> Job:
        """Restart a reserved job's ttl from ``now``."""
        job = self._reserved(job_id, "touch")
        job.reserved_at = now
        self._deadlines.schedule(job, now + job.ttl, was_scheduled=True)
        return job

    def kick(self, job_id: int, *, now: float) -> Job:
        """Make a buried (or delayed) job ready again.

        A kicked job keeps its priority and starts with fresh ``expireds`` and
        ``releases`` so it is not buried again at its next expiry.
        """
        job = self._job(job_id)
        tube = self._tubes[job.tube]
        if job.state is JobState.BURIED:
            del tube.buried[job.id]
            job.expireds = job.releases = 0
        elif job.state is JobState.DELAYED:
            tube.delayed_count -= 1
            self._deadlines.cancel(job)
        else:
            raise WrongState(f"job {job_id} is {job.state.value}, not buried or delayed")
        self._make_ready(job, tube)
        return job

    def kick_tube(self, tube: str, *, now: float, count: int = 1) -> list[Job]:
        """Kick up to ``count`` buried jobs of ``tube``, oldest buried first."""
        check_tube(tube)
        count = check_count("count", count, maximum=2**31)
        tube_ = self._tubes.get(tube)
        if tube_ is None:
            return []
        oldest = []
        for job in tube_.buried.values():
            if len(oldest) == count:
                break
            oldest.append(job)
        return [self.kick(job.id, now=now) for job in oldest]

    # -- inspecting ------------------------------------------------------------

    def peek(self, tube: str, *, buried: bool = False, offset: int = 0) -> Job | None:
        """The job ``offset`` places from the front of the ready (or buried) line."""
        check_tube(tube)
        offset = check_count("offset", offset, minimum=0, maximum=2**31)
        tube_ = self._tubes.get(tube)
        if tube_ is None:
            return None
        jobs = iter(tube_.buried.values()) if buried else tube_.iter_ready()
        for index, job in enumerate(jobs):
            if index == offset:
                return job
        return None

    def job(self, job_id: int) -> Job:
        """The live job with that id.

        :raises NotFound: no such job.
        """
        return self._job(job_id)

    def clear(self, tube: str, *, state: str = "all") -> int:
        """Drop a tube's jobs in one state (or all); returns how many were dropped.

        Works whatever the tube's pause or throttle settings are.
        """
        check_tube(tube)
        if state not in CLEAR_STATES:
            raise BadRequest(f"cache_type must be one of {', '.join(CLEAR_STATES)}")
        tube_ = self._tubes.get(tube)
        if tube_ is None:
            return 0
        dropped: list[Job] = []
        if state in ("all", "ready"):
            dropped += tube_.drop_all_ready()
        if state in ("all", "buried"):
            dropped += tube_.buried.values()
            tube_.buried = {}
        if state in ("all", "delayed", "reserved"):
            wanted = {"all": (JobState.DELAYED, JobState.RESERVED),
                      "delayed": (JobState.DELAYED,),
                      "reserved": (JobState.RESERVED,)}[state]
            scheduled = [j for j in self._jobs.values() if j.tube == tube and j.state in wanted]
            for job in scheduled:
                self._deadlines.cancel(job)
                if job.state is JobState.DELAYED:
                    tube_.delayed_count -= 1
                else:
                    tube_.reserved_count -= 1
            dropped += scheduled
        for job in dropped:
            self._forget(job)
        return len(dropped)

    def tube_names(self) -> list[str]:
        """Names of every known tube, sorted."""
        return sorted(self._tubes)

    def tube_stats(self, now: float) -> list[TubeStats]:
        """Counts and figures of every tube, sorted by name."""
        return [
            TubeStats(
                tube=t.name,
                ready=t.ready_count,
                reserved=t.reserved_count,
                delayed=t.delayed_count,
                buried=t.buried_count,
                parents=0,
                tps=t.throughput.tps(now),
                avg=t.throughput.avg(),
            )
            for t in sorted(self._tubes.values(), key=lambda t: t.name)
        ]

    def global_stats(self, now: float) -> GlobalStats:
        """Server-wide counters."""
        return GlobalStats(
            action_count=self.action_count,
            job_put=self.job_put,
            job_get=self.job_get,
            uptime=max(now - self._started, 0.0),
        )

    def __len__(self) -> int:
        return len(self._jobs)

    # -- time ------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`expire` next has work to do, or ``None``."""
        return self._deadlines.earliest()

    def expire(self, now: float) -> list[Event]:
        """Apply every deadline at or before ``now``.

        Delayed jobs that are due become ready. Reserved jobs whose ttl elapsed
        go back to ready with ``expireds + 1``, or are buried when that reaches
        their ``expired_limit``. Jobs keep their own priority either way.
        """
        events = []
        for job in self._deadlines.pop_due(now):
            tube = self._tubes[job.tube]
            if job.state is JobState.DELAYED:
                tube.delayed_count -= 1
                self._make_ready(job, tube)
                events.append(Event("matured", job.id, job.tube))
                continue
            tube.reserved_count -= 1
            job.reserved_at = None
            job.expireds += 1
            if job.expireds >= job.expired_limit:
                self._bury(job, tube)
                events.append(Event("buried", job.id, job.tube))
            else:
                self._make_ready(job, tube)
                events.append(Event("expired", job.id, job.tube))
        return events

    # -- internals -------------------------------------------------------------

    def _tube(self, name: str) -> Tube:
        tube = self._tubes.get(name)
        if tube is None:
            tube = self._tubes[name] = Tube(name)
        return tube

    def _job(self, job_id: int) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        return job

    def _reserved(self, job_id: int, action: str) -> Job:
        job = self._job(job_id)
        if job.state is not JobState.RESERVED:
            raise WrongState(f"cannot {action} job {job_id}: it is {job.state.value}, not reserved")
        return job

    def _unreserve(self, job: Job) -> Tube:
        tube = self._tubes[job.tube]
        tube.reserved_count -= 1
        self._deadlines.cancel(job)
        job.reserved_at = None
        return tube

    def _finish(self, job: Job, now: float) -> None:
        started = job.reserved_at
        tube = self._unreserve(job)
        tube.throughput.record(now, None if started is None else now - started)
        self._forget(job)

    def _make_ready(self, job: Job, tube: Tube) -> None:
        job.state = JobState.READY
        tube.push_ready(job)

    def _bury(self, job: Job, tube: Tube) -> None:
        job.state = JobState.BURIED
        tube.buried[job.id] = job

    def _forget(self, job: Job) -> None:
        job.state = JobState.DELETED
        self._jobs.pop(job.id, None)

    def _check_body(self, body: object) -> None:
        if not isinstance(body, str):
            raise BadRequest("body must be a string")
        limit = self.config.max_job_size
        # A str of n characters is at most 4n bytes in UTF-8: skip encoding small bodies.
        if len(body) * 4 > limit and len(body.encode("utf-8", "surrogatepass")) > limit:
            raise TooLarge(f"body is larger than the maximum job size of {limit} bytes")


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


def check_priority(priority: object) -> int:
    """Validate a priority: an integer from 0 (most urgent) to 2**32-1."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise BadRequest("priority must be an integer")
    if not 0 <= priority <= MAX_PRIORITY:
        raise BadRequest(f"priority must be between 0 and {MAX_PRIORITY}")
    return priority


def check_seconds(name: str, value: object, *, positive: bool = False) -> float:
    """Validate a duration in seconds (int or float, finite, not negative)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(f"{name} must be a number of seconds")
    if value < 0 or (positive and value <= 0) or value > MAX_SECONDS:
        qualifier = "greater than 0" if positive else "0 or more"
        raise BadRequest(f"{name} must be {qualifier} and at most {MAX_SECONDS:.0f} seconds")
    return value


def check_count(name: str, value: object, *, minimum: int = 1, maximum: int) -> int:
    """Validate an integer count within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} must be an integer")
    if not minimum <= value <= maximum:
        raise BadRequest(f"{name} must be between {minimum} and {maximum}")
    return value
