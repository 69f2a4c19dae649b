"""The README's local recipes, run as a user runs them.

* ``scripts/run-federation.sh``: three servers and two clients on localhost; a job put
  through one client is got through the other; Ctrl-C stops every process it started.
* The README's worker example, extracted from README.md and run against real daemons:
  it does jobs, releases the ones that fail, waits out a client restart, and stops on
  SIGTERM (so the example cannot rot).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.servers import LOCALHOST, POLL_INTERVAL, REPO_ROOT, START_TIMEOUT, Daemon
from tests.shell import free_ports, get_json, shell_environment

pytestmark = pytest.mark.integration
#: The virtualenv running these tests: the scripts use its twistd and allq.
VENV = str(Path(sys.executable).parent.parent)
CLIENT_SERVING = re.compile(r"serving REST on (?P<host>\S+):(?P<port>\d+) ")


def call(method: str, port: int, path: str, params: dict | None = None,
         body: object = None) -> tuple[int, object]:
    """One REST call to the client on ``port``: its status and JSON reply."""
    url = f"http://{LOCALHOST}:{port}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={} if data is None else {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def wait_for(predicate, what: str, timeout: float = START_TIMEOUT, log=lambda: ""):
    """Poll ``predicate`` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"{what} within {timeout:g} s\n{log()}"
        time.sleep(POLL_INTERVAL)
    return value


def group_alive(pgid: int) -> bool:
    """Whether any process is left in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def federation(tmp_path):
    """scripts/run-federation.sh on free ports; its process group is killed at the end."""
    ports = free_ports(5)
    out = tmp_path / "run-federation.out"
    env = shell_environment({
        "SERVER_PORTS": " ".join(map(str, ports[:3])),
        "HTTP_PORTS": " ".join(map(str, ports[3:])),
        "ALLQ_RUN_DIR": str(tmp_path / "state"),
        "ALLQ_VENV": VENV,
    })
    with open(out, "wb") as log:
        process = subprocess.Popen(["bash", str(REPO_ROOT / "scripts" / "run-federation.sh")],
                                   cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    process.ports = ports
    process.out = out
    try:
        yield process
    finally:
        if group_alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def test_run_federation_serves_across_clients_and_ctrl_c_stops_everything(federation):
    """3 servers, 2 clients: put via one, get via the other; Ctrl-C leaves no process."""
    servers, clients = federation.ports[:3], federation.ports[3:]
    output = lambda: federation.out.read_text(errors="replace")  # noqa: E731
    wait_for(lambda: "allq federation is running" in output() or federation.poll() is not None,
             "the federation started", timeout=60, log=output)
    assert federation.poll() is None, output()
    for port in clients:
        status, health = call("GET", port, "/health")
        assert status == 200 and health["up"] == health["total"] == 3, health
        assert {s["address"] for s in health["servers"]} == {f"127.0.0.1:{p}" for p in servers}
    status, put = call("POST", clients[0], "/job", body={"tube": "across", "body": "hello"})
    assert status == 200, put
    status, job = call("GET", clients[1], "/job", {"tube": "across", "delete": "true", "wait": 5})
    assert status == 200 and (job["id"], job["body"]) == (put["job_id"], "hello"), job

    os.killpg(federation.pid, signal.SIGINT)  # what Ctrl-C in its terminal sends
    assert federation.wait(20) == 130, output()
    wait_for(lambda: not group_alive(federation.pid), "every daemon stopped", log=output)
    for port in clients:
        with pytest.raises(OSError):
            get_json(f"http://{LOCALHOST}:{port}/health", timeout=2)


def readme_worker_example() -> str:
    """The Python block of README.md's worker example, as written there."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    after = readme.partition("A worker needs nothing but HTTP, and in Python")[2]
    assert after, "README.md has no worker example"
    return after.partition("```python\n")[2].partition("\n```")[0] + "\n"


def start_client_on(daemons, keys, server, port: int, name: str) -> Daemon:
    """An allq-client on ``port`` for ``server``, once it serves and sees the server."""
    client = daemons.spawn("allq-client", [
        "--keys", str(keys.directory), "--servers", f"{server.host}:{server.port}",
        "--http", f"tcp:{port}:interface={LOCALHOST}"], name=name)
    client.wait_for_log(CLIENT_SERVING)
    wait_for(lambda: call("GET", port, "/health")[1].get("up") == 1, "the server up",
             log=client.log)
    return client


def test_the_readme_worker_example_runs_as_written(daemons, keys, tmp_path):
    """README's allq.worker: does jobs, releases a failing one with backoff (buried in
    the end, with its error), waits out a client restart, and stops on SIGTERM with
    status 0."""
    server = daemons.start_server(keys)
    [port] = free_ports(1)
    client = start_client_on(daemons, keys, server, port, "client")
    for body in ("hello 1", "hello 2", "   "):  # the blank one fails in send_email
        status, reply = call("POST", port, "/job", body={"tube": "emails", "body": body})
        assert status == 200, reply

    script = tmp_path / "worker.py"
    script.write_text(readme_worker_example(), encoding="utf-8")
    out = tmp_path / "worker.out"
    env = shell_environment({"ALLQ_URL": f"http://{LOCALHOST}:{port}"})
    with open(out, "wb") as log:
        worker = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env,
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    output = lambda: out.read_text(errors="replace")  # noqa: E731
    try:
        wait_for(lambda: "sent: hello 1" in output() and "sent: hello 2" in output(),
                 "two jobs done", log=output)
        # The blank job fails each time: released, got again, ... until it is buried.
        buried = wait_for(lambda: call("GET", port, "/peek", {"tube": "emails", "buried": "true"})[1],
                          "the failing job buried", log=output)
        assert buried["body"] == "   " and "released, ready again in" in output(), (
            buried, output())
        assert "ValueError: empty email body" in buried["error"], buried
        assert call("GET", port, "/peek", {"tube": "emails"})[1] in ({}, None)  # none ready

        # The client goes away for a while: the worker waits, then goes on.
        assert client.stop() == -signal.SIGTERM
        wait_for(lambda: "client_unreachable" in output(), "the worker noticed", log=output)
        assert worker.poll() is None, output()
        start_client_on(daemons, keys, server, port, "client-again")
        status, reply = call("POST", port, "/job", body={"tube": "emails", "body": "hello 3"})
        assert status == 200, reply
        wait_for(lambda: "sent: hello 3" in output(), "the job done after the restart",
                 timeout=30, log=output)

        worker.send_signal(signal.SIGTERM)
        assert worker.wait(15) == 0, output()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert output().rstrip().endswith("worker stopped"), output()
    assert "Traceback" not in output(), output()
    assert call("GET", port, "/peek", {"tube": "emails"})[1] in ({}, None)  # all done
