"""Listening on a Twisted endpoint string and saying where, for both daemons.

``tcp:0`` picks a free port; tests, scripts and operators need to know which, so
both daemons log the bound address once listening, through
:func:`listening_service`.

A port that cannot be bound (in use, privileged, an address this host does not have)
ends start-up with one log line that names the address and the option and environment
variable that change it (a :class:`PortSetting`), and exit status 1: no traceback.
"""

import errno
import os
from collections.abc import Callable

import attrs
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

#: The exit status of a daemon that cannot listen.
EXIT_CANNOT_LISTEN = 1


@attrs.frozen
class PortSetting:
    """How an operator changes where a daemon listens; named when it cannot.

    :ivar daemon: the daemon's name, e.g. ``allq-server``.
    :ivar option: its option, e.g. ``--listen``.
    :ivar env: the environment variable that sets the port, e.g. ``SERVER_PORT``.
    """

    daemon: str
    option: str
    env: str


def cannot_listen_message(error: CannotListenError, setting: PortSetting | None) -> str:
    """One line: which address could not be bound, why, and what changes it."""
    if isinstance(error.port, (str, bytes)):  # a UNIX socket's path
        where = os.fsdecode(error.port)
    else:
        where = f"{error.interface}:{error.port}" if error.interface else f"port {error.port}"
    code = getattr(error.socketError, "errno", None)
    if code == errno.EADDRINUSE:
        why = "the port is already in use (another daemon, or an earlier run still going)"
    elif code is not None:
        why = os.strerror(code)
    else:
        why = str(error.socketError)
    if setting is None:
        return f"cannot listen on {where}: {why}"
    return (f"{setting.daemon}: cannot listen on {where}: {why}; choose another port with "
            f"{setting.option} or the environment variable {setting.env}")


@implementer(IStreamServerEndpoint)
class _ReportingEndpoint:
    """Wraps an endpoint to call back with the port it bound."""

    def __init__(self, endpoint: IStreamServerEndpoint,
                 on_listening: Callable[[IListeningPort], None]) -> None:
        self._endpoint = endpoint
        self._on_listening = on_listening

    def listen(self, factory):
        return self._endpoint.listen(factory).addCallback(self._report)

    def _report(self, port: IListeningPort) -> IListeningPort:
        self._on_listening(port)
        return port


class _ListeningService(StreamServerEndpointService):
    """Binds in ``privilegedStartService`` (before twistd drops privileges) and turns a
    port that cannot be bound into one log line and :data:`EXIT_CANNOT_LISTEN`."""

    _log = Logger()
    _raiseSynchronously = True

    def __init__(self, endpoint: IStreamServerEndpoint, factory: Factory,
                 setting: PortSetting | None) -> None:
        super().__init__(endpoint, factory)
        self._setting = setting

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            # twistd has started logging by now (its stderr is the log too), so the
            # line goes to the log: the terminal with -n, the log file otherwise.
            self._log.critical("{message}", message=cannot_listen_message(e, self._setting))
            raise SystemExit(EXIT_CANNOT_LISTEN) from None


def listening_service(
    reactor, description: str, factory: Factory,
    on_listening: Callable[[IListeningPort], None],
    *, setting: PortSetting | None = None,
) -> StreamServerEndpointService:
    """A service listening on ``description`` that reports the bound port.

    Start-up fails (twistd exits 1) when the port cannot be bound, with one log line
    naming the address and ``setting``'s option and environment variable.
    """
    return endpoint_service(serverFromString(reactor, description), factory, on_listening,
                            setting=setting)


def endpoint_service(
    endpoint: IStreamServerEndpoint, factory: Factory,
    on_listening: Callable[[IListeningPort], None],
    *, setting: PortSetting | None = None,
) -> StreamServerEndpointService:
    """:func:`listening_service` for an endpoint object rather than a description."""
    return _ListeningService(_ReportingEndpoint(endpoint, on_listening), factory, setting)
