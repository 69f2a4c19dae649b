"""Unique jobs and concurrency keys end to end: two real ``allq-server`` daemons
(with data directories) behind two real ``allq-client`` daemons, over REST.

Uniqueness holds across the federation (a key always lands on the server it
hashes to, whichever client puts it); at most the limit of a key's jobs are
reserved at once across two workers on two clients; while the key's server is
down a keyed put is refused (503), and after a kill -9 and a restart the keys
are back. Every loop is bounded.
"""

import signal

import pytest

from test_client_integration import Api, start_client
from test_features_integration import ok, refused
from tests.servers import LOCALHOST

pytestmark = pytest.mark.integration


def start_server(daemons, keys, data, port: int = 0):
    return daemons.start_server(
        keys, ["--data-dir", str(data), "--fsync", "always",
               "--listen", f"tcp:{port}:interface={LOCALHOST}"])


def put(api: Api, tube: str, body: str, **keys) -> dict:
    return ok(api, "POST", "/job", {"tube": tube, "body": body, **keys})


def test_unique_and_concurrency_keys_across_two_servers_and_a_kill(daemons, keys, tmp_path):
    servers = [start_server(daemons, keys, tmp_path / f"data{n}") for n in range(2)]
    producer = start_client(daemons, keys, servers)
    worker = start_client(daemons, keys, servers)
    for api in (producer, worker):
        api.wait_until(lambda h: h["up"] == 2)

    # Uniqueness across the federation, whichever client puts.
    first = {f"report-{n}": put(producer, "u", "a", unique_key=f"report-{n}")["job_id"]
             for n in range(16)}
    assert {job_id.split(",")[0] for job_id in first.values()} == {
        s.server_id for s in servers}  # the keys spread over both servers
    for key, job_id in first.items():
        assert put(worker, "u", "b", unique_key=key) == {
            "action": "put", "job_id": job_id, "duplicate": True}
    refused(producer, 400, "bad_request", "POST", "/job",
            {"tube": "u", "body": "x", "unique_key": "k" * 201})
    refused(producer, 400, "bad_request", "POST", "/job",
            {"tube": "u", "body": "x", "concurrency_key": 7})

    # One job of a key at a time, across two workers on two clients.
    for n in range(3):
        for key in ("acct-1", "acct-2", "acct-3"):
            put(producer, "c", f"{key}/{n}", concurrency_key=key)
    taken = []
    for api in (producer, worker, producer, worker):
        taken += ok(api, "GET", "/multiple_job", tube="c", count=10)["jobs"]
    assert sorted(job["body"] for job in taken) == ["acct-1/0", "acct-2/0", "acct-3/0"]
    reply = ok(worker, "PUT", "/concurrency", tube="c", limit=2)
    assert (reply["limit"], reply["servers"]) == (2, 2)
    more = ok(worker, "GET", "/multiple_job", tube="c", count=10)["jobs"]
    assert sorted(job["body"] for job in more) == ["acct-1/1", "acct-2/1", "acct-3/1"]
    assert ok(producer, "GET", "/multiple_job", tube="c", count=10)["jobs"] == []
    done = next(job for job in taken if job["body"] == "acct-2/0")
    ok(producer, "DELETE", "/job", job_id=done["id"])
    (last,) = ok(worker, "GET", "/multiple_job", tube="c", count=10)["jobs"]
    assert last["body"] == "acct-2/2"

    # kill -9 the server holding report-0: keyed puts for it are refused, not
    # placed elsewhere; after the restart its keys and the tube's limit are back.
    victim_id = first["report-0"].split(",")[0]
    victim = next(s for s in servers if s.server_id == victim_id)
    victim.daemon.process.send_signal(signal.SIGKILL)
    assert victim.daemon.process.wait(30) == -signal.SIGKILL
    producer.wait_until(lambda h: h["up"] == 1)
    refused(producer, 503, "unavailable", "POST", "/job",
            {"tube": "u", "body": "c", "unique_key": "report-0"})
    again = start_server(daemons, keys, tmp_path / f"data{servers.index(victim)}",
                         port=victim.port)
    assert again.server_id == victim_id
    producer.wait_until(lambda h: h["up"] == 2)
    worker.wait_until(lambda h: h["up"] == 2)
    for key, job_id in first.items():
        assert put(producer, "u", "c", unique_key=key)["job_id"] == job_id
    # The victim's reserved jobs came back ready; its limit of 2 per key came back too.
    stats = {server["server_name"].split(",")[0]: server for server in
             ok(worker, "GET", "/stats")}
    if any(t["tube"] == "c" for t in stats[victim_id]["stats"]):
        held = ok(worker, "GET", "/multiple_job", tube="c", count=10)["jobs"]
        assert held
        per_key: dict[str, int] = {}
        for job in held:
            per_key[job["body"].split("/")[0]] = per_key.get(job["body"].split("/")[0], 0) + 1
        assert max(per_key.values()) <= 2, held
        assert all(job["id"].startswith(victim_id + ",") for job in held)
