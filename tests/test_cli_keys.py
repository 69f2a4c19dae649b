"""``allq put --unique-key/--concurrency-key``, ``allq concurrency``, ``allq event``,
``allq interests`` and ``allq schedules`` against real daemons, and their errors."""

import json

import pytest

from allq.commands import render
from allq.worker import Client

from tests.allq_daemons import fresh_tube
from tests.test_cli_queue import allq, ok  # noqa: F401  (allq: the fixture)

pytestmark = pytest.mark.integration


def test_keyed_puts_and_concurrency(allq, allq_url, tmp_path):
    tube = fresh_tube("cli-keys")
    first = ok(allq("put", tube, "a", "--unique-key", "r7")).strip()
    status, out, err = allq("put", tube, "b", "--unique-key", "r7")
    assert (status, out.strip()) == (0, first) and "nothing stored" in err
    assert json.loads(ok(allq("put", tube, "c", "--unique-key", "r7", "--json"))) == {
        "job_id": first, "duplicate": True}
    lines = tmp_path / "jobs.jsonl"
    lines.write_text('{"body": "x", "unique_key": "r7"}\n"y"\n')
    reply = json.loads(ok(allq("put", tube, "--from-file", str(lines), "--json",
                               "--no-progress")))
    assert (reply["put"], reply["duplicates"], reply["job_ids"][0]) == (1, [0], first)
    assert "(1 duplicates" in ok(allq("put", tube, "--from-file", str(lines),
                                      "--no-progress"))

    sync = fresh_tube("cli-sync")
    for n in range(3):
        ok(allq("put", sync, f"step {n}", "--concurrency-key", "acct"))
    with Client(allq_url) as client:
        assert len(client.get_many(sync, 10)) == 1
        assert ok(allq("concurrency", sync, "2")).startswith(f"concurrency {sync}: at most 2")
        assert len(client.get_many(sync, 10)) == 1
    assert json.loads(ok(allq("concurrency", sync, "3", "--json")))["limit"] == 3
    status, _, err = allq("concurrency", sync, "0")
    assert status == 1 and "bad_request" in err
    status, _, err = allq("put", tube, "z", "--unique-key", "")
    assert status == 1 and "unique_key" in err


def test_event_and_interests(allq, allq_url):
    tube = fresh_tube("cli-welcome")
    with Client(allq_url) as client:
        client.set_interest(tube, {"action": f"^{tube}$"})
    shown = ok(allq("interests"))
    assert tube in shown and f"action: ^{tube}$" in shown
    assert {"tube": tube, "interests": {"action": f"^{tube}$"}} in json.loads(
        ok(allq("interests", "--json")))
    out = ok(allq("event", json.dumps({"action": tube}), "--priority", "4"))
    assert out.startswith("matched ") and tube in out
    reply = json.loads(ok(allq("event", json.dumps({"action": tube}), "--json")))
    assert tube in [copy["tube"] for copy in reply["copies"]]
    status, _, err = allq("event", json.dumps({"action": "nobody-" + tube}),
                          "--unmatched", "error")
    assert status == 1 and "not_found" in err
    for bad in ("not json", "[1, 2]"):
        status, _, err = allq("event", bad)
        assert status == 2 and "DATA" in err


def test_schedules(allq, allq_url, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")  # rich's width when stdout is no terminal
    name = fresh_tube("cli-sched")
    with Client(allq_url) as client:
        client.schedule(name, "maint", every=3600, body="sweep")
        client.schedule(name + "-cron", "maint", cron="0 9 * * mon-fri",
                        timezone="Europe/Berlin", body="r")
    shown = ok(allq("schedules"))
    assert name in shown and "every 3600s" in shown and "0 9 * * mon-fri (Europe/Berlin)" in shown
    assert " 09:00 +0100 " in shown
    listed = json.loads(ok(allq("schedules", "--json")))
    assert name in [s["name"] for s in listed]


def test_tables_render_paused_schedules_and_catch_all_interests():
    table = render.schedules_table([{"name": "s", "tube": "t", "every": 5, "paused": True,
                                     "fired": 1200, "missed_total": 0}])
    row = [column._cells[0] for column in table.columns]
    assert row == ["s", "t", "every 5s", "paused", "1,200", "0"]
    table = render.interests_table([{"tube": "audit", "interests": "*"}])
    assert [column._cells[0] for column in table.columns] == ["audit", "* (every event)"]
