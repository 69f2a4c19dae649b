"""Parent jobs waiting for their children (workflows).

A parent put with ``put_parent`` waits until ``limit`` of its children are
finished, or until its timeout passes. :class:`Parents` keeps what each waiting
parent waits for and counts its children; the :class:`allq.core.queue.Queue`
owns the jobs, their states and the one deadline heap (a parent's timeout is
its job's deadline), and asks this book what a finish, a timeout or a
``set_children_started`` means. Pure: no I/O, no clock.
"""

import attrs

from allq.errors import BadRequest, WrongState
from allq.vocabulary import MAX_CHILD_LIMIT, check_count, check_seconds


@attrs.define(slots=True, eq=False)
class ParentInfo:
    """What a waiting parent job waits for.

    ``limit`` is the number of finished children that starts it (``None``:
    not known yet, until ``set_children_started`` fixes it at ``children_put``).
    """

    timeout: float
    run_on_timeout: bool
    limit: int | None = None
    children_put: int = 0
    children_done: int = 0

    @classmethod
    def checked(cls, timeout: object, run_on_timeout: object, limit: object) -> "ParentInfo":
        """A new parent's info from request values.

        :raises BadRequest: a value is of the wrong type or out of range.
        """
        timeout = check_seconds("timeout", timeout, positive=True)
        if not isinstance(run_on_timeout, bool):
            raise BadRequest("run_on_timeout must be true or false")
        if limit is not None:
            limit = check_count("limit", limit, minimum=0, maximum=MAX_CHILD_LIMIT)
        return cls(timeout, run_on_timeout, limit)

    @property
    def complete(self) -> bool:
        """Whether enough children are finished for the parent to start."""
        return self.limit is not None and self.children_done >= self.limit


class Parents:
    """The waiting parents of one queue, by job id.

    A parent is in this book from its put (or restore) until it starts, times
    out, or is deleted or cleared; the queue removes it then.
    """

    def __init__(self) -> None:
        self._waiting: dict[int, ParentInfo] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def info(self, job_id: int) -> ParentInfo | None:
        """What a waiting parent waits for (``None`` for any other job)."""
        return self._waiting.get(job_id)

    def add(self, job_id: int, info: ParentInfo) -> None:
        """Start counting children for the parent ``job_id``."""
        self._waiting[job_id] = info

    def remove(self, job_id: int) -> ParentInfo:
        """Stop counting for a parent that started or is gone."""
        return self._waiting.pop(job_id)

    def check_child(self, parent_id: int) -> None:
        """Refuse a child of a job that is not a waiting parent.

        :raises WrongState: ``parent_id`` is not waiting for children.
        """
        if parent_id not in self._waiting:
            raise WrongState(f"job {parent_id} is not a parent waiting for children")

    def child_put(self, parent_id: int) -> None:
        """Count a child put (after :meth:`check_child` and the child's admission)."""
        self._waiting[parent_id].children_put += 1

    def child_finished(self, parent_id: int) -> ParentInfo | None:
        """Count a finished child.

        :returns: the parent's info, now counting it, or ``None`` when the
            parent no longer waits (it started, timed out or was deleted), in
            which case the finish counts for nothing.
        """
        info = self._waiting.get(parent_id)
        if info is not None:
            info.children_done += 1
        return info

    def children_started(self, job_id: int) -> ParentInfo | None:
        """Every child has been put: the limit becomes the number put so far.

        :returns: the parent's info, or ``None`` when ``job_id`` is not waiting.
        """
        info = self._waiting.get(job_id)
        if info is not None:
            info.limit = info.children_put
        return info

    def time_out(self, job_id: int) -> bool:
        """The parent's timeout passed: forget it.

        :returns: whether it runs anyway (``run_on_timeout``) rather than being buried.
        """
        return self._waiting.pop(job_id).run_on_timeout
