"""One tube: its ready jobs in (priority, FIFO) order, its buried jobs, its counts.

Ready jobs sit in one FIFO deque per distinct priority, with a heap of the
priorities in use, so put and get are O(1) plus O(log p) for p distinct
priorities, and each queued job costs one deque slot. Jobs that leave the ready
state other than by being taken (delete, clear) are dropped lazily: a deque
entry counts only while its job is still ``READY`` in this tube.
Pure: no I/O, no clock.
"""

import heapq
from collections import deque
from collections.abc import Iterator

from allq.core.job import Job, JobState
from allq.core.throughput import Throughput


class Tube:
    """Jobs and counters of one named tube.

    :param name: the tube's name.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._ready: dict[int, deque[Job]] = {}
        self._priorities: list[int] = []
        # Insertion-ordered, so the oldest buried job is kicked first.
        self.buried: dict[int, Job] = {}
        self.ready_count = 0
        self.reserved_count = 0
        self.delayed_count = 0
        self.throughput = Throughput()

    @property
    def buried_count(self) -> int:
        """How many jobs of this tube are buried."""
        return len(self.buried)

    def is_empty(self) -> bool:
        """Whether the tube holds no job in any state."""
        return not (
            self.ready_count or self.reserved_count or self.delayed_count or self.buried
        )

    def push_ready(self, job: Job) -> None:
        """Append ``job`` (already in state READY) behind jobs of its priority."""
        queue = self._ready.get(job.priority)
        if queue is None:
            queue = self._ready[job.priority] = deque()
            heapq.heappush(self._priorities, job.priority)
        queue.append(job)
        self.ready_count += 1

    def pop_ready(self) -> Job | None:
        """Remove and return the next ready job, or ``None`` when there is none."""
        while self._priorities:
            priority = self._priorities[0]
            queue = self._ready[priority]
            while queue:
                job = queue.popleft()
                if job.state is JobState.READY:
                    self.ready_count -= 1
                    if not queue:
                        self._drop_priority(priority)
                    return job
            self._drop_priority(priority)
        return None

    def iter_ready(self) -> Iterator[Job]:
        """Yield the ready jobs in the order they would be taken."""
        for priority in sorted(self._priorities):
            for job in self._ready[priority]:
                if job.state is JobState.READY:
                    yield job

    def drop_all_ready(self) -> list[Job]:
        """Remove every ready job and return them."""
        jobs = list(self.iter_ready())
        self._ready.clear()
        self._priorities.clear()
        self.ready_count = 0
        return jobs

    def _drop_priority(self, priority: int) -> None:
        del self._ready[priority]
        heapq.heappop(self._priorities)
