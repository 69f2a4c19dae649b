"""A backup's copy of one primary's state, applied from its stream. Pure.

The primary streams its journal's records (docs/replication.md): a fuzzy
snapshot interleaved with the live records of changes made meanwhile, then live
records only. :class:`ReplicaState` applies them, in arrival order, to a
:class:`~allq.server.recovery.Recovered` exactly as recovery replays a journal
over a snapshot (records are absolute, so this gives the primary's state once
the snapshot has been sent), plus the one record that is never written to disk:

    ``["r", id, deadline]``  the job was reserved until ``deadline``

An ``r`` record marks the job's record ``reserved`` with that deadline; any later
record that states the job's fields (``s``, ``j``) or removes it (``d``)
replaces that, as it would on the primary. A record naming a job this replica
has not seen yet is counted as an orphan and ignored (its snapshot record, still
to come, carries its state).

What it must not do: any I/O, reactor or network; it does not decide when a
replica may be promoted (:mod:`allq.server.replica_host` does).
"""

from __future__ import annotations

import attrs

from allq.core.job import JobState
from allq.server.recovery import Recovered, apply_record
from allq.server.records import unframe

#: Field positions in a ``j`` record: the job's state and deadline.
_STATE, _DEADLINE = 10, 11
_RESERVED = JobState.RESERVED.value


class MalformedStream(ValueError):
    """A streamed line is damaged (CRC mismatch, torn, not JSON) or not a known record."""


@attrs.define
class ReplicaState:
    """What a backup holds of one primary: its jobs, tubes, keys, schedules...

    :ivar recovered: the applied state, in the shape recovery produces (so a
        promotion restores it with :func:`allq.server.recovery.restore_queue`).
    :ivar records: records applied.
    :ivar orphans: records that named a job this replica does not hold.
    """

    recovered: Recovered = attrs.Factory(lambda: Recovered(directory=""))
    records: int = 0

    @property
    def jobs(self) -> int:
        """How many live jobs the replica holds."""
        return len(self.recovered.jobs)

    @property
    def orphans(self) -> int:
        return self.recovered.orphans

    def apply_lines(self, text: str) -> int:
        """Apply journal lines (``<crc32> <json>\\n`` each), in order.

        The lines before a damaged one stay applied: the caller drops the stream
        and waits for a fresh snapshot, so a partial message does no harm.

        :returns: how many records were applied.
        :raises MalformedStream: a line is damaged or holds no known record.
        """
        if not text:
            return 0
        if not text.endswith("\n"):
            raise MalformedStream("replica_records: lines must end with a newline")
        applied = 0
        for number, line in enumerate(text.splitlines(keepends=True), 1):
            try:
                data = line.encode("ascii")
            except UnicodeEncodeError:
                raise MalformedStream(
                    f"replica_records: line {number} is not ASCII (journal lines are)") from None
            record = unframe(data)
            if record is None:
                raise MalformedStream(
                    f"replica_records: line {number} is damaged (CRC mismatch, torn or "
                    f"not JSON): {line[:60]!r}")
            self.apply(record, number)
            applied += 1
        return applied

    def apply(self, record: list, number: int = 1) -> None:
        """Apply one decoded record.

        :raises MalformedStream: it is not a record this replica knows.
        """
        if record[0] == "r":
            self._reserved(record, number)
        elif record[0] in ("journal", "snapshot", "end") or not apply_record(
                self.recovered, record):
            raise MalformedStream(
                f"replica_records: line {number} holds no known record ({str(record)[:60]})")
        self.records += 1

    def _reserved(self, record: list, number: int) -> None:
        if not (len(record) == 3 and type(record[1]) is int
                and type(record[2]) in (int, float)):
            raise MalformedStream(
                f"replica_records: line {number}: an r record is [\"r\", id, deadline]")
        job = self.recovered.jobs.get(record[1])
        if job is None:
            self.recovered.orphans += 1
            return
        job[_STATE] = _RESERVED
        job[_DEADLINE] = record[2]
