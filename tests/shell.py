"""Run commands as a user would type them, from one folder, and stop them afterwards.

Responsibility: start shell command lines (``bash -c``, verbatim, as printed by allq or
written in README.md or scripts/) in a folder, each in its own process group with its
output in a log file; find free loopback ports; poll a client's ``/health``; and stop
every process group that was started (SIGTERM, then SIGKILL after a bounded wait),
whatever the test did.

The commands find ``twistd`` and ``allq`` on ``PATH`` in the running interpreter's
environment, and this checkout's ``src`` on ``PYTHONPATH`` (see
:func:`tests.servers.daemon_environment`).

What this module must not do: no reactor, no assertions about allq behaviour.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from tests.servers import LOCALHOST, POLL_INTERVAL, STOP_TIMEOUT, daemon_environment

#: The running interpreter's scripts (twistd, allq, pip) come first on PATH.
BIN_DIR = str(Path(sys.executable).parent)
HEALTH_TIMEOUT = 30.0


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind((LOCALHOST, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def shell_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """:func:`daemon_environment` with this interpreter's scripts first on ``PATH``."""
    env = daemon_environment()
    env["PATH"] = os.pathsep.join([BIN_DIR, env.get("PATH", "/usr/bin:/bin")])
    env.update(extra or {})
    return env


def get_json(url: str, timeout: float = 5.0) -> tuple[int, object]:
    """GET ``url``: its status and decoded JSON body (or text, when not JSON)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    try:
        return status, json.loads(body or b"null")
    except ValueError:
        return status, body.decode("utf-8", "replace")


class Shell:
    """Runs command lines in one folder; remembers every process group to stop it.

    :param folder: the working directory of every command.
    :param env: the environment of every command (default: :func:`shell_environment`).
    """

    def __init__(self, folder: Path, env: Mapping[str, str] | None = None) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.env = dict(env if env is not None else shell_environment())
        self.started: list[tuple[subprocess.Popen, Path]] = []

    def run(self, command: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run ``command`` to completion; stdout and stderr are captured as text."""
        return subprocess.run(["bash", "-c", command], cwd=self.folder, env=self.env,
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def start(self, command: str, name: str | None = None) -> subprocess.Popen:
        """Start ``command`` in the background, in a new process group, logging to a file."""
        log_path = self.folder / f"{name or f'command-{len(self.started) + 1}'}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(["bash", "-c", command], cwd=self.folder, env=self.env,
                                       stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append((process, log_path))
        return process

    def logs(self) -> str:
        """Every started command's log, labelled."""
        return "\n".join(f"--- {path.name}:\n{path.read_text(errors='replace')}"
                         for _, path in self.started)

    def wait_for_health(self, port: int, up: int = 1, timeout: float = HEALTH_TIMEOUT) -> dict:
        """Block until the client on ``port`` answers ``/health`` with ``up`` servers up.

        :raises AssertionError: with every log, when a started command exits first or
            ``timeout`` passes.
        """
        deadline = time.monotonic() + timeout
        health: object = None
        while True:
            try:
                status, health = get_json(f"http://{LOCALHOST}:{port}/health", timeout=2.0)
                if status == 200 and isinstance(health, dict) and health.get("up") == up:
                    return health
            except OSError:
                pass
            for process, path in self.started:
                if process.poll() is not None:
                    raise AssertionError(f"{path.name} exited {process.returncode}\n{self.logs()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no /health with {up} up on {port}: {health}\n{self.logs()}")
            time.sleep(POLL_INTERVAL)

    def stop_all(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> list[int]:
        """Signal every started process group, then SIGKILL what is left after ``timeout``.

        :returns: the exit status of each started command, in order.
        """
        for process, _ in self.started:
            if process.poll() is None:
                _signal_group(process, sig)
        statuses = []
        for process, _ in self.started:
            try:
                statuses.append(process.wait(timeout))
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                statuses.append(process.wait(timeout))
            _signal_group(process, signal.SIGKILL)  # anything the command left behind
        return statuses


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
