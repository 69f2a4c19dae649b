"""A job's lifetime counters, for beanstalkd's ``stats-job``.

How often a job was reserved, timed out, released, buried and kicked, and the
delay it was last put or released with. They cost memory only once something
beyond its first reserve happens to the job: the queue keeps them beside its
jobs, in a dict by job id that gets an entry on the job's first delay, release,
timeout, bury or kick (:class:`JobCounterMap`). Until then the one reserve a job
can have had is read from its state, so a job that is put, reserved once and
deleted, the common life, never pays for an entry. The counts are since the
server started (they are not journaled: a restarted server starts them again). Unlike ``Job.expireds`` and
``Job.releases``, which a kick resets (they drive AllQueue's auto-bury), these
only grow. Pure: no I/O, no clock.
"""

import attrs

from allq.core.job import Job, JobState


@attrs.define(slots=True, weakref_slot=False)
class JobCounters:
    """Counts of what happened to one job since it was put (or recovered)."""

    reserves: int = 0
    timeouts: int = 0
    releases: int = 0
    buries: int = 0
    kicks: int = 0
    #: Seconds of the last delay the job was put or released with.
    delay: float = 0


class JobCounterMap(dict):
    """Job id → :class:`JobCounters`, an entry made on a job's first change
    other than its first reserve."""

    def of(self, job: Job) -> JobCounters:
        """The job's counters, created on first use; call it before the job
        leaves the reserved state (a job without an entry that is reserved now
        has been reserved exactly once)."""
        counters = self.get(job.id)
        if counters is None:
            counters = self[job.id] = JobCounters(
                reserves=1 if job.state is JobState.RESERVED else 0)
        return counters

    def reserved(self, job: Job) -> None:
        """Count a reserve (only in an entry already made: see :meth:`of`)."""
        counters = self.get(job.id)
        if counters is not None:
            counters.reserves += 1

    def read(self, job: Job) -> JobCounters:
        """The job's counters, also when it has no entry."""
        counters = self.get(job.id)
        if counters is None:
            return JobCounters(reserves=1 if job.state is JobState.RESERVED else 0)
        return counters
