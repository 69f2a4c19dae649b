"""The server's read-only mode: what a full data directory still lets through.

While the journal cannot write (:attr:`allq.server.journal.Journal.disk_full`),
the server factory's dispatcher is a :class:`ReadOnlyDispatcher` around the
real one: requests that would change the queue get a ``disk_full`` error reply
(:class:`allq.errors.DiskFull`) without reaching the core; reads (``get``,
``peek``, ``stats``, ``ping``) and what frees space (``done``, ``delete``, and
``get`` with ``delete``) go through. Swapping the object when the mode changes
keeps the check off the path of every request in normal operation.

``get`` reserves jobs, and ``touch`` moves a reservation's deadline: neither is
journaled (a restart gives reserved jobs back anyway), so both work read-only.
The deadline timer keeps running: its changes (expiries, delays ending) wait
in the journal's memory and are written once space returns.
"""

from allq.errors import DiskFull
from allq.server.dispatch import Dispatcher
from allq.wire.messages import ACTIONS, error_reply, request_id_of

#: Actions that need no journal record, or only a deletion's.
READ_ONLY_ACTIONS = frozenset({"get", "peek", "stats", "ping", "touch", "done", "delete",
                               "schedule_list", "interests",
                               "list_jobs"})


class ReadOnlyDispatcher:
    """A :class:`Dispatcher` that refuses changes with ``disk_full``.

    :param dispatcher: the real dispatcher, which handles everything let through.
    """

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    def handle(self, obj: object) -> dict:
        """Refuse ``obj`` if it would change the queue, else apply it."""
        action = obj.get("action") if isinstance(obj, dict) else None
        if isinstance(action, str) and action in ACTIONS and action not in READ_ONLY_ACTIONS:
            return error_reply(request_id_of(obj), DiskFull(
                f"{action[:40]}: the server's data directory is full; it takes no "
                "changes until space returns (gets, peeks, done and delete work)"))
        return self.dispatcher.handle(obj)

    def handle_frame(self, obj: object) -> object:
        """:meth:`Dispatcher.handle_frame`, read-only."""
        if isinstance(obj, list):
            return [self.handle(item) for item in obj]
        return self.handle(obj)
