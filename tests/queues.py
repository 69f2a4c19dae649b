"""Helpers shared by the queue core's tests (``test_queue_*.py``)."""

from twisted.internet.task import Clock

from allq.core.job import Job, JobState
from allq.core.queue import Event, Queue, QueueConfig, TubeStats

T0 = 1000.0


def make_queue(**config: object) -> Queue:
    return Queue(QueueConfig(**config), started=T0)


def stats(q: Queue, tube: str = "t", now: float = T0) -> TubeStats:
    (found,) = [s for s in q.tube_stats(now) if s.tube == tube]
    return found


def stats_or_none(q: Queue, tube: str) -> TubeStats | None:
    found = [s for s in q.tube_stats(T0) if s.tube == tube]
    return found[0] if found else None


def counts(q: Queue, tube: str = "t") -> dict[str, int]:
    s = stats(q, tube)
    return {"ready": s.ready, "reserved": s.reserved, "delayed": s.delayed,
            "buried": s.buried, "parents": s.parents}


def zero_counts(**overrides: int) -> dict[str, int]:
    return {"ready": 0, "reserved": 0, "delayed": 0, "buried": 0, "parents": 0, **overrides}


def reserve_one(q: Queue, tube: str = "t", now: float = T0):
    (job,) = q.get(tube, now=now)
    return job


def job_in_state(q: Queue, state: str, tube: str = "t", now: float = T0, **kwargs) -> Job:
    """Put a job into ``tube`` and bring it to ``state``; the tube must have no ready job."""
    assert stats_or_none(q, tube) is None or stats(q, tube).ready == 0
    delay = 50 if state == "delayed" else 0
    job = q.put(tube, f"{state}-job", now=now, delay=delay, **kwargs)
    if state in ("reserved", "buried"):
        assert reserve_one(q, tube, now=now) is job
    if state == "buried":
        q.bury(job.id, now=now)
    assert job.state is JobState[state.upper()]
    return job


def fill_every_state(q: Queue, tube: str) -> dict[str, Job]:
    """One job in each of ``tube``'s states but waiting, by state name."""
    jobs = {state: job_in_state(q, state, tube) for state in ("reserved", "buried", "delayed")}
    jobs["ready"] = job_in_state(q, "ready", tube)
    return jobs


def fill(q: Queue, n: int, tube: str = "t", now: float = T0, **kwargs) -> list[Job]:
    return [q.put(tube, f"job-{i}", now=now, **kwargs) for i in range(n)]


def poll(q: Queue, times: int, tube: str = "t", now: float = T0) -> list[Job]:
    """``times`` single gets at the same instant; the jobs handed out."""
    jobs = []
    for _ in range(times):
        jobs += q.get(tube, now=now)
    return jobs


def finish(q: Queue, job: Job, now: float = T0) -> None:
    """Reserve ``job`` (it must be next in its tube) and mark it done."""
    assert reserve_one(q, job.tube, now=now) is job
    q.done(job.id, now=now)


class SingleTimer:
    """The server's pattern in miniature: one IDelayedCall aimed at next_deadline()."""

    def __init__(self, queue: Queue, clock: Clock) -> None:
        self._queue = queue
        self._clock = clock
        self._call = None
        self.events: list[Event] = []

    def rearm(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        deadline = self._queue.next_deadline()
        if deadline is not None:
            self._call = self._clock.callLater(
                max(deadline - self._clock.seconds(), 0.0), self._fire)

    def _fire(self) -> None:
        self._call = None
        self.events += self._queue.expire(self._clock.seconds())
        self.rearm()
