"""Integration test of the backup side of replication against a real
``twistd allq-server`` with ``--data-dir``: a test client holding an authorized
key plays the primary (``replicate``, hand-built journal lines, ``replica_synced``),
then a client promotes the replica and works its jobs through ``serve_as``; the
backup is restarted and still serves the promoted replica and still fences.
"""

import time

import pytest
import pytest_twisted

from allq.errors import Draining, Fenced, NotFound, ReplicaIncomplete

from tests.replicas import lines, put
from tests.test_persistence_integration import close, open_connection
from tests.servers import LOCALHOST, Daemons, KeySet, RunningServer

pytestmark = pytest.mark.integration
PRIMARY = "dead-primary"


def start(daemons: Daemons, keys: KeySet, data, port: int = 0) -> RunningServer:
    return daemons.start_server(
        keys, ["--data-dir", str(data), "--fsync", "always",
               "--listen", f"tcp:{port}:interface={LOCALHOST}"])


async def expect(error_class, d):
    try:
        await d
    except error_class as e:
        return e
    raise AssertionError(f"expected {error_class.__name__}")


@pytest_twisted.ensureDeferred
async def test_a_backup_promotes_serves_restarts_and_fences(daemons, keys, tmp_path):
    """Stream, sync, promote, serve_as (get and done by the original ids, a
    reserved job done by its worker), restart: promoted replica and epoch are
    back, and the old primary's replicate is fenced."""
    data = tmp_path / "backup"
    backup = start(daemons, keys, data)
    client = await open_connection(backup, keys.client)

    # The primary's stream: a snapshot chunk, a live change, the sync mark.
    stream = await open_connection(backup, keys.client)
    assert await stream.request("replicate", {"primary": PRIMARY, "address": "h:1"}) == {
        "backup": backup.server_id, "epoch": 1}
    reserved_until = time.time() + 600
    await stream.request("replica_records", {"seq": 1, "lines": lines(
        put(1, tube="work", body="one"), put(2, tube="work", body="two"),
        put(3, tube="work", body="three"), put(4, tube="later", body="four"))})
    await stream.request("replica_records", {"seq": 2, "lines": lines(
        ["r", 2, reserved_until], ["d", 3])})
    await expect(ReplicaIncomplete, client.request("promote", {"server_id": PRIMARY}))
    assert await stream.request("replica_synced", {"seq": 3, "records": 4}) == {"seq": 3}
    await close(stream)  # the primary dies

    promoted = await client.request("promote", {"server_id": PRIMARY})
    assert promoted == {"server_id": PRIMARY, "epoch": 2, "backup": backup.server_id}
    assert await client.request("promote", {"server_id": PRIMARY}) == promoted
    (entry,) = (await client.request("replicas"))["replicas"]
    assert (entry["primary"], entry["state"], entry["epoch"], entry["jobs"]) == (
        PRIMARY, "promoted", 2, 3)

    link = await open_connection(backup, keys.client)
    assert await link.request("serve_as", {"server_id": PRIMARY}) == promoted
    (job,) = (await link.request("get", {"tube": "work", "count": 10}))["jobs"]
    assert (job["job_id"], job["body"]) == (f"{PRIMARY},1", "one")
    await link.request("done", {"job_id": f"{PRIMARY},1"})
    await link.request("done", {"job_id": f"{PRIMARY},2"})  # its worker, reserved on the primary
    await expect(Draining, link.request("put", {"tube": "work", "body": "new"}))
    stats = await link.request("stats")
    assert (stats["server_id"], stats["global"]["jobs"]) == (PRIMARY, 1)
    await close(link)
    await close(client)

    # A restart on the same data directory.
    assert backup.daemon.stop() == -15
    again = start(daemons, keys, data, port=backup.port)
    client = await open_connection(again, keys.client)
    try:
        (entry,) = (await client.request("stats"))["replicas"]
        assert (entry["state"], entry["epoch"], entry["jobs"]) == ("promoted", 2, 1)
        old = await open_connection(again, keys.client)
        fenced = await expect(Fenced, old.request("replicate", {"primary": PRIMARY,
                                                                "epoch": 1}))
        assert "epoch 2" in str(fenced)
        await close(old)
        link = await open_connection(again, keys.client)
        assert (await link.request("serve_as", {"server_id": PRIMARY}))["epoch"] == 2
        assert await link.request("get", {"tube": "work"}) == {"jobs": []}
        (job,) = (await link.request("get", {"tube": "later"}))["jobs"]
        assert job["job_id"] == f"{PRIMARY},4"
        await close(link)
        stranger = await open_connection(again, keys.client)
        await expect(NotFound, stranger.request("serve_as", {"server_id": "someone-else"}))
    finally:
        await close(client)
