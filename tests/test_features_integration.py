"""The features of issue 4 end to end: real ``twistd allq-server`` daemons (one or
three) behind a real ``twistd allq-client``, driven over its REST API.

Throttle, pause, tube and server drain, fair queuing, workflows (parent and
child jobs), ``run_at`` and bounded tubes. The HTTP calls block (urllib, see
``test_client_integration.py``) because the daemons are separate processes;
every loop is bounded in count and time.
"""

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from test_client_integration import Api, start_client

pytestmark = pytest.mark.integration


def federation(daemons, count: int) -> tuple[Api, list]:
    """``count`` servers and one client using them all, every server up."""
    keys = daemons.generate_keys()
    servers = daemons.start_servers(count, keys)
    api = start_client(daemons, keys, servers)
    api.wait_until(lambda h: h["up"] == count)
    return api, servers


def ok(api: Api, method: str, path: str, body: object = None, **query) -> object:
    """A call that must answer 200; its JSON."""
    status, reply = api.call(method, path, body, **query)
    assert status == 200, (method, path, status, reply)
    return reply


def refused(api: Api, status: int, code: str, method: str, path: str, body: object = None,
            **query) -> None:
    """A call that must fail with ``status`` and a JSON error ``code``."""
    got, reply = api.call(method, path, body, **query)
    assert (got, reply.get("error")) == (status, code), reply
    assert set(reply) == {"error", "detail"}


def tube_stats(api: Api, tube: str) -> dict[str, dict]:
    """``tube``'s stats entry per server name."""
    return {server["server_name"]: entry for server in ok(api, "GET", "/stats")
            for entry in server["stats"] if entry["tube"] == tube}


def take_all(api: Api, tube: str, limit: int = 100) -> list[dict]:
    """Take (get with delete) every ready job of a tube."""
    jobs: list[dict] = []
    for _ in range(limit):
        batch = ok(api, "GET", "/multiple_job", tube=tube, count=100, delete="true")["jobs"]
        if not batch:
            return jobs
        jobs += batch
    raise AssertionError(f"tube {tube} never emptied")


def server_of(job_id: str) -> str:
    """The server id a job id names."""
    return job_id.split(",")[0]


@pytest.mark.parametrize("count", [1, 3])
def test_tube_settings(daemons, count):
    """Throttle, pause/unpause, tube drain, run_at and bounded tubes against one and
    against three servers."""
    api, servers = federation(daemons, count)

    # Throttle: tps 3 for the whole federation, whatever the number of servers.
    for n in range(60):
        api.put("thr", str(n))
    started = time.monotonic()
    reply = ok(api, "POST", "/throttle", {"tube": "thr", "tps": 3})
    assert reply == {"action": "throttle", "value": "true", "tube": "thr", "tps": 3,
                     "servers": count}
    sizes = [entry["throttle_size"] for entry in tube_stats(api, "thr").values()]
    assert len(sizes) == count and sum(sizes) == pytest.approx(3)
    got = 0
    while time.monotonic() - started < 1.5:
        got += len(ok(api, "GET", "/multiple_job", tube="thr", count=50, delete="true")["jobs"])
    elapsed = time.monotonic() - started
    # Each bucket starts full (max(share, 1) jobs), then refills at its share.
    assert 3 <= got <= max(3, count) + 3 * elapsed + 1, (got, elapsed)
    ok(api, "POST", "/throttle", {"tube": "thr", "tps": 0})
    assert "throttle_size" not in next(iter(tube_stats(api, "thr").values()))
    assert got + len(take_all(api, "thr")) == 60

    # Pause reaches every server; puts still go in; unpause hands everything out.
    for n in range(2 * count):
        api.put("p", str(n))
    assert ok(api, "PUT", "/pause", tube="p") == {"action": "pause", "tube": "p",
                                                   "servers": count}
    assert [e["paused"] for e in tube_stats(api, "p").values()] == [True] * count
    assert ok(api, "GET", "/multiple_job", tube="p", count=100) == {"jobs": []}
    api.put("p", "while paused")
    ok(api, "PUT", "/unpause", tube="p")
    assert len(take_all(api, "p")) == 2 * count + 1

    # Tube drain: every server refuses puts to the tube, its jobs are still handed out.
    kept = api.put("d", "kept")
    assert ok(api, "PUT", "/drain", tube="d")["servers"] == count
    refused(api, 503, "draining", "POST", "/job", {"tube": "d", "body": "x"})
    api.put("not-d", "other tubes are open")
    assert ok(api, "GET", "/job", tube="d")["id"] == kept
    ok(api, "PUT", "/undrain", tube="d")
    api.put("d", "open again")

    # run_at: an absolute unix time.
    run_at = time.time() + 1.5
    ok(api, "POST", "/job", {"tube": "later", "body": "x", "run_at": run_at})
    assert ok(api, "GET", "/job", tube="later") == {}
    job = ok(api, "GET", "/job", tube="later", wait=10)
    assert job["body"] == "x" and time.time() >= run_at - 0.05

    # Bounded tube: 2 jobs per server; a full server is skipped; all full → 507.
    reply = ok(api, "PUT", "/max_size", tube="b", max_size=2)
    assert (reply["max_size"], reply["servers"]) == (2, count)
    placed = [api.put("b", str(n)) for n in range(2 * count)]
    assert Counter(server_of(j) for j in placed) == {s.server_id: 2 for s in servers}
    refused(api, 507, "full", "POST", "/job", {"tube": "b", "body": "x"})
    assert [e["max_size"] for e in tube_stats(api, "b").values()] == [2] * count
    ok(api, "PUT", "/max_size", tube="b", max_size="")
    api.put("b", "unbounded again")


def test_server_drain(daemons):
    """Draining one of three servers: this client's puts and another client's go to
    the other two; the drained server's jobs can still be got; undrain restores it."""
    keys = daemons.generate_keys()
    servers = daemons.start_servers(3, keys)
    api = start_client(daemons, keys, servers)
    other = start_client(daemons, keys, servers)  # knows nothing of the drain
    for client in (api, other):
        client.wait_until(lambda h: h["up"] == 3)
    held = [api.put("w", f"held-{n}") for n in range(6)]
    drained = servers[0]
    reply = ok(api, "PUT", "/drain", server_id=drained.server_id)
    assert reply == {"action": "drain", "server_id": drained.server_id, "draining": True,
                     "notified": True}
    assert [s["draining"] for s in ok(api, "GET", "/health")["servers"]] == [True, False, False]
    drained_name = next(s["server_name"] for s in ok(api, "GET", "/stats")
                        if s["server_name"].startswith(drained.server_id + ","))
    assert {s["server_name"]: s["draining"] for s in ok(api, "GET", "/stats")}[drained_name]

    later = [api.put("w", f"a-{n}") for n in range(9)]
    later += [other.put("w", f"b-{n}") for n in range(9)]
    assert drained.server_id not in {server_of(j) for j in later}
    got = {job["id"] for job in take_all(api, "w")}
    assert got == set(held) | set(later)  # the drained server's 2 jobs included

    reply = ok(api, "PUT", "/undrain", server_id=f"{drained.host}:{drained.port}")
    assert (reply["action"], reply["draining"], reply["notified"]) == ("undrain", False, True)
    again = [other.put("w", str(n)) for n in range(6)] + [api.put("w", str(n)) for n in range(6)]
    assert Counter(server_of(j) for j in again)[drained.server_id] == 4


def test_every_server_drained_is_503(daemons):
    """When every server drains itself (drained through this client), a put answers
    503 draining with a JSON body."""
    api, servers = federation(daemons, 2)
    for server in servers:
        ok(api, "PUT", "/drain", server_id=server.server_id)
    refused(api, 503, "draining", "POST", "/job", {"tube": "t", "body": "x"})


def test_workflow_across_three_servers(daemons):
    """A parent and two children on a 3-server federation: the children land on the
    parent's server; when both are done the parent becomes gettable. A child whose
    parent's server is down answers 503 and goes nowhere else."""
    api, servers = federation(daemons, 3)
    parents = []
    for n in range(3):  # round robin: one parent per server
        reply = ok(api, "POST", "/parent_job",
                   {"tube": f"flow{n}", "body": f"parent{n}", "limit": 2, "timeout": 600})
        assert reply["action"] == "set_parent" and reply["job"]["job_id"] == reply["job_id"]
        parents.append(reply["job_id"])
    assert len({server_of(p) for p in parents}) == 3

    parent = parents[1]
    children = [ok(api, "POST", "/job", {"tube": "work", "body": f"child{n}",
                                         "parent_id": parent})["job_id"] for n in range(2)]
    assert {server_of(c) for c in children} == {server_of(parent)}
    assert ok(api, "GET", "/job", tube="flow1") == {}
    for _ in children:
        job = ok(api, "GET", "/job", tube="work")
        assert job["id"] in children
        assert ok(api, "GET", "/job", tube="flow1") == {}
        ok(api, "DELETE", "/job", job_id=job["id"])
    assert ok(api, "GET", "/job", tube="flow1")["id"] == parent

    # set_children_started: a parent without a limit.
    reply = ok(api, "POST", "/parent_job", {"tube": "flow-open", "body": "p"})
    open_parent = reply["job_id"]
    child = ok(api, "POST", "/job", {"tube": "work", "body": "c",
                                     "parent_id": open_parent})["job_id"]
    assert ok(api, "PUT", "/set_children_started", job_id=open_parent) == {
        "action": "set_children_started", "job_id": open_parent}
    job = ok(api, "GET", "/job", tube="work")
    assert job["id"] == child
    ok(api, "DELETE", "/job", job_id=child)
    assert ok(api, "GET", "/job", tube="flow-open")["id"] == open_parent

    # A missing parent: 404, nothing stored.
    missing = f"{server_of(parents[0])},999999999"
    refused(api, 404, "not_found", "POST", "/job",
            {"tube": "orphans", "body": "c", "parent_id": missing})
    assert all(e["ready"] == 0 for e in tube_stats(api, "orphans").values())

    # The parent's server goes away: 503 at once, no other server takes the child.
    down = next(s for s in servers if s.server_id == server_of(parents[2]))
    down.daemon.stop()
    api.wait_until(lambda h: h["up"] == 2)
    started = time.monotonic()
    refused(api, 503, "unavailable", "POST", "/job",
            {"tube": "orphans", "body": "c", "parent_id": parents[2]})
    assert time.monotonic() - started < 2
    assert ok(api, "GET", "/job", tube="orphans") == {}


def test_fair_queuing_acceptance(daemons):
    """2,000 jobs of key A, then 10 of key B, in an fq- tube on one server: B's 10 jobs
    come out within the first 20 gets instead of after A's 2,000."""
    api, _ = federation(daemons, 1)
    refused(api, 400, "bad_request", "POST", "/job", {"tube": "fq-mail", "body": "no key"})

    def put_a(n: int) -> str:
        return ok(api, "POST", "/job", {"tube": "fq-mail", "body": f"A{n}",
                                        "shard_key": "A"})["job_id"]

    with ThreadPoolExecutor(8) as pool:
        assert len(list(pool.map(put_a, range(2000)))) == 2000
    for n in range(10):
        ok(api, "POST", "/job", {"tube": "fq-mail", "body": f"B{n}", "shard_key": "B"})
    bodies = [ok(api, "GET", "/job", tube="fq-mail", delete="true")["body"] for _ in range(20)]
    assert sorted(b for b in bodies if b.startswith("B")) == [f"B{n}" for n in range(10)]
    assert ok(api, "PUT", "/fair", tube="fq-mail", policy="off")["servers"] == 1
    ok(api, "POST", "/job", {"tube": "fq-mail", "body": "no key needed now"})
