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

The same wrapper, with :data:`STRICT_ACTIONS` and ``replica_unavailable``, is what
a ``--replication strict`` server dispatches through while its backup is
unreachable (:mod:`allq.server.replication`).
"""

from collections.abc import Callable

from allq.errors import AllQError, DiskFull, ReplicaUnavailable
from allq.server.dispatch import Dispatcher
from allq.wire.messages import ACTIONS, error_reply, request_id_of

#: Actions that need no journal record, or only a deletion's.
READ_ONLY_ACTIONS = frozenset({"get", "peek", "stats", "ping", "touch", "done", "delete",
                               "schedule_list", "interests",
                               "list_jobs"})

#: What a ``--replication strict`` server takes while its backup is unreachable:
#: reads only (a reservation is streamed, not waited for). ``done`` and ``delete``
#: are refused too: one the backup never heard of would come back after a
#: failover. Stream actions and failover requests concern other servers' replicas.
STRICT_ACTIONS = frozenset({"get", "get_any", "reserve_job", "job_stats", "peek_job",
                            "touch", "peek", "list_jobs", "stats", "ping", "interests",
                            "schedule_list", "find_parent", "replicate",
                            "replica_records", "replica_synced", "replicas", "promote",
                            "serve_as"})
#: What a primary takes before its backup confirmed it was not replaced (start-up):
#: no job of its own, only what it answers about itself and as a backup.
STARTING_ACTIONS = frozenset({"stats", "ping", "replicate", "replica_records",
                              "replica_synced", "replicas", "promote", "serve_as"})
#: Actions of :data:`STRICT_ACTIONS` that change the queue when asked to delete.
_DELETING_READS = frozenset({"get", "get_any"})


def disk_full_error(action: str) -> AllQError:
    return DiskFull(
        f"{action[:40]}: the server's data directory is full; it takes no "
        "changes until space returns (gets, peeks, done and delete work)")


def replica_unavailable_error(action: str) -> AllQError:
    return ReplicaUnavailable(
        f"{action[:40]}: this server's backup is unreachable and it runs with "
        "--replication strict: it takes no changes until the backup is back "
        "(gets and peeks work)")


def starting_error(action: str) -> AllQError:
    return ReplicaUnavailable(
        f"{action[:40]}: this server is starting: it serves its jobs once its backup "
        "confirmed it was not replaced (--replica)")


class ReadOnlyDispatcher:
    """A :class:`Dispatcher` that refuses changes (``disk_full`` by default).

    :param dispatcher: the real dispatcher, which handles everything let through.
    :param refusal: the error a refused action gets, from its name.
    :param allowed: the actions let through.
    """

    def __init__(self, dispatcher: Dispatcher,
                 refusal: Callable[[str], AllQError] = disk_full_error,
                 allowed: frozenset[str] = READ_ONLY_ACTIONS) -> None:
        self.dispatcher = dispatcher
        self._refusal = refusal
        self._allowed = allowed
        self._deleting = _DELETING_READS if allowed is STRICT_ACTIONS else frozenset()

    def handle(self, obj: object) -> dict:
        """Refuse ``obj`` if it would change the queue, else apply it."""
        action = obj.get("action") if isinstance(obj, dict) else None
        if isinstance(action, str) and action in ACTIONS and (
                action not in self._allowed
                or (action in self._deleting and _deletes(obj))):
            return error_reply(request_id_of(obj), self._refusal(action))
        return self.dispatcher.handle(obj)

    def handle_frame(self, obj: object) -> object:
        """:meth:`Dispatcher.handle_frame`, read-only."""
        if isinstance(obj, list):
            return [self.handle(item) for item in obj]
        return self.handle(obj)


def _deletes(obj: dict) -> bool:
    params = obj.get("params")
    return isinstance(params, dict) and params.get("delete") is True
