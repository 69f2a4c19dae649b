"""The JSON-lines UNIX socket's path: a stale socket file is replaced, a live
one or a file that is not a socket is a start-up error naming the path."""

import os
import socket
import stat

import pytest
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor

from allq.client.local_socket import UnixSocketEndpoint, clear_stale_socket
from allq.listening import PortSetting, cannot_listen_message


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "c.sock")


def test_missing_path_is_fine(path):
    """Nothing at the path: nothing to do."""
    clear_stale_socket(path)
    assert not os.path.exists(path)


def test_stale_socket_is_removed(path):
    """A socket file nothing listens on (a killed client's) is removed."""
    left = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left.bind(path)
    left.close()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    clear_stale_socket(path)
    assert not os.path.exists(path)


def test_live_socket_is_an_error(path):
    """A socket something answers on is left alone, and start-up fails naming it."""
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(path)
    live.listen(1)
    try:
        with pytest.raises(CannotListenError) as caught:
            clear_stale_socket(path)
        assert os.path.exists(path)
        message = cannot_listen_message(
            caught.value, PortSetting("allq-client", "--unix", "ALLQ_UNIX_SOCKET"))
        assert path in message and "another process" in message and "--unix" in message
    finally:
        live.close()


def test_regular_file_is_never_removed(path):
    """A path that is not a socket (a typo?) is an error and stays."""
    with open(path, "w") as f:
        f.write("precious")
    with pytest.raises(CannotListenError, match="not a socket"):
        clear_stale_socket(path)
    with open(path) as f:
        assert f.read() == "precious"


def test_endpoint_listens_with_mode_0600(path):
    """The endpoint asks for mode 0600 and fails (not raises) on a live socket."""
    reactor = MemoryReactor()
    port = []
    UnixSocketEndpoint(reactor, path).listen(Factory()).addCallback(port.append)
    assert port and [(p, mode) for p, _, _, mode, _ in reactor.unixServers] == [(path, 0o600)]
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(path)
    live.listen(1)
    try:
        failures = []
        UnixSocketEndpoint(reactor, path).listen(Factory()).addErrback(failures.append)
        assert failures and failures[0].check(CannotListenError)
    finally:
        live.close()
