"""Parent jobs waiting for their children (workflows).

A parent put with ``put_parent`` waits until ``limit`` of its children are
finished, or until its timeout passes. A ``noop`` parent never runs itself: when
it would start it is finished instead, which counts for its own parent (AllQueue's
workflow joins). A parent may carry a caller-chosen ``alias`` (AllQueue's
``set_parent_job`` ``id``), unique among the waiting parents of this queue, by
which children and ``set_children_started`` can name it while it waits. :class:`Parents` keeps what each waiting
parent waits for and counts its children; the :class:`allq.core.queue.Queue`
owns the jobs, their states and the one deadline heap (a parent's timeout is
its job's deadline), and asks this book what a finish, a timeout or a
``set_children_started`` means. Pure: no I/O, no clock.
"""

import attrs

from allq.errors import BadRequest, WrongState
from allq.vocabulary import MAX_CHILD_LIMIT, check_count, check_parent_alias, check_seconds


@attrs.define(slots=True, eq=False)
class ParentInfo:
    """What a waiting parent job waits for.

    ``limit`` is the number of finished children that starts it (``None``:
    not known yet, until ``set_children_started`` fixes it at ``children_put``).
    ``noop``: it finishes instead of running. ``alias``: its caller-chosen id.
    (The field order is the journal's: new fields go last, with defaults.)
    """

    timeout: float
    run_on_timeout: bool
    limit: int | None = None
    children_put: int = 0
    children_done: int = 0
    noop: bool = False
    alias: str | None = None

    @classmethod
    def checked(cls, timeout: object, run_on_timeout: object, limit: object,
                noop: object = False, alias: object = None) -> "ParentInfo":
        """A new parent's info from request values.

        :raises BadRequest: a value is of the wrong type or out of range.
        """
        timeout = check_seconds("timeout", timeout, positive=True)
        if not isinstance(run_on_timeout, bool):
            raise BadRequest("run_on_timeout must be true or false")
        if not isinstance(noop, bool):
            raise BadRequest("noop must be true or false")
        if limit is not None:
            limit = check_count("limit", limit, minimum=0, maximum=MAX_CHILD_LIMIT)
        if alias is not None:
            alias = check_parent_alias(alias)
        return cls(timeout, run_on_timeout, limit, noop=noop, alias=alias)

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
        self._aliases: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def info(self, job_id: int) -> ParentInfo | None:
        """What a waiting parent waits for (``None`` for any other job)."""
        return self._waiting.get(job_id)

    def add(self, job_id: int, info: ParentInfo) -> None:
        """Start counting children for the parent ``job_id`` (after :meth:`check_alias`)."""
        self._waiting[job_id] = info
        if info.alias is not None:
            self._aliases[info.alias] = job_id

    def remove(self, job_id: int) -> ParentInfo:
        """Stop counting for a parent that started or is gone (its alias is free again)."""
        info = self._waiting.pop(job_id)
        if info.alias is not None:
            self._aliases.pop(info.alias, None)
        return info

    def check_alias(self, alias: str | None) -> None:
        """Refuse a caller-chosen id that already names a waiting parent here.

        :raises WrongState: it does (AllQueue let the second overwrite the first).
        """
        if alias is not None and alias in self._aliases:
            raise WrongState(f"id {alias!r} already names a waiting parent")

    def by_alias(self, alias: str) -> int | None:
        """The waiting parent a caller-chosen id names, or ``None``."""
        return self._aliases.get(alias)

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

    def time_out(self, job_id: int) -> ParentInfo:
        """The parent's timeout passed: forget it.

        :returns: what it waited for; ``run_on_timeout`` says whether it starts
            anyway rather than being buried.
        """
        return self.remove(job_id)
