"""Interest routing through the real daemons: two ``allq-server`` with
``--data-dir`` and one ``allq-client``, driven over REST as a user would."""

import os
import signal
import urllib.request

import pytest

from tests.servers import LOCALHOST, RunningServer, wait_for_greeting, SERVER_LISTENING
from tests.test_client_integration import start_client, wait_for

pytestmark = pytest.mark.integration


def start_server(daemons, keys, data, port=0, name=None):
    daemon = daemons.spawn("allq-server", [
        "--keys", str(keys.directory), "--data-dir", str(data),
        "--listen", f"tcp:{port}:interface={LOCALHOST}"], name=name)
    match = daemon.wait_for_log(SERVER_LISTENING)
    server = RunningServer(daemon, match["host"], int(match["port"]), match["server_id"])
    wait_for_greeting(server)
    return server


def kill(server):
    os.kill(server.daemon.process.pid, signal.SIGKILL)
    server.daemon.process.wait(10)


def ok(api, method, path, body=None, **query):
    status, reply = api.call(method, path, body, **query)
    assert status == 200, (method, path, status, reply)
    return reply


def test_events_fan_out_without_duplicates_and_survive_a_kill(daemons, tmp_path):
    keys = daemons.generate_keys()
    servers = [start_server(daemons, keys, tmp_path / f"data{i}") for i in range(2)]
    api = start_client(daemons, keys, servers, "--retry-budget", "5")
    api.wait_until(lambda h: h["up"] == 2)

    # Before any interest: an event is dropped (and counted), or refused if asked.
    assert ok(api, "POST", "/event", {"data": {"a": 1}}) == {
        "action": "event", "matched": 0, "copies": []}
    status, reply = api.call("POST", "/event", {"data": {"a": 1}, "unmatched": "error"})
    assert (status, reply["error"]) == (404, "not_found"), reply

    ok(api, "PUT", "/interest", {"tube": "welcome", "interests": {"action": "^userCreated$"}})
    ok(api, "PUT", "/interest", {"tube": "points",
                                 "interests": {"action": "^userCreated$", "userId": "."}})
    ok(api, "PUT", "/interest", {"tube": "audit", "interests": "*"})
    ok(api, "PUT", "/interest", {"tube": "billing", "interests": {"invoice": "."}})
    # Bad input is refused, and the daemons go on serving.
    status, reply = api.call("PUT", "/interest", {"tube": "x", "interests": {"a": "(a)\\1"}})
    assert (status, reply["error"]) == (400, "bad_request"), reply
    status, reply = api.call("POST", "/event", {"data": ["not", "an", "object"]})
    assert status == 400, reply

    event = {"data": {"action": "userCreated", "userId": 7}, "idempotency_key": "signup-7"}
    first = ok(api, "POST", "/event", event)
    assert [c["tube"] for c in first["copies"]] == ["audit", "points", "welcome"]
    holder_id = first["copies"][0]["job_id"].split(",")[0]
    assert all(c["job_id"].startswith(holder_id + ",") for c in first["copies"])
    for _ in range(3):  # the publisher retries: same copies, nothing new
        assert ok(api, "POST", "/event", event)["copies"] == first["copies"]

    with urllib.request.urlopen(api.base + "/metrics", timeout=15) as response:
        metrics = response.read().decode()
    assert 'allq_client_jobs_total{action="event_unmatched",tube=""} 2.0' in metrics
    assert 'allq_client_jobs_total{action="event",tube="audit"}' in metrics

    # kill -9 the server holding the copies; restart it on its directory and port.
    holder = next(s for s in servers if s.server_id == holder_id)
    other = next(s for s in servers if s is not holder)
    kill(holder)
    # While it is down, an interest changes: it learns that when it reconnects.
    ok(api, "DELETE", "/interest", tube="welcome")
    ok(api, "PUT", "/interest", {"tube": "late", "interests": {"userId": "^7$"}})
    restarted = start_server(daemons, keys, tmp_path / f"data{servers.index(holder)}",
                             port=holder.port, name="restarted")
    assert restarted.server_id == holder_id
    api.wait_until(lambda h: h["up"] == 2)

    # The copies survived, and the journaled key still answers the retry.
    again = ok(api, "POST", "/event", event)
    assert {c["tube"]: c["job_id"] for c in again["copies"]} == {
        **{c["tube"]: c["job_id"] for c in first["copies"] if c["tube"] != "welcome"},
        "late": again["copies"][1]["job_id"]}
    assert [c["tube"] for c in again["copies"]] == ["audit", "late", "points"]
    # The restarted server got the change it missed (synced on reconnect): an
    # event pinned to it (its id in the key) matches the new table.
    pinned = ok(api, "POST", "/event", {"data": {"action": "userCreated", "userId": 7},
                                        "idempotency_key": f"{holder_id}:fresh"})
    assert [c["tube"] for c in pinned["copies"]] == ["audit", "late", "points"]
    interests = ok(api, "GET", "/interests")["interests"]
    assert [i["tube"] for i in interests] == ["audit", "billing", "late", "points"]

    for tube, count in {"welcome": 1, "points": 2, "audit": 2,
                        "late": 2}.items():
        bodies = []
        while True:
            job = ok(api, "GET", "/job", tube=tube, delete="true")
            if not job:
                break
            bodies.append(job["body"])
        assert len(bodies) == count, (tube, bodies)
    assert other.daemon.process.poll() is None
