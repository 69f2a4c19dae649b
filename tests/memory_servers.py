"""In-memory allq servers behind fake server links, for tests of the real federation.

:class:`MemoryLink` stands where :class:`allq.client.link.ServerLink` stands in
a :class:`allq.client.federation.Federation`: same ``address``, ``server_id``,
``up``, ``draining``, ``request``, ``batch`` and ``tell_draining``. Behind it is
a real :class:`allq.core.queue.Queue` and a real
:class:`allq.server.dispatch.Dispatcher`: every request goes through
``Dispatcher.handle`` as a wire request, and error replies come back as the
matching :class:`AllQError` via ``error_for_code``, so job ids, validation and
errors are the server's own. Only the network is simulated, with switches for
the ways a network fails:

* :attr:`MemoryLink.up` ``False``: no connection; requests fail at once with
  :class:`NotConnected` (nothing sent), as a real link does between reconnects;
* :attr:`MemoryLink.lose_next`: the next N requests (or batch frames) are
  applied, then the reply is lost (:class:`ConnectionLost`) and the link goes down;
* :attr:`MemoryLink.hold`: replies wait until :meth:`MemoryLink.release_held`;
* :meth:`MemoryLink.fail_next`: the next request (each item of a batch counts
  as one) fails with the given error without reaching the server;
* :attr:`MemoryLink.hang`: requests are sent but never answered; only
  cancelling them (a caller's timeout) ends them.

A server's deadlines (delays, TTRs, run_at) are applied before each request, as
the real server's deadline timer would have applied them by then. Server ids
are derived from ``host:port`` as the real server derives its own
(:func:`allq.server.tap.derived_server_id`).

Replication's client side (docs/replication.md) has fakes too: a server's
:attr:`MemoryServer.welcome` may name a backup and an epoch, and a server
answers ``replicas``, ``promote`` and ``serve_as`` for the primaries it backs up
(:meth:`MemoryServer.back_up`). Its replica of a primary is that primary's own
queue (as if every change had been replicated), served under the primary's id
once promoted, draining. Two federations can share servers
(``start_federation(servers=...)``), as two clients share real ones.

Nothing here schedules anything on the clock, so a test can assert
``clock.getDelayedCalls() == []`` about the federation alone.
"""

from collections.abc import Iterable
from itertools import count
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure

import attrs
from twisted.internet import error as net_error

from allq.client.federation import Federation
from allq.client.fencing import Fences
from allq.client.link import NotConnected, normalize_address, parse_address, welcome_backup
from allq.core.queue import Queue, QueueConfig
from allq.errors import (
    AllQError,
    ConnectionLost,
    NotFound,
    PrimaryAlive,
    ReplicaIncomplete,
    Unavailable,
    error_for_code,
)
from allq.core.idempotency import IdempotencyKeys
from allq.core.schedules import Schedules
from allq.server.dispatch import Dispatcher
from allq.server.schedules import ScheduleService
from allq.server.tap import derived_server_id
from allq.wire.messages import encode_request

#: The clock step :func:`result_with_flush` advances by between flushes.
FLUSH_STEP = 0.05


@attrs.define
class MemoryReplica:
    """A backup's replica of one primary: the primary's own server state."""

    primary: "MemoryServer"
    epoch: int = 1
    #: ``syncing`` (promote: ``replica_incomplete``), ``synced`` or ``promoted``.
    state: str = "synced"
    #: The backup still hears the primary (promote: ``primary_alive``).
    primary_alive: bool = True
    promoted_at: float | None = None
    promotions: int = 0

    def entry(self) -> dict:
        return {"primary": self.primary.server_id, "address": self.primary.address,
                "epoch": self.epoch, "state": self.state, "records": 0,
                "jobs": 0, "last_record": None, "last_sync": None,
                "promoted_at": self.promoted_at}


class MemoryServer:
    """One pretend allq server: a real queue and dispatcher, and the replicas it holds.

    :param address: ``host:port`` (or ``[v6]:port``) of the pretend server.
    :param clock: the test clock; the server's ``now``.
    :param config: the server's queue defaults and limits.
    """

    def __init__(self, address: str, clock: Clock, config: QueueConfig | None = None) -> None:
        host, port = parse_address(address)
        self.address = normalize_address(address)
        self.server_id = derived_server_id(host, port)
        self.queue = Queue(config or QueueConfig(), started=clock.seconds())
        #: The server's schedules: kept, not fired by themselves (the service is not
        #: started, so nothing is on the clock); :meth:`fire_schedules` fires the due ones.
        self.schedules = ScheduleService(Schedules(), self.queue, clock, IdempotencyKeys())
        self.dispatcher = Dispatcher(self.queue, clock, lambda: self.server_id,
                                     schedules=self.schedules)
        self._clock = clock
        self._request_ids = count(1)
        #: What the welcome says besides ``server_id`` (``epoch``, ``replica``).
        self.welcome_extra: dict = {}
        #: The replicas this server holds as a backup, by primary id.
        self.replicas: dict[str, MemoryReplica] = {}
        #: Whether a new connection (a short-lived one, for ``promote``) gets through.
        self.reachable = True
        #: ``(action, params)`` of the replication requests received, any connection.
        self.replication_requests: list[tuple[str, dict]] = []

    @property
    def welcome(self) -> dict:
        return {"server_id": self.server_id, **self.welcome_extra}

    def back_up(self, primary: "MemoryServer", epoch: int = 1,
                named: bool = True) -> MemoryReplica:
        """Become ``primary``'s backup (its welcome names this one when ``named``)."""
        replica = self.replicas[primary.server_id] = MemoryReplica(primary, epoch)
        primary.welcome_extra["epoch"] = epoch
        if named:
            primary.welcome_extra["replica"] = {"address": self.address}
        return replica

    def handle(self, action: str, params: dict,
               serve_as: str | None = None) -> dict | BaseException:
        """Apply one request; on a ``serve_as`` connection, for that primary."""
        if action in ("replicas", "promote", "serve_as"):
            self.replication_requests.append((action, params))
            try:
                return getattr(self, "_" + action)(**params)
            except AllQError as e:
                return e
        if serve_as is not None:
            replica = self.replicas.get(serve_as)
            if replica is None or replica.state != "promoted":
                return NotFound(f"no promoted replica of {serve_as}")
            return replica.primary.handle(action, params)
        self.queue.expire(self._clock.seconds())
        reply = self.dispatcher.handle(encode_request(next(self._request_ids), action, params))
        if "error" in reply:
            return error_for_code(reply["error"]["code"], reply["error"]["message"])
        return reply["result"]

    def _replicas(self) -> dict:
        return {"replicas": [replica.entry() for replica in self.replicas.values()]}

    def _promote(self, server_id: str) -> dict:
        replica = self.replicas.get(server_id)
        if replica is None:
            raise NotFound(f"no replica of {server_id}")
        if replica.state != "promoted":
            if replica.state != "synced":
                raise ReplicaIncomplete(f"the replica of {server_id} is not synced yet")
            if replica.primary_alive:
                raise PrimaryAlive(f"{server_id} still streams to this backup")
            replica.epoch += 1
            replica.state = "promoted"
            replica.promoted_at = self._clock.seconds()
            replica.promotions += 1
            replica.primary.handle("drain", {})  # a promoted replica takes no new jobs
        return {"server_id": server_id, "epoch": replica.epoch, "backup": self.server_id}

    def _serve_as(self, server_id: str) -> dict:
        replica = self.replicas.get(server_id)
        if replica is None or replica.state != "promoted":
            raise NotFound(f"no promoted replica of {server_id}")
        return {"server_id": server_id, "epoch": replica.epoch, "backup": self.server_id}


class MemoryConnection:
    """A short-lived connection to a :class:`MemoryServer` (``request``, ``close``)."""

    def __init__(self, server: MemoryServer) -> None:
        self.server = server
        self.server_id = server.server_id
        self.welcome = server.welcome
        self.closed = False

    def request(self, action: str, params: dict) -> Deferred:
        outcome = self.server.handle(action, params)
        return fail(outcome) if isinstance(outcome, BaseException) else succeed(outcome)

    def close(self) -> None:
        self.closed = True


class MemoryLink(Service):
    """A server link whose server is an in-process queue and dispatcher.

    :param address: ``host:port`` (or ``[v6]:port``) of the pretend server.
    :param clock: the test clock; the server's ``now``.
    :param config: the server's queue defaults and limits.
    :param server: the server behind it (default: a new one), shared by the
        links of several clients.
    :param fences: the client's promotions: a fenced welcome keeps it down.
    :param serve_as: a replica link acting for that primary id on ``server``.
    """

    def __init__(self, address: str, clock: Clock, config: QueueConfig | None = None,
                 server: MemoryServer | None = None, fences: Fences | None = None,
                 serve_as: str | None = None) -> None:
        self.server = server or MemoryServer(address, clock, config)
        self.address = self.server.address
        self.serving_as = serve_as
        self.server_id = serve_as or self.server.server_id
        self._fences = fences
        self._clock = clock
        self.down_since: float | None = None
        self._up = True
        #: This client places no new jobs here (set by ``Federation.drain_server``;
        #: always for a replica link).
        self.draining = serve_as is not None
        #: The server's disk is full (set from its stats, as the real link's).
        self.disk_full = False
        #: ``(action, params)`` of every request sent, batch items included, in order.
        self.requests: list[tuple[str, dict]] = []
        #: Batch frames sent.
        self.frames = 0
        #: The next N requests or frames are applied, then their reply is lost.
        self.lose_next = 0
        #: While ``True``, replies wait for :meth:`release_held`.
        self.hold = False
        #: While ``True``, requests are sent and never answered (until cancelled).
        self.hang = False
        #: The Deferreds of requests sent while :attr:`hang` was set.
        self.hung: list[Deferred] = []
        self._held: list[tuple[Deferred, Any]] = []
        self._failures: list[BaseException | None] = []

    def __repr__(self) -> str:
        return f"<MemoryLink {self.address} id={self.server_id} up={self.up}>"

    # The server's state, as the tests knew it when a link was the server.
    queue = property(lambda self: self.server.queue)
    schedules = property(lambda self: self.server.schedules)
    dispatcher = property(lambda self: self.server.dispatcher,
                          lambda self, value: setattr(self.server, "dispatcher", value))

    @property
    def up(self) -> bool:
        """Whether the link has a live connection; ``False``: requests fail at once.
        A replica link is up only while its backup serves the primary's id, and
        a link whose welcome is fenced never is."""
        return self._up and self._refusal() is None

    @up.setter
    def up(self, up: bool) -> None:
        if up:
            self.down_since = None
        elif self.down_since is None:
            self.down_since = self._clock.seconds()
        self._up = up

    @property
    def down_reason(self) -> str | None:
        """Why the link is down, as a real link says it (``None`` while up)."""
        if not self._up:
            return "connection refused (test switch)"
        return self._refusal()

    @property
    def welcome(self) -> dict:
        return self.server.welcome

    @property
    def epoch(self) -> int | None:
        if self.serving_as is not None:
            replica = self.server.replicas.get(self.serving_as)
            return None if replica is None else replica.epoch
        return self.server.welcome_extra.get("epoch")

    @property
    def backup_address(self) -> str | None:
        return welcome_backup(self.welcome)

    def refuse_if_fenced(self) -> None:
        """As the real link's: the next look at :attr:`up` applies the fence."""

    def _refusal(self) -> str | None:
        if self.serving_as is not None:
            replica = self.server.replicas.get(self.serving_as)
            if replica is None or replica.state != "promoted":
                return f"the backup does not serve {self.serving_as}"
            return None
        return None if self._fences is None else self._fences.why_fenced(self.welcome)
    # -- test switches ---------------------------------------------------------

    def fail_next(self, error: BaseException | None) -> None:
        """Make the next request (or batch item) fail with ``error`` without
        reaching the server; ``None`` lets that one through. Calls queue up."""
        self._failures.append(error)

    def fire_schedules(self) -> None:
        """Fire the schedules due now, as the server's timer would."""
        self.schedules._fire()

    def release_held(self) -> None:
        """Deliver every reply held while :attr:`hold` was set, in order."""
        held, self._held = self._held, []
        for d, outcome in held:
            _deliver(d, outcome)

    def call(self, action: str, **params: Any) -> dict:
        """Apply a request as *another* client would: straight to the server,
        ignoring the switches and not recorded in :attr:`requests`.

        :raises AllQError: the error the server replied with.
        """
        outcome = self._handle(action, params)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    # -- the link interface the federation uses --------------------------------

    def request(self, action: str, params: dict) -> Deferred:
        """Send one request; a Deferred with its result or its error."""
        if not self.up:
            return fail(NotConnected(f"server {self.address} is not connected"))
        self.requests.append((action, params))
        if self.hang:
            return self._hung()
        outcome = self._apply(action, params)
        return self._reply(outcome)

    def batch(self, requests: list[tuple[str, dict]]) -> Deferred:
        """Send several requests in one frame; per request its result or its error."""
        if not self.up:
            return fail(NotConnected(f"server {self.address} is not connected"))
        self.frames += 1
        self.requests.extend(requests)
        if self.hang:
            return self._hung()
        return self._reply([self._apply(action, params) for action, params in requests])

    def tell_draining(self, draining: bool) -> Deferred:
        """Tell the server to drain (or undrain); ``False`` when not connected."""
        if not self.up:
            return succeed(False)

        def not_told(failure: Failure) -> bool:
            failure.trap(Unavailable)
            return False

        d = self.request("drain" if draining else "undrain", {})
        return d.addCallbacks(lambda _: True, not_told)

    # -- internals -------------------------------------------------------------

    def _handle(self, action: str, params: dict) -> dict | BaseException:
        return self.server.handle(action, params, self.serving_as)

    def _apply(self, action: str, params: dict) -> dict | BaseException:
        if self._failures:
            error = self._failures.pop(0)
            if error is not None:
                return error
        return self._handle(action, params)

    def _reply(self, outcome: Any) -> Deferred:
        if self.lose_next:
            # Applied, but the connection dropped before the reply came back.
            self.lose_next -= 1
            self.up = False
            outcome = ConnectionLost(f"connection to {self.address} lost")
        d: Deferred = Deferred()
        if self.hold:
            self._held.append((d, outcome))
        else:
            _deliver(d, outcome)
        return d

    def _hung(self) -> Deferred:
        d: Deferred = Deferred(lambda d: self.hung.remove(d))
        self.hung.append(d)
        return d


def _deliver(d: Deferred, outcome: Any) -> None:
    if isinstance(outcome, BaseException):
        d.errback(Failure(outcome))
    else:
        d.callback(outcome)


def local_addresses(n: int, first_port: int = 7711) -> list[str]:
    """``n`` loopback addresses on consecutive ports from ``first_port``."""
    return [f"127.0.0.1:{first_port + i}" for i in range(n)]


def start_federation(
    clock: Clock,
    addresses: Iterable[str],
    *,
    config: QueueConfig | None = None,
    servers: dict[str, MemoryServer] | None = None,
    failover_after: float | None = None,
    **federation_kwargs: Any,
) -> tuple[Federation, list[MemoryLink]]:
    """A started real :class:`Federation` over one :class:`MemoryLink` per address.

    :param clock: the test clock (the federation's and every server's).
    :param addresses: the servers to start with.
    :param config: every server's queue config (e.g. a small ``max_job_size``).
    :param servers: the servers by address, shared with other federations
        (filled with the ones made here); default: this federation's own.
    :param failover_after: turn failover on (:mod:`allq.client.failover`).
    :param federation_kwargs: passed on, e.g. ``retry_budget=1.0``.
    :returns: the federation, and a list of every link it makes, in order: links
        made later (``add_server``, ``update_servers``) are appended to it, and
        links dropped stay in it.
    """
    made: list[MemoryLink] = []
    servers = {} if servers is None else servers
    fences = Fences()

    def server(address: str) -> MemoryServer:
        address = normalize_address(address)
        if address not in servers:
            servers[address] = MemoryServer(address, clock, config)
        return servers[address]

    def make_link(address: str) -> MemoryLink:
        link = MemoryLink(address, clock, server=server(address), fences=fences)
        made.append(link)
        return link

    def make_replica_link(address: str, server_id: str) -> MemoryLink:
        link = MemoryLink(address, clock, server=server(address), fences=fences,
                          serve_as=server_id)
        made.append(link)
        return link

    def connect(address: str) -> Deferred:
        target = servers.get(address)
        if target is None or not target.reachable:
            return fail(net_error.ConnectionRefusedError(address))
        return succeed(MemoryConnection(target))

    federation = Federation(list(addresses), make_link, clock, **federation_kwargs)
    if failover_after is not None:
        federation.fail_over(failover_after, fences, make_replica_link, connect)
    federation.startService()
    return federation, made


def result_with_flush(case, stub, clock: Clock, d: Deferred, step: float = FLUSH_STEP,
                      limit: int = 10_000) -> Any:
    """The result of ``d``, a request through ``stub`` (a ``StubTreq``) to a facade
    on ``clock``: alternate ``stub.flush()`` and ``clock.advance(step)`` until it fires.

    :param case: the ``SynchronousTestCase`` that fails when it never fires.
    """
    fired = []
    d.addBoth(lambda result: (fired.append(True), result)[1])
    for _ in range(limit):
        stub.flush()
        if fired:
            return case.successResultOf(d)
        clock.advance(step)
    case.fail(f"no response after {limit * step} seconds")
