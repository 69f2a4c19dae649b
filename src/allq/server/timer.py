"""The one reactor timer that drives every job deadline of a server.

:class:`DeadlineTimer` keeps a single :class:`IDelayedCall` aimed at the queue's
earliest deadline (delay maturity or ttl expiry). When it fires it applies all
due deadlines through :meth:`Queue.expire` and re-arms. Whoever changes the
queue calls :meth:`DeadlineTimer.poke` afterwards, which re-arms only when the
earliest deadline moved earlier. No ``callLater`` per job.
"""

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from allq.core.queue import Queue


class DeadlineTimer(Service):
    """Applies the queue's deadlines on time.

    :param queue: the queue whose deadlines to drive.
    :param clock: the reactor (or a :class:`task.Clock` in tests).
    """

    _log = Logger()

    def __init__(self, queue: Queue, clock: IReactorTime) -> None:
        self._queue = queue
        self._clock = clock
        self._call: IDelayedCall | None = None
        self._armed_for: float | None = None

    def startService(self) -> None:
        super().startService()
        self.poke()

    def stopService(self) -> None:
        super().stopService()
        self._cancel()

    def poke(self) -> None:
        """Re-arm if the queue's earliest deadline is earlier than the armed one."""
        if not self.running:
            return
        deadline = self._queue.next_deadline()
        if deadline is None:
            return  # an armed call may fire early; that is harmless
        if self._armed_for is not None and self._armed_for <= deadline:
            return
        self._cancel()
        self._armed_for = deadline
        self._call = self._clock.callLater(
            max(deadline - self._clock.seconds(), 0.0), self._fire
        )

    def _fire(self) -> None:
        self._call = self._armed_for = None
        try:
            events = self._queue.expire(self._clock.seconds())
        except Exception:
            # Keep driving deadlines: one bad sweep must not stop every timer for good.
            self._log.failure("applying job deadlines failed")
            events = []
        for event in events:
            if event.kind == "buried":
                self._log.info(
                    "job {job_id} of tube {tube} buried after its last allowed expiry",
                    job_id=event.job_id, tube=event.tube,
                )
        self.poke()

    def _cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = self._armed_for = None
