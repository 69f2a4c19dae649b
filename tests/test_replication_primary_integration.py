"""A real ``twistd allq-server --replica`` against a fake backup process
(tests/replica_fake.py): start-up waits for the backup, acknowledged puts are on
the backup, a fenced primary sets its data aside and exits with status 3."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from allq.peer.connection import connect
from tests.servers import (
    LOCALHOST,
    SERVER_LISTENING,
    Daemons,
    RunningServer,
    daemon_environment,
    wait_for_greeting,
)

FAKE = Path(__file__).resolve().parent / "replica_fake.py"
_PORT = re.compile(r"listening on (\d+)")


class FakeBackup:
    """The fake backup as a child process (stopped by :meth:`stop`)."""

    def __init__(self, keys_dir, out: Path, log: Path, port: int = 0,
                 fence_at: int | None = None):
        self.out = out
        self.out.touch()
        args = [sys.executable, str(FAKE), str(keys_dir), str(out), str(port)]
        if fence_at is not None:
            args.append(str(fence_at))
        with open(log, "wb") as f:
            self.process = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL,
                                            env=daemon_environment())
        deadline = time.monotonic() + 20
        while (found := _PORT.search(log.read_text())) is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"fake backup did not start: {log.read_text()}")
            time.sleep(0.05)
        self.port = int(found.group(1))

    def lines(self) -> list[str]:
        return self.out.read_text().splitlines()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture
def daemons(tmp_path):
    with Daemons(tmp_path) as daemons:
        yield daemons


@pytest_twisted.ensureDeferred
async def test_a_real_primary_replicates_to_its_backup_and_exits_3_when_fenced(
        daemons, tmp_path):
    keys = daemons.generate_keys()
    backup = FakeBackup(keys.directory, tmp_path / "lines", tmp_path / "backup.log")
    data = tmp_path / "data"
    try:
        daemon = daemons.spawn("allq-server", [
            "--keys", str(keys.directory), "--server-id", "p1", "--data-dir", str(data),
            "--listen", f"tcp:0:interface={LOCALHOST}", "--replication", "strict",
            "--replica", f"{LOCALHOST}:{backup.port}"], name="primary")
        match = daemon.wait_for_log(SERVER_LISTENING)
        server = RunningServer(daemon, match["host"], int(match["port"]), match["server_id"])
        wait_for_greeting(server)
        # It serves its jobs once the backup answered (before, it refuses them).
        daemon.wait_for_log(re.compile("answered replicate"))
        connection = await connect(reactor, server.endpoint, keys.client)
        try:
            put = await connection.request("put", {"tube": "t", "body": "replicated"})
            assert any('"replicated"' in line for line in backup.lines())
            stats = await connection.request("stats", {})
            assert stats["replication"]["mode"] == "strict"
            assert connection.welcome["epoch"] == 1
        finally:
            connection.close()
        assert put["job_id"].startswith("p1,")
    finally:
        backup.stop()
    # The backup comes back having promoted p1's replica: p1 is fenced.
    fencer = FakeBackup(keys.directory, tmp_path / "lines2", tmp_path / "backup2.log",
                        port=backup.port, fence_at=2)
    try:
        # Over: backoff retries reach the new backup within a few seconds.
        assert daemon.wait(30) == 3
    finally:
        fencer.stop()
    assert (data / "server-id").read_text().strip() == "p1-e2"
    [aside] = [name for name in os.listdir(data) if name.startswith("fenced-2-")]
    assert any(name.startswith("journal.") for name in os.listdir(data / aside))
    assert "fenced" in daemon.log()
