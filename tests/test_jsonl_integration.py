"""AllQueue's local JSON-lines API through the real daemons: ``twistd allq-server``
×2 and ``twistd allq-client`` on 127.0.0.1, driven over TCP and the UNIX socket
with plain blocking sockets, as AllQueue's Ruby gem (``echo | socat``) and its
etcd updater drive them. Every loop is bounded in count and time."""

import json
import os
import re
import socket
import stat
import time

import pytest

from tests.servers import LOCALHOST
from tests.test_client_integration import Api, CLIENT_SERVING, wait_for

pytestmark = pytest.mark.integration

JSONL_SERVING = re.compile(r"serving JSON lines on (?P<host>[0-9.]+):(?P<port>\d+)")
UNIX_SERVING = re.compile(r"serving JSON lines on UNIX socket (?P<path>\S+)")
MAX_LINE = 8192
IDLE = 2.0


class Lines:
    """One blocking JSON-lines connection (TCP or UNIX)."""

    def __init__(self, address, family=socket.AF_INET, timeout: float = 15.0) -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        self.pending = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, action: str, **params) -> None:
        self.send(json.dumps({"action": action, "params": params}).encode() + b"\n")

    def reply(self) -> object:
        while b"\n" not in self.pending:
            chunk = self.sock.recv(65536)
            assert chunk, f"connection closed; unanswered: {self.pending[:200]!r}"
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)

    def ask(self, action: str, **params) -> object:
        self.request(action, **params)
        return self.reply()

    def closed_by_peer(self) -> bool:
        """Read to the end: whether the client closed (b"" after any replies)."""
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                return True
            self.pending += chunk

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def local(daemons, tmp_path):
    """Two servers and a client serving JSON lines on a free port and a socket."""
    keys = daemons.generate_keys()
    servers = daemons.start_servers(2, keys)
    socket_path = str(tmp_path / "c.sock")
    client = daemons.spawn("allq-client", [
        "--keys", str(keys.directory),
        "--servers", ",".join(f"{s.host}:{s.port}" for s in servers),
        "--http", f"tcp:0:interface={LOCALHOST}",
        "--jsonl", f"tcp:0:interface={LOCALHOST}", "--unix", socket_path,
        "--jsonl-idle-timeout", str(IDLE), "--max-body", str(MAX_LINE),
    ], name="client")
    api = Api(int(client.wait_for_log(CLIENT_SERVING)["port"]))
    port = int(client.wait_for_log(JSONL_SERVING)["port"])
    client.wait_for_log(UNIX_SERVING)
    api.wait_until(lambda h: h["up"] == 2)
    connections = []

    def connect(unix: bool = False) -> Lines:
        lines = (Lines(socket_path, socket.AF_UNIX) if unix
                 else Lines((LOCALHOST, port)))
        connections.append(lines)
        return lines

    yield {"connect": connect, "client": client, "servers": servers, "socket": socket_path,
           "port": port, "keys": keys, "api": api}
    for lines in connections:
        lines.close()


def test_every_action_over_tcp(local):
    """Each action answers in AllQueue's envelope (and allq's extras in the same style)."""
    lines = local["connect"]()
    put = lines.ask("put", tube="t", body="hello", ttl=60, priority=5, delay=0, parent_id=None)
    job_id = put["job"]["job_id"]
    assert put == {"response": {"action": "put", "job_id": job_id}, "job": {"job_id": job_id}}
    got = lines.ask("get", tube="t")
    job = {"job_id": job_id, "body": "hello", "tube": "t", "expireds": "0", "releases": "0"}
    assert got == {"response": {"action": "get", "job": job}, "job": job}
    assert lines.ask("touch", job_id=job_id) == {"response": {"action": "touch",
                                                               "job_id": job_id}}
    assert lines.ask("release", job_id=job_id, delay=0)["response"]["job_id"] == job_id
    assert lines.ask("peek", tube="t")["job"]["job_id"] == job_id
    lines.ask("get", tube="t")
    assert lines.ask("bury", job_id=job_id)["response"] == {"action": "bury", "job_id": job_id}
    assert lines.ask("peek", tube="t", buried="true")["job"]["job_id"] == job_id
    assert lines.ask("kick", tube="t")["response"]["job_id"] == job_id
    assert lines.ask("get", tube="t", delete="true")["job"]["job_id"] == job_id
    assert lines.ask("get", tube="t") == {"response": {"action": "get", "job": {}}, "job": {}}

    ids = [lines.ask("put", tube="m", body=str(i))["job"]["job_id"] for i in range(3)]
    many = lines.ask("get_multiple_jobs", tube="m", count=3)
    assert sorted(j["job_id"] for j in many["jobs"]) == sorted(ids)
    assert lines.ask("done", job_id=ids[0])["response"] == {"action": "done", "job_id": ids[0]}
    assert lines.ask("delete", job_id=ids[1])["response"]["action"] == "delete"
    batch = lines.ask("delete_multiple_jobs", job_ids=[ids[2]])
    assert batch["response"] == {"action": "delete", "job_ids": [ids[2]]}
    put_many = lines.ask("put_multiple_jobs", tube="m", jobs=[{"body": "a"}, {"body": "b"}])
    assert len(put_many["response"]["job_ids"]) == 2
    assert lines.ask("clear", tube="m", cache_type="all")["response"] == {"action": "clear",
                                                                           "cleared": 2}

    parent = lines.ask("set_parent_job", tube="p", body="after", limit=1, timeout=3600,
                       run_on_timeout="false", delay=0)
    parent_id = parent["job"]["job_id"]
    assert parent["response"]["action"] == "set_parent"
    child = lines.ask("put", tube="c", body="kid", parent_id=parent_id)["job"]["job_id"]
    assert child.split(",")[0] == parent_id.split(",")[0]  # routed to the parent's server
    assert lines.ask("set_children_started", job_id=parent_id)["response"]["action"] == \
        "set_children_started"
    lines.ask("get", tube="c")
    lines.ask("done", job_id=child)
    assert lines.ask("get", tube="p", wait=5)["job"]["job_id"] == parent_id

    assert lines.ask("throttle", tube="s", tps=4)["response"]["value"] == "4"
    assert lines.ask("pause", tube="s")["response"] == {"action": "pause", "tube": "s",
                                                         "servers": 2}
    assert lines.ask("unpause", tube="s")["response"]["action"] == "unpause"
    assert lines.ask("fair", tube="s", policy="round_robin")["response"]["servers"] == 2
    assert lines.ask("max_size", tube="s", max_size=10)["response"]["max_size"] == 10
    assert lines.ask("drain", tube="s")["response"]["action"] == "drain"
    assert lines.ask("undrain", tube="s")["response"]["action"] == "undrain"

    stats = lines.ask("stats")
    assert set(stats) == {f"{s.server_id},{s.host}:{s.port}" for s in local["servers"]}
    for server in stats.values():
        assert set(server["global"]) == {"action_count", "job_get", "job_put"}
        assert all(isinstance(v, str) for tube in server.values() for v in tube.values())
    assert lines.ask("ping") == {s.server_id: "true" for s in local["servers"]}

    first = f"{local['servers'][0].host}:{local['servers'][0].port}"
    drained = lines.ask("drain", server_id=first)
    assert (drained["server_id"], drained["draining"]) == (first, True)
    assert lines.ask("undrain", server_id=first)["draining"] is False


def test_admin_over_the_unix_socket(local, tmp_path):
    """The socket is mode 0600 and serves the same API; update_servers (what
    AllQueue's etcd updater sends) and add_server change the federation."""
    assert stat.S_IMODE(os.stat(local["socket"]).st_mode) == 0o600
    lines = local["connect"](unix=True)
    first, second = (f"{s.host}:{s.port}" for s in local["servers"])
    assert lines.ask("update_servers", servers=first) == {}
    health = local["api"].wait_until(lambda h: h["total"] == 1)
    assert [s["address"] for s in health["servers"]] == [first]
    assert lines.ask("add_server", server_url=second) == {"server_url": second}
    local["api"].wait_until(lambda h: h["up"] == 2)
    assert lines.ask("put", tube="u", body="x")["response"]["action"] == "put"


def test_socat_style_half_close(local):
    """``echo LINE | socat - tcp:...`` (the Ruby gem's transport) writes, half-closes,
    and reads the reply; a last line without a newline is answered too."""
    for unix in (False, True):
        lines = local["connect"](unix)
        lines.send(b'{"action": "put", "params": {"tube": "h", "body": "1"}}\n'
                   b'{"action": "get", "params": {"tube": "h"}}')
        lines.sock.shutdown(socket.SHUT_WR)
        assert lines.reply()["response"]["action"] == "put"
        assert lines.reply()["job"]["body"] == "1"
        assert lines.closed_by_peer()


def test_pipelined_requests_answer_in_order(local):
    """Hundreds of requests sent at once come back one line each, in order."""
    lines = local["connect"]()
    count = 300
    lines.send(b"".join(
        json.dumps({"action": "put", "params": {"tube": "pipe", "body": str(i)}}).encode()
        + b"\n" for i in range(count)))
    ids = [lines.reply()["job"]["job_id"] for _ in range(count)]
    lines.send(b"".join(
        json.dumps({"action": "get", "params": {"tube": "pipe", "delete": True}}).encode()
        + b"\n" for _ in range(count)))
    bodies = [lines.reply()["job"]["body"] for _ in range(count)]
    assert len(set(ids)) == count
    assert sorted(bodies, key=int) == [str(i) for i in range(count)]


def test_bad_input_gets_errors_and_others_are_unaffected(local):
    """Not JSON, binary garbage, unknown action, wrong types: an error reply each
    and the connection goes on; a line over SIZE_LIMIT, a client that never
    sends a newline, and an idle client are closed; other connections and the
    daemon keep serving."""
    bystander = local["connect"]()
    job_id = bystander.ask("put", tube="keep", body="precious")["job"]["job_id"]

    lines = local["connect"]()
    lines.send(b"this is not json\n\xff\xfe\x00garbage\x01\n")
    assert lines.reply()["response"]["code"] == "bad_request"
    assert lines.reply()["response"]["code"] == "bad_request"
    assert lines.ask("explode")["response"]["code"] == "unknown_action"
    wrong = lines.ask("put", tube=["t"], body="x")["response"]
    assert (wrong["action"], wrong["code"]) == ("put", "bad_request") and "tube" in wrong["error"]
    assert lines.ask("get", tube="t", count="lots")["response"]["code"] == "bad_request"
    assert lines.ask("touch", job_id="nope")["response"]["code"] == "bad_request"
    assert lines.ask("ping")  # still serving this connection

    too_long = local["connect"]()
    too_long.send(b'{"action": "put", "params": {"tube": "t", "body": "'
                  + b"x" * MAX_LINE + b'"}}\n')
    assert too_long.reply()["response"]["code"] == "too_large"
    assert too_long.closed_by_peer()

    no_newline = local["connect"]()
    for _ in range(4):
        no_newline.send(b"z" * (MAX_LINE // 2))
    assert no_newline.reply()["response"]["code"] == "too_large"
    assert no_newline.closed_by_peer()

    assert bystander.ask("get", tube="keep")["job"]["job_id"] == job_id
    assert bystander.ask("done", job_id=job_id)["response"]["action"] == "done"

    silent = local["connect"]()
    started = time.monotonic()
    assert silent.closed_by_peer()
    assert time.monotonic() - started >= IDLE * 0.9
    assert local["connect"]().ask("ping")  # the daemon serves on


def test_socket_removed_on_shutdown_and_stale_one_replaced(daemons, local):
    """Stopping the client removes its socket; a socket file left by a killed
    client is replaced at the next start; a live one stops a second client."""
    keys, socket_path = local["keys"], local["socket"]
    server = local["servers"][0]
    common = ["--keys", str(keys.directory), "--servers", f"{server.host}:{server.port}",
              "--http", f"tcp:0:interface={LOCALHOST}", "--jsonl", "none",
              "--unix", socket_path]
    second = daemons.spawn("allq-client", common, name="second")
    assert second.wait() != 0
    assert f"cannot listen on {socket_path}: another process" in second.log()

    local["client"].stop()
    assert not os.path.exists(socket_path)

    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(socket_path)  # as a SIGKILLed client leaves it
    stale.close()
    third = daemons.spawn("allq-client", common, name="third")
    third.wait_for_log(UNIX_SERVING)
    lines = Lines(socket_path, socket.AF_UNIX)
    try:
        reply = wait_for(lambda: lines.ask("ping"), bool, what="the server to be up")
        assert reply == {server.server_id: "true"}
    finally:
        lines.close()


def test_allqueue_workflow_with_noop_join_and_caller_ids(local):
    """AllQueue's workflow as its clients write it, over two servers: a parent and a
    noop join put with their own ids, children naming the join by its id; the join
    never runs and the parent does once the children are done."""
    lines = local["connect"]()
    top = lines.ask("set_parent_job", tube="report", body="sum", limit=1, id="wf-top")
    lines.ask("put", tube="filler", body="x")  # the round robin moves on
    join = lines.ask("set_parent_job", tube="join", body="", noop=True, id="wf-join",
                     parent_id="wf-top", limit="", delay=0)
    assert join["response"]["action"] == "set_parent", join
    kids = [lines.ask("put", tube="work", body=str(n), parent_id="wf-join")["job"]["job_id"]
            for n in range(3)]
    assert {kid.split(",")[0] for kid in kids} == {top["job"]["job_id"].split(",")[0]}
    again = lines.ask("set_parent_job", tube="join", body="", id="wf-join")["response"]
    assert again["code"] == "wrong_state"
    assert lines.ask("set_children_started", job_id="wf-join")["response"]["action"] == \
        "set_children_started"
    for _ in kids:
        job = lines.ask("get", tube="work", wait=5)["job"]
        assert lines.ask("done", job_id=job["job_id"])["response"]["action"] == "done"
    assert lines.ask("get", tube="report", wait=5)["job"]["job_id"] == top["job"]["job_id"]
    assert lines.ask("get", tube="join")["job"] == {}
