"""Recurring schedules through the real daemons: two ``twistd allq-server`` (each with
a ``--data-dir``) and two ``twistd allq-client`` on 127.0.0.1, driven over REST.

Both clients create the same schedule; it lives on one server and every firing puts
exactly one job (the jobs are counted against the server's own count of firings).
A SIGKILL and a restart of that server on the same port and directory keep the
schedule. Waits are bounded; nothing asserts how fast anything is.
"""

import signal

import pytest

from tests.servers import LOCALHOST
from tests.test_client_integration import start_client, wait_for

pytestmark = pytest.mark.integration
TIMEOUT = 30.0


def start_server(daemons, keys, data, port=0):
    return daemons.start_server(keys, ["--data-dir", str(data), "--fsync", "always",
                                       "--listen", f"tcp:{port}:interface={LOCALHOST}"])


def schedules(api) -> list[dict]:
    status, reply = api.call("GET", "/schedules")
    return reply["schedules"] if status == 200 else []


def take_all(api, tube: str) -> list[dict]:
    """Every ready job of ``tube`` on every server, taken with delete."""
    jobs = []
    for _ in range(100):
        status, reply = api.call("GET", "/multiple_job", tube=tube, count=1000, delete="true")
        assert status == 200, reply
        if not reply["jobs"]:
            return jobs
        jobs.extend(reply["jobs"])
    raise AssertionError("the tube never emptied")


def test_a_schedule_fires_once_per_period_across_clients_and_survives_a_kill(
        daemons, tmp_path):
    keys = daemons.generate_keys()
    servers = [start_server(daemons, keys, tmp_path / f"data{i}") for i in range(2)]
    apis = [start_client(daemons, keys, servers) for _ in range(2)]
    for api in apis:
        api.wait_until(lambda h: h["up"] == 2)

    spec = {"name": "tick", "tube": "ticks", "every": 1, "body": "tick"}
    placed = set()
    for api in apis:  # every client may create it: the name picks one server
        status, reply = api.call("POST", "/schedule", spec)
        assert status == 200, reply
        placed.add(reply["schedule"]["server_id"])
    [home_id] = placed
    [listed] = schedules(apis[1])
    assert listed["server_id"] == home_id and listed["every"] == 1

    wait_for(lambda: schedules(apis[0])[0]["fired"], lambda fired: fired >= 3,
             what="three firings", timeout=TIMEOUT)
    status, reply = apis[1].call("PUT", "/schedule/pause", name="tick")
    assert status == 200 and reply["schedule"]["paused"] is True, reply
    fired = reply["schedule"]["fired"]
    jobs = take_all(apis[0], "ticks")
    assert len(jobs) == fired  # exactly one job per firing, none twice
    assert {job["id"].split(",")[0] for job in jobs} == {home_id}
    assert {job["body"] for job in jobs} == {"tick"}

    # kill -9 its server; while it is down the schedule is not listed, nor placeable.
    home = next(s for s in servers if s.server_id == home_id)
    home.daemon.process.send_signal(signal.SIGKILL)
    assert home.daemon.process.wait(TIMEOUT) == -signal.SIGKILL
    apis[0].wait_until(lambda h: h["up"] == 1)
    assert schedules(apis[0]) == []
    status, reply = apis[0].call("POST", "/schedule", spec)
    assert status == 503 and reply["error"] == "unavailable", reply

    again = start_server(daemons, keys, tmp_path / f"data{servers.index(home)}",
                         port=home.port)
    assert again.server_id == home_id
    for api in apis:
        api.wait_until(lambda h: h["up"] == 2)
    [kept] = wait_for(lambda: schedules(apis[0]), lambda found: len(found) == 1,
                      what="the schedule back after the restart", timeout=TIMEOUT)
    assert (kept["name"], kept["paused"], kept["fired"]) == ("tick", True, fired)
    status, reply = apis[1].call("PUT", "/schedule/resume", name="tick")
    assert status == 200, reply
    wait_for(lambda: take_all(apis[1], "ticks"), lambda got: len(got) >= 1,
             what="a firing after the restart", timeout=TIMEOUT)

    # Bad input through the real daemons: a clear 4xx, and the daemons keep serving.
    status, reply = apis[0].call("POST", "/schedule", {"name": "bad", "tube": "t",
                                                      "cron": "0 25 * * *"})
    assert status == 400 and "bad cron" in reply["detail"], reply
    status, reply = apis[0].call("POST", "/schedule", {"name": "z", "tube": "t",
                                                      "cron": "0 9 * * *",
                                                      "timezone": "Mars/Base"})
    assert status == 400 and "unknown timezone" in reply["detail"], reply
    status, reply = apis[0].call("DELETE", "/schedule", name="nope")
    assert status == 404, reply
    status, reply = apis[0].call("DELETE", "/schedule", name="tick")
    assert status == 200 and reply["server_id"] == home_id, reply
    assert schedules(apis[1]) == []
