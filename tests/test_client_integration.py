"""End to end through real daemons: three ``twistd allq-server`` and one
``twistd allq-client`` on 127.0.0.1, driven over HTTP as a worker would.

The HTTP calls block (urllib) because the daemons are separate processes; every
loop is bounded in count and time.
"""

import json
import os
import re
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter

import pytest

from tests.servers import LOCALHOST, wait_for_greeting, RunningServer, SERVER_LISTENING

pytestmark = pytest.mark.integration

CLIENT_SERVING = re.compile(r"serving REST on (?P<host>\S+):(?P<port>\d+) ")


class Api:
    """A tiny blocking HTTP client for the REST API."""

    def __init__(self, port: int) -> None:
        self.base = f"http://{LOCALHOST}:{port}"

    def call(self, method: str, path: str, body: object = None, timeout: float = 15.0,
             **query) -> tuple[int, object]:
        url = self.base + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        headers = {} if body is None else {"content-type": "application/json"}
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def put(self, tube: str, body: str) -> str:
        status, reply = self.call("POST", "/job", {"tube": tube, "body": body})
        assert status == 200, reply
        return reply["job_id"]

    def wait_until(self, predicate, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            status, health = self.call("GET", "/health")
            if predicate(health):
                return health
            assert time.monotonic() < deadline, f"health never matched: {health}"
            time.sleep(0.1)


def wait_for(probe, done, *, what: str, timeout: float = 10.0, interval: float = 0.1):
    """Call ``probe()`` until ``done(value)`` holds for the value it returns, and
    return that value; fail naming ``what`` and the last value after ``timeout``
    seconds. Daemons are real processes: there is no Clock to advance."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value):
            return value
        assert time.monotonic() < deadline, (
            f"gave up after {timeout:g} s waiting for {what}; last seen: {value!r}")
        time.sleep(interval)


def requests_handled(api: Api) -> int:
    """How many requests the client's only server has handled (its ``action_count``
    from ``GET /stats``; the stats request itself included)."""
    status, servers = api.call("GET", "/stats")
    assert status == 200 and len(servers) == 1, servers
    return servers[0]["action_count"]


def start_client(daemons, keys, servers, *args) -> Api:
    addresses = ",".join(f"{s.host}:{s.port}" for s in servers)
    client = daemons.spawn(
        "allq-client",
        ["--keys", str(keys.directory), "--servers", addresses,
         "--http", f"tcp:0:interface={LOCALHOST}", *args],
        name="client",
    )
    return Api(int(client.wait_for_log(CLIENT_SERVING)["port"]))


def drain(api: Api, tube: str, limit: int = 2000) -> list[dict]:
    """Get and finish every job of a tube, as a worker loop would."""
    jobs = []
    for _ in range(limit):
        status, job = api.call("GET", "/job", tube=tube)
        assert status == 200, job
        if not job:
            return jobs
        status, reply = api.call("DELETE", "/job", job_id=job["id"])
        assert status == 200, reply
        jobs.append(job)
    raise AssertionError(f"tube {tube} never emptied")


def test_federated_worker_loop_survives_a_killed_server(daemons):
    """kill -9 one of three servers: puts go on, survivors' jobs arrive exactly once,
    and the restarted server is used again without restarting the client."""
    keys = daemons.generate_keys()
    servers = daemons.start_servers(3, keys)
    api = start_client(daemons, keys, servers, "--retry-budget", "5", "--request-timeout", "3")
    api.wait_until(lambda h: h["up"] == 3)

    acked = [api.put("work", f"before-{i}") for i in range(60)]
    owners = Counter(job_id.split(",")[0] for job_id in acked)
    assert set(owners) == {s.server_id for s in servers}, owners
    delivered: list[dict] = []

    for _ in range(15):  # a worker loop runs...
        status, job = api.call("GET", "/job", tube="work")
        assert status == 200 and job
        assert api.call("DELETE", "/job", job_id=job["id"])[0] == 200
        delivered.append(job)

    victim = servers[0]
    os.kill(victim.daemon.process.pid, signal.SIGKILL)  # ...and one server dies
    victim.daemon.process.wait(10)
    started = time.monotonic()
    acked += [api.put("work", f"after-{i}") for i in range(30)]
    assert time.monotonic() - started < 10, "puts stalled after the kill"
    assert not any(j.startswith(victim.server_id + ",") for j in acked[60:])

    delivered += drain(api, "work")
    counts = Counter(job["id"] for job in delivered)
    assert max(counts.values()) == 1, "a job was delivered twice"
    survivors = [j for j in acked if not j.startswith(victim.server_id + ",")]
    assert set(survivors) <= set(counts), "an acknowledged job on a surviving server was lost"
    status, job = api.call("GET", "/job", tube="work")
    assert (status, job) == (200, {})

    # The job of a dead server: operations on it fail fast with 503.
    lost = next(j for j in acked if j.startswith(victim.server_id + ",") and j not in counts)
    started = time.monotonic()
    assert api.call("PUT", "/touch", job_id=lost)[0] == 503
    assert time.monotonic() - started < 2

    # Restart the killed server on its port: the client uses it again by itself.
    restarted = daemons.spawn(
        "allq-server",
        ["--keys", str(keys.directory), "--listen", f"tcp:{victim.port}:interface={LOCALHOST}"],
        name="restarted",
    )
    match = restarted.wait_for_log(SERVER_LISTENING)
    assert match["server_id"] == victim.server_id  # the id is stable across restarts
    wait_for_greeting(RunningServer(restarted, victim.host, victim.port, victim.server_id))
    api.wait_until(lambda h: h["up"] == 3)
    again = [api.put("work", f"again-{i}") for i in range(12)]
    assert sum(j.startswith(victim.server_id + ",") for j in again) == 4
    assert len(drain(api, "work")) == 12


def test_batches_through_the_daemons(daemons):
    """Batch put spreads one frame per server, batch get and delete empty the tube,
    and after kill -9 of a server a batch put lands on the survivors."""
    keys = daemons.generate_keys()
    servers = daemons.start_servers(3, keys)
    api = start_client(daemons, keys, servers, "--retry-budget", "5", "--request-timeout", "3")
    api.wait_until(lambda h: h["up"] == 3)

    status, reply = api.call("POST", "/multiple_job", {
        "tube": "batch", "priority": 5, "jobs": [{"body": f"job {i}"} for i in range(30)]})
    assert status == 200, reply
    job_ids = reply["job_ids"]
    assert Counter(j.split(",")[0] for j in job_ids) == {s.server_id: 10 for s in servers}
    status, reply = api.call("GET", "/multiple_job", tube="batch", count=30)
    assert status == 200 and len(reply["jobs"]) == 30
    assert sorted(job["body"] for job in reply["jobs"]) == sorted(f"job {i}" for i in range(30))
    status, reply = api.call("DELETE", "/multiple_job", {"job_ids": job_ids})
    assert (status, reply) == (200, {"action": "delete", "job_ids": job_ids})
    assert api.call("GET", "/job", tube="batch") == (200, {})

    status, reply = api.call("DELETE", "/multiple_job", {"job_ids": [job_ids[0]]})
    assert status == 404 and reply["job_ids"] == [None], reply
    assert api.call("POST", "/multiple_job", {"jobs": [{"tube": "bad tube"}]})[0] == 400

    victim = servers[0]
    os.kill(victim.daemon.process.pid, signal.SIGKILL)
    victim.daemon.process.wait(10)
    status, reply = api.call("POST", "/multiple_job",
                             {"tube": "batch", "jobs": [{"body": str(i)} for i in range(12)]})
    assert status == 200, reply
    assert not any(j.startswith(victim.server_id + ",") for j in reply["job_ids"])
    assert len(drain(api, "batch")) == 12


def test_workers_share_the_port_and_act_as_one_client(daemons):
    """--workers 3: three processes answer on one port; jobs, admin changes and
    metrics are the whole client's; SIGTERM to the primary stops them all."""
    keys = daemons.generate_keys()
    servers = daemons.start_servers(1, keys)
    api = start_client(daemons, keys, servers, "--workers", "3")
    pids = set()
    deadline = time.monotonic() + 20
    while len(pids) < 3:  # each call is a new connection: the kernel spreads them
        assert time.monotonic() < deadline, f"only these processes answered: {pids}"
        status, health = api.call("GET", "/health")
        if status == 200:
            pids.add(health["pid"])
    job_ids = [api.put("spread", f"job {i}") for i in range(30)]
    assert len(drain(api, "spread")) == 30

    def metric(text: str, name: str) -> float:
        match = re.search(re.escape(name) + r" ([0-9.e+]+)", text)
        return float(match.group(1)) if match else 0.0

    name = 'allq_client_jobs_total{action="put",tube="spread"}'
    # Workers report every second; any process answers with the whole client's totals.
    wait_for(lambda: metric(
                 urllib.request.urlopen(api.base + "/metrics", timeout=10).read().decode(), name),
             lambda puts: puts == len(job_ids), interval=0.2,
             what=f"{name} to count all {len(job_ids)} puts of every process")

    status, _ = api.call("POST", "/add_server", {"server_url": f"{LOCALHOST}:9"})
    assert status == 200
    seen: dict[int, int] = {}
    deadline = time.monotonic() + 10
    while len(seen) < 3 or set(seen.values()) != {2}:  # every process knows both servers
        assert time.monotonic() < deadline, seen
        health = api.call("GET", "/health")[1]
        seen[health["pid"]] = health["total"]

    workers = pids - {health_pid for health_pid in pids if _is_twistd(health_pid)}
    assert len(workers) == 2
    [client] = [d for d in daemons.started if d.name == "client"]
    client.terminate()
    assert client.wait(30) in (0, 143, -signal.SIGTERM)
    for pid in workers:
        deadline = time.monotonic() + 10
        while _alive(pid):
            assert time.monotonic() < deadline, f"worker {pid} outlived the primary"
            time.sleep(0.1)


def _is_twistd(pid: int) -> bool:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return b"twistd" in f.read()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_client_serves_before_any_server_is_up(daemons):
    """With no server reachable the client still serves: 503s, then real answers
    once a server starts."""
    keys = daemons.generate_keys()
    server = daemons.start_server(keys)
    port = server.port
    server.daemon.stop()
    api = start_client(daemons, keys, [server], "--retry-budget", "1")
    status, health = api.call("GET", "/health")
    assert status == 503 and health["up"] == 0
    status, reply = api.call("POST", "/job", {"tube": "t", "body": "x"})
    assert status == 503 and reply["error"] == "unavailable"
    assert api.call("GET", "/job", tube="t")[0] == 503

    later = daemons.spawn(
        "allq-server",
        ["--keys", str(keys.directory), "--listen", f"tcp:{port}:interface={LOCALHOST}"],
        name="later",
    )
    later.wait_for_log(SERVER_LISTENING)
    api.wait_until(lambda h: h["up"] == 1)
    job_id = api.put("t", "x")
    status, job = api.call("GET", "/job", tube="t")
    assert job["id"] == job_id


def test_bad_requests_leave_the_client_serving(daemons):
    """Malformed requests get JSON 4xx answers and nothing acknowledged is lost."""
    keys = daemons.generate_keys()
    servers = daemons.start_servers(1, keys)
    api = start_client(daemons, keys, servers)
    api.wait_until(lambda h: h["up"] == 1)
    job_id = api.put("keep", "precious")
    bad = [
        ("POST", "/job", {"tube": "bad tube", "body": "x"}, {}),
        ("POST", "/job", {"tube": "t", "body": {"not": "text"}}, {}),
        ("POST", "/job", {"tube": "t", "body": "x", "priority": "high"}, {}),
        ("GET", "/job", None, {}),
        ("GET", "/multiple_job", None, {"tube": "t", "count": "0"}),
        ("GET", "/job", None, {"tube": "t", "delete": "maybe"}),
        ("PUT", "/touch", None, {"job_id": "no-comma"}),
        ("DELETE", "/tube", None, {"tube": "t", "cache_type": "everything"}),
        ("GET", "/nope", None, {}),
    ]
    for method, path, body, query in bad:
        status, reply = api.call(method, path, body, **query)
        assert 400 <= status < 500 and set(reply) == {"error", "detail"}, (path, reply)
    assert api.call("PUT", "/touch", job_id=job_id)[0] == 409
    status, job = api.call("GET", "/job", tube="keep")
    assert job["id"] == job_id and job["body"] == "precious"


def test_client_without_keys_refuses_to_start(daemons):
    """A client started without keys exits and says how to make them."""
    client = daemons.spawn("allq-client", ["--servers", "127.0.0.1:1"], name="nokeys")
    assert client.wait() != 0
    assert "allq keys generate" in client.log()


def test_long_poll_through_the_daemons(daemons):
    """GET /job?wait=S answers as soon as a job is put, across servers."""
    keys = daemons.generate_keys()
    servers = daemons.start_servers(2, keys)
    api = start_client(daemons, keys, servers)
    api.wait_until(lambda h: h["up"] == 2)
    started = time.monotonic()
    status, job = api.call("GET", "/job", tube="lp", wait=1)
    assert (status, job) == (200, {}) and 0.9 < time.monotonic() - started < 5


def test_sigterm_answers_waiting_long_polls_then_exits(daemons):
    """On SIGTERM the client stops accepting, answers a waiting long poll with {}
    (not a dropped connection) and shuts down in order."""
    import threading

    keys = daemons.generate_keys()
    servers = daemons.start_servers(1, keys)
    api = start_client(daemons, keys, servers)
    client = daemons.started[-1]
    api.wait_until(lambda h: h["up"] == 1)
    outcome = {}
    poller = threading.Thread(
        target=lambda: outcome.update(reply=api.call("GET", "/job", tube="lp", wait=30)))
    before = requests_handled(api)
    stats_calls = 0

    def other_requests() -> int:
        nonlocal stats_calls
        stats_calls += 1  # each look is one more stats request for the server
        return requests_handled(api) - before - stats_calls

    poller.start()
    # The long poll is in flight once the client polls the server for it: the server
    # then handles requests that are not our stats requests (the client's stats
    # refresher adds at most one per 5 s; the long poll's gets come every 0.5 s at most).
    wait_for(other_requests, lambda others: others >= 3, interval=0.05,
             what="the long poll to reach the client and its server")
    client.terminate()
    poller.join(20)
    assert outcome.get("reply") == (200, {})
    client.process.wait(20)
    log = client.log()
    assert "Server Shut Down" in log and "Traceback" not in log


def test_one_job_can_be_followed_in_json_logs_of_client_and_server(daemons):
    """With --logger allq.logs.json_observer and --log-jobs, client and server both
    log JSON events carrying the same job_id for its put, get and delete."""
    import socket

    keys = daemons.generate_keys()
    with socket.socket() as probe:  # a free port, so the JSON-logging server needs no log parse
        probe.bind((LOCALHOST, 0))
        port = probe.getsockname()[1]
    json_logs = ["--logger", "allq.logs.json_observer"]
    server = daemons.spawn("allq-server", ["--keys", str(keys.directory), "--log-jobs",
                                           "--listen", f"tcp:{port}:interface={LOCALHOST}"],
                           name="json-server", twistd_args=json_logs)
    wait_for_greeting(RunningServer(server, LOCALHOST, port, "?"))
    client = daemons.spawn("allq-client", ["--keys", str(keys.directory), "--log-jobs",
                                           "--servers", f"{LOCALHOST}:{port}",
                                           "--http", f"tcp:0:interface={LOCALHOST}"],
                           name="json-client", twistd_args=json_logs)

    def serving_port():
        for event in map(json.loads, filter(None, client.log().splitlines())):
            if "serving REST" in event.get("log_format", "") and "port" in event:
                return event["port"]
        return None

    http_port = wait_for(serving_port, lambda port: port is not None, timeout=20,
                         what="the JSON-logging client to log its REST port")
    api = Api(http_port)
    api.wait_until(lambda h: h["up"] == 1)
    job_id = api.put("followed", "x")
    status, job = api.call("GET", "/job", tube="followed")
    assert api.call("DELETE", "/job", job_id=job["id"])[0] == 200

    def actions(daemon):
        events = [json.loads(line) for line in daemon.log().splitlines() if line.strip()]
        return [e.get("action") for e in events if e.get("job_id") == job_id]

    wait_for(lambda: actions(server), lambda seen: len(seen) >= 3,
             what="the server to log the job's put, get and delete")
    assert actions(client) == ["put", "get", "delete"]
    assert actions(server) == ["put", "get", "delete"]
