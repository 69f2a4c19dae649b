"""Listening on a UNIX socket path that a crashed earlier run may have left behind.

AllQueue's client listened on the fixed path ``/tmp/allq_client.sock``. A client
killed with SIGKILL leaves the socket file behind and the next start cannot bind
it. :class:`UnixSocketEndpoint` replaces such a file only when it is a socket and
nothing answers on it; a socket something answers on (a second client) or a
file that is not a socket is a start-up error naming the path. The socket is
made with mode 0600 (no window where it is wider: the umask is narrowed around
the bind), and Twisted removes it when the port stops.
"""

import errno
import os
import socket
import stat

from twisted.internet.defer import fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IStreamServerEndpoint
from zope.interface import implementer

SOCKET_MODE = 0o600


def clear_stale_socket(path: str) -> None:
    """Remove ``path`` if it is a socket nothing answers on.

    Called once at start-up, before the reactor serves anything: the probe is a
    local ``connect`` that is refused or accepted at once.

    :raises CannotListenError: ``path`` is a live socket, or not a socket.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise CannotListenError(None, path, f"{path} exists and is not a socket; "
                                "remove it or choose another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError as e:
        if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise CannotListenError(None, path, f"cannot probe {path}: {e.strerror}") from None
        os.unlink(path)  # stale: nothing listens
        return
    finally:
        probe.close()
    raise CannotListenError(None, path, f"another process is serving on {path} "
                            "(a second allq-client?)")


@implementer(IStreamServerEndpoint)
class UnixSocketEndpoint:
    """A UNIX stream socket at ``path``, mode 0600, replacing a stale one."""

    def __init__(self, reactor, path: str) -> None:
        self._reactor = reactor
        self._path = path

    def listen(self, factory):
        try:
            clear_stale_socket(self._path)
            old_umask = os.umask(0o177)
            try:
                port = self._reactor.listenUNIX(self._path, factory, mode=SOCKET_MODE)
            finally:
                os.umask(old_umask)
        except CannotListenError:
            return fail()
        return succeed(port)
