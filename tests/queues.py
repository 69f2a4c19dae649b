"""Helpers shared by the queue core's tests (test_queue, test_queue_features)."""

from twisted.internet.task import Clock

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
