"""Real ``twistd`` daemons for integration tests: start them, find their ports, stop them.

Responsibility: run ``twistd -n --pidfile= <tap> ...`` from this checkout as child
processes on 127.0.0.1, each logging to its own file, and make sure every one of
them is stopped (SIGTERM, then SIGKILL after a bounded wait) whatever the test
did. Used by the server integration tests and meant to be reused by the REST
client's: :meth:`Daemons.start_servers` starts N servers sharing one key set and
returns their ports and ids; :meth:`Daemons.spawn` starts any other tap.

Usage, from a fixture::

    @pytest.fixture
    def daemons(tmp_path):
        with Daemons(tmp_path) as daemons:
            yield daemons

    def test_something(daemons):
        keys = daemons.generate_keys()
        first, second = daemons.start_servers(2, keys)
        ...  # connect to first.endpoint with keys.client

What this module must not do: no reactor, no assertions about allq behaviour.
Its waits block (polling a log file, bounded by ``START_TIMEOUT``), so call them
from fixtures or before a test starts talking to the daemons.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs

from allq.client.keys import load_client_keys
from allq.wire.keys import ClientKeys

REPO_ROOT = Path(__file__).resolve().parent.parent
#: ``twistd`` from the running interpreter's environment, whatever its scripts are called.
TWISTD = (sys.executable, "-c", "from twisted.scripts.twistd import run; run()")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.05
LOCALHOST = "127.0.0.1"
GREETING = b"ALLQ1 "

#: The line ``makeService`` logs once it listens.
SERVER_LISTENING = re.compile(
    r"allq-server \S+ id (?P<server_id>\S+) listening on (?P<host>\S+):(?P<port>\d+) "
)

# Variables the daemons read: a developer's shell must not change what a test starts.
_SCRUBBED_PREFIXES = ("ALLQ_", "A_CURVE_")
_SCRUBBED_NAMES = ("SERVER_PORT", "DEFAULT_TTL", "CONFIG_ONLY", "PYTHONPATH")


class DaemonError(RuntimeError):
    """A daemon did not start, stop or exit as expected; the message holds its log."""


def daemon_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child process: this checkout importable, allq settings cleared.

    ``PYTHONPATH`` holds this checkout's ``src``, which has both ``allq`` and the twistd
    dropins (``src/twisted/plugins``), so the daemons run from this checkout whichever
    checkout the virtualenv was installed from.

    :param extra: variables to set on top.
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in _SCRUBBED_NAMES and not name.startswith(_SCRUBBED_PREFIXES)
    }
    env["PYTHONPATH"] = str(REPO_ROOT / "src")
    env["PYTHONUNBUFFERED"] = "1"
    # A client's JSON-lines listeners default to the fixed 127.0.0.1:7766 and
    # /tmp/allq_client.sock: two clients of a test run would collide there. Tests
    # that want them pass --jsonl / --unix (flags win over these).
    env["ALLQ_JSONL"] = "none"
    env["ALLQ_UNIX_SOCKET"] = "none"
    env.update(extra or {})
    return env


@attrs.define(eq=False)
class Daemon:
    """One child process and the file its stdout and stderr go to.

    :ivar name: a label, also the log file's stem.
    :ivar process: the child.
    :ivar log_path: its log file.
    """

    name: str
    process: subprocess.Popen
    log_path: Path
    _terminated: bool = attrs.field(default=False, init=False)

    def log(self) -> str:
        """Everything the process has logged so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, pattern: re.Pattern[str], timeout: float = START_TIMEOUT) -> re.Match:
        """Block until ``pattern`` appears in the log.

        :returns: the first match.
        :raises DaemonError: with the log, if the process exits first or ``timeout``
            seconds pass.
        """
        deadline = time.monotonic() + timeout
        while True:
            match = pattern.search(self.log())
            if match is not None:
                return match
            if self.process.poll() is not None:
                raise self.error(f"exited with status {self.process.returncode}")
            if time.monotonic() > deadline:
                raise self.error(f"did not log {pattern.pattern!r} within {timeout:g} s")
            time.sleep(POLL_INTERVAL)

    def wait(self, timeout: float = START_TIMEOUT) -> int:
        """Block until the process exits on its own.

        :returns: its exit status.
        :raises DaemonError: with the log, if it is still running after ``timeout``.
        """
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise self.error(f"still running after {timeout:g} s") from None

    def terminate(self) -> None:
        """Send SIGTERM once (twistd's orderly shutdown), without waiting."""
        if not self._terminated and self.process.poll() is None:
            self._terminated = True
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """Stop the process: SIGTERM, then SIGKILL if it has not exited within ``timeout``.

        Safe to call again, or on a process that already exited.

        :returns: its exit status; negative means "ended by that signal". twistd
            ends by re-raising the SIGTERM it handled once it shut down in order,
            so ``-signal.SIGTERM`` is its normal status here.
        """
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        return self.process.returncode

    def error(self, what: str) -> DaemonError:
        """A :class:`DaemonError` saying ``what`` went wrong, with this daemon's log."""
        return DaemonError(f"{self.name} {what}; its log ({self.log_path}):\n{self.log()}")


def wait_for_greeting(server: RunningServer, timeout: float = START_TIMEOUT) -> None:
    """Block until the server answers a TCP connection with its ``ALLQ1`` challenge.

    The "listening" line is logged while twistd is still starting, before its
    reactor runs and installs the SIGTERM handler; a server that has greeted a
    client is running for real.

    :raises DaemonError: with the log, if no greeting comes within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((server.host, server.port), timeout=timeout) as probe:
                probe.settimeout(max(deadline - time.monotonic(), POLL_INTERVAL))
                if probe.recv(len(GREETING)) == GREETING:
                    return
        except OSError:
            pass
        if server.daemon.process.poll() is not None or time.monotonic() > deadline:
            raise server.daemon.error(f"did not greet a client on port {server.port}")
        time.sleep(POLL_INTERVAL)


@attrs.frozen
class KeySet:
    """A key set written by ``allq keys generate``.

    :ivar directory: pass it as ``--keys`` to either daemon.
    :ivar client: the client's keys, for :func:`allq.peer.connection.connect`.
    """

    directory: Path
    client: ClientKeys


@attrs.frozen
class RunningServer:
    """An ``allq-server`` daemon that is listening.

    :ivar daemon: its process.
    :ivar host: the address it listens on.
    :ivar port: the port it listens on.
    :ivar server_id: the id it announced (the prefix of its job ids).
    """

    daemon: Daemon
    host: str
    port: int
    server_id: str

    @property
    def endpoint(self) -> str:
        """A client endpoint string for this server."""
        return f"tcp:host={self.host}:port={self.port}"


class Daemons:
    """Starts daemons under one directory and remembers them all, to stop them all.

    Use it as a context manager (or call :meth:`stop_all` in a finalizer) so that no
    process outlives the test, whether it passed, failed or never got going.

    :param directory: where key sets and log files go (a test's ``tmp_path``).
    """

    def __init__(self, directory: Path) -> None:
        self._directory = Path(directory)
        self._started: list[Daemon] = []

    def __enter__(self) -> Daemons:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()

    @property
    def started(self) -> list[Daemon]:
        """Every daemon started so far, in order."""
        return list(self._started)

    def generate_keys(self, name: str = "keys") -> KeySet:
        """Write a fresh key set with the real ``allq keys generate`` command.

        :param name: the key directory's name under this object's directory.
        """
        directory = self._directory / name
        command = [sys.executable, "-m", "allq.cli", "keys", "generate", str(directory)]
        done = subprocess.run(
            command, env=daemon_environment(), capture_output=True, text=True, timeout=30
        )
        if done.returncode != 0:
            raise DaemonError(f"allq keys generate failed ({done.returncode}): {done.stderr}")
        return KeySet(directory, load_client_keys(str(directory), {}))

    def spawn(
        self,
        tapname: str,
        args: Sequence[str] = (),
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        twistd_args: Sequence[str] = (),
    ) -> Daemon:
        """Start ``twistd -n --pidfile= <twistd_args> <tapname> <args>`` without waiting.

        :param name: the label and log file stem; by default the tap name and a number.
        :param env: extra environment variables (see :func:`daemon_environment`).
        :param twistd_args: options for twistd itself (e.g. ``--logger``).
        """
        name = name or f"{tapname}-{len(self._started) + 1}"
        log_path = self._directory / f"{name}.log"
        self._directory.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [*TWISTD, "-n", "--pidfile=", *twistd_args, tapname, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._directory,
                env=daemon_environment(env),
            )
        daemon = Daemon(name, process, log_path)
        self._started.append(daemon)
        return daemon

    def start_servers(
        self,
        count: int,
        keys: KeySet,
        args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = START_TIMEOUT,
    ) -> list[RunningServer]:
        """Start ``count`` servers on free loopback ports, all accepting ``keys``.

        They start in parallel; this returns once each has logged that it listens
        and has greeted a probe connection (see :func:`wait_for_greeting`).

        :param args: extra ``allq-server`` options, the same for each.
        :raises DaemonError: with its log, if one exits or does not listen in time
            (the others are still stopped by :meth:`stop_all`).
        """
        daemons = [
            self.spawn(
                "allq-server",
                ["--keys", str(keys.directory), "--listen", f"tcp:0:interface={LOCALHOST}",
                 *args],
                env=env,
            )
            for _ in range(count)
        ]
        servers = []
        for daemon in daemons:
            match = daemon.wait_for_log(SERVER_LISTENING, timeout)
            server = RunningServer(daemon, match["host"], int(match["port"]), match["server_id"])
            wait_for_greeting(server, timeout)
            servers.append(server)
        return servers

    def start_server(
        self, keys: KeySet, args: Sequence[str] = (), **kwargs: object
    ) -> RunningServer:
        """Start one server; see :meth:`start_servers`."""
        (server,) = self.start_servers(1, keys, args, **kwargs)
        return server

    def stop_all(self, timeout: float = STOP_TIMEOUT) -> dict[str, int]:
        """Stop every daemon started here (SIGTERM, then SIGKILL).

        All get SIGTERM first, so they shut down in parallel. One that cannot be
        stopped does not keep the others running.

        :returns: each daemon's exit status by name.
        """
        for daemon in self._started:
            daemon.terminate()
        statuses: dict[str, int] = {}
        failures: list[BaseException] = []
        for daemon in self._started:
            try:
                statuses[daemon.name] = daemon.stop(timeout)
            except Exception as e:  # noqa: BLE001 - stop the rest, then report
                failures.append(e)
        if failures:
            raise DaemonError(f"could not stop every daemon: {failures}")
        return statuses
