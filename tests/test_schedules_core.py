"""The pure schedule logic (allq.core.schedules): firing times, DST, late and missed
firings, pause. Time is a plain number."""

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from allq.core.schedules import Schedule, Schedules, ScheduleSpec
from allq.errors import BadRequest, NotFound

BERLIN = ZoneInfo("Europe/Berlin")
T0 = 1_800_000_000.0


def spec(now=T0, **fields):
    return ScheduleSpec.check(now, **{"name": "s", "tube": "t", "body": "x", **fields})


def local(timestamp, zone=BERLIN):
    return datetime.fromtimestamp(timestamp, zone).strftime("%Y-%m-%d %H:%M %Z")


def firings(schedules, schedule, count):
    """The local times of the next ``count`` firings, each run on time."""
    times = []
    for _ in range(count):
        times.append(local(schedule.next_fire, ZoneInfo(schedule.spec.timezone)))
        [firing] = schedules.due(schedule.next_fire)
        assert firing.late == 0
    return times


def test_every_fires_on_a_grid_that_does_not_drift():
    schedules = Schedules()
    schedule = schedules.add(spec(every=10), T0)
    assert schedules.next_deadline() == T0 + 10
    assert schedules.due(T0 + 9.9) == []
    [firing] = schedules.due(T0 + 10.7)  # a timer a little late
    assert firing.at == T0 + 10 and firing.late == 0
    assert schedule.next_fire == T0 + 20  # the grid, not 10 s after the late run
    assert schedule.fired == 1


def test_a_late_timer_fires_once_for_a_run_of_due_firings():
    schedules = Schedules()
    schedule = schedules.add(spec(every=10), T0)
    [firing] = schedules.due(T0 + 45)
    assert (firing.at, firing.late) == (T0 + 10, 3)  # 20, 30 and 40 collapsed
    assert schedule.next_fire == T0 + 50
    assert schedule.missed_total == 3
    assert schedules.due(T0 + 45) == []


def test_cron_in_a_time_zone_across_spring_forward():
    # 2026-03-29 02:30 does not exist in Berlin: that day fires at 03:00.
    start = datetime(2026, 3, 28, 12, tzinfo=BERLIN).timestamp()
    schedules = Schedules()
    schedule = schedules.add(spec(start, cron="30 2 * * *", timezone="Europe/Berlin"), start)
    assert firings(schedules, schedule, 3) == [
        "2026-03-29 03:00 CEST", "2026-03-30 02:30 CEST", "2026-03-31 02:30 CEST"]


def test_cron_with_fixed_hours_fires_once_in_a_repeated_hour():
    start = datetime(2026, 10, 24, 12, tzinfo=BERLIN).timestamp()
    schedules = Schedules()
    schedule = schedules.add(spec(start, cron="30 2 * * *", timezone="Europe/Berlin"), start)
    assert firings(schedules, schedule, 3) == [
        "2026-10-25 02:30 CEST", "2026-10-26 02:30 CET", "2026-10-27 02:30 CET"]


def test_hourly_cron_fires_in_both_repeated_hours():
    start = datetime(2026, 10, 25, 0, 30, tzinfo=BERLIN).timestamp()
    schedules = Schedules()
    schedule = schedules.add(spec(start, cron="0 * * * *", timezone="Europe/Berlin"), start)
    assert firings(schedules, schedule, 4) == [
        "2026-10-25 01:00 CEST", "2026-10-25 02:00 CEST", "2026-10-25 02:00 CET",
        "2026-10-25 03:00 CET"]


def test_cron_defaults_to_utc():
    start = datetime(2026, 1, 1, 8, 59, tzinfo=ZoneInfo("UTC")).timestamp()
    schedule = Schedules().add(spec(start, cron="0 9 * * *"), start)
    assert schedule.next_fire == start + 60
    assert schedule.spec.timezone == "UTC"


def restored(policy, down_for, every=10):
    """A schedule whose server was down ``down_for`` seconds after its creation."""
    original = Schedules().add(spec(every=every, missed=policy), T0)
    kept = Schedule(original.spec, anchor=original.anchor, next_fire=original.next_fire)
    schedules = Schedules()
    schedules.restore(kept, T0 + down_for)
    return schedules, kept


def test_missed_once_fires_once_on_recovery_for_any_number_missed():
    schedules, schedule = restored("once", down_for=95)
    [firing] = schedules.due(T0 + 95)
    assert firing.at == T0 + 10 and firing.late == 8  # 20..90 stand behind it
    assert schedule.next_fire == T0 + 100
    assert schedules.due(T0 + 95) == []


def test_missed_skip_drops_missed_firings_and_waits_for_the_next():
    schedules, schedule = restored("skip", down_for=95)
    assert schedules.due(T0 + 95) == []
    assert schedule.next_fire == T0 + 100
    assert schedule.missed_total == 9


def test_pause_stops_firings_and_resume_catches_nothing_up():
    schedules = Schedules()
    schedule = schedules.add(spec(every=10), T0)
    schedules.set_paused("s", True, T0 + 1)
    assert schedules.next_deadline() is None
    assert schedules.due(T0 + 100) == []
    schedules.set_paused("s", False, T0 + 100)
    assert schedule.next_fire == T0 + 110
    assert schedules.due(T0 + 105) == []


def test_changes_are_reported_and_removal_forgets():
    changes = []
    schedules = Schedules(on_change=lambda name, s: changes.append((name, s is None)))
    schedules.add(spec(every=10), T0)
    schedules.due(T0 + 10)
    schedules.remove("s")
    assert changes == [("s", False), ("s", False), ("s", True)]
    with pytest.raises(NotFound):
        schedules.remove("s")
    with pytest.raises(NotFound):
        schedules.set_paused("s", True, T0)


def test_adding_a_name_again_replaces_the_schedule():
    schedules = Schedules()
    schedules.add(spec(every=10), T0)
    schedules.add(spec(every=60, tube="other"), T0 + 5)
    [schedule] = schedules.all()
    assert (schedule.spec.tube, schedule.next_fire) == ("other", T0 + 65)


@pytest.mark.parametrize("fields, words", [
    ({"cron": "61 * * * *"}, "bad cron"),
    ({"cron": "* * * *"}, "five fields"),
    ({"cron": "* * * * * *"}, "five fields"),
    ({"cron": "0 0 30 2 *"}, "bad cron"),  # 30 February never comes
    ({"cron": "0 9 * * *", "timezone": "Mars/Olympus"}, "unknown timezone"),
    ({"cron": "0 9 * * *", "timezone": "../../etc/passwd"}, "unknown timezone"),
    ({"every": 0}, "every must be"),
    ({"every": -5}, "every must be"),
    ({"every": 0.5}, "every must be"),
    ({"every": 10**9}, "every must be"),
    ({"every": float("nan")}, "every must be"),
    ({"every": True}, "every must be"),
    ({"every": 10, "cron": "* * * * *"}, "exactly one"),
    ({}, "exactly one"),
    ({"every": 10, "missed": "twice"}, "missed must be"),
    ({"every": 10, "name": "no spaces"}, "name must be"),
    ({"every": 10, "tube": ""}, "tube must be"),
    ({"every": 10, "priority": -1}, "priority"),
    ({"every": 10, "ttl": 0}, "ttl"),
])
def test_bad_specs_are_refused_with_the_reason(fields, words):
    with pytest.raises(BadRequest) as caught:
        spec(**fields)
    assert words in caught.value.message
