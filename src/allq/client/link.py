"""One configured server as the client sees it: address, connection, health.

A :class:`ServerLink` keeps one persistent, pipelined, encrypted connection to
its server. It connects, completes the handshake, and whenever the connection
is lost or an attempt fails it tries again with exponential backoff: that is how
a server that went away is probed until it returns, with no client restart. A
request that times out closes the connection (a server that stops answering is
treated as down) so the reconnect loop takes over.

A refused handshake (a key the server does not accept, a ``server.pub`` that is
not this server's) is an expected event, not a bug: the link logs one line when
its state or the reason changes (never per attempt), keeps backing off, and
says why in :attr:`ServerLink.down_reason` (``/health`` and the 503 details show
it). The loop is the link's own rather than a ``ClientService``: that one has no
transition for a connection that closes after its preparation failed, and logs
a traceback for every refused handshake.

While connected, the link pings the server every :data:`KEEPALIVE_INTERVAL`
seconds, so an idle connection outlives the server's idle timeout.

The link also remembers a server drain asked through this client
(:meth:`ServerLink.tell_draining`): while it is wanted, every new connection
tells the server ``drain`` again as soon as the handshake is done, so a server
that restarted without its drain flag is drained again; an undrain that could
not be sent is sent on the next connection.

Replication (docs/replication.md) adds two things. Every link remembers its
server's welcome: its ``epoch`` and the backup it names (``replica.address``),
which :mod:`allq.client.failover` reads; a welcome whose server id this client
saw promoted at a later epoch is refused (:mod:`allq.client.fencing`). And a
*replica link* (``serve_as``) is a link to a backup that sends ``serve_as
{server_id}`` right after the handshake and from then on acts for that primary's
server id: it is up only once the backup accepted, and it always drains.
"""

import re
from collections.abc import Callable

from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from allq.client.fencing import Fences
from allq.peer.connection import ServerConnection, ServerConnectionFactory
from allq.errors import AllQError, BadRequest, Fenced, Timeout, Unavailable
from allq.wire.keys import ClientKeys

_ADDRESS = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9_.-]+)):([0-9]{1,5})")
HANDSHAKE_TIMEOUT = 5.0
#: Seconds between pings on a connected link (the server closes a connection
#: idle for 300 s by default).
KEEPALIVE_INTERVAL = 100.0
#: What a server's refusal code means for the operator, by code.
_REFUSALS = {
    "unknown_key": "key not authorized by the server (add this client's public key, "
                   "client.pub, to the server's authorized_keys)",
    "bad_proof": "the server could not read this client's handshake: server.pub "
                 "(A_CURVE_SERVER_PUBLICKEY) does not match this server's key",
    "revoked": "this client's key was revoked by the server (authorized_keys changed)",
}


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


class ServerLink(Service):
    """The client's link to one server.

    :param address: ``host:port`` of the server.
    :param keys: the client's keys.
    :param reactor: reactor providing TCP and time.
    :param request_timeout: seconds a request may wait for its reply.
    :param retry_policy: seconds to wait before reconnect attempt N.
    :param fences: the promotions this client saw: a welcome they fence is refused.
    :param serve_as: make this a replica link acting for that primary server id.
    :ivar down_reason: why the link is down (``None`` while up).
    :ivar down_since: when the link last went down (``None`` while up).
    :ivar welcome: the server's last welcome (empty before the first).
    :ivar epoch: the server's epoch (a replica link's: the one ``serve_as`` said).
    """

    _log = Logger()

    def __init__(
        self,
        address: str,
        keys: ClientKeys,
        reactor,
        request_timeout: float,
        retry_policy=None,
        fences: Fences | None = None,
        serve_as: str | None = None,
    ) -> None:
        host, port = parse_address(address)
        self.address = normalize_address(address)
        #: The primary server id this replica link acts for (``None``: an ordinary link).
        self.serving_as = serve_as
        self.server_id: str | None = serve_as
        #: This client places no new jobs here (set by ``Federation.drain_server``;
        #: always for a replica link: a promoted replica drains).
        self.draining = serve_as is not None
        self.welcome: dict = {}
        self.epoch: int | None = None
        self._fences = fences
        #: The server-wide drain flag to tell the server on the next connection:
        #: ``True`` while a drain is wanted, ``False`` for an undrain not yet
        #: acknowledged, ``None`` for nothing to tell.
        self._drain_to_tell: bool | None = None
        self.connection: ServerConnection | None = None
        self.down_reason: str | None = "not connected yet"
        self.down_since: float | None = reactor.seconds()
        #: The server said its data directory is full (its last stats, or a refusal).
        self.disk_full = False
        self._clock = reactor
        self._endpoint = HostnameEndpoint(reactor, host, port, timeout=HANDSHAKE_TIMEOUT)
        self._factory = ServerConnectionFactory(keys, reactor, request_timeout)
        self._retry_policy = retry_policy or backoffPolicy(
            initialDelay=0.1, maxDelay=3.0, factor=2.0)
        self._failures = 0
        self._attempt: Deferred | None = None
        self._retry: IDelayedCall | None = None
        #: Called with this link each time a connection is established.
        self.on_connected: list[Callable[["ServerLink"], object]] = []
        self._keepalive = LoopingCall(self._ping)
        self._keepalive.clock = reactor
        self._logged: tuple[bool, str] | None = None

    def __repr__(self) -> str:
        role = "" if self.serving_as is None else " replica"
        return f"<ServerLink{role} {self.address} id={self.server_id} up={self.up}>"

    @property
    def backup_address(self) -> str | None:
        """The backup the server's welcome names (``replica.address``), if any."""
        return welcome_backup(self.welcome)

    @property
    def up(self) -> bool:
        """Whether a handshaken connection is open right now."""
        return self.connection is not None and not self.connection.closed

    # -- the connect loop --------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._connect()

    def stopService(self) -> Deferred:
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._attempt is not None:
            self._attempt.cancel()
        if self._keepalive.running:
            self._keepalive.stop()
        self._mark(False, "client stopping")
        connection = self.connection
        if connection is None or connection.closed:
            return succeed(None)
        connection.close()
        return connection.lost

    def _connect(self) -> None:
        self._retry = None
        d = self._endpoint.connect(self._factory)
        d.addCallback(self._handshake)
        d.addCallbacks(self._established, self._failed)
        self._attempt = d

    def _established(self, _) -> None:
        self._attempt = None
        self._failures = 0

    def _failed(self, failure: Failure) -> None:
        self._attempt = None
        if not self.running:
            return  # stopping: the attempt was cancelled
        self._mark(False, _why(failure))
        self._schedule()

    def _schedule(self) -> None:
        self._failures += 1
        self._retry = self._clock.callLater(self._retry_policy(self._failures), self._connect)

    def _handshake(self, connection: ServerConnection) -> Deferred:
        d = connection.ready
        d.addTimeout(HANDSHAKE_TIMEOUT, self._clock)
        return d.addCallbacks(self._connected, self._refused, errbackArgs=(connection,))

    def _connected(self, connection: ServerConnection) -> Deferred | None:
        welcome = dict(connection.welcome)
        why = None if self._fences is None else self._fences.why_fenced(welcome)
        if why is not None:
            if self.serving_as is None:
                self.welcome, self.server_id = welcome, connection.server_id
            connection.close()
            raise Fenced(why)
        if self.serving_as is None:
            self.welcome, self.epoch = welcome, _epoch(welcome)
            return self._up(connection)
        d = connection.request("serve_as", {"server_id": self.serving_as})
        return d.addCallbacks(self._served, self._not_served,
                              callbackArgs=(connection,), errbackArgs=(connection,))

    def _served(self, reply: dict, connection: ServerConnection) -> Deferred | None:
        self.welcome, self.epoch = dict(connection.welcome), _epoch(reply)
        return self._up(connection)

    def _not_served(self, failure: Failure, connection: ServerConnection) -> None:
        connection.close()
        failure.trap(AllQError)
        raise Unavailable(f"the backup does not serve {self.serving_as}: "
                          f"{failure.value.code}: {failure.getErrorMessage()[:160]}")

    def _up(self, connection: ServerConnection) -> Deferred | None:
        self.connection = connection
        if self.serving_as is None:
            self.server_id = connection.server_id
            self._mark(True, f"server id {self.server_id}")
        else:
            self._mark(True, f"serving {self.serving_as} for this client "
                             f"(epoch {self.epoch})")
        connection.lost.addCallback(self._lost, connection)
        if self.running and not self._keepalive.running:
            self._keepalive.start(KEEPALIVE_INTERVAL, now=False)
        for hook in self.on_connected:
            hook(self)
        if self._drain_to_tell is None:
            return None
        draining = self._drain_to_tell
        d = connection.request("drain" if draining else "undrain", {})
        d.addCallback(self._drain_told, draining)
        d.addErrback(self._drain_on_connect_failed, draining)
        return d

    def _refused(self, failure: Failure, connection: ServerConnection) -> Failure:
        connection.close()
        return failure

    def _lost(self, _, connection: ServerConnection) -> None:
        if connection is not self.connection:
            return
        if self._keepalive.running:
            self._keepalive.stop()
        self._mark(False, "connection lost")
        if self.running and self._retry is None and self._attempt is None:
            self._failures = 0
            self._schedule()

    def refuse_if_fenced(self) -> None:
        """Close the connection if its welcome is now fenced (a promotion this
        client just saw): the reconnect then refuses it, saying why."""
        if (self.up and self._fences is not None and self.serving_as is None
                and self._fences.why_fenced(self.welcome) is not None):
            self.connection.close()

    def _ping(self) -> None:
        if self.up:
            self.connection.request("ping", {}).addErrback(self._ping_failed)

    def _ping_failed(self, failure: Failure) -> None:
        failure.trap(AllQError)  # the connection's loss is handled by _lost

    # -- requests ------------------------------------------------------------------

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

    def _on_error(self, failure: Failure, connection: ServerConnection) -> Failure:
        if failure.check(Timeout) and not connection.closed:
            self._log.warn("server {address} did not answer in time; reconnecting",
                           address=self.address)
            connection.close()
        return failure

    def _drain_on_connect_failed(self, failure: Failure, draining: bool) -> None:
        # Not worth refusing the connection for: puts from this client skip a
        # server it drains anyway. A lost connection retries on reconnect.
        self._log.warn("could not tell server {address} to {what}: {error}",
                       address=self.address, what="drain" if draining else "undrain",
                       error=failure.getErrorMessage())

    def _mark(self, up: bool, why: str) -> None:
        """Record the link's state; log a line when it (or why it is down) changes."""
        if up:
            self.down_since = None
        elif self.down_since is None:
            self.down_since = self._clock.seconds()
        self.down_reason = None if up else why
        if (up, "" if up else why) == self._logged:
            return
        self._logged = (up, "" if up else why)
        if up:
            self._log.info("server {address} up ({why})", address=self.address, why=why)
        else:
            self._log.warn("server {address} down: {why}", address=self.address, why=why)


def welcome_backup(welcome: dict) -> str | None:
    """The backup address a welcome names (``replica.address``), normalized;
    ``None`` when it names none, or not as ``host:port``."""
    replica = welcome.get("replica")
    address = replica.get("address") if isinstance(replica, dict) else None
    if not isinstance(address, str):
        return None
    try:
        return normalize_address(address)
    except BadRequest:
        return None


def _epoch(reply: dict) -> int | None:
    epoch = reply.get("epoch")
    return epoch if type(epoch) is int else None


def _why(failure: Failure) -> str:
    """Why a connection attempt failed, in an operator's words."""
    if failure.check(net_error.ConnectionRefusedError):
        return "connection refused (is the server running and listening there?)"
    if failure.check(net_error.DNSLookupError):
        return "cannot resolve the server's host name"
    if failure.check(TimeoutError, net_error.TimeoutError, CancelledError):
        return f"no handshake within {HANDSHAKE_TIMEOUT:g} s (not an allq server, or stalled)"
    message = failure.getErrorMessage()
    if message.startswith("server refused: "):
        code, _, detail = message.removeprefix("server refused: ").partition(": ")
        return _REFUSALS.get(code, f"server refused the connection: {code}: {detail}")
    if message.startswith("bad frame from server: "):
        return "not an allq server, or another protocol version (" + message[23:][:120] + ")"
    if failure.check(net_error.ConnectError, AllQError):
        return message[:200]
    return f"{failure.type.__name__}: {message[:200]}"
