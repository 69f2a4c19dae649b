"""A job's lifetime counters, for beanstalkd's ``stats-job``.

How often a job was reserved, timed out, released, buried and kicked, and the
delay it was last put or released with. They cost memory only once something
happens to the job: the queue keeps them beside its jobs, in a dict by job id
that gets an entry on the job's first change (:class:`JobCounterMap`), so a job
waiting in a ready line pays nothing. The counts are since the server started (they are not journaled: a
restarted server starts them again). Unlike ``Job.expireds`` and
``Job.releases``, which a kick resets (they drive AllQueue's auto-bury), these
only grow. Pure: no I/O, no clock.
"""

import attrs


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
    """Job id → :class:`JobCounters`, an entry made on a job's first change."""

    def of(self, job_id: int) -> JobCounters:
        """The job's counters, created on first use."""
        counters = self.get(job_id)
        if counters is None:
            counters = self[job_id] = JobCounters()
        return counters

    def read(self, job_id: int) -> JobCounters:
        """The job's counters (zeros when nothing happened to it yet)."""
        return self.get(job_id) or _NOTHING_YET


_NOTHING_YET = JobCounters()
