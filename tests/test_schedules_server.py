"""A server's schedules: the reactor timer (task.Clock), the wire actions through the
dispatcher, and the journal (restart, crash, compaction, missed-firing policies)."""

import pytest
from twisted.internet.task import Clock

from allq.core.idempotency import IdempotencyKeys
from allq.core.queue import Queue
from allq.core.schedules import Schedules
from allq.server.dispatch import Dispatcher
from allq.server.recovery import restore_schedules
from allq.server.schedules import ScheduleService, firing_key

from tests.test_journal import Server, drain_compaction

START = 1_700_000_000.0


class Scheduled:
    """A queue, its schedules' timer and a dispatcher, on a task.Clock."""

    def __init__(self, queue=None, clock=None, schedules=None, keys=None, after_fire=None):
        self.clock = clock or Clock()
        if self.clock.seconds() < START:
            self.clock.advance(START)
        self.queue = queue if queue is not None else Queue(started=self.clock.seconds())
        self.keys = keys if keys is not None else IdempotencyKeys()
        self.service = ScheduleService(Schedules() if schedules is None else schedules, self.queue, self.clock,
                                       self.keys, after_fire or (lambda: None))
        self.dispatcher = Dispatcher(self.queue, self.clock, lambda: "srv",
                                     schedules=self.service)
        self._ids = iter(range(1, 10**6))
        self.service.startService()

    def call(self, action, **params):
        reply = self.dispatcher.handle({"id": next(self._ids), "action": action,
                                        "params": params})
        return reply.get("result", reply.get("error"))

    def ready(self, tube="t"):
        return [t.ready for t in self.queue.tube_stats(self.clock.seconds()) if t.tube == tube]


@pytest.fixture
def scheduled():
    s = Scheduled()
    yield s
    s.service.stopService()
    assert s.clock.getDelayedCalls() == []


def test_every_fires_one_job_per_period_from_the_clock(scheduled):
    result = scheduled.call("schedule_add", name="tick", tube="t", body="b", every=1,
                            priority=7)
    assert result["schedule"]["next_run"] == START + 1
    scheduled.clock.advance(0.5)
    assert scheduled.ready() == []
    for expected in range(1, 6):
        scheduled.clock.advance(1)
        assert scheduled.ready() == [expected]
    [job] = scheduled.queue.get("t", now=scheduled.clock.seconds())
    assert (job.body, job.priority) == ("b", 7)
    [listed] = scheduled.call("schedule_list")["schedules"]
    assert listed["fired"] == 5 and listed["next_run"] == START + 6


def test_one_call_on_the_clock_for_many_schedules_and_none_after_stop(scheduled):
    for name in ("a", "b", "c"):
        scheduled.call("schedule_add", name=name, tube="t", body="", every=10)
    assert len(scheduled.clock.getDelayedCalls()) == 1
    scheduled.service.stopService()
    assert scheduled.clock.getDelayedCalls() == []
    scheduled.clock.advance(100)
    assert scheduled.ready() == []


def test_a_cron_schedule_fires_at_its_time_in_its_zone(scheduled):
    # START is 2023-11-14 22:13:20 UTC, 23:13:20 in Berlin.
    result = scheduled.call("schedule_add", name="night", tube="t", body="",
                            cron="30 23 * * *", timezone="Europe/Berlin")
    assert result["schedule"]["next_run_local"] == "2023-11-14T23:30:00+01:00"
    scheduled.clock.advance(16 * 60 + 39)
    assert scheduled.ready() == []
    scheduled.clock.advance(1)
    assert scheduled.ready() == [1]


def test_pause_resume_and_remove(scheduled):
    scheduled.call("schedule_add", name="s", tube="t", body="", every=1)
    paused = scheduled.call("schedule_pause", name="s")["schedule"]
    assert paused["paused"] is True and paused["next_run"] is None
    assert scheduled.clock.getDelayedCalls() == []
    scheduled.clock.advance(10)
    assert scheduled.ready() == []
    scheduled.call("schedule_resume", name="s")
    scheduled.clock.advance(1)
    assert scheduled.ready() == [1]
    assert scheduled.call("schedule_remove", name="s") == {"name": "s", "removed": True}
    scheduled.clock.advance(10)
    assert scheduled.ready() == [1]
    assert scheduled.call("schedule_list") == {"schedules": []}


@pytest.mark.parametrize("params, code, words", [
    ({"cron": "99 * * * *"}, "bad_request", "bad cron"),
    ({"cron": "0 9 * * *", "timezone": "Nowhere/City"}, "bad_request", "unknown timezone"),
    ({"every": 0}, "bad_request", "every must be"),
    ({"every": 1, "cron": "* * * * *"}, "bad_request", "exactly one"),
    ({"every": 1, "colour": "red"}, "bad_request", "unknown param"),
])
def test_bad_schedules_get_an_error_reply_and_change_nothing(scheduled, params, code, words):
    error = scheduled.call("schedule_add", name="s", tube="t", body="", **params)
    assert error["code"] == code and words in error["message"]
    assert scheduled.call("schedule_list") == {"schedules": []}


@pytest.mark.parametrize("action", ["schedule_pause", "schedule_resume", "schedule_remove"])
def test_an_unknown_name_is_not_found(scheduled, action):
    assert scheduled.call(action, name="nope")["code"] == "not_found"


def test_a_refused_put_is_counted_and_the_next_firing_still_comes(scheduled):
    scheduled.call("schedule_add", name="s", tube="t", body="", every=1)
    scheduled.queue.set_tube_draining("t", True)
    scheduled.clock.advance(1)
    assert scheduled.service.failures == 1
    assert scheduled.call("stats")["global"]["schedule_failures"] == 1
    scheduled.queue.set_tube_draining("t", False)
    scheduled.clock.advance(1)
    assert scheduled.ready() == [1]


def test_a_firing_whose_job_was_already_put_puts_nothing(scheduled):
    """The idempotency key a replayed firing finds (a crash kept the job and its key,
    not the schedule's move to the next firing)."""
    scheduled.call("schedule_add", name="s", tube="t", body="", every=1)
    [schedule] = scheduled.service.schedules.all()
    job = scheduled.queue.put("t", "", now=scheduled.clock.seconds())
    from allq.core.schedules import Firing
    scheduled.keys.remember(firing_key(Firing(schedule, schedule.next_fire)), job.id,
                            scheduled.clock.seconds())
    scheduled.clock.advance(1)
    assert scheduled.ready() == [1]
    scheduled.clock.advance(1)
    assert scheduled.ready() == [2]


# -- the journal ---------------------------------------------------------------------


def journaled(server: Server) -> Scheduled:
    """Schedules on a journaled test server, restored and followed as makeService does."""
    schedules = Schedules()
    restore_schedules(schedules, server.recovered, server.now)
    server.journal.attach_schedules(schedules)
    return Scheduled(server.queue, server.clock, schedules, server.keys,
                     after_fire=server.journal.commit)


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path / "data")
    yield s
    s.journal.close()


def test_schedules_survive_a_restart_a_crash_and_compaction(server, tmp_path):
    first = journaled(server)
    first.call("schedule_add", name="every", tube="t", body="e", every=60, missed="skip")
    first.call("schedule_add", name="cron", tube="t", body=b"\x00\xff".hex(),
               cron="0 9 * * mon-fri", timezone="America/New_York")
    first.call("schedule_add", name="gone", tube="t", body="", every=60)
    first.call("schedule_pause", name="cron")
    first.call("schedule_remove", name="gone")
    before = first.call("schedule_list")
    crashed = server.crash_copy(tmp_path / "crashed")
    assert journaled(crashed).call("schedule_list") == before
    crashed.journal.close()
    assert drain_compaction(server.clock, server.journal.compact()) is True
    first.service.stopService()
    restarted = server.restart()
    again = journaled(restarted)
    assert again.call("schedule_list") == before
    again.service.stopService()
    restarted.journal.close()


@pytest.mark.parametrize("missed, jobs", [("once", 1), ("skip", 0)])
def test_firings_missed_while_down_follow_the_policy(server, missed, jobs):
    first = journaled(server)
    first.call("schedule_add", name="s", tube="t", body="", every=10, missed=missed)
    first.service.stopService()
    server.clock.advance(95)  # down over nine firings
    restarted = server.restart()
    again = journaled(restarted)
    again.clock.advance(0)
    assert again.ready() == ([jobs] if jobs else [])
    again.clock.advance(5)  # the next firing on the grid
    assert again.ready() == [jobs + 1]
    [listed] = again.call("schedule_list")["schedules"]
    assert listed["missed_total"] == (8 if missed == "once" else 9)
    again.service.stopService()
    restarted.journal.close()


def test_a_full_disk_refuses_schedule_changes_but_lists(scheduled):
    from allq.server.readonly import ReadOnlyDispatcher

    scheduled.dispatcher = ReadOnlyDispatcher(scheduled.dispatcher)
    error = scheduled.call("schedule_add", name="s", tube="t", body="", every=1)
    assert error["code"] == "disk_full"
    assert scheduled.call("schedule_list") == {"schedules": []}


def test_an_unreadable_schedule_record_is_counted_not_fatal():
    from allq.server.recovery import Recovered, apply_record

    state = Recovered("unused")
    assert apply_record(state, ["R", "bad", {"tube": "t"}]) is True
    assert apply_record(state, ["R", "worse", 7]) is False
    schedules = Schedules()
    assert restore_schedules(schedules, state, START) == 1
    assert len(schedules) == 0
