"""A port that cannot be bound ends either daemon with one line, not a traceback.

The unit tests drive :mod:`allq.listening` with an endpoint that refuses; the
integration tests hold a real loopback port busy and start the real daemons on it.
"""

import errno
import socket

import pytest
from twisted.internet.defer import fail
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher

from allq.listening import (
    EXIT_CANNOT_LISTEN,
    PortSetting,
    cannot_listen_message,
    endpoint_service,
    listening_service,
)
from tests.servers import LOCALHOST

SERVER_SETTING = PortSetting("allq-server", "--listen", "SERVER_PORT")


class RefusingEndpoint:
    """An endpoint whose ``listen`` fails as a busy port does."""

    def __init__(self, code: int = errno.EADDRINUSE) -> None:
        self.error = CannotListenError("127.0.0.1", 5555, OSError(code, "refused"))

    def listen(self, factory):
        return fail(self.error)


def test_a_busy_port_message_names_the_address_the_option_and_the_variable():
    """The message says which address is in use and which option and variable move it."""
    message = cannot_listen_message(RefusingEndpoint().error, SERVER_SETTING)
    assert message == (
        "allq-server: cannot listen on 127.0.0.1:5555: the port is already in use "
        "(another daemon, or an earlier run still going); choose another port with "
        "--listen or the environment variable SERVER_PORT")


def test_other_bind_errors_say_what_the_system_said():
    """A privileged port gets the system's reason, still on one line."""
    error = RefusingEndpoint(errno.EACCES).error
    assert cannot_listen_message(error, None) == "cannot listen on 127.0.0.1:5555: Permission denied"
    error = CannotListenError("", 80, OSError(errno.EACCES, "denied"))
    assert cannot_listen_message(error, SERVER_SETTING).startswith(
        "allq-server: cannot listen on port 80: Permission denied; choose another port")


def test_a_service_that_cannot_listen_logs_one_line_and_exits_1():
    """Starting the service logs the message (no failure, no traceback) and exits 1."""
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        service = endpoint_service(RefusingEndpoint(), Factory(), lambda port: None,
                                   setting=SERVER_SETTING)
        with pytest.raises(SystemExit) as raised:
            service.privilegedStartService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert raised.value.code == EXIT_CANNOT_LISTEN == 1
    [event] = [e for e in events if e.get("log_namespace", "").startswith("allq.listening")]
    assert event["log_level"].name == "critical"
    assert "SERVER_PORT" in event["message"] and "log_failure" not in event


def test_a_service_that_listens_reports_the_port():
    """A bindable endpoint starts and reports the port it bound, as before."""
    reactor = MemoryReactorClock()
    bound = []
    service = listening_service(reactor, f"tcp:7777:interface={LOCALHOST}", Factory(),
                                bound.append, setting=SERVER_SETTING)
    service.startService()
    assert reactor.tcpServers[0][0] == 7777 and reactor.tcpServers[0][3] == LOCALHOST
    assert [port.getHost().port for port in bound] == [7777]
    service.stopService()


@pytest.fixture
def busy_port():
    """A loopback port held busy (bound and listening) for the test's length."""
    with socket.socket() as holder:
        holder.bind((LOCALHOST, 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.mark.integration
@pytest.mark.parametrize("tap, option, variable", [
    ("allq-server", "--listen", "SERVER_PORT"),
    ("allq-client", "--http", "HTTP_SERVER_PORT"),
])
@pytest.mark.parametrize("how", ["option", "variable"])
def test_a_daemon_on_a_busy_port_prints_one_line_and_exits_non_zero(
        daemons, keys, busy_port, tap, option, variable, how):
    """twistd on a busy port: exit 1, one line naming the port, option and variable."""
    if how == "option":
        args, env = [option, f"tcp:{busy_port}:interface={LOCALHOST}"], {}
    else:
        args, env = [], {variable: str(busy_port)}
        if tap == "allq-client":
            env["ALLQ_HTTP_INTERFACE"] = LOCALHOST
    daemon = daemons.spawn(tap, ["--keys", str(keys.directory), *args], env=env)
    assert daemon.wait() == 1, daemon.log()
    log = daemon.log()
    assert "Traceback" not in log, log
    [line] = [line for line in log.splitlines() if "cannot listen" in line]
    assert f"{busy_port}: the port is already in use" in line, line
    assert f"choose another port with {option} or the environment variable {variable}" in line


@pytest.mark.integration
@pytest.mark.parametrize("how", ["option", "variable"])
def test_a_client_whose_json_lines_port_is_busy_says_so(daemons, keys, busy_port, how):
    """The JSON-lines port taken: exit 1, one line naming --jsonl and CL_PORT."""
    args = ["--keys", str(keys.directory), "--http", f"tcp:0:interface={LOCALHOST}"]
    if how == "option":
        args += ["--jsonl", f"tcp:{busy_port}:interface={LOCALHOST}"]
        env = {}
    else:
        env = {"ALLQ_JSONL": "", "CL_PORT": str(busy_port), "CL_LISTEN": LOCALHOST}
    daemon = daemons.spawn("allq-client", args, env=env)
    assert daemon.wait() == 1, daemon.log()
    [line] = [line for line in daemon.log().splitlines() if "cannot listen" in line]
    assert f"{busy_port}: the port is already in use" in line, line
    assert "choose another port with --jsonl or the environment variable CL_PORT" in line
