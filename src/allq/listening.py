"""Listening on a Twisted endpoint string and saying where, for both daemons.

``tcp:0`` picks a free port; tests, scripts and operators need to know which, so
both daemons log the bound address once listening, through
:func:`listening_service`.
"""

from collections.abc import Callable

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from zope.interface import implementer


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


def listening_service(
    reactor, description: str, factory: Factory,
    on_listening: Callable[[IListeningPort], None],
) -> StreamServerEndpointService:
    """A service listening on ``description`` that reports the bound port.

    Start-up fails loudly (twistd exits non-zero) when the port cannot be bound,
    as twistd's own ``strports`` services do.
    """
    return endpoint_service(serverFromString(reactor, description), factory, on_listening)


def endpoint_service(
    endpoint: IStreamServerEndpoint, factory: Factory,
    on_listening: Callable[[IListeningPort], None],
) -> StreamServerEndpointService:
    """:func:`listening_service` for an endpoint object rather than a description."""
    service = StreamServerEndpointService(_ReportingEndpoint(endpoint, on_listening), factory)
    service._raiseSynchronously = True
    return service
