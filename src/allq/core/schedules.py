"""Recurring schedules: when each fires, what it puts, what a late one does. Pure.

A :class:`Schedule` puts one job into its tube at every firing: ``every`` N
seconds, or at the times a five-field cron expression names in an explicit time
zone (``croniter`` reads the expression; ``zoneinfo`` the zone). :class:`Schedules`
holds a server's schedules and answers the timer's two questions: when is the
next firing (:meth:`Schedules.next_deadline`) and which are due now
(:meth:`Schedules.due`). Time is always an argument.

Time rules:

* ``every``: firings at ``created + k * every``; the grid does not drift with
  late timers.
* cron: local wall times in ``timezone`` (default UTC). A wall time skipped by a
  spring-forward fires at the first time after the gap (croniter's rule). A wall
  time repeated by a fall-back fires once, at its first occurrence, when the
  expression names its hours; an expression whose hour field starts with ``*``
  fires in both repeated hours (it means "every hour", and both are hours).
* Late: when the timer runs after several firings were due (a busy reactor), a
  schedule fires once and goes on from the next firing after now: never a burst.
* Missed (the server was down over one or more firings; decided at restore,
  :meth:`Schedules.restore`): ``missed: "once"`` (the default) fires once at
  start-up for any number of missed firings; ``"skip"`` drops them and waits
  for the next one.
* Paused: never fires; resuming goes on from the next firing after now (a
  pause is not a downtime: nothing is caught up).

Every change is reported to ``on_change(name, schedule_or_None)`` so a journal
can keep it (:mod:`allq.server.journal`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
from croniter import CroniterError, croniter

from allq.errors import BadRequest, NotFound
from allq.vocabulary import (
    MAX_EXPIRED_LIMIT,
    check_count,
    check_every,
    check_missed_policy,
    check_priority,
    check_schedule_name,
    check_seconds,
    check_tube,
)

DEFAULT_TIMEZONE = "UTC"
DEFAULT_MISSED = "once"
#: The most schedules one server holds (each is a few hundred bytes and a timer entry).
MAX_SCHEDULES = 10_000
#: The job options a schedule passes to every put, and nothing else.
JOB_OPTIONS = ("priority", "ttl", "delay", "expired_limit")


def zone(name: object) -> ZoneInfo:
    """The IANA time zone ``name`` names (``Europe/Berlin``, ``UTC``).

    :raises BadRequest: not a string, or no such zone.
    """
    if not isinstance(name, str) or not 0 < len(name) <= 100:
        raise BadRequest("timezone must be an IANA time zone name such as Europe/Berlin")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):  # ValueError: a path-like key
        raise BadRequest(f"unknown timezone {name[:100]!r}") from None


def check_cron(expression: object, timezone: ZoneInfo, now: float) -> str:
    """Validate a five-field cron expression (minute hour day month weekday) that
    fires at least once from ``now`` on.

    :raises BadRequest: not five fields, not cron, or a date that never comes.
    """
    if not isinstance(expression, str) or len(expression) > 200 or len(expression.split()) != 5:
        raise BadRequest("cron must be five fields: minute hour day-of-month month "
                         "day-of-week (e.g. \"*/5 * * * *\")")
    try:
        croniter(expression, datetime.fromtimestamp(now, timezone)).get_next(datetime)
    except (CroniterError, ValueError, KeyError) as e:  # CroniterBadDateError: never fires
        raise BadRequest(f"bad cron expression {expression!r}: {str(e)[:120]}") from None
    return expression


@attrs.frozen
class ScheduleSpec:
    """What a schedule is, as its creator gave it (validated by :meth:`check`).

    :ivar every: seconds between firings, or ``None`` for a cron schedule.
    :ivar job: the put options of every job (:data:`JOB_OPTIONS`; ``None``: default).
    """

    name: str
    tube: str
    body: str | bytes
    cron: str | None = None
    every: float | None = None
    timezone: str = DEFAULT_TIMEZONE
    missed: str = DEFAULT_MISSED
    priority: int | None = None
    ttl: float | None = None
    delay: float = 0
    expired_limit: int | None = None

    @classmethod
    def check(cls, now: float, *, name, tube, body, cron=None, every=None, timezone=None,
              missed=None, priority=None, ttl=None, delay=None, expired_limit=None
              ) -> ScheduleSpec:
        """A validated spec.

        :raises BadRequest: any field out of range; both or neither of cron and every.
        """
        check_schedule_name(name)
        check_tube(tube)
        if not isinstance(body, str | bytes):
            raise BadRequest("body must be a string")
        if (cron is None) == (every is None):
            raise BadRequest("give exactly one of cron and every")
        timezone = DEFAULT_TIMEZONE if timezone is None else timezone
        tz = zone(timezone)
        if cron is not None:
            check_cron(cron, tz, now)
        else:
            every = check_every(every)
        return cls(
            name=name, tube=tube, body=body, cron=cron, every=every, timezone=timezone,
            missed=DEFAULT_MISSED if missed is None else check_missed_policy(missed),
            priority=None if priority is None else check_priority(priority),
            ttl=None if ttl is None else check_seconds("ttl", ttl, positive=True),
            delay=0 if delay is None else check_seconds("delay", delay),
            expired_limit=None if expired_limit is None else check_count(
                "expired_limit", expired_limit, maximum=MAX_EXPIRED_LIMIT),
        )

    def job_options(self) -> dict:
        """The keyword arguments of the put each firing makes."""
        return {option: getattr(self, option) for option in JOB_OPTIONS}


@attrs.define
class Schedule:
    """A spec and where it stands.

    :ivar anchor: where an ``every`` schedule's grid starts (its creation time).
    :ivar next_fire: the unix time of its next firing.
    :ivar fired: jobs it has put; ``last_fired`` the time of the latest.
    :ivar missed_total: firings dropped, late or missed (each collapsed into one, or skipped).
    """

    spec: ScheduleSpec
    anchor: float
    next_fire: float
    paused: bool = False
    fired: int = 0
    last_fired: float | None = None
    missed_total: int = 0

    def following(self, after: float) -> float:
        """The first firing strictly after ``after``."""
        spec = self.spec
        if spec.every is not None:
            steps = int((after - self.anchor) // spec.every) + 1
            at = self.anchor + max(steps, 1) * spec.every
            while at <= after:  # float rounding at the grid's edge
                at += spec.every
            return at
        tz = ZoneInfo(spec.timezone)
        start = datetime.fromtimestamp(after, tz)
        found = croniter(spec.cron, start)
        at = found.get_next(datetime)
        if not spec.cron.split()[1].startswith("*"):
            # A repeated wall time (fall-back) fires once: skip its second occurrence.
            while _second_occurrence(at):
                at = found.get_next(datetime)
        return at.timestamp()

    def missed_between(self, first: float, now: float, cap: int = 1000) -> int:
        """How many firings from ``first`` up to ``now`` (counted up to ``cap``)."""
        count, at = 0, first
        while at <= now and count < cap:
            count += 1
            at = self.following(at)
        return count


def _second_occurrence(at: datetime) -> bool:
    """Whether ``at`` is the later of a wall time a fall-back repeats."""
    first = at.replace(fold=0).timestamp()
    return first < at.timestamp()


@attrs.frozen
class Firing:
    """One job a schedule puts now: ``at`` is the firing's own time (its identity,
    for idempotency), ``late`` how many earlier due firings it stands for."""

    schedule: Schedule
    at: float
    late: int = 0


class Schedules:
    """A server's schedules, by name.

    :param on_change: told ``(name, schedule)`` after each change and ``(name, None)``
        after a removal.
    """

    def __init__(self, on_change: Callable[[str, Schedule | None], None] | None = None) -> None:
        self.on_change = on_change
        self._schedules: dict[str, Schedule] = {}

    def __len__(self) -> int:
        return len(self._schedules)

    def _changed(self, name: str, schedule: Schedule | None) -> None:
        if self.on_change is not None:
            self.on_change(name, schedule)

    def get(self, name: str) -> Schedule:
        """:raises NotFound: no schedule has that name."""
        schedule = self._schedules.get(name)
        if schedule is None:
            raise NotFound(f"no schedule named {name[:200]!r}")
        return schedule

    def all(self) -> list[Schedule]:
        """Every schedule, by name."""
        return [self._schedules[name] for name in sorted(self._schedules)]

    def add(self, spec: ScheduleSpec, now: float) -> Schedule:
        """Create a schedule, or replace the one of that name (its counters start
        over); its first firing is the first one after ``now``.

        :raises BadRequest: already :data:`MAX_SCHEDULES`, and this is a new name.
        """
        if spec.name not in self._schedules and len(self._schedules) >= MAX_SCHEDULES:
            raise BadRequest(f"this server holds the most schedules it may ({MAX_SCHEDULES})")
        schedule = Schedule(spec, anchor=now, next_fire=now)
        schedule.next_fire = schedule.following(now)
        self._schedules[spec.name] = schedule
        self._changed(spec.name, schedule)
        return schedule

    def remove(self, name: str) -> Schedule:
        schedule = self.get(name)
        del self._schedules[name]
        self._changed(name, None)
        return schedule

    def set_paused(self, name: str, paused: bool, now: float) -> Schedule:
        """Pause a schedule, or resume it from its first firing after ``now``."""
        schedule = self.get(name)
        if schedule.paused != paused:
            schedule.paused = paused
            if not paused:
                schedule.next_fire = schedule.following(now)
            self._changed(name, schedule)
        return schedule

    def next_deadline(self) -> float | None:
        """The earliest firing of a running schedule (``None``: none)."""
        return min((s.next_fire for s in self._schedules.values() if not s.paused),
                   default=None)

    def due(self, now: float) -> list[Firing]:
        """The firings due at ``now``, one per schedule; each schedule moves on to
        its first firing after ``now`` (a late timer collapses a run of due
        firings into one)."""
        firings = []
        for schedule in self.all():
            if schedule.paused or schedule.next_fire > now:
                continue
            at = schedule.next_fire
            late = schedule.missed_between(schedule.following(at), now)
            firings.append(Firing(schedule, at, late))
            schedule.next_fire = schedule.following(now)
            schedule.fired += 1
            schedule.last_fired = now
            schedule.missed_total += late
            self._changed(schedule.spec.name, schedule)
        return firings

    def restore(self, schedule: Schedule, now: float) -> None:
        """Put back a schedule as a journal kept it, applying its missed-firing
        policy to the firings that came while the server was down: ``once`` leaves
        the earliest due (the next :meth:`due` fires it, once); ``skip`` moves on
        to the first firing after ``now``."""
        if not schedule.paused and schedule.next_fire <= now and schedule.spec.missed == "skip":
            schedule.missed_total += schedule.missed_between(schedule.next_fire, now)
            schedule.next_fire = schedule.following(now)
        self._schedules[schedule.spec.name] = schedule
