"""The REST API's red-team findings (issue 10), through a real allq-client and
allq-server: hostile requests get their clear refusal, the daemon keeps serving,
and a put whose server stalls answers 504 with the key that retries it safely."""

import json
import os
import signal
import socket
import time

import pytest

from test_client_integration import LOCALHOST, start_client, wait_for

pytestmark = pytest.mark.integration


def raw(port: int, request: bytes, timeout: float = 10.0) -> tuple[int, dict, float]:
    """Send raw bytes; the status, the JSON body and the seconds the answer took."""
    started = time.monotonic()
    with socket.create_connection((LOCALHOST, port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body), time.monotonic() - started


def _length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_hostile_requests_are_refused_and_the_client_keeps_serving(daemons, keys):
    [server] = daemons.start_servers(1, keys)
    api = start_client(daemons, keys, [server], "--max-body", "65536")
    api.wait_until(lambda h: h["up"] == 1)
    port = int(api.base.rsplit(":", 1)[1])
    body = b'{"tube":"t","body":"x"}'

    def post(headers: bytes, payload: bytes = body):
        return raw(port, b"POST /job HTTP/1.1\r\n" + headers + b"Content-Length: %d\r\n\r\n"
                   % len(payload) + payload)

    json_type = b"Content-Type: application/json\r\n"
    status, reply, _ = post(b"Host: rebound.example:%d\r\n" % port + json_type)
    assert (status, reply["error"]) == (421, "misdirected_request")
    status, reply, _ = post(b"Host: localhost\r\nOrigin: https://evil.example\r\n" + json_type)
    assert (status, reply["error"]) == (403, "forbidden")
    status, reply, _ = post(b"Host: localhost\r\nContent-Type: text/plain\r\n")
    assert (status, reply["error"]) == (415, "unsupported_media_type")
    status, reply, _ = post(b"Host: localhost\r\n" + json_type,
                            b'{"tube":"t","body":"x","ttl":1' + b"0" * 400 + b"}")
    assert (status, reply["error"]) == (400, "bad_request")
    # A gigabyte announced: refused from its Content-Length, nothing is read.
    status, reply, took = raw(port, b"POST /job HTTP/1.1\r\nHost: localhost\r\n" + json_type
                              + b"Content-Length: 1073741824\r\n\r\n" + b"x" * 1000)
    assert (status, reply["error"]) == (413, "too_large") and took < 5
    status, reply, _ = post(b"Host: localhost\r\n" + json_type)
    assert status == 200 and reply["action"] == "put"
    assert api.call("GET", "/job", tube="t")[1]["body"] == "x"


def test_a_put_to_a_stalled_server_is_504_and_its_retry_never_duplicates(daemons, keys):
    """Red-team finding 3: SIGSTOP the server during a put. The job is stored, the
    answer never comes: 504 outcome_unknown with a key; after SIGCONT, the put
    with that key answers the same job id, and the server holds one job."""
    [server] = daemons.start_servers(1, keys)
    api = start_client(daemons, keys, [server], "--request-timeout", "1", "--retry-budget", "2")
    api.wait_until(lambda h: h["up"] == 1)
    pid = server.daemon.process.pid
    # The put is sent, then the server stops before it can answer: stop it while
    # the request is in flight by stopping it first and letting the kernel queue it.
    os.kill(pid, signal.SIGSTOP)
    try:
        status, reply = api.call("POST", "/job", {"tube": "stall", "body": "once"})
    finally:
        os.kill(pid, signal.SIGCONT)
    assert status == 504, reply
    assert reply["error"] == "outcome_unknown"
    key = reply["idempotency_key"]
    assert key.startswith(server.server_id + ":")
    api.wait_until(lambda h: h["up"] == 1)
    status, again = api.call("POST", "/job", {"tube": "stall", "body": "once",
                                              "idempotency_key": key})
    assert status == 200, again
    status, servers = api.call("GET", "/stats")
    [tube] = [t for t in servers[0]["stats"] if t["tube"] == "stall"]
    assert tube["ready"] == 1  # stored once: by the first put, which the server ran on SIGCONT
    status, job = api.call("GET", "/job", tube="stall")
    assert job["id"] == again["job_id"]


def test_wrong_keys_say_why_in_health_and_errors_without_tracebacks(daemons, keys):
    """Newcomer finding 4: a client whose key the server does not authorize, and a
    client given another server's server.pub, each log one clear line (no
    traceback, however often they retry) and say why in /health and in the 503."""
    import shutil

    [server] = daemons.start_servers(1, keys)
    stranger = daemons.generate_keys("stranger")  # a key set the server never saw
    wrong_pub = stranger.directory.parent / "wrong-pub"
    shutil.copytree(keys.directory, wrong_pub)
    shutil.copy(stranger.directory / "server.pub", wrong_pub / "server.pub")
    for directory, expected, code in (
            (stranger.directory, "key not authorized by the server", "unknown_key"),
            (wrong_pub, "server.pub", "bad_proof")):
        refusals = server.daemon.log().count(f": {code}: ")
        api = start_client(daemons, type(keys)(directory, keys.client), [server],
                           "--retry-budget", "1")
        health = api.wait_until(lambda h: h["servers"][0].get("reason", "").find(expected) >= 0)
        assert health["up"] == 0
        status, reply = api.call("POST", "/job", {"tube": "t", "body": "x"})
        assert status == 503 and expected in reply["detail"], reply
        # Several refused attempts later (0.1 s doubling to 3 s apart)...
        wait_for(lambda: server.daemon.log().count(f": {code}: "), lambda n: n >= refusals + 4,
                 what=f"four more {code} refusals in the server's log", timeout=20)
        log = daemons._started[-1].log()
        assert "Traceback" not in log and "Unhandled" not in log, log[-2000:]
        assert log.count(f"server {server.host}:{server.port} down:") == 1, log[-2000:]
