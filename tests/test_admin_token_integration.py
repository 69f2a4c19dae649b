"""``--admin-token`` through real daemons: a client listening on every interface
(0.0.0.0; the test connects to 127.0.0.1 only) refuses to start without a token, and
with one serves only requests that carry it, REST, ``/jobs`` and ``/metrics`` alike
(the dashboard's static page is served without it)
(the job routes through the httptools path, everything else through twisted.web)."""

import json
import urllib.error
import urllib.request

import pytest

from tests.servers import LOCALHOST
from tests.test_client_integration import CLIENT_SERVING

pytestmark = pytest.mark.integration

TOKEN = "integration-admin-token-0123456789"


def call(port, method, path, body=None, token=None):
    headers = {} if body is None else {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = "Bearer " + token
    request = urllib.request.Request(
        f"http://{LOCALHOST}:{port}{path}", method=method, headers=headers,
        data=None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_beyond_loopback_without_a_token_refuses_to_start(daemons, keys):
    client = daemons.spawn("allq-client", ["--keys", str(keys.directory),
                                           "--http", "tcp:0:interface=0.0.0.0"])
    assert client.wait() != 0
    assert "--admin-token" in client.log() and "ALLQ_ADMIN_TOKEN" in client.log()


def test_every_request_needs_the_token(daemons, keys):
    server = daemons.start_server(keys)
    client = daemons.spawn(
        "allq-client", ["--keys", str(keys.directory), "--servers",
                        f"{server.host}:{server.port}", "--http", "tcp:0:interface=0.0.0.0",
                        "--jsonl", "none", "--unix", "none"],
        env={"ALLQ_ADMIN_TOKEN": TOKEN})
    port = int(client.wait_for_log(CLIENT_SERVING)["port"])

    for method, path, body in (("POST", "/job", {"tube": "t", "body": "x"}),
                               ("GET", "/job?tube=t", None), ("GET", "/health", None),
                               ("GET", "/jobs?tube=t&state=ready", None),
                               ("GET", "/metrics", None)):
        for token in (None, "not-the-token-0123456789"):
            status, reply = call(port, method, path, body, token)
            assert status == 401, (method, path, status, reply)
            assert json.loads(reply)["error"] == "unauthorized"

    status, reply = call(port, "POST", "/job", {"tube": "t", "body": "hello"}, TOKEN)
    assert status == 200, reply
    job_id = json.loads(reply)["job_id"]
    status, reply = call(port, "GET", "/jobs?tube=t&state=ready", token=TOKEN)
    assert status == 200, reply
    page = json.loads(reply)
    assert page["total"] == 1 and [job["id"] for job in page["jobs"]] == [job_id]
    assert page["jobs"][0]["server"] == server.server_id
    status, reply = call(port, "GET", "/")  # the page holds no data: it asks for the token
    assert status == 200 and b"allq dashboard" in reply
    assert call(port, "GET", "/health", token=TOKEN)[0] == 200
