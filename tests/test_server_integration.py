"""Integration tests: the real ``twistd allq-server`` process on 127.0.0.1.

Each test starts its own daemon through :mod:`tests.servers` (always stopped in the
fixture's finalizer) and talks to it with the real client,
:func:`allq.peer.connection.connect`, on the real reactor (pytest-twisted).
"""

import signal
from contextlib import asynccontextmanager

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from allq.peer.connection import ServerConnection, connect
from allq.errors import ConnectionLost, TooLarge
from allq.wire.keys import ClientKeys

from tests.servers import RunningServer

pytestmark = pytest.mark.integration
TIMEOUT = 10.0


@pytest.fixture
def server(daemons, keys) -> RunningServer:
    return daemons.start_server(keys)


def reactor():
    """The global reactor, imported late: pytest-twisted installs it at start-up."""
    from twisted.internet import reactor

    return reactor


async def open_connection(server: RunningServer, client_keys: ClientKeys) -> ServerConnection:
    """A ready client connection, or the handshake's failure within TIMEOUT."""
    d = connect(reactor(), server.endpoint, client_keys, request_timeout=TIMEOUT)
    return await d.addTimeout(TIMEOUT, reactor())


@asynccontextmanager
async def connected(server: RunningServer, client_keys: ClientKeys):
    """A ready client connection, closed (and waited for) when the block ends."""
    connection = await open_connection(server, client_keys)
    try:
        yield connection
    finally:
        connection.close()
        await connection.lost.addTimeout(TIMEOUT, reactor())


class RawClient(Protocol):
    """Records what the server sends; ``closed`` fires with it when the server hangs up."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason) -> None:
        self.closed.callback(self.received)


async def raw_exchange(server: RunningServer, data: bytes) -> list[bytes]:
    """Send ``data`` on a plain TCP connection; the lines the server sent before closing."""
    endpoint = TCP4ClientEndpoint(reactor(), server.host, server.port)
    client = await connectProtocol(endpoint, RawClient())
    client.transport.write(data)
    received = await client.closed.addTimeout(TIMEOUT, reactor())
    return received.split(b"\n")


@pytest_twisted.ensureDeferred
async def test_put_get_done_and_stats(server, keys):
    """A job goes put → get → done through the real client, and stats count it."""
    async with connected(server, keys.client) as connection:
        assert connection.server_id == server.server_id
        put = await connection.request("put", {"tube": "work", "body": "hello"})
        assert put["job_id"].startswith(f"{server.server_id},")
        (job,) = (await connection.request("get", {"tube": "work"}))["jobs"]
        assert (job["job_id"], job["body"]) == (put["job_id"], "hello")
        assert await connection.request("done", {"job_id": job["job_id"]}) == put
        stats = await connection.request("stats")
    assert stats["server_id"] == server.server_id
    assert {k: stats["global"][k] for k in ("action_count", "job_put", "job_get", "jobs")} == {
        "action_count": 4, "job_put": 1, "job_get": 1, "jobs": 0,
    }
    (tube,) = stats["tubes"]
    assert (tube["tube"], tube["ready"], tube["reserved"]) == ("work", 0, 0)


@pytest_twisted.ensureDeferred
async def test_an_unauthorized_client_key_is_refused(daemons, server, keys):
    """A client whose key is not in authorized_keys fails to connect; others keep working."""
    async with connected(server, keys.client) as connection:
        other = daemons.generate_keys("other")
        stranger = ClientKeys(other.client.secret, keys.client.server_public)
        with pytest.raises(ConnectionLost, match="unknown_key"):
            await open_connection(server, stranger)
        assert await connection.request("ping") == {"server_id": server.server_id}


@pytest_twisted.ensureDeferred
async def test_garbage_and_oversized_lines_are_refused(daemons, keys):
    """Raw garbage and oversized lines get ERROR lines; the real client stays served."""
    server = daemons.start_server(keys, ["--max-line-length", "2048"])
    async with connected(server, keys.client) as connection:
        challenge, error, end = await raw_exchange(server, b"\x16\x03\x01\x02\x00 garbage\n")
        assert challenge.startswith(b"ALLQ1 ")
        assert error.startswith(b"ERROR bad_hello ")
        assert end == b""
        challenge, error, end = await raw_exchange(server, b"A" * 5000)
        assert error.startswith(b"ERROR too_large ")
        async with connected(server, keys.client) as greedy:
            with pytest.raises(ConnectionLost, match="too_large"):
                await greedy.request("put", {"tube": "t", "body": "x" * 3000})
        assert await connection.request("ping") == {"server_id": server.server_id}


@pytest_twisted.ensureDeferred
async def test_max_job_size_rejects_a_larger_body(daemons, keys):
    """With --max-job-size 10 a 10-byte body is stored and an 11-byte one is too_large."""
    server = daemons.start_server(keys, ["--max-job-size", "10"])
    async with connected(server, keys.client) as connection:
        assert "job_id" in await connection.request("put", {"tube": "t", "body": "x" * 10})
        with pytest.raises(TooLarge) as error:
            await connection.request("put", {"tube": "t", "body": "x" * 11})
        assert error.value.code == "too_large"


def test_a_server_without_keys_refuses_to_start(daemons):
    """Started without keys, the daemon exits non-zero and prints how to make keys."""
    daemon = daemons.spawn("allq-server", ["--listen", "tcp:0:interface=127.0.0.1"])
    assert daemon.wait() != 0
    log = daemon.log()
    assert "refusing to start" in log
    assert "allq keys generate" in log
    assert "twistd -n --pidfile= allq-server --keys" in log


def test_sigterm_stops_the_server_cleanly(server):
    """SIGTERM shuts the daemon down in order; twistd then exits by that same signal."""
    # twistd re-raises the signal it handled once the reactor stopped
    # (twisted.application.app._exitWithSignal), so the status is -SIGTERM, not 0:
    # shells and container runtimes report 143, the usual "stopped by SIGTERM".
    assert server.daemon.stop() == -signal.SIGTERM
    log = server.daemon.log()
    assert "Received SIGTERM, shutting down" in log
    assert f"TCP Port {server.port} Closed" in log
    assert "Server Shut Down" in log
    assert "Traceback" not in log
