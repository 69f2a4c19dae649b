"""An in-memory federation for facade tests: real queues, real dispatchers, no network.

:class:`FakeFederation` implements the interface :mod:`allq.client.rest` needs
(``allq.client.rest.Federation``) over one or more :class:`FakeServer`, each a
real :class:`allq.core.queue.Queue` behind a real
:class:`allq.server.dispatch.Dispatcher`. Requests go through
``Dispatcher.handle`` as wire request objects and error replies come back as
the matching :class:`AllQError` via ``error_for_code``, so job ids, validation
and error behaviour are the server's own. Time comes from a ``task.Clock``;
deadlines are applied before every request, and a long poll (``wait``) polls
every :data:`POLL_INTERVAL` seconds of that clock.

Placement follows the real federation's rules in miniature: puts round robin
over the up servers this client does not drain, skipping a server that answers
``draining`` or ``full`` (the error is raised when every up server refused); a
put naming a parent goes to the parent's server only; tube settings go to every
up server, and a throttle is split over them in fractional shares.

Switches for error tests: :attr:`FakeFederation.unreachable` (every call fails
with "no server reachable", health shows every server down),
:meth:`FakeServer.up` per server, :meth:`FakeFederation.fail_next` (the next
coroutine call raises a given exception) and :attr:`FakeFederation.hang` (calls
never answer until cancelled).
"""

import re
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater

from allq.core.queue import Queue, QueueConfig
from allq.errors import (
    AllQError,
    BadRequest,
    Draining,
    NotFound,
    QueueFull,
    Unavailable,
    error_for_code,
)
from allq.server.dispatch import Dispatcher
from allq.server.tap import derived_server_id
from allq.wire.messages import encode_request

POLL_INTERVAL = 0.05
_ADDRESS = re.compile(r"([A-Za-z0-9.-]{1,253}):([0-9]{1,5})")


def check_address(address: object) -> str:
    """Validate ``host:port``.

    :raises BadRequest: anything else.
    """
    match = _ADDRESS.fullmatch(address) if isinstance(address, str) else None
    if match is None or not 1 <= int(match.group(2)) <= 65535:
        raise BadRequest(f"server address must be host:port, not {str(address)[:60]!r}")
    return address


class FakeServer:
    """One allq server held in memory.

    :param address: ``host:port``; the server id is derived from it as the real
        server derives its own.
    :param clock: the shared test clock.
    :param config: the queue's defaults and limits.
    """

    def __init__(self, address: str, clock: Clock, config: QueueConfig) -> None:
        host, port = address.rsplit(":", 1)
        self.address = address
        self.server_id = derived_server_id(host, int(port))
        self.queue = Queue(config, started=clock.seconds())
        self.dispatcher = Dispatcher(self.queue, clock, lambda: self.server_id)
        self.up = True
        #: This client places no puts here (its server drain).
        self.draining = False
        self._clock = clock
        self._request_id = 0

    def call(self, action: str, **params: Any) -> dict:
        """Apply one wire request and return its result.

        :raises Unavailable: the server is marked down.
        :raises AllQError: the error the server replied with.
        """
        if not self.up:
            raise Unavailable(f"server {self.address} is not reachable")
        self.queue.expire(self._clock.seconds())
        self._request_id += 1
        reply = self.dispatcher.handle(encode_request(self._request_id, action, params))
        if "error" in reply:
            raise error_for_code(reply["error"]["code"], reply["error"]["message"])
        return reply["result"]


class FakeFederation:
    """A federation over :class:`FakeServer` objects.

    :param clock: a ``task.Clock``.
    :param addresses: the servers to start with.
    :param config: every server's queue config (e.g. a small ``max_job_size``).
    """

    def __init__(
        self,
        clock: Clock,
        addresses: tuple[str, ...] = ("127.0.0.1:7711",),
        config: QueueConfig = QueueConfig(),
    ) -> None:
        self._clock = clock
        self._config = config
        self.servers: dict[str, FakeServer] = {}
        for address in addresses:
            self.add_server(address)
        self.unreachable = False
        self.hang = False
        self._failures: list[BaseException] = []
        self._next_put = 0
        #: (method name, args, kwargs) of every coroutine call, for assertions.
        self.calls: list[tuple[str, tuple, dict]] = []

    # -- test switches -----------------------------------------------------------

    def fail_next(self, error: BaseException) -> None:
        """Make the next coroutine call raise ``error`` (``None``: let it through)."""
        self._failures.append(error)

    def server(self, index: int = 0) -> FakeServer:
        """The ``index``-th server, in the order they were added."""
        return list(self.servers.values())[index]

    # -- the federation interface --------------------------------------------------

    async def put(self, tube: str, body: str, *, priority: int | None = None,
                  ttl: float | None = None, delay: float = 0,
                  expired_limit: int | None = None, run_at: float | None = None,
                  shard_key: str | None = None, parent_id: str | None = None) -> str:
        """Put on the next up, non-draining server, round robin (or the parent's)."""
        params = dict(priority=priority, ttl=ttl, delay=delay, expired_limit=expired_limit,
                      run_at=run_at, shard_key=shard_key, parent_id=parent_id)
        await self._enter("put", (tube, body), params)
        return self._place("put", dict(tube=tube, body=body, **params))

    async def put_many(self, jobs: list[dict]) -> list[str | AllQError]:
        """Each job through :meth:`put`; its id or its error, in order."""
        return [await _outcome(self.put(**job)) for job in jobs]

    async def put_parent(self, tube: str, body: str, *, priority: int | None = None,
                         ttl: float | None = None, expired_limit: int | None = None,
                         shard_key: str | None = None, parent_id: str | None = None,
                         timeout: float | None = None, run_on_timeout: bool = False,
                         limit: int | None = None) -> str:
        """Put a parent job, placed like :meth:`put`."""
        params = dict(priority=priority, ttl=ttl, expired_limit=expired_limit,
                      shard_key=shard_key, parent_id=parent_id, timeout=timeout,
                      run_on_timeout=run_on_timeout, limit=limit)
        await self._enter("put_parent", (tube, body), params)
        return self._place("put_parent", dict(tube=tube, body=body, **params))

    def _place(self, action: str, params: dict) -> str:
        if params["parent_id"] is not None:
            server = self._server_of(params["parent_id"], "parent")
            return server.call(action, **params)["job_id"]
        candidates = [s for s in self._up() if not s.draining]
        if not candidates:
            raise Draining("every reachable server is drained by this client")
        first = self._next_put % len(candidates)
        self._next_put += 1
        refusals: list[AllQError] = []
        for server in candidates[first:] + candidates[:first]:
            try:
                return server.call(action, **params)["job_id"]
            except (Draining, QueueFull) as e:
                refusals.append(e)
        full = [e for e in refusals if isinstance(e, QueueFull)]
        raise (full or refusals)[0]

    async def get(self, tube: str, *, count: int = 1, delete: bool = False,
                  wait: float = 0) -> list[dict]:
        """Collect up to ``count`` jobs across servers; poll the clock until ``wait`` ends."""
        await self._enter("get", (tube,), dict(count=count, delete=delete, wait=wait))
        deadline = self._clock.seconds() + wait
        while True:
            jobs = self._get_once(tube, count, delete)
            if jobs or self._clock.seconds() >= deadline:
                return jobs
            await deferLater(self._clock, min(POLL_INTERVAL, deadline - self._clock.seconds()))

    def _get_once(self, tube: str, count: int, delete: bool) -> list[dict]:
        jobs: list[dict] = []
        for server in self._reachable():
            if len(jobs) == count:
                break
            jobs += server.call("get", tube=tube, count=count - len(jobs), delete=delete)["jobs"]
        return jobs

    async def job_action(self, action: str, job_id: str, **params: Any) -> dict:
        """Send the action to the server the job id names."""
        await self._enter("job_action", (action, job_id), params)
        return self._server_of(job_id).call(action, job_id=job_id, **params)

    async def job_action_many(self, action: str, job_ids: list[str],
                              **params: Any) -> list[dict | AllQError]:
        """Each job through :meth:`job_action`; its result or its error, in order."""
        return [await _outcome(self.job_action(action, job_id, **params)) for job_id in job_ids]

    def _server_of(self, job_id: str, what: str = "job") -> FakeServer:
        server_id = job_id.split(",", 1)[0]
        for server in self.servers.values():
            if server.server_id == server_id:
                return server
        raise NotFound(f"{what} {job_id[:90]} is on no known server")

    async def kick_tube(self, tube: str, count: int = 1) -> list[str]:
        """Kick up to ``count`` buried jobs in total, server by server."""
        await self._enter("kick_tube", (tube, count), {})
        kicked: list[str] = []
        for server in self._reachable():
            if len(kicked) == count:
                break
            kicked += server.call("kick_tube", tube=tube, count=count - len(kicked))["job_ids"]
        return kicked

    async def peek(self, tube: str, *, buried: bool = False, offset: int = 0) -> dict | None:
        """The first server's hit."""
        await self._enter("peek", (tube,), dict(buried=buried, offset=offset))
        for server in self._reachable():
            job = server.call("peek", tube=tube, buried=buried, offset=offset)["job"]
            if job is not None:
                return job
        return None

    async def clear(self, tube: str, state: str = "all") -> int:
        """Clear on every server; the total dropped."""
        await self._enter("clear", (tube, state), {})
        return sum(s.call("clear", tube=tube, state=state)["cleared"] for s in self._reachable())

    async def throttle(self, tube: str, tps: float | None) -> int:
        """Give each up server ``tps / N``; ``None`` removes. Returns N."""
        await self._enter("throttle", (tube, tps), {})
        servers = self._reachable()
        share = None if tps is None else tps / len(servers)
        for server in servers:
            server.call("throttle", tube=tube, tps=share)
        return len(servers)

    async def pause(self, tube: str, paused: bool = True) -> int:
        """Pause or resume on every up server."""
        return await self._broadcast("pause" if paused else "unpause", tube)

    async def drain_tube(self, tube: str, draining: bool = True) -> int:
        """Drain or undrain a tube on every up server."""
        return await self._broadcast("drain" if draining else "undrain", tube)

    async def fair(self, tube: str, policy: str) -> int:
        """Set the fair policy on every up server."""
        return await self._broadcast("fair", tube, policy=policy)

    async def max_size(self, tube: str, max_size: int | None) -> int:
        """Bound the tube on every up server."""
        return await self._broadcast("max_size", tube, max_size=max_size)

    async def _broadcast(self, action: str, tube: str, **params: Any) -> int:
        await self._enter(action, (tube,), params)
        servers = self._reachable()
        for server in servers:
            server.call(action, tube=tube, **params)
        return len(servers)

    async def stats(self) -> list[dict]:
        """Each reachable server's stats plus its address."""
        await self._enter("stats", (), {})
        return [{**s.call("stats"), "address": s.address} for s in self._reachable()]

    def health(self) -> dict:
        """Which servers are up."""
        servers = [
            {"address": s.address, "server_id": s.server_id,
             "up": s.up and not self.unreachable, "draining": s.draining}
            for s in self.servers.values()
        ]
        return {"servers": servers, "up": sum(s["up"] for s in servers),
                "total": len(servers)}

    def add_server(self, address: str) -> None:
        """Add a server (a no-op if it is known)."""
        check_address(address)
        if address not in self.servers:
            self.servers[address] = FakeServer(address, self._clock, self._config)

    def update_servers(self, addresses: list[str]) -> None:
        """Replace the set of servers, keeping the state of those that stay."""
        if not addresses:
            raise BadRequest("at least one server is required")
        for address in addresses:
            check_address(address)
        self.servers = {
            a: self.servers.get(a) or FakeServer(a, self._clock, self._config)
            for a in addresses
        }

    async def drain_server(self, server: str, draining: bool = True) -> bool:
        """Mark a server (by id or address) draining (no new puts from here) and
        tell it; ``False`` when it is down (not told)."""
        await self._enter("drain_server", (server, draining), {})
        for candidate in self.servers.values():
            if server in (candidate.server_id, candidate.address):
                candidate.draining = draining
                if not candidate.up:
                    return False
                candidate.call("drain" if draining else "undrain")
                return True
        raise NotFound(f"no server {server[:60]!r}")

    # -- internals -------------------------------------------------------------

    async def _enter(self, name: str, args: tuple, kwargs: dict) -> None:
        self.calls.append((name, args, kwargs))
        if self._failures:
            error = self._failures.pop(0)
            if error is not None:
                raise error
        if self.hang:
            await Deferred()  # cancelling the call is the only way out
        if self.unreachable or not self._up():
            raise Unavailable("no server reachable")

    def _up(self) -> list[FakeServer]:
        return [s for s in self.servers.values() if s.up]

    def _reachable(self) -> list[FakeServer]:
        servers = self._up()
        if self.unreachable or not servers:
            raise Unavailable("no server reachable")
        return servers


async def _outcome(call) -> Any:
    """The result of ``call``, or the AllQError it raised."""
    try:
        return await call
    except AllQError as e:
        return e


def result_with_flush(case, stub, clock: Clock, d: Deferred, step: float = POLL_INTERVAL,
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
