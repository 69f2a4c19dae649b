"""Ready lines: the order in which a tube hands out its ready jobs.

* :class:`ReadyLine`: lowest priority number first, then first in, first out.
  One FIFO deque per distinct priority plus a heap of the priorities in use,
  so a push or pop is O(1) plus O(log p) for p distinct priorities.
* :class:`RoundRobinLines`: a fair tube's default. One :class:`ReadyLine` per
  shard key, and gets take one job from each key with ready jobs in turn, so a
  flood of one customer's jobs cannot starve the others.
* :class:`WeightedLines`: fair by recent processing time. Each key carries a
  virtual clock that advances by the key's recent mean processing time per job
  handed out (stride scheduling); the key with the earliest clock goes next, so
  keys whose jobs are slow get proportionally fewer turns and every key gets
  about the same share of worker time.

Jobs that leave the ready state other than by being popped (deleted, cleared)
are dropped lazily: an entry counts only while its job is still ``READY``.
Pure: no I/O, no clock.
"""

import heapq
import itertools
from collections import OrderedDict, deque
from collections.abc import Iterator

from allq.core.job import Job, JobState
_COST_EMA = 0.2  # weight of the newest duration in a key's mean processing time
_DEFAULT_COST = 1.0
_MIN_COST = 0.001
_REMEMBERED_COSTS = 10_000


class ReadyLine:
    """Ready jobs in (priority, FIFO) order."""

    def __init__(self) -> None:
        self._queues: dict[int, deque[Job]] = {}
        self._priorities: list[int] = []

    def push(self, job: Job) -> None:
        """Append ``job`` behind the ready jobs of its priority."""
        queue = self._queues.get(job.priority)
        if queue is None:
            queue = self._queues[job.priority] = deque()
            heapq.heappush(self._priorities, job.priority)
        queue.append(job)

    def pop(self) -> Job | None:
        """Remove and return the next live ready job, or ``None``."""
        while self._priorities:
            priority = self._priorities[0]
            queue = self._queues[priority]
            while queue:
                job = queue.popleft()
                if job.state is JobState.READY:
                    if not queue:
                        self._drop_priority(priority)
                    return job
            self._drop_priority(priority)
        return None

    def remove(self, job: Job) -> None:
        """Take ``job`` out of the line (O(n) in its priority's queue: for
        reserving one job by id, which is rare). An emptied queue is dropped
        when :meth:`pop` reaches it."""
        queue = self._queues.get(job.priority)
        if queue is not None and job in queue:
            queue.remove(job)

    def __iter__(self) -> Iterator[Job]:
        for priority in sorted(self._priorities):
            for job in self._queues[priority]:
                if job.state is JobState.READY:
                    yield job

    def _drop_priority(self, priority: int) -> None:
        del self._queues[priority]
        heapq.heappop(self._priorities)


class RoundRobinLines:
    """One ready line per shard key, served one key at a time in turn."""

    policy = "round_robin"

    def __init__(self) -> None:
        self._lines: dict[str, ReadyLine] = {}
        self._turns: deque[str] = deque()

    def push(self, job: Job) -> None:
        key = job.shard_key or ""
        line = self._lines.get(key)
        if line is None:
            line = self._lines[key] = ReadyLine()
            self._turns.append(key)
        line.push(job)

    def pop(self) -> Job | None:
        turns = self._turns
        while turns:
            key = turns.popleft()
            job = self._lines[key].pop()
            if job is None:
                del self._lines[key]
                continue
            turns.append(key)  # its next turn comes after every other key's
            return job
        return None

    def remove(self, job: Job) -> None:
        line = self._lines.get(job.shard_key or "")
        if line is not None:
            line.remove(job)  # an emptied line is dropped when its turn comes

    def __iter__(self) -> Iterator[Job]:
        # The order gets would take them in, one key at a time.
        iterators = [iter(self._lines[key]) for key in self._turns]
        for round_ in itertools.zip_longest(*iterators):
            yield from (job for job in round_ if job is not None)

    def record(self, key: str | None, duration: float) -> None:
        """Round robin ignores processing times."""


class WeightedLines:
    """One ready line per shard key; the key with the least recent processing
    time handed out goes next."""

    policy = "weighted"

    def __init__(self) -> None:
        self._lines: dict[str, ReadyLine] = {}
        self._clock: dict[str, float] = {}  # virtual time of each active key
        self._heap: list[tuple[float, int, str]] = []
        self._order = itertools.count()
        self._now = 0.0  # the virtual time of the last key served
        self._costs: OrderedDict[str, float] = OrderedDict()

    def push(self, job: Job) -> None:
        key = job.shard_key or ""
        line = self._lines.get(key)
        if line is None:
            line = self._lines[key] = ReadyLine()
            # A key that (re)appears starts at the current virtual time: it gets
            # no credit for the time it had nothing queued.
            self._clock[key] = self._now
            heapq.heappush(self._heap, (self._now, next(self._order), key))
        line.push(job)

    def pop(self) -> Job | None:
        heap = self._heap
        while heap:
            at, _, key = heapq.heappop(heap)
            if self._clock.get(key) != at:
                continue  # stale entry
            job = self._lines[key].pop()
            if job is None:
                del self._lines[key], self._clock[key]
                continue
            self._now = at
            self._clock[key] = at + self._costs.get(key, _DEFAULT_COST)
            heapq.heappush(heap, (self._clock[key], next(self._order), key))
            return job
        return None

    def remove(self, job: Job) -> None:
        line = self._lines.get(job.shard_key or "")
        if line is not None:
            line.remove(job)  # an emptied line is dropped when its turn comes

    def __iter__(self) -> Iterator[Job]:
        for key in sorted(self._lines, key=lambda k: self._clock[k]):
            yield from self._lines[key]

    def record(self, key: str | None, duration: float) -> None:
        """Fold one finished job's processing time into its key's mean."""
        key = key or ""
        cost = self._costs.pop(key, None)
        duration = max(duration, _MIN_COST)
        self._costs[key] = duration if cost is None else cost + _COST_EMA * (duration - cost)
        while len(self._costs) > _REMEMBERED_COSTS:
            self._costs.popitem(last=False)


def make_lines(policy: str | None) -> ReadyLine | RoundRobinLines | WeightedLines:
    """The ready structure for a tube's fair-queuing policy (``None``: not fair)."""
    if policy is None:
        return ReadyLine()
    return {"round_robin": RoundRobinLines, "weighted": WeightedLines}[policy]()
