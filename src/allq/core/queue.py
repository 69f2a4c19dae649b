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
    put_parent ─▶ [waiting] ─(limit children done)─▶ [ready]
                     └─(timeout)─▶ [ready] if run_on_timeout, else [buried]

A child (a job put with ``parent_id``) counts toward its parent when it is
finished (done, deleted, or taken with ``delete``); its bury or ttl expiry does
not count. Every change of a job or a tube setting is reported to the optional
``on_change`` hook, which the server's journal uses for persistence.
"""

import itertools

import attrs

from collections.abc import Callable

from allq.core.counters import JobCounterMap, JobCounters
from allq.core.deadlines import Deadlines
from allq.core.job import Job, JobState
from allq.core.keys import KeyedJobs
from allq.core.parents import ParentInfo, Parents
from allq.core.throttle import TokenBucket
from allq.core.tube import Tube
from allq.errors import BadRequest, Draining, NotFound, QueueFull, TooLarge, WrongState
from allq.vocabulary import (
    CLEAR_STATES,
    DEFAULT_PARENT_TIMEOUT,
    FAIR_POLICIES,
    MAX_COUNT,
    MAX_EXPIRED_LIMIT,
    MAX_KICK_COUNT,
    MAX_LIST_LIMIT,
    MAX_OFFSET,
    MAX_RUN_AT,
    MAX_TUBE_SIZE,
    check_concurrency,
    check_count,
    check_list_state,
    check_error_text,
    check_job_key,
    check_priority,
    check_seconds,
    check_shard_key,
    check_tps,
    check_tube,
)

SECONDS = 1.0
MIB = 1024 * 1024
DEFAULT_TTL = 3600 * SECONDS
DEFAULT_PRIORITY = 5
DEFAULT_EXPIRED_LIMIT = 3
DEFAULT_MAX_JOB_SIZE = 1 * MIB
DEFAULT_FAIR_PREFIX = "fq-"


@attrs.frozen
class QueueConfig:
    """Server-wide defaults and limits."""

    default_ttl: float = DEFAULT_TTL
    default_priority: int = DEFAULT_PRIORITY
    expired_limit: int = DEFAULT_EXPIRED_LIMIT
    max_job_size: int = DEFAULT_MAX_JOB_SIZE
    #: Tubes named ``<prefix>...`` (or ``...<suffix>`` when a suffix is set) are
    #: fair (round robin over shard keys) unless set otherwise per tube.
    fair_prefix: str = DEFAULT_FAIR_PREFIX
    fair_suffix: str | None = None
    #: The most jobs this server holds, in all tubes and states (``None``: no limit).
    max_jobs: int | None = None


@attrs.frozen
class Event:
    """Something the deadline sweep did: ``matured`` (delayed → ready),
    ``expired`` (reserved → ready), ``buried`` (reserved → buried on its last
    allowed expiry), ``parent_timeout`` (waiting → ready) or
    ``parent_buried`` (waiting → buried on timeout)."""

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
    throttle: float | None = None
    paused: bool = False
    draining: bool = False
    fair: str | None = None
    max_size: int | None = None
    expired_total: int = 0
    buried_total: int = 0
    #: Seconds until a pause given with a delay ends by itself (0: none).
    pause_time_left: float = 0.0


@attrs.frozen
class GlobalStats:
    """Server-wide counters."""

    action_count: int
    job_put: int
    job_get: int
    uptime: float
    draining: bool = False
    max_jobs: int | None = None


class Queue:
    """All tubes and jobs of one server.

    :param config: defaults and limits.
    :param first_id: the number the first job gets; the server passes a value
        derived from the start time so ids are not reused across restarts.
    :param started: when this queue started (for ``uptime``).
    :param on_change: called with ``("job", job)`` after a job changes state
        (state ``DELETED`` once it is gone), ``("tube", tube)`` after a tube
        setting changes, and ``("server", queue)`` after the server's drain flag
        changes.
    """

    def __init__(
        self,
        config: QueueConfig = QueueConfig(),
        first_id: int = 1,
        started: float = 0.0,
        on_change: Callable[[str, object], None] | None = None,
    ) -> None:
        self.config = config
        self._jobs: dict[int, Job] = {}
        # A job's last error (recorded by a bury), beside the jobs rather than in a
        # slot of every job: few jobs have one, and a job without one costs nothing.
        self._last_errors: dict[int, str] = {}
        self._tubes: dict[str, Tube] = {}
        self._parents = Parents()
        self._deadlines = Deadlines(self._jobs.get)
        self._counters = JobCounterMap()
        # Unique and concurrency keys, of keyed jobs only (see allq.core.keys).
        self._keyed = KeyedJobs()
        self._next_id = first_id
        self._started = started
        self._on_change = on_change
        self.draining = False
        self.action_count = 0
        self.job_put = 0
        self.job_get = 0

    # -- producing -------------------------------------------------------------

    def put(
        self,
        tube: str,
        body: str | bytes,
        *,
        now: float,
        priority: int | None = None,
        ttl: float | None = None,
        delay: float = 0,
        expired_limit: int | None = None,
        run_at: float | None = None,
        shard_key: str | None = None,
        parent_id: int | None = None,
        unique_key: str | None = None,
        concurrency_key: str | None = None,
    ) -> Job:
        """Add a job; it is ready at once, or delayed by ``delay`` seconds or
        until the unix time ``run_at``.

        :param shard_key: the job's key in a fair tube (required there).
        :param parent_id: the waiting parent this job is a child of.
        :param unique_key: no other live job of the tube may hold it (look for
            one first with :meth:`unique_job`).
        :param concurrency_key: at most the tube's concurrency limit of the jobs
            with this key are reserved at once; the others wait, ready.
        :raises WrongState: ``unique_key`` names a live job of the tube.
        :raises BadRequest: a value is missing, of the wrong type or out of range.
        :raises TooLarge: the body exceeds ``max_job_size`` bytes (UTF-8).
        :raises NotFound: ``parent_id`` names no job here.
        :raises WrongState: the parent is no longer waiting for children.
        :raises Draining: the server or the tube takes no new jobs.
        :raises QueueFull: the tube or the server is at its maximum size.
        """
        job = self._new_job(tube, body, now, priority, ttl, expired_limit, shard_key, parent_id)
        delay = self._delay(delay, run_at, now)
        self._check_parent(parent_id)
        if unique_key is not None or concurrency_key is not None:
            self._check_keys(tube, unique_key, concurrency_key)
        tube_ = self._admit(tube, job, child=parent_id is not None)
        if parent_id is not None:
            self._parents.child_put(parent_id)
        if unique_key is not None or concurrency_key is not None:
            self._keyed.add(job, unique_key, concurrency_key)
        if delay > 0:
            job.state = JobState.DELAYED
            tube_.delayed_count += 1
            self._counters.of(job).delay = delay
            self._deadlines.schedule(job, now + delay, was_scheduled=False)
        else:
            self._make_ready(job, tube_)
        self._changed(job)
        return job

    def unique_job(self, tube: str, unique_key: str) -> Job | None:
        """The live job of ``tube`` that holds ``unique_key``, or ``None``."""
        return self._keyed.unique_job(tube, unique_key) if self._keyed else None

    def job_keys(self, job_id: int) -> tuple[str | None, str | None] | None:
        """A live job's ``(unique_key, concurrency_key)``, or ``None`` without keys."""
        return self._keyed.keys_of(job_id) if self._keyed else None

    def keyed_jobs(self) -> int:
        """How many live jobs carry a unique or concurrency key."""
        return len(self._keyed)

    def put_parent(
        self,
        tube: str,
        body: str | bytes,
        *,
        now: float,
        timeout: float = DEFAULT_PARENT_TIMEOUT,
        run_on_timeout: bool = False,
        limit: int | None = None,
        priority: int | None = None,
        ttl: float | None = None,
        expired_limit: int | None = None,
        shard_key: str | None = None,
        parent_id: int | None = None,
        noop: bool = False,
        alias: str | None = None,
    ) -> Job:
        """Add a parent job that waits until ``limit`` of its children are
        finished, or until ``timeout`` seconds pass (then it becomes ready if
        ``run_on_timeout``, else it is buried). Without ``limit`` it waits for
        :meth:`set_children_started` to fix the count. A parent may itself be
        the child of another parent.

        :param noop: it never runs: where it would become ready it is finished
            instead, and counts as a finished child of its own parent.
        :param alias: a caller-chosen id naming it while it waits (:meth:`parent_by_alias`).
        :raises WrongState: ``alias`` already names a waiting parent.
        """
        job = self._new_job(tube, body, now, priority, ttl, expired_limit, shard_key, parent_id)
        info = ParentInfo.checked(timeout, run_on_timeout, limit, noop, alias)
        self._parents.check_alias(info.alias)
        self._check_parent(parent_id)
        tube_ = self._admit(tube, job, child=parent_id is not None)
        if parent_id is not None:
            self._parents.child_put(parent_id)
        self._parents.add(job.id, info)
        job.state = JobState.WAITING
        tube_.waiting_count += 1
        self._deadlines.schedule(job, now + info.timeout, was_scheduled=False)
        self._changed(job)
        if info.complete:  # limit 0
            self._start_parent(job, tube_)
        return job

    def set_children_started(self, job_id: int, *, now: float) -> Job:
        """Say every child of a waiting parent has been put: its limit becomes
        the number put so far, and it starts at once if they are all finished."""
        job = self._job(job_id)
        info = self._parents.children_started(job_id)
        if info is None:
            raise WrongState(f"job {job_id} is {job.state.value}, not a waiting parent")
        self._changed(job)
        if info.complete:
            self._start_parent(job, self._tubes[job.tube])
        return job

    def parent_info(self, job_id: int) -> ParentInfo | None:
        """What a waiting parent waits for (``None`` for any other job)."""
        return self._parents.info(job_id)

    def parent_by_alias(self, alias: str) -> Job | None:
        """The waiting parent a caller-chosen id names, or ``None``."""
        job_id = self._parents.by_alias(alias)
        return None if job_id is None else self._jobs[job_id]

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
        if tube_ is None or not tube_.ready_count or tube_.is_paused(now):
            return []
        if tube_.throttle is not None:
            count = tube_.throttle.take(min(count, tube_.ready_count), now)
        jobs = []
        while len(jobs) < count:
            job = tube_.pop_ready()
            if job is None:
                break
            if self._keyed and not self._keyed.taken(job, tube_, reserved=not delete):
                tube_.ready_count += 1  # held: its key is at its (cut) limit
                continue
            if delete:
                tube_.throughput.record(now, None)  # no processing time to average
                self._forget(job)
            else:
                self._reserve(job, tube_, now)
            jobs.append(job)
        if tube_.throttle is not None and len(jobs) < count:
            tube_.throttle.give_back(count - len(jobs))
        self.job_get += len(jobs)
        return jobs

    def get_any(self, tubes: list[str], *, now: float, count: int = 1,
                delete: bool = False) -> list[Job]:
        """Reserve up to ``count`` ready jobs from any of ``tubes``, best first
        across them: lowest priority number, then the one put first (as
        beanstalkd serves the tubes a connection watches). Paused tubes, and
        throttled ones out of tokens, are passed over.

        :returns: the jobs, possibly none.
        """
        if not isinstance(tubes, list) or not tubes:
            raise BadRequest("tubes must be a list of at least one tube")
        count = check_count("count", count, maximum=MAX_COUNT)
        candidates = []
        for name in dict.fromkeys(tubes):  # each tube once, in order
            check_tube(name)
            tube_ = self._tubes.get(name)
            if tube_ is not None:
                candidates.append(tube_)
        jobs: list[Job] = []
        while len(jobs) < count and candidates:
            best = None
            for tube_ in candidates:
                if tube_.ready_count and not tube_.is_paused(now):
                    job = tube_.peek_ready()
                    if job is not None and (best is None or (job.priority, job.id) < best[0]):
                        best = ((job.priority, job.id), tube_)
            if best is None:
                break
            got = self.get(best[1].name, now=now, count=1, delete=delete)
            if got:
                jobs += got
            else:  # throttled: no more from this tube in this call
                candidates.remove(best[1])
        return jobs

    def reserve_job(self, job_id: int, *, now: float) -> Job:
        """Reserve one job by its id, whether it is ready, delayed or buried
        (beanstalkd's ``reserve-job``); pause and throttle do not apply.

        :raises NotFound: no such job.
        :raises WrongState: the job is reserved already, or a waiting parent.
        """
        job = self._job(job_id)
        tube = self._tubes[job.tube]
        if job.state is JobState.READY:
            tube.remove_ready(job)
            if self._keyed:
                self._keyed.taken(job, tube, reserved=True, by_id=True)
        elif job.state is JobState.DELAYED:
            tube.delayed_count -= 1
            self._deadlines.cancel(job)
            if self._keyed:
                self._keyed.reserved(job)
        elif job.state is JobState.BURIED:
            del tube.buried[job.id]
            if self._keyed:
                self._keyed.reserved(job)
        else:
            raise WrongState(f"job {job_id} is {job.state.value}, not ready, delayed or buried")
        self._reserve(job, tube, now)
        self.job_get += 1
        return job

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
        ready = job.state is JobState.READY
        if ready:
            tube.ready_count -= 1  # its deque entry is dropped lazily
            if self._keyed:
                self._keyed.taken(job, tube, reserved=False)
        elif job.state is JobState.DELAYED:
            tube.delayed_count -= 1
            self._deadlines.cancel(job)
        elif job.state is JobState.WAITING:
            tube.waiting_count -= 1
            self._deadlines.cancel(job)
            self._parents.remove(job.id)
        else:
            del tube.buried[job.id]
        self._forget(job)
        if ready:
            # The ready line keeps the job until a get passes it: not its body too.
            job.body = ""
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
        counters = self._counters.of(job)
        counters.releases += 1
        if job.releases > 2 * job.expired_limit:
            self._bury(job, tube)
            counters.buries += 1
        elif delay > 0:
            job.state = JobState.DELAYED
            tube.delayed_count += 1
            counters.delay = delay
            self._deadlines.schedule(job, now + delay, was_scheduled=False)
        else:
            self._make_ready(job, tube)
        if self._keyed:
            self._keyed.freed(job, tube)
        self._changed(job)
        return job

    def bury(self, job_id: int, *, now: float, error: str | None = None) -> Job:
        """Move a reserved job to the buried (dead letter) list of its tube.

        :param error: why (a worker's exception, say): kept as the job's last
            error (:meth:`last_error`) until the job is gone; ``None`` keeps the
            last one recorded, if any.
        """
        if error is not None:
            check_error_text(error)
        job = self._reserved(job_id, "bury")
        self._counters.of(job).buries += 1
        if error is not None:
            self._last_errors[job.id] = error
        tube = self._unreserve(job)
        self._bury(job, tube)
        if self._keyed:
            self._keyed.freed(job, tube)
        self._changed(job)
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
        self._counters.of(job).kicks += 1
        self._make_ready(job, tube)
        self._changed(job)
        return job

    def kick_tube(self, tube: str, *, now: float, count: int = 1,
                  delayed: bool = False) -> list[Job]:
        """Kick up to ``count`` buried jobs of ``tube``, oldest buried first; with
        ``delayed``, its delayed jobs instead, soonest due first."""
        check_tube(tube)
        count = check_count("count", count, maximum=MAX_KICK_COUNT)
        tube_ = self._tubes.get(tube)
        if tube_ is None:
            return []
        if delayed:
            chosen = self._delayed_of(tube_, count)
        else:
            chosen = []
            for job in tube_.buried.values():
                if len(chosen) == count:
                    break
                chosen.append(job)
        return [self.kick(job.id, now=now) for job in chosen]

    # -- inspecting ------------------------------------------------------------

    def peek(self, tube: str, *, buried: bool = False, offset: int = 0) -> Job | None:
        """The job ``offset`` places from the front of the ready (or buried) line."""
        check_tube(tube)
        offset = check_count("offset", offset, minimum=0, maximum=MAX_OFFSET)
        tube_ = self._tubes.get(tube)
        if tube_ is None:
            return None
        jobs = iter(tube_.buried.values()) if buried else tube_.iter_ready()
        for index, job in enumerate(jobs):
            if index == offset:
                return job
        return None

    def list_jobs(self, tube: str, state: str, *, offset: int = 0,
                  limit: int = 50) -> tuple[list[Job], int]:
        """A page of a tube's jobs in one state and how many it holds in that state.

        Ready jobs in the order gets take them (held jobs of a concurrency key
        last), buried ones oldest buried first, delayed ones soonest due first,
        reserved ones in put order. A page of reserved jobs, or of ready jobs past
        the ready line, is a scan of the server's jobs, cut short by the counts.
        """
        check_tube(tube)
        state = check_list_state(state)
        offset = check_count("offset", offset, minimum=0, maximum=MAX_OFFSET)
        limit = check_count("limit", limit, minimum=1, maximum=MAX_LIST_LIMIT)
        tube_ = self._tubes.get(tube)
        if tube_ is None:
            return [], 0
        total = {"ready": tube_.ready_count, "delayed": tube_.delayed_count,
                 "reserved": tube_.reserved_count, "buried": tube_.buried_count}[state]
        if offset >= total:
            return [], total
        if state == "delayed":
            return self._delayed_of(tube_, offset + limit)[offset:], total
        if state == "buried":
            jobs = iter(tube_.buried.values())
        elif state == "ready":
            jobs = self._ready_of(tube_)
        else:
            jobs = (job for job in self._jobs.values()
                    if job.tube == tube and job.state is JobState.RESERVED)
        return list(itertools.islice(jobs, offset, offset + limit)), total

    def _ready_of(self, tube: Tube):
        """A tube's ready jobs: its ready line, then the held jobs of its
        concurrency keys (found by a scan, only when there are any)."""
        lined_up = 0
        for job in tube.iter_ready():
            lined_up += 1
            yield job
        if self._keyed and lined_up < tube.ready_count:
            for job in self._jobs.values():
                if (job.tube == tube.name and job.state is JobState.READY
                        and self._keyed.is_held(job.id)):
                    yield job

    def peek_delayed(self, tube: str) -> Job | None:
        """The delayed job of ``tube`` that becomes ready soonest."""
        check_tube(tube)
        tube_ = self._tubes.get(tube)
        found = [] if tube_ is None else self._delayed_of(tube_, 1)
        return found[0] if found else None

    def _delayed_of(self, tube: Tube, count: int) -> list[Job]:
        """Up to ``count`` delayed jobs of a tube, soonest due first (a walk of
        the deadline heap in order, cut short by the tube's delayed count)."""
        chosen: dict[int, Job] = {}
        if tube.delayed_count:
            wanted = min(count, tube.delayed_count)
            for job in self._deadlines.in_order():
                if job.state is JobState.DELAYED and job.tube == tube.name:
                    chosen[job.id] = job  # a job may have two entries with its deadline
                    if len(chosen) == wanted:
                        break
        return list(chosen.values())

    def counters(self, job_id: int) -> JobCounters:
        """What happened to a live job since it was put (beanstalkd's ``stats-job``).

        :raises NotFound: no such job.
        """
        return self._counters.read(self._job(job_id))

    def last_error(self, job_id: int) -> str | None:
        """The error a bury recorded on a live job, or ``None``."""
        return self._last_errors.get(job_id) if self._last_errors else None

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
            if self._keyed:
                dropped += self._keyed.drop_held(tube_)
            dropped += tube_.drop_all_ready()
        if state in ("all", "buried"):
            dropped += tube_.buried.values()
            tube_.buried = {}
        if state != "ready" and state != "buried":
            wanted = {"all": (JobState.DELAYED, JobState.RESERVED, JobState.WAITING),
                      "delayed": (JobState.DELAYED,),
                      "reserved": (JobState.RESERVED,),
                      "parents": (JobState.WAITING,)}[state]
            # These jobs are found by a scan of the server's jobs; the tube's counts
            # say how many there are, so the scan is skipped or cut short.
            needed = sum(count for held, count in ((JobState.DELAYED, tube_.delayed_count),
                                                   (JobState.RESERVED, tube_.reserved_count),
                                                   (JobState.WAITING, tube_.waiting_count))
                         if held in wanted)
            scheduled: list[Job] = []
            if needed:
                for job in self._jobs.values():
                    if job.tube == tube and job.state in wanted:
                        scheduled.append(job)
                        if len(scheduled) == needed:
                            break
            for job in scheduled:
                self._deadlines.cancel(job)
                if job.state is JobState.DELAYED:
                    tube_.delayed_count -= 1
                elif job.state is JobState.WAITING:
                    tube_.waiting_count -= 1
                    self._parents.remove(job.id)
                else:
                    tube_.reserved_count -= 1
                    if self._keyed:
                        self._keyed.freed(job, tube_)
            dropped += scheduled
        for job in dropped:
            self._forget(job)
        return len(dropped)

    # -- settings ----------------------------------------------------------------

    def set_throttle(self, tube: str, tps: float | None, *, now: float) -> Tube:
        """Cap how many jobs per second the tube hands out; ``None`` or a value
        <= 0 removes the cap. Gets beyond it find the tube empty."""
        check_tube(tube)
        tps = check_tps(tps)
        tube_ = self._tube(tube)
        tube_.throttle = TokenBucket(tps, now) if tps is not None else None
        return self._tube_changed(tube_)

    def set_paused(self, tube: str, paused: bool, *, until: float | None = None) -> Tube:
        """Pause (no jobs handed out; puts still accepted) or resume a tube.

        :param until: when the pause ends by itself (``None``: when resumed).
        """
        check_tube(tube)
        tube_ = self._tube(tube)
        tube_.paused = bool(paused)
        tube_.paused_until = until if paused else None
        return self._tube_changed(tube_)

    def set_tube_draining(self, tube: str, draining: bool) -> Tube:
        """Drain a tube (hand out its jobs, refuse new ones) or stop draining it."""
        check_tube(tube)
        tube_ = self._tube(tube)
        tube_.draining = bool(draining)
        return self._tube_changed(tube_)

    def set_fair(self, tube: str, policy: str | None) -> Tube:
        """Choose a tube's fair-queuing policy: ``"round_robin"``, ``"weighted"``,
        ``"off"``, or ``None`` to follow the name convention again."""
        check_tube(tube)
        if policy is not None and policy != "off" and policy not in FAIR_POLICIES:
            raise BadRequest(f"fair policy must be one of {', '.join(FAIR_POLICIES)}, off")
        tube_ = self._tube(tube)
        tube_.fair_setting = policy
        effective = self._fair_by_name(tube) if policy is None else policy
        tube_.set_fair_policy(None if effective == "off" else effective)
        return self._tube_changed(tube_)

    def set_max_size(self, tube: str, max_size: int | None) -> Tube:
        """Bound a tube to ``max_size`` jobs (``None``: unbounded). Jobs already
        queued are never dropped; puts beyond the bound are refused."""
        check_tube(tube)
        if max_size is not None:
            max_size = check_count("max_size", max_size, maximum=MAX_TUBE_SIZE)
        tube_ = self._tube(tube)
        tube_.max_size = max_size
        return self._tube_changed(tube_)

    def set_concurrency(self, tube: str, limit: int) -> Tube:
        """How many jobs of one concurrency key of ``tube`` may be reserved at
        once (default 1). A raise lets held jobs line up at once; a cut lets the
        jobs reserved now finish."""
        check_tube(tube)
        limit = check_concurrency(limit)
        tube_ = self._tube(tube)
        self._keyed.set_limit(tube_, limit)
        if self._on_change is not None:
            self._on_change("concurrency", (tube, limit))
        return tube_

    def concurrency(self, tube: str) -> int:
        """A tube's concurrency limit."""
        return self._keyed.limit(tube)

    def concurrency_limits(self) -> dict[str, int]:
        """Every tube whose concurrency limit is not the default, and its limit."""
        return self._keyed.limits()

    def restore_concurrency(self, tube: str, limit: int) -> None:
        """Give a tube its stored concurrency limit, without ``on_change``."""
        check_tube(tube)
        self._keyed.set_limit(self._tube(tube), check_concurrency(limit))

    def set_draining(self, draining: bool) -> None:
        """Drain the whole server: it hands out what it holds and takes no new jobs."""
        self.draining = bool(draining)
        if self._on_change is not None:
            self._on_change("server", self)

    def tube(self, name: str) -> Tube | None:
        """The tube of that name, if it exists."""
        return self._tubes.get(name)

    def _tube_changed(self, tube: Tube) -> Tube:
        if self._on_change is not None:
            self._on_change("tube", tube)
        return tube

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
                parents=t.waiting_count,
                tps=t.throughput.tps(now),
                avg=t.throughput.avg(),
                throttle=None if t.throttle is None else t.throttle.rate,
                paused=t.is_paused(now),
                pause_time_left=(0.0 if t.paused_until is None or not t.paused
                                 else max(t.paused_until - now, 0.0)),
                draining=t.draining,
                fair=t.fair_policy,
                max_size=t.max_size,
                expired_total=t.expired_total,
                buried_total=t.buried_total,
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
            draining=self.draining,
            max_jobs=self.config.max_jobs,
        )

    def __len__(self) -> int:
        return len(self._jobs)

    # -- persistence -----------------------------------------------------------

    def live_jobs(self) -> list[Job]:
        """Every job held, in put order: a copy, safe to walk while the queue
        changes (a job may be ``DELETED`` by the time it is looked at)."""
        return list(self._jobs.values())

    def restore(self, job: Job, *, now: float, parent: ParentInfo | None = None,
                last_error: str | None = None, unique_key: str | None = None,
                concurrency_key: str | None = None,
                reserved_until: float | None = None) -> Job:
        """Place a job read back from storage directly in its stored state.

        For recovery at start-up: no size limit or drain flag applies and
        ``on_change`` is not called (the storage holds the job already). A
        reserved job becomes ready (its worker's connection is gone); a delayed
        job whose deadline has passed becomes ready; a waiting parent keeps its
        timeout deadline, even a past one (the next :meth:`expire` applies it);
        a child keeps its ``parent_id``. Ready jobs line up in the order they are
        restored. Jobs put later never reuse this job's id.

        :param job: the job, with ``state`` and ``deadline`` as stored.
        :param parent: what a waiting parent waits for (required for ``WAITING``).
        :param last_error: the error a bury recorded on the job, if any.
        :param unique_key: its unique key; :param concurrency_key: its concurrency key.
        :param reserved_until: for a ``RESERVED`` job only: keep it reserved until
            then, so its worker's ``done``/``touch``/``release`` still work and it comes
            back (as a ttl expiry) after that (a promoted replica's reserved jobs).
        :raises BadRequest: the id is taken, the state is ``DELETED``, a
            waiting parent comes without ``parent`` or a deadline, or
            ``reserved_until`` is given for a job that is not reserved.
        """
        if job.id in self._jobs:
            raise BadRequest(f"job {job.id} already exists")
        if last_error is not None:
            check_error_text(last_error)
        if unique_key is not None or concurrency_key is not None:
            self._check_keys(job.tube, unique_key, concurrency_key)
        state = job.state
        deadline, job.deadline, job.reserved_at = job.deadline, None, None
        if state is JobState.DELETED:
            raise BadRequest(f"job {job.id} is deleted")
        if state is JobState.WAITING and (parent is None or deadline is None):
            raise BadRequest(f"waiting parent {job.id} needs its parent info and deadline")
        if reserved_until is not None and state is not JobState.RESERVED:
            raise BadRequest(f"job {job.id} is {state.value}: only a reserved job stays reserved")
        tube = self._tubes.get(job.tube)
        if tube is None:
            tube = self._tube(check_tube(job.tube))
        job.tube = tube.name  # one str per tube, not one per stored record
        self._jobs[job.id] = job
        if last_error is not None:
            self._last_errors[job.id] = last_error
        if unique_key is not None or concurrency_key is not None:
            self._keyed.add(job, unique_key, concurrency_key)
        self._next_id = max(self._next_id, job.id + 1)
        if state is JobState.DELAYED and deadline is not None and deadline > now:
            tube.delayed_count += 1
            self._deadlines.schedule(job, deadline, was_scheduled=False)
        elif state is JobState.WAITING:
            self._parents.add(job.id, parent)
            tube.waiting_count += 1
            self._deadlines.schedule(job, deadline, was_scheduled=False)
        elif state is JobState.BURIED:
            self._bury(job, tube)
        elif reserved_until is not None:
            job.reserved_at = now
            tube.reserved_count += 1
            if self._keyed:
                self._keyed.reserved(job)
            self._deadlines.schedule(job, reserved_until, was_scheduled=False)
        else:  # ready, reserved, or delayed and due
            self._make_ready(job, tube)
        return job

    def restore_tube(
        self,
        name: str,
        *,
        now: float,
        throttle: float | None = None,
        paused: bool = False,
        draining: bool = False,
        fair: str | None = None,
        max_size: int | None = None,
    ) -> Tube:
        """Give a tube its stored settings (creating it), without ``on_change``.

        :param throttle: jobs per second (``None``: no cap); the bucket starts full at ``now``.
        :param fair: the explicit fair-queuing setting (``None``: by name, ``"off"``).
        :raises BadRequest: a setting is not valid.
        """
        check_tube(name)
        if fair is not None and fair != "off" and fair not in FAIR_POLICIES:
            raise BadRequest(f"fair policy must be one of {', '.join(FAIR_POLICIES)}, off")
        throttle = check_tps(throttle)
        if max_size is not None:
            max_size = check_count("max_size", max_size, maximum=MAX_TUBE_SIZE)
        tube = self._tube(name)
        tube.throttle = TokenBucket(throttle, now) if throttle is not None else None
        tube.paused = bool(paused)
        tube.draining = bool(draining)
        tube.max_size = max_size
        tube.fair_setting = fair
        effective = self._fair_by_name(name) if fair is None else fair
        tube.set_fair_policy(None if effective == "off" else effective)
        return tube

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
                self._changed(job)
                events.append(Event("matured", job.id, job.tube))
                continue
            if job.state is JobState.WAITING:
                tube.waiting_count -= 1
                info = self._parents.time_out(job.id)
                if info.run_on_timeout and info.noop:
                    events.append(Event("parent_timeout", job.id, job.tube))
                    self._forget(job)  # reports the change itself
                    continue
                if info.run_on_timeout:
                    self._make_ready(job, tube)
                    events.append(Event("parent_timeout", job.id, job.tube))
                else:
                    self._bury(job, tube)
                    events.append(Event("parent_buried", job.id, job.tube))
                self._changed(job)
                continue
            tube.reserved_count -= 1
            job.reserved_at = None
            job.expireds += 1
            tube.expired_total += 1
            counters = self._counters.of(job)
            counters.timeouts += 1
            if job.expireds >= job.expired_limit:
                self._bury(job, tube)
                counters.buries += 1
                events.append(Event("buried", job.id, job.tube))
            else:
                self._make_ready(job, tube)
                events.append(Event("expired", job.id, job.tube))
            if self._keyed:
                self._keyed.freed(job, tube)
            self._changed(job)
        return events

    # -- internals -------------------------------------------------------------

    def _tube(self, name: str) -> Tube:
        tube = self._tubes.get(name)
        if tube is None:
            tube = self._tubes[name] = Tube(name, self._fair_by_name(name))
        return tube

    def _fair_by_name(self, name: str) -> str | None:
        suffix = self.config.fair_suffix
        if suffix:
            fair = len(name) > len(suffix) and name.endswith(suffix)
        else:
            fair = name.startswith(self.config.fair_prefix)
        return "round_robin" if fair else None

    def _new_job(self, tube, body, now, priority, ttl, expired_limit, shard_key,
                 parent_id) -> Job:
        check_tube(tube)
        self._check_body(body)
        config = self.config
        if shard_key is not None:
            check_shard_key(shard_key)
        known = self._tubes.get(tube)
        return Job(
            id=self._next_id,
            # The tube's own name: one str per tube, not one per job from each request.
            tube=tube if known is None else known.name,
            body=body,
            priority=config.default_priority if priority is None else check_priority(priority),
            ttl=config.default_ttl if ttl is None else check_seconds("ttl", ttl, positive=True),
            expired_limit=(
                config.expired_limit
                if expired_limit is None
                else check_count("expired_limit", expired_limit, maximum=MAX_EXPIRED_LIMIT)
            ),
            created=now,
            shard_key=shard_key,
            parent_id=parent_id,
        )

    def _delay(self, delay: float, run_at: float | None, now: float) -> float:
        delay = check_seconds("delay", delay)
        if run_at is not None:
            check_seconds("run_at", run_at, maximum=MAX_RUN_AT)
            if delay:
                raise BadRequest("give delay or run_at, not both")
            delay = max(run_at - now, 0.0)
        return delay

    def _check_parent(self, parent_id: int | None) -> None:
        """Refuse a child whose parent is missing or no longer waits."""
        if parent_id is not None:
            if parent_id not in self._jobs:
                raise NotFound(f"parent job {parent_id} not found")
            self._parents.check_child(parent_id)

    def _admit(self, tube: str, job: Job, child: bool = False) -> Tube:
        """Check drain and size limits, then give the job its id and count it.

        A child of a parent held here is let through a drain: it can live on no
        other server, and refusing it would strand the workflow.
        """
        if self.draining and not child:
            raise Draining("this server is draining: it takes no new jobs")
        tube_ = self._tubes.get(tube)
        if tube_ is not None:
            if tube_.draining and not child:
                raise Draining(f"tube {tube} is draining: it takes no new jobs")
            if tube_.max_size is not None and tube_.size >= tube_.max_size:
                raise QueueFull(f"tube {tube} is full ({tube_.max_size} jobs)")
        limit = self.config.max_jobs
        if limit is not None and len(self._jobs) >= limit:
            raise QueueFull(f"this server is full ({limit} jobs)")
        tube_ = self._tube(tube)
        if tube_.fair_policy is not None and job.shard_key is None:
            raise BadRequest(f"tube {tube} is a fair queue: shard_key is required")
        self._next_id += 1
        self._jobs[job.id] = job
        self.job_put += 1
        return tube_

    def _start_parent(self, job: Job, tube: Tube) -> None:
        info = self._parents.remove(job.id)
        self._deadlines.cancel(job)
        tube.waiting_count -= 1
        if info.noop:
            # A join point: it never runs; being done counts for its own parent.
            self._forget(job)
            return
        self._make_ready(job, tube)
        self._changed(job)

    def _child_finished(self, job: Job) -> None:
        info = self._parents.child_finished(job.parent_id)
        if info is None:
            return  # the parent already started, timed out or was deleted
        parent = self._jobs[job.parent_id]
        self._changed(parent)
        if info.complete:
            self._start_parent(parent, self._tubes[parent.tube])

    def _changed(self, subject) -> None:
        if self._on_change is not None:
            self._on_change("job", subject)

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
        duration = None if started is None else now - started
        tube.throughput.record(now, duration)
        if duration is not None:
            tube.record_processing(job, duration)
        if self._keyed:
            self._keyed.freed(job, tube)
        self._forget(job)

    def _reserve(self, job: Job, tube: Tube, now: float) -> None:
        job.state = JobState.RESERVED
        job.reserved_at = now
        tube.reserved_count += 1
        self._counters.reserved(job)
        self._deadlines.schedule(job, now + job.ttl, was_scheduled=False)
        self._changed(job)

    def _make_ready(self, job: Job, tube: Tube) -> None:
        job.state = JobState.READY
        if self._keyed and not self._keyed.line_up(job, tube):
            tube.ready_count += 1  # held: ready, out of the line until a slot frees
            return
        tube.push_ready(job)

    def _bury(self, job: Job, tube: Tube) -> None:
        job.state = JobState.BURIED
        tube.buried[job.id] = job
        tube.buried_total += 1

    def _forget(self, job: Job) -> None:
        job.state = JobState.DELETED
        self._jobs.pop(job.id, None)
        self._counters.pop(job.id, None)
        if self._last_errors:
            self._last_errors.pop(job.id, None)
        if self._keyed:
            self._keyed.forget(job)
        self._changed(job)
        if job.parent_id is not None:
            self._child_finished(job)

    def _check_keys(self, tube: str, unique_key: object, concurrency_key: object) -> None:
        if concurrency_key is not None:
            check_job_key("concurrency_key", concurrency_key)
        if unique_key is not None:
            check_job_key("unique_key", unique_key)
            known = self._keyed.unique_job(tube, unique_key)
            if known is not None:
                raise WrongState(f"unique_key {unique_key[:90]!r} already names job {known.id}")

    def _check_body(self, body: object) -> None:
        limit = self.config.max_job_size
        if isinstance(body, bytes):  # a binary body (not UTF-8 text)
            if len(body) > limit:
                raise TooLarge(f"body is larger than the maximum job size of {limit} bytes")
            return
        if not isinstance(body, str):
            raise BadRequest("body must be a string or bytes")
        # A str of n characters is at most 4n bytes in UTF-8: skip encoding small bodies.
        if len(body) * 4 > limit and len(body.encode("utf-8", "surrogatepass")) > limit:
            raise TooLarge(f"body is larger than the maximum job size of {limit} bytes")
