"""A server's recurring schedules: the reactor timer that fires them, and their actions.

:class:`ScheduleService` keeps one :class:`IDelayedCall` aimed at the earliest
firing of the core's :class:`~allq.core.schedules.Schedules` (re-armed after every
change), puts each due firing's job through :meth:`Queue.put` and cancels its call
when the server stops. The dispatcher hands it the ``schedule_*`` wire actions.

Exactly one job per firing: a schedule lives on one server (the client picks it by
name, :mod:`allq.client.schedules`), and each firing's put carries the idempotency
key ``schedule:<name>:<firing time>``, journaled with the job. A firing replayed
after a crash (the job was written, the schedule's move to its next firing was
not) finds the key and puts nothing. A put the queue refuses (a full or draining
tube, a full server) is logged and counted in ``failures``; that firing is not
retried, the next one comes as planned.
"""

from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from allq.core.idempotency import IdempotencyKeys
from allq.core.queue import Queue
from allq.core.schedules import Firing, Schedule, Schedules, ScheduleSpec
from allq.errors import AllQError
from allq.wire.bodies import decode_body, encode_body


def firing_key(firing: Firing) -> str:
    """The idempotency key of one firing's put."""
    return f"schedule:{firing.schedule.spec.name}:{firing.at!r}"


def describe(schedule: Schedule) -> dict:
    """A schedule as the wire (and REST) shows it."""
    spec = schedule.spec
    running = not schedule.paused
    reply = {
        "name": spec.name, "tube": spec.tube, "body": spec.body, "cron": spec.cron,
        "every": spec.every, "timezone": spec.timezone, "missed": spec.missed,
        "priority": spec.priority, "ttl": spec.ttl, "delay": spec.delay,
        "expired_limit": spec.expired_limit, "paused": schedule.paused,
        "next_run": schedule.next_fire if running else None,
        "next_run_local": datetime.fromtimestamp(
            schedule.next_fire, ZoneInfo(spec.timezone)).isoformat() if running else None,
        "fired": schedule.fired, "last_fired": schedule.last_fired,
        "missed_total": schedule.missed_total,
    }
    if type(spec.body) is bytes:
        reply["body"], reply["body_encoding"] = encode_body(spec.body)
    return reply


class ScheduleService(Service):
    """Fires a server's schedules from its clock.

    :param schedules: the core's schedules (restored before the service starts).
    :param queue: where each firing's job goes.
    :param clock: the reactor, or a :class:`task.Clock` in tests.
    :param idempotency: the server's idempotency keys (see the module docstring).
    :param after_fire: called after a round of firings (the journal's commit, the
        deadline timer's poke): changes made outside any request frame.
    """

    _log = Logger()

    def __init__(self, schedules: Schedules, queue: Queue, clock: IReactorTime,
                 idempotency: IdempotencyKeys,
                 after_fire: Callable[[], None] = lambda: None) -> None:
        self.schedules = schedules
        self._queue = queue
        self._clock = clock
        self._idempotency = idempotency
        self._after_fire = after_fire
        self._call: IDelayedCall | None = None
        #: Firings whose put the queue refused.
        self.failures = 0

    def startService(self) -> None:
        super().startService()
        self._arm()

    def stopService(self) -> None:
        super().stopService()
        self._cancel()

    def _arm(self) -> None:
        """Aim the one call at the earliest firing (after every change)."""
        self._cancel()
        if not self.running:
            return
        deadline = self.schedules.next_deadline()
        if deadline is not None:
            self._call = self._clock.callLater(
                max(deadline - self._clock.seconds(), 0.0), self._fire)

    def _cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _fire(self) -> None:
        self._call = None
        now = self._clock.seconds()
        try:
            for firing in self.schedules.due(now):
                self._put(firing, now)
            self._after_fire()
        except Exception:
            # Keep firing: one bad round must not stop every schedule for good.
            self._log.failure("firing schedules failed")
        self._arm()

    def _put(self, firing: Firing, now: float) -> None:
        spec = firing.schedule.spec
        key = firing_key(firing)
        if self._idempotency.lookup(key, now) is not None:
            return  # put before a crash that lost the schedule's own record
        try:
            job = self._queue.put(spec.tube, spec.body, now=now, **spec.job_options())
        except AllQError as e:
            self.failures += 1
            self._log.warn("schedule {name}: the put into tube {tube} was refused ({code}: "
                           "{message}); the next firing comes as planned",
                           name=spec.name, tube=spec.tube, code=e.code, message=e.message)
            return
        self._idempotency.remember(key, job.id, now)
        if firing.late:
            self._log.info("schedule {name}: {late} earlier firings collapsed into this one",
                           name=spec.name, late=firing.late)

    # -- the wire actions (called by the dispatcher) -------------------------------

    def add(self, now: float, *, body_encoding=None, **params) -> dict:
        if body_encoding is not None:
            params["body"] = decode_body(params["body"], body_encoding)
        schedule = self.schedules.add(ScheduleSpec.check(now, **params), now)
        self._arm()
        return {"schedule": describe(schedule)}

    def list(self) -> dict:
        return {"schedules": [describe(schedule) for schedule in self.schedules.all()]}

    def set_paused(self, name: str, paused: bool, now: float) -> dict:
        schedule = self.schedules.set_paused(name, paused, now)
        self._arm()
        return {"schedule": describe(schedule)}

    def remove(self, name: str) -> dict:
        self.schedules.remove(name)
        self._arm()
        return {"name": name, "removed": True}
