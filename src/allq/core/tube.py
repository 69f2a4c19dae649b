"""One tube: its ready line, its buried jobs, its counts and its settings.

The ready line is a plain (priority, FIFO) :class:`ReadyLine`, or for a fair
tube one line per shard key served in turn (see :mod:`allq.core.ready`).
Settings are what an operator changes at run time: pause, drain, throttle,
fair-queuing policy and a maximum size. Pure: no I/O, no clock.
"""

from collections.abc import Iterator

from allq.core.job import Job
from allq.core.ready import make_lines
from allq.core.throttle import TokenBucket
from allq.core.throughput import Throughput


class Tube:
    """Jobs, counters and settings of one named tube.

    :param name: the tube's name.
    :param fair_policy: the fair-queuing policy it starts with (``None``: not fair).
    """

    def __init__(self, name: str, fair_policy: str | None = None) -> None:
        self.name = name
        self._ready = make_lines(fair_policy)
        # Insertion-ordered, so the oldest buried job is kicked first.
        self.buried: dict[int, Job] = {}
        self.ready_count = 0
        self.reserved_count = 0
        self.delayed_count = 0
        self.waiting_count = 0
        #: Since the process started: ttl expiries, and jobs buried by any route.
        self.expired_total = 0
        self.buried_total = 0
        self.throughput = Throughput()
        self.paused = False
        #: When a pause given with a delay ends by itself (``None``: no end).
        self.paused_until: float | None = None
        self.draining = False
        self.throttle: TokenBucket | None = None
        self.max_size: int | None = None
        #: Set explicitly for this tube (``"off"`` overrides the name convention).
        self.fair_setting: str | None = None

    @property
    def buried_count(self) -> int:
        """How many jobs of this tube are buried."""
        return len(self.buried)

    @property
    def size(self) -> int:
        """How many jobs the tube holds, in every state."""
        return (self.ready_count + self.reserved_count + self.delayed_count
                + self.waiting_count + len(self.buried))

    @property
    def fair_policy(self) -> str | None:
        """The fair-queuing policy in force, or ``None``."""
        return getattr(self._ready, "policy", None)

    def is_paused(self, now: float) -> bool:
        """Whether the tube hands out no jobs at ``now``. A pause with a delay
        ends by itself once ``now`` reaches it: nothing needs a timer."""
        if self.paused and self.paused_until is not None and now >= self.paused_until:
            self.paused = False
            self.paused_until = None
        return self.paused

    def peek_ready(self) -> Job | None:
        """The ready job a get would take next, left in place."""
        return next(iter(self._ready), None)

    def remove_ready(self, job: Job) -> None:
        """Take one ready job out of the ready line (it leaves the ready state)."""
        self._ready.remove(job)
        self.ready_count -= 1

    def is_idle(self) -> bool:
        """Whether the tube holds no job and no setting worth keeping."""
        return not (self.size or self.paused or self.draining or self.throttle
                    or self.max_size or self.fair_setting)

    def push_ready(self, job: Job) -> None:
        """Append ``job`` (already in state READY) to the ready line."""
        self._ready.push(job)
        self.ready_count += 1

    def line_up(self, job: Job) -> None:
        """Put a ready job that is counted already (a concurrency key's held job
        whose turn came, :mod:`allq.core.keys`) into the ready line."""
        self._ready.push(job)

    def pop_ready(self) -> Job | None:
        """Remove and return the next ready job, or ``None`` when there is none."""
        job = self._ready.pop()
        if job is not None:
            self.ready_count -= 1
        return job

    def iter_ready(self) -> Iterator[Job]:
        """Yield the ready jobs in the order they would be taken."""
        return iter(self._ready)

    def drop_all_ready(self) -> list[Job]:
        """Remove every ready job and return them."""
        jobs = list(self._ready)
        self._ready = make_lines(self.fair_policy)
        self.ready_count = 0
        return jobs

    def set_fair_policy(self, policy: str | None) -> None:
        """Switch the ready line's policy, keeping every ready job."""
        if policy == self.fair_policy:
            return
        jobs = list(self._ready)
        self._ready = make_lines(policy)
        for job in jobs:
            self._ready.push(job)

    def record_processing(self, job: Job, duration: float) -> None:
        """Tell a weighted fair line how long one of a key's jobs took."""
        record = getattr(self._ready, "record", None)
        if record is not None:
            record(job.shard_key, duration)
