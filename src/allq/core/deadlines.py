"""A min-heap of job deadlines with lazy invalidation.

Delayed and reserved jobs each have one live deadline. Rescheduling (touch,
release, re-reserve) pushes a new entry and leaves the old one in the heap; an
entry is live only while it still matches the job's ``deadline``, so stale
entries are skipped when popped and the heap is rebuilt when they pile up.
This keeps every operation O(log n) and needs a single reactor timer aimed at
:meth:`Deadlines.earliest`. Pure: no clock of its own.
"""

import heapq
from collections.abc import Callable, Iterator

from allq.core.job import Job

_COMPACT_SLACK = 1024


class Deadlines:
    """Deadlines of delayed and reserved jobs, earliest first.

    :param lookup: returns the live job for an id, or ``None`` when it is gone.
    """

    def __init__(self, lookup: Callable[[int], Job | None]) -> None:
        self._heap: list[tuple[float, int]] = []
        self._lookup = lookup
        self._live = 0

    def __len__(self) -> int:
        return self._live

    def schedule(self, job: Job, deadline: float, was_scheduled: bool) -> None:
        """Give ``job`` a new deadline.

        :param was_scheduled: whether the job already held a live deadline (so
            the live count stays exact when one replaces another).
        """
        job.deadline = deadline
        if not was_scheduled:
            self._live += 1
        heapq.heappush(self._heap, (deadline, job.id))
        if len(self._heap) > 2 * self._live + _COMPACT_SLACK:
            self._compact()

    def cancel(self, job: Job) -> None:
        """Forget the job's live deadline (its heap entry goes stale)."""
        if job.deadline is not None:
            job.deadline = None
            self._live -= 1

    def earliest(self) -> float | None:
        """The earliest live deadline, or ``None`` when there is none."""
        heap = self._heap
        while heap:
            deadline, job_id = heap[0]
            job = self._lookup(job_id)
            if job is not None and job.deadline == deadline:
                return deadline
            heapq.heappop(heap)
        return None

    def in_order(self) -> Iterator[Job]:
        """Yield the jobs holding a live deadline, earliest first, without
        changing the heap: a walk of the heap as a tree (a child is never
        earlier than its parent), so finding the first k costs O(k log k)."""
        heap = self._heap
        if not heap:
            return
        frontier = [(heap[0], 0)]
        while frontier:
            (deadline, job_id), index = heapq.heappop(frontier)
            job = self._lookup(job_id)
            if job is not None and job.deadline == deadline:
                yield job
            for child in (2 * index + 1, 2 * index + 2):
                if child < len(heap):
                    heapq.heappush(frontier, (heap[child], child))

    def pop_due(self, now: float) -> Iterator[Job]:
        """Yield each job whose live deadline is at or before ``now``.

        The job's deadline is cleared before it is yielded; the caller moves it
        to its next state (which may schedule a new deadline).
        """
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, job_id = heapq.heappop(heap)
            job = self._lookup(job_id)
            if job is not None and job.deadline == deadline:
                self.cancel(job)
                yield job

    def _compact(self) -> None:
        live = []
        # A job rescheduled to the same deadline (touch or re-reserve at the same
        # ``now``) has several entries that all look live: keep only one.
        seen: set[int] = set()
        for deadline, job_id in self._heap:
            job = self._lookup(job_id)
            if job is not None and job.deadline == deadline and job_id not in seen:
                seen.add(job_id)
                live.append((deadline, job_id))
        heapq.heapify(live)
        self._heap = live
