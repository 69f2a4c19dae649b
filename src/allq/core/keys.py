"""Keyed jobs: unique keys (one live job per key) and concurrency keys (at most
N of a key's jobs reserved at once).

* A ``unique_key`` names at most one live job (ready, delayed, reserved, buried
  or waiting) per tube; :meth:`KeyedJobs.unique_job` finds it, so a second put
  with the key can answer with the first job instead of storing another.
* A ``concurrency_key`` groups jobs of a tube; the tube's limit (default 1) caps
  how many of a group's jobs are reserved at once. The cap is kept when a job
  becomes ready, not when it is taken: a group has at most ``limit - reserved``
  jobs in the tube's ready line, and its other ready jobs wait *held* in the
  group's own line, by (priority, put order). When a reserved job of the group
  leaves (done, delete, bury, release, ttl expiry) the best held job joins the
  tube's ready line. So a get meets a job it may not hand out only after the
  limit was cut (it is held then), and a plain tube pays nothing. Held jobs are ready (counted in ``ready``) but a peek
  does not show them.

Only keyed jobs are indexed, and an entry goes when its job does: a keyed job
costs one entry in ``_keys`` (id → a (unique, concurrency) tuple), one in
``_unique`` per unique key, and one shared group per concurrency key with
jobs live. Pure: no I/O, no clock.
"""

import heapq

from allq.core.job import Job, JobState
from allq.core.tube import Tube
from allq.vocabulary import DEFAULT_CONCURRENCY


class _Group:
    """The jobs of one (tube, concurrency key) not yet finished."""

    __slots__ = ("reserved", "lined_up", "held", "heap")

    def __init__(self) -> None:
        self.reserved = 0  # reserved now
        self.lined_up = 0  # in the tube's ready line
        self.held = 0  # held (live entries of ``heap``)
        self.heap: list[tuple[int, int, Job]] = []  # (priority, id, job), may hold stale entries

    def idle(self) -> bool:
        return not (self.reserved or self.lined_up or self.held)


class KeyedJobs:
    """The unique and concurrency keys of one queue's live jobs."""

    def __init__(self) -> None:
        self._keys: dict[int, tuple[str | None, str | None]] = {}
        self._unique: dict[tuple[str, str], Job] = {}
        self._groups: dict[tuple[str, str], _Group] = {}
        self._held: set[int] = set()
        self._limits: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    # -- unique keys and the index ------------------------------------------------

    def unique_job(self, tube: str, key: str) -> Job | None:
        """The live job of ``tube`` holding ``key``, or ``None``."""
        return self._unique.get((tube, key))

    def keys_of(self, job_id: int) -> tuple[str | None, str | None] | None:
        """A live job's ``(unique_key, concurrency_key)``, or ``None`` if it has none."""
        return self._keys.get(job_id)

    def is_held(self, job_id: int) -> bool:
        """Whether a ready job waits held (not in its tube's ready line)."""
        return job_id in self._held

    def add(self, job: Job, unique_key: str | None, concurrency_key: str | None) -> None:
        """Index a new (or restored) job's keys, before it is placed."""
        if unique_key is None and concurrency_key is None:
            return
        self._keys[job.id] = (unique_key, concurrency_key)
        if unique_key is not None:
            self._unique[(job.tube, unique_key)] = job

    def forget(self, job: Job) -> None:
        """A job is gone: drop its keys (a held one leaves its group's line)."""
        keys = self._keys.pop(job.id, None)
        if keys is None:
            return
        unique_key, concurrency_key = keys
        if unique_key is not None and self._unique.get((job.tube, unique_key)) is job:
            del self._unique[(job.tube, unique_key)]
        if concurrency_key is not None and job.id in self._held:
            self._held.discard(job.id)
            group_key = (job.tube, concurrency_key)
            group = self._groups[group_key]
            group.held -= 1
            if len(group.heap) > 2 * group.held + 16:  # mostly stale: rebuild
                group.heap = [entry for entry in group.heap if entry[1] in self._held]
                heapq.heapify(group.heap)
            self._drop_if_idle(group_key, group)

    # -- concurrency keys --------------------------------------------------------

    def limit(self, tube: str) -> int:
        """A tube's concurrency limit."""
        return self._limits.get(tube, DEFAULT_CONCURRENCY)

    def limits(self) -> dict[str, int]:
        """The tubes whose limit is not the default, and their limits."""
        return dict(self._limits)

    def set_limit(self, tube: Tube, limit: int) -> None:
        """Change a tube's limit (checked already); a raise lets held jobs line up."""
        if limit == DEFAULT_CONCURRENCY:
            self._limits.pop(tube.name, None)
        else:
            self._limits[tube.name] = limit
        for group_key, group in list(self._groups.items()):
            if group_key[0] == tube.name:
                self._refill(group_key, group, tube, limit)

    def line_up(self, job: Job, tube: Tube) -> bool:
        """A job becomes ready: whether it joins the tube's ready line (``True``)
        or waits held in its group's line (``False``; it still counts as ready)."""
        group_key, group = self._group(job)
        if group is None:
            return True
        if group.reserved + group.lined_up < self.limit(tube.name):
            group.lined_up += 1
            return True
        group.held += 1
        self._held.add(job.id)
        heapq.heappush(group.heap, (job.priority, job.id, job))
        return False

    def taken(self, job: Job, tube: Tube, reserved: bool, by_id: bool = False) -> bool:
        """A ready job leaves the ready state: reserved (``reserved``), or taken
        with delete, or deleted. ``False``: it may not be reserved now (its
        group is at its limit since the limit was cut), so it is held again and
        stays ready; a reserve ``by_id`` is never refused."""
        group_key, group = self._group(job)
        if group is None:
            return True
        limit = self.limit(tube.name)
        if job.id in self._held:  # reserved by id or deleted while held
            self._held.discard(job.id)
            group.held -= 1
        else:
            group.lined_up -= 1
            if reserved and not by_id and group.reserved >= limit:
                group.held += 1
                self._held.add(job.id)
                heapq.heappush(group.heap, (job.priority, job.id, job))
                return False
        if reserved:
            group.reserved += 1
        self._refill(group_key, group, tube, limit)
        return True

    def reserved(self, job: Job) -> None:
        """A delayed or buried job was reserved by its id."""
        _, group = self._group(job)
        if group is not None:
            group.reserved += 1

    def freed(self, job: Job, tube: Tube) -> None:
        """A reserved job is no longer reserved: its slot goes to the best held job."""
        group_key, group = self._group(job)
        if group is not None:
            group.reserved -= 1
            self._refill(group_key, group, tube, self.limit(tube.name))

    def drop_held(self, tube: Tube) -> list[Job]:
        """Clearing a tube's ready jobs: every held one, out of its group; no
        group keeps a job in the (dropped) ready line."""
        dropped = []
        for group_key, group in list(self._groups.items()):
            if group_key[0] != tube.name:
                continue
            for _, job_id, job in group.heap:
                if job_id in self._held:
                    self._held.discard(job_id)
                    dropped.append(job)
            group.heap, group.held, group.lined_up = [], 0, 0
            self._drop_if_idle(group_key, group)
        return dropped

    def _group(self, job: Job) -> tuple[tuple[str, str] | None, _Group | None]:
        keys = self._keys.get(job.id) if self._keys else None
        if keys is None or keys[1] is None:
            return None, None
        group_key = (job.tube, keys[1])
        group = self._groups.get(group_key)
        if group is None:
            group = self._groups[group_key] = _Group()
        return group_key, group

    def _refill(self, group_key: tuple[str, str], group: _Group, tube: Tube,
                limit: int) -> None:
        heap = group.heap
        while heap and group.reserved + group.lined_up < limit:
            _, job_id, job = heapq.heappop(heap)
            if job_id not in self._held or job.state is not JobState.READY:
                continue  # stale: it left the group's line since
            self._held.discard(job_id)
            group.held -= 1
            group.lined_up += 1
            tube.line_up(job)
        if not group.held:
            group.heap = []
        self._drop_if_idle(group_key, group)

    def _drop_if_idle(self, group_key: tuple[str, str], group: _Group) -> None:
        if group.idle():
            self._groups.pop(group_key, None)
