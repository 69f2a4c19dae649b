"""Issue 10 through real daemons: revoking a client key, and a full data directory.

Each test starts ``twistd allq-server`` on 127.0.0.1 (``tests/servers.py``) and
talks to it with the real client connection under pytest-twisted's reactor.
The disk-full test mounts an 8 MiB tmpfs as the data directory, which needs
root and a kernel that allows it; where mounting is impossible it is skipped,
saying why (the unit tests in ``test_disk_full.py`` cover the same rules with
an injected writer).
"""

import os
import subprocess

import pytest
import pytest_twisted
from nacl.public import PrivateKey
from twisted.internet.task import deferLater

from allq.errors import AllQError
from allq.wire.keys import encode_key

from tests.servers import LOCALHOST
from tests.test_persistence_integration import TIMEOUT, close, open_connection, reactor


async def sleep(seconds: float) -> None:
    await deferLater(reactor(), seconds, lambda: None)


@pytest_twisted.ensureDeferred
async def test_revoking_a_client_key_drops_its_link_and_refuses_it(daemons, keys):
    """Rewriting authorized_keys without the client's key closes its connection
    within a poll (ERROR revoked) and refuses its next handshake; no restart."""
    server = daemons.start_server(keys)
    connection = await open_connection(server, keys.client)
    assert (await connection.request("ping", {}))["server_id"] == server.server_id
    path = keys.directory / "authorized_keys"
    path.write_text(f"# someone else\n{encode_key(PrivateKey.generate().public_key)}\n")
    await connection.lost.addTimeout(10.0, reactor())
    assert "authorized keys reloaded (file changed)" in server.daemon.log()
    with pytest.raises(Exception):
        await open_connection(server, keys.client)
    assert server.daemon.process.poll() is None  # still serving


def _mount_tmpfs(path, size: str) -> str | None:
    """Mount a tmpfs at ``path``; the reason it cannot be done, or ``None``."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    path.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700",
                                 "tmpfs", str(path)], capture_output=True, text=True,
                                timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"mount failed: {e}"
    if result.returncode != 0:
        return f"mount failed: {result.stderr.strip()[:200]}"
    return None


@pytest_twisted.ensureDeferred
async def test_a_full_data_directory_makes_the_server_read_only_until_space_returns(
        daemons, keys, tmp_path):
    """On a full tmpfs the server keeps running: puts get disk_full, gets work, stats
    and metrics say so; freeing space makes it take puts again by itself; nothing
    acknowledged is lost across a restart."""
    data = tmp_path / "data"
    why = _mount_tmpfs(data, "8m")
    if why is not None:
        pytest.skip(why)
    try:
        filler = data / "filler"
        stats = os.statvfs(data)
        free = stats.f_bavail * stats.f_frsize
        with open(filler, "wb") as f:
            f.write(b"\0" * (free - 1536 * 1024))  # over the 1 MiB to start writable
        server = daemons.start_server(keys, ["--data-dir", str(data), "--fsync", "always"])
        connection = await open_connection(server, keys.client)
        acked = []
        refused = None
        for i in range(400):
            try:
                reply = await connection.request("put", {"tube": "t", "body": f"{i:04d}" * 4000})
            except AllQError as e:
                refused = e
                break
            acked.append(reply["job_id"])
        assert refused is not None and acked, "the disk never filled"
        if not connection.lost.called:
            await close(connection)
        connection = await open_connection(server, keys.client)
        with pytest.raises(AllQError) as caught:
            await connection.request("put", {"tube": "t", "body": "x"})
        assert caught.value.code == "disk_full"
        assert (await connection.request("stats", {}))["global"]["disk_full"] is True
        (job,) = (await connection.request("get", {"tube": "t"}))["jobs"]
        assert job["job_id"] == acked[0]
        filler.unlink()
        for _ in range(50):
            if not (await connection.request("stats", {}))["global"]["disk_full"]:
                break
            await sleep(0.2)
        assert "job_id" in await connection.request("put", {"tube": "t", "body": "after"})
        assert server.daemon.process.poll() is None
        await close(connection)
        assert daemons.stop_all()  # a clean stop
        server = daemons.start_server(keys, ["--data-dir", str(data), "--fsync", "always"])
        connection = await open_connection(server, keys.client)
        held = (await connection.request("stats", {}))["global"]["jobs"]
        assert held >= len(acked)
        await close(connection)
    finally:
        daemons.stop_all()
        subprocess.run(["umount", "-l", str(data)], capture_output=True, timeout=10)
