"""beanstalkd client libraries from PyPI against the real daemons.

``greenstalk`` (every method it exposes) over TCP and over a UNIX socket, and
``pystalk`` over TCP, against one ``allq-client --beanstalk`` in front of two
``allq-server`` processes; and a worker blocked in ``reserve`` while one of the
servers is killed gets a job from the other.
"""

import os
import re
import signal
import socket
import threading
import time

import pytest

greenstalk = pytest.importorskip("greenstalk")
pystalk = pytest.importorskip("pystalk")

from servers import (  # noqa: E402
    LOCALHOST,
    SERVER_LISTENING,
    Daemons,
    RunningServer,
    wait_for_greeting,
)
from test_client_integration import CLIENT_SERVING, Api  # noqa: E402

BEANSTALK_SERVING = re.compile(r"serving the beanstalkd protocol on .*?port=(?P<port>\d+)")
UNIX_SERVING = re.compile(r"serving the beanstalkd protocol on UNIXAddress")


def start_beanstalk_client(daemons, keys, servers, socket_path, *args):
    addresses = ",".join(f"{s.host}:{s.port}" for s in servers)
    client = daemons.spawn(
        "allq-client",
        ["--keys", str(keys.directory), "--servers", addresses,
         "--http", f"tcp:0:interface={LOCALHOST}",
         "--beanstalk", f"tcp:0:interface={LOCALHOST}", *args],
        name="client-tcp",
    )
    api = Api(int(client.wait_for_log(CLIENT_SERVING)["port"]))
    port = int(client.wait_for_log(BEANSTALK_SERVING)["port"])
    unix = daemons.spawn(
        "allq-client",
        ["--keys", str(keys.directory), "--servers", addresses,
         "--http", f"tcp:0:interface={LOCALHOST}", "--beanstalk", f"unix:{socket_path}"],
        name="client-unix",
    )
    unix.wait_for_log(UNIX_SERVING)
    api.wait_until(lambda h: h["up"] == len(servers))
    return api, port


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """Two servers, a client on TCP and one on a UNIX socket, both in front of them."""
    directory = tmp_path_factory.mktemp("beanstalk")
    with Daemons(directory) as daemons:
        keys = daemons.generate_keys()
        servers = daemons.start_servers(2, keys)
        socket_path = str(directory / "beanstalk.sock")
        api, port = start_beanstalk_client(daemons, keys, servers, socket_path)
        yield {"port": port, "socket": socket_path, "servers": servers, "api": api}


def tcp(federation, **kwargs):
    return greenstalk.Client((LOCALHOST, federation["port"]), **kwargs)


def test_greenstalk_every_method_over_tcp(federation):
    """Every greenstalk method gets beanstalkd's answer through allq."""
    with tcp(federation, use="gs-a", watch="gs-a") as client:
        assert client.using() == "gs-a"
        assert client.watching() == ["gs-a"]
        ids = [client.put(f"job {i}", priority=10 + i, ttr=30) for i in range(4)]
        assert len(set(ids)) == 4
        # Priority order holds within each server; servers are asked in random order.
        assert client.peek_ready().body == "job 0"  # the most urgent over both servers
        assert client.peek(ids[2]).body == "job 2"
        job = client.reserve(timeout=5)
        assert job.body in {"job 0", "job 1"} and job.id in ids
        stats = client.stats_job(job)
        assert stats["state"] == "reserved" and stats["reserves"] == 1
        assert stats["tube"] == "gs-a" and stats["ttr"] == 30 and stats["file"] == 0
        client.touch(job)
        client.release(job, delay=60)
        assert client.stats_job(job)["state"] == "delayed"
        assert client.stats_job(job)["releases"] == 1
        assert client.peek_delayed().id == job.id
        client.kick_job(job)
        assert client.stats_job(job)["kicks"] == 1
        job = client.reserve(timeout=5)
        client.bury(job)
        assert client.peek_buried().id == job.id
        assert client.stats_job(job)["buries"] == 1
        assert client.kick(10) == 1
        job = client.reserve_job(ids[3])
        assert job.body == "job 3"
        client.delete(job)
        with pytest.raises(greenstalk.NotFoundError):
            client.peek(ids[3])
        tube = client.stats_tube("gs-a")
        assert tube["current-jobs-ready"] == 3 and tube["name"] == "gs-a"
        assert "gs-a" in client.tubes()
        stats = client.stats()
        assert stats["current-jobs-ready"] >= 3 and stats["max-job-size"] == 65535
        assert client.watch("gs-b") == 2
        assert client.ignore("gs-b") == 1
        with pytest.raises(greenstalk.NotIgnoredError):
            client.ignore("gs-a")
        client.pause_tube("gs-a", 60)
        with pytest.raises(greenstalk.TimedOutError):
            client.reserve(timeout=0)
        client.pause_tube("gs-a", 0)
        for _ in range(3):
            client.delete(client.reserve(timeout=5))
        with pytest.raises(greenstalk.TimedOutError):
            client.reserve(timeout=1)


def test_binary_bodies_go_through_unchanged_and_read_sensibly_over_rest(federation):
    """Any byte, \\r\\n and NUL included, comes back as it was put; REST shows base64."""
    body = bytes(range(256)) + b"\r\nput 0 0 1 1\r\n"
    with tcp(federation, encoding=None, use="bin", watch="bin") as client:
        job_id = client.put(body)
        job = client.reserve(timeout=5)
        assert (job.id, job.body) == (job_id, body)
        client.release(job)
        status, peeked = federation["api"].call("GET", "/peek", tube="bin")
        assert status == 200 and peeked["body_encoding"] == "base64", peeked
        assert "body" not in peeked
        client.delete(client.reserve(timeout=5))


def test_greenstalk_over_a_unix_socket(federation):
    """The same protocol on a UNIX socket endpoint."""
    with greenstalk.Client(federation["socket"], use="unix", watch="unix") as client:
        job_id = client.put("over unix")
        job = client.reserve(timeout=5)
        assert (job.id, job.body) == (job_id, "over unix")
        client.delete(job)


def test_pystalk(federation):
    """A second client library: put, reserve, stats, release, delete."""
    client = pystalk.BeanstalkClient(LOCALHOST, federation["port"], auto_decode=True)
    try:
        client.use("py")
        client.watch("py")
        status, job_id = client.put_job("from pystalk")
        assert status == b"INSERTED"
        job = next(client.reserve_iter())
        assert (job.job_id, job.job_data) == (job_id, "from pystalk")
        assert client.stats_job(job_id)["state"] == "reserved"
        client.release_job(job_id)
        job = next(client.reserve_iter())
        client.delete_job(job.job_id)
        assert client.stats_tube("py")["current-jobs-ready"] == 0
    finally:
        client.close()


def test_reservations_belong_to_their_connection(federation):
    """Another connection gets NOT_FOUND; closing the holder releases its job at once."""
    with tcp(federation, use="own", watch="own") as holder, \
            tcp(federation, use="own", watch="own") as other:
        holder.put("mine")
        job = holder.reserve(timeout=5)
        for act in (other.delete, other.release, other.bury, other.touch):
            with pytest.raises(greenstalk.NotFoundError):
                act(job)
        holder.close()
        again = other.reserve(timeout=5)
        assert again.id == job.id
        other.delete(again)


def test_a_worker_blocked_in_reserve_survives_a_killed_server(tmp_path):
    """SIGKILL one of two servers while a worker waits in reserve: the job put
    afterwards (on the survivor) reaches the worker."""
    with Daemons(tmp_path) as daemons:
        keys = daemons.generate_keys()
        servers = daemons.start_servers(2, keys)
        _, port = start_beanstalk_client(daemons, keys, servers, str(tmp_path / "b.sock"),
                                         "--retry-budget", "5", "--request-timeout", "3")
        got = {}

        def worker():
            with greenstalk.Client((LOCALHOST, port), watch="kill") as client:
                job = client.reserve(timeout=30)
                got["body"] = job.body
                client.delete(job)

        thread = threading.Thread(target=worker, daemon=True)
        thread.start()
        time.sleep(0.5)  # lets the worker block in reserve (not a timed assertion)
        os.kill(servers[0].daemon.process.pid, signal.SIGKILL)
        servers[0].daemon.process.wait(10)
        with greenstalk.Client((LOCALHOST, port), use="kill") as producer:
            producer.put("after the kill")
        thread.join(30)
        assert got == {"body": "after the kill"}


def test_bad_input_gets_errors_and_the_client_keeps_serving(federation):
    """Raw frames: unknown command, bad format, no CRLF, a too-big job."""
    with socket.create_connection((LOCALHOST, federation["port"]), timeout=10) as raw:
        raw.sendall(b"frobnicate\r\nput x 0 1 1\r\nput 0 0 1 2\r\nabXY"
                    b"put 0 0 1 70000\r\n" + b"x" * 70000 + b"\r\n" + b"use " + b"t" * 300
                    + b"\r\nlist-tube-used\r\n")
        expected = (b"UNKNOWN_COMMAND\r\nBAD_FORMAT\r\nEXPECTED_CRLF\r\n"
                    b"JOB_TOO_BIG\r\nBAD_FORMAT\r\nUSING default\r\n")
        received = b""
        while len(received) < len(expected):
            chunk = raw.recv(4096)
            assert chunk, received
            received += chunk
        assert received == expected
    with tcp(federation) as client:
        assert client.using() == "default"


def test_a_persisted_binary_job_survives_a_server_restart(tmp_path):
    """A binary body put through the beanstalkd port, on a server with --data-dir,
    comes back byte for byte after the server restarts."""
    body = b"\x00\xff\xfe\r\n" * 64
    with Daemons(tmp_path) as daemons:
        keys = daemons.generate_keys()
        data = tmp_path / "data"
        server = daemons.start_server(keys, ["--data-dir", str(data), "--fsync", "always"])
        api, port = start_beanstalk_client(daemons, keys, [server], str(tmp_path / "b.sock"))
        with greenstalk.Client((LOCALHOST, port), encoding=None, use="keep") as client:
            client.put(body)
        server.daemon.stop()
        restarted = daemons.spawn(
            "allq-server", ["--keys", str(keys.directory), "--data-dir", str(data),
                            "--listen", f"tcp:{server.port}:interface={LOCALHOST}"],
            name="restarted")
        restarted.wait_for_log(SERVER_LISTENING)
        wait_for_greeting(RunningServer(restarted, server.host, server.port, server.server_id))
        api.wait_until(lambda h: h["up"] == 1)
        with greenstalk.Client((LOCALHOST, port), encoding=None, watch="keep") as client:
            job = client.reserve(timeout=10)
            assert job.body == body
            client.delete(job)
