"""The client's HTTP paths through real daemons: one ``allq-server`` and an
``allq-client`` per ``--http-parser``, driven over one raw keep-alive socket with
pipelined requests, as a worker library would.

Every read is bounded by a socket timeout; the daemons are stopped by the fixture.
"""

import json
import socket
import time

import httptools
import pytest

from tests.servers import LOCALHOST
from tests.test_client_integration import CLIENT_SERVING, Api

pytestmark = pytest.mark.integration


def read_responses(sock: socket.socket, count: int, timeout: float = 15.0) -> list:
    """Read ``count`` responses: ``(status, headers, body)``."""
    found = []

    class Reader:
        def on_message_begin(self):
            self.headers, self.body = {}, b""

        def on_header(self, name, value):
            self.headers[name.lower()] = value

        def on_body(self, body):
            self.body += body

        def on_message_complete(self):
            found.append((parser.get_status_code(), self.headers, self.body))

    parser = httptools.HttpResponseParser(Reader())
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while len(found) < count:
        assert time.monotonic() < deadline, f"only {len(found)} of {count} responses"
        data = sock.recv(65536)
        if not data:
            break
        parser.feed_data(data)
    return found


def request(method: str, path: str, body=None, extra: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {LOCALHOST}\r\n{extra}"
    if body is None:
        return (head + "\r\n").encode()
    data = json.dumps(body).encode()
    return (head + f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
            ).encode() + data


@pytest.mark.parametrize("parser", ["httptools", "twisted"])
def test_a_pipelined_worker_connection_through_the_daemons(daemons, parser):
    """Puts, a batch get, deletes, a fallback route and a 405, pipelined on one
    connection: answered in order, keep-alive, each request in the access log."""
    keys = daemons.generate_keys()
    [server] = daemons.start_servers(1, keys)
    client = daemons.spawn(
        "allq-client",
        ["--keys", str(keys.directory), "--servers", f"{server.host}:{server.port}",
         "--http", f"tcp:0:interface={LOCALHOST}", "--http-parser", parser, "--access-log"],
        name=f"client-{parser}")
    port = int(client.wait_for_log(CLIENT_SERVING)["port"])
    Api(port).wait_until(lambda health: health["up"] == 1)
    with socket.create_connection((LOCALHOST, port), timeout=15) as sock:
        sock.sendall(request("POST", "/job", {"tube": "pipe", "body": "one"})
                     + request("POST", "/multiple_job", {"tube": "pipe", "jobs": [
                         {"body": "two"}, {"body": "three"}]})
                     + request("GET", "/health")
                     + request("GET", "/multiple_job?tube=pipe&count=10")
                     + request("PATCH", "/job"))
        replies = read_responses(sock, 5)
        assert [status for status, _, _ in replies] == [200, 200, 200, 200, 405], replies
        jobs = json.loads(replies[3][2])["jobs"]
        assert sorted(job["body"] for job in jobs) == ["one", "three", "two"]
        sock.sendall(request("DELETE", "/multiple_job", {"job_ids": [j["id"] for j in jobs]},
                             extra="Connection: close\r\n"))
        [(status, headers, body)] = read_responses(sock, 1)
        assert status == 200 and headers[b"connection"] == b"close"
        assert len(json.loads(body)["job_ids"]) == 3
        assert sock.recv(10) == b""  # closed after the answer
    assert Api(port).call("GET", "/job", tube="pipe") == (200, {})
    log = client.log()
    assert '"POST /multiple_job HTTP/1.1" 200' in log
    assert '"PATCH /job HTTP/1.1" 405' in log
    assert "Traceback" not in log
