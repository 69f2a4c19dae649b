"""One configured server as the client sees it: address, connection, health.

A :class:`ServerLink` keeps one persistent, pipelined, encrypted connection to its
server through a :class:`ClientService`, which reconnects with exponential
backoff whenever the connection is lost or the handshake fails: that is how a
server that went away is probed until it returns, with no client restart. A
request that times out closes the connection (a server that stops answering is
treated as down) so the reconnect loop takes over.

The link also remembers a server drain asked through this client
(:meth:`ServerLink.tell_draining`): while it is wanted, every new connection
tells the server ``drain`` again as soon as the handshake is done, so a server
that restarted without its drain flag is drained again; an undrain that could
not be sent is sent on the next connection.
"""

import re

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from allq.client.connection import ServerConnection, ServerConnectionFactory
from allq.errors import BadRequest, Timeout, Unavailable
from allq.wire.keys import ClientKeys

_ADDRESS = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9_.-]+)):([0-9]{1,5})")
HANDSHAKE_TIMEOUT = 5.0


class NotConnected(Unavailable):
    """The server has no live connection right now; the request was never sent,
    so trying another server is safe."""

    code = "unavailable"


def parse_address(address: str) -> tuple[str, int]:
    """Split ``host:port`` (or ``[v6]:port``).

    :raises BadRequest: anything else, or a port outside 1..65535.
    """
    match = _ADDRESS.fullmatch(address.strip()) if isinstance(address, str) else None
    if match is None or not 0 < int(match.group(3)) < 65536:
        raise BadRequest(f"server address must be host:port, got {str(address)[:80]!r}")
    return match.group(1) or match.group(2), int(match.group(3))


def normalize_address(address: str) -> str:
    """The canonical ``host:port`` text of an address (``[v6]:port`` for IPv6)."""
    host, port = parse_address(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ServerLink(ClientService):
    """The client's link to one server.

    :param address: ``host:port`` of the server.
    :param keys: the client's keys.
    :param reactor: reactor providing TCP and time.
    :param request_timeout: seconds a request may wait for its reply.
    :param retry_policy: seconds to wait before reconnect attempt N.
    """

    _log = Logger()

    def __init__(
        self,
        address: str,
        keys: ClientKeys,
        reactor,
        request_timeout: float,
        retry_policy=None,
    ) -> None:
        host, port = parse_address(address)
        self.address = normalize_address(address)
        self.server_id: str | None = None
        #: This client places no new jobs here (set by ``Federation.drain_server``).
        self.draining = False
        #: The server-wide drain flag to tell the server on the next connection:
        #: ``True`` while a drain is wanted, ``False`` for an undrain not yet
        #: acknowledged, ``None`` for nothing to tell.
        self._drain_to_tell: bool | None = None
        self.connection: ServerConnection | None = None
        self._clock = reactor
        self._was_up = None
        super().__init__(
            HostnameEndpoint(reactor, host, port, timeout=HANDSHAKE_TIMEOUT),
            ServerConnectionFactory(keys, reactor, request_timeout),
            retryPolicy=retry_policy or backoffPolicy(initialDelay=0.1, maxDelay=3.0, factor=2.0),
            clock=reactor,
            prepareConnection=self._handshake,
        )

    def __repr__(self) -> str:
        return f"<ServerLink {self.address} id={self.server_id} up={self.up}>"

    @property
    def up(self) -> bool:
        """Whether a handshaken connection is open right now."""
        return self.connection is not None and not self.connection.closed

    def request(self, action: str, params: dict) -> Deferred:
        """Send a request on the live connection.

        :returns: a Deferred; it fails at once with :class:`NotConnected` when
            there is no live connection (nothing was sent).
        """
        connection = self.connection
        if connection is None or connection.closed:
            return fail(NotConnected(f"server {self.address} is not connected"))
        return connection.request(action, params).addErrback(self._on_error, connection)

    def batch(self, requests: list[tuple[str, dict]]) -> Deferred:
        """Send several requests in one frame on the live connection.

        :returns: a Deferred firing with, per request, its result or its
            :class:`AllQError`; it fails as a whole (at once with
            :class:`NotConnected` when nothing was sent, later with
            :class:`Unavailable` when the outcome is unknown).
        """
        connection = self.connection
        if connection is None or connection.closed:
            return fail(NotConnected(f"server {self.address} is not connected"))
        return connection.batch(requests).addErrback(self._on_error, connection)

    def tell_draining(self, draining: bool) -> Deferred:
        """Tell the server to drain (refuse new jobs from every client) or to
        stop draining, now if connected, else on the next connection.

        :returns: a Deferred firing with ``True`` once the server acknowledged,
            or ``False`` when it is not connected (it will be told on reconnect).
        """
        self._drain_to_tell = draining
        if not self.up:
            return succeed(False)
        d = self.request("drain" if draining else "undrain", {})
        d.addCallback(self._drain_told, draining)
        d.addErrback(self._drain_not_told)
        return d

    def _drain_told(self, result: dict, draining: bool) -> bool:
        # A drain is told again on every reconnect (the server may have restarted
        # without it); an acknowledged undrain needs no repeating.
        if not draining and self._drain_to_tell is False:
            self._drain_to_tell = None
        return True

    def _drain_not_told(self, failure: Failure) -> bool:
        failure.trap(Unavailable)
        return False

    def stopService(self):
        self._mark(False, "client stopping")
        return super().stopService()

    def _on_error(self, failure: Failure, connection: ServerConnection) -> Failure:
        if failure.check(Timeout) and not connection.closed:
            self._log.warn("server {address} did not answer in time; reconnecting",
                           address=self.address)
            connection.close()
        return failure

    def _handshake(self, connection: ServerConnection) -> Deferred:
        d = connection.ready
        d.addTimeout(HANDSHAKE_TIMEOUT, self._clock)
        return d.addCallbacks(self._connected, self._refused, errbackArgs=(connection,))

    def _connected(self, connection: ServerConnection) -> Deferred | None:
        self.connection = connection
        self.server_id = connection.server_id
        self._mark(True, f"server id {self.server_id}")
        connection.lost.addCallback(lambda _: self._mark(False, "connection lost"))
        if self._drain_to_tell is None:
            return None
        draining = self._drain_to_tell
        d = connection.request("drain" if draining else "undrain", {})
        d.addCallback(self._drain_told, draining)
        d.addErrback(self._drain_on_connect_failed, draining)
        return d

    def _drain_on_connect_failed(self, failure: Failure, draining: bool) -> None:
        # Not worth refusing the connection for: puts from this client skip a
        # server it drains anyway. A lost connection retries on reconnect.
        self._log.warn("could not tell server {address} to {what}: {error}",
                       address=self.address, what="drain" if draining else "undrain",
                       error=failure.getErrorMessage())

    def _refused(self, failure: Failure, connection: ServerConnection) -> Failure:
        connection.close()
        self._mark(False, failure.getErrorMessage())
        return failure

    def _mark(self, up: bool, why: str) -> None:
        if up == self._was_up:
            return
        self._was_up = up
        if up:
            self._log.info("server {address} up ({why})", address=self.address, why=why)
        else:
            self._log.warn("server {address} down ({why})", address=self.address, why=why)
