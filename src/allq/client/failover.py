"""The client's half of a failover (docs/replication.md): promote a dead primary's
backup, then reach the primary's jobs there.

:class:`Failover` watches the membership's configured links. When one has been
down for ``after`` seconds (``--failover-after``) it finds the server's backup:
the one its last welcome named (``replica.address``), else the healthy server
whose ``replicas`` answer lists the down server's id (or its address, for a
server this client never reached). It asks that backup ``promote
{server_id}``, over the link it already has to it or a short-lived connection.
The backup decides: ``primary_alive`` (it still hears the primary),
``replica_incomplete``, ``not_found`` or no answer mean "not now", and the
failover tries again with backoff, logging once per change of reason.

A promotion that succeeds (several clients promoting at once all get the same
epoch: ``promote`` is idempotent) is recorded in :attr:`Failover.failovers`
and in the client's :class:`allq.client.fencing.Fences`, and a *replica link*
is added: a link to the backup that says ``serve_as {server_id}`` after its
handshake and then acts for the primary's id (job operations by id, gets,
stats, peeks, kicks, clears; no new puts: it drains). A link that then shows
the primary's id at an older epoch is fenced: never used.

A client also *adopts* promotions it did not make: each time one of its links
connects (or its server id changes) it asks that server ``replicas`` once, and
adds a replica link for every ``promoted`` entry it has none for. So a client
started after a failover, or one whose primary came back under a new id before
it noticed, still reaches the promoted jobs.

Decides nothing about jobs; schedules one looping watch on the clock, cancelled
on stop with every promotion in flight.
"""

from collections.abc import Callable

import attrs
from twisted.application.service import Service
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from allq.client.fencing import Fences, Promotion
from allq.client.link import HANDSHAKE_TIMEOUT, ServerLink, normalize_address, parse_address
from allq.client.membership import Membership
from allq.errors import AllQError, BadRequest, NotFound, ProtocolError
from allq.peer.connection import connect as connect_peer

#: ``--failover-after``'s default: seconds a server is down before its backup is promoted.
DEFAULT_FAILOVER_AFTER = 3.0
#: Seconds before the first retry of a refused or failed promotion; doubled each
#: time up to :data:`MAX_RETRY`.
FIRST_RETRY = 1.0
MAX_RETRY = 30.0
#: Errors that mean "not now": the backup decided, or could not be reached.
_NOT_NOW = (AllQError, net_error.ConnectError, net_error.ConnectionLost,
            DeferredTimeoutError, OSError)


class NoBackup(NotFound):
    """No server this client knows holds a replica of the down server."""


def parse_failover_after(text: str) -> float | None:
    """``--failover-after``: seconds (> 0), or ``off`` (``None``).

    :raises ValueError: anything else, said in the option's words.
    """
    if text.strip().lower() == "off":
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < 86400:
        raise ValueError(f"--failover-after must be seconds (more than 0, under a day) "
                         f"or off, not {text[:40]!r}")
    return seconds


def connector(reactor, keys, request_timeout: float) -> Callable[[str], Deferred]:
    """Opens a short-lived connection to ``host:port`` (for a ``promote`` to a
    backup this client has no link to); fires with the ready connection."""
    def connect(address: str) -> Deferred:
        host, port = parse_address(address)
        endpoint = HostnameEndpoint(reactor, host, port, timeout=HANDSHAKE_TIMEOUT)
        d = connect_peer(reactor, endpoint, keys, request_timeout)
        return d.addTimeout(HANDSHAKE_TIMEOUT * 2, reactor)
    return connect


@attrs.define
class _Attempt:
    """Where the failover of one down server stands."""

    failures: int = 0
    next_try: float = 0.0
    busy: bool = False
    #: The last reason logged (a change logs a new line).
    logged: str | None = None
    #: The primary id failed over (its replica link exists).
    done: str | None = None


#: The longest time between two looks at the links (seconds).
WATCH_INTERVAL = 0.25


class Failover(Service):
    """Promotes the backups of servers down for ``after`` seconds.

    :param servers: the links to watch, and where replica links go.
    :param clock: time.
    :param after: seconds a link must have been down.
    :param fences: the client's promotions, shared with its links.
    :param make_replica_link: ``(backup address, primary server id)`` → a link
        that acts for that id (``ServerLink(..., serve_as=server_id)``).
    :param connect: ``address`` → Deferred of a ready connection (``request``,
        ``close``, ``server_id``): a short-lived one for ``promote``.
    """

    _log = Logger()

    def __init__(self, servers: Membership, clock: IReactorTime, after: float,
                 fences: Fences, make_replica_link: Callable[[str, str], ServerLink],
                 connect: Callable[[str], Deferred]) -> None:
        self._servers = servers
        self._clock = clock
        self.after = after
        self._fences = fences
        self._make_replica_link = make_replica_link
        self._connect = connect
        #: One ``{"server_id", "backup", "epoch", "at"}`` per failover this client made.
        self.failovers: list[dict] = []
        self._attempts: dict[str, _Attempt] = {}
        #: The server id each link's server was last asked ``replicas`` under.
        self._asked: dict[str, str | None] = {}
        self._in_flight: set[Deferred] = set()
        self._loop = LoopingCall(self._watch)
        self._loop.clock = clock
        #: Seconds between two looks at the links: a failover starts at most this
        #: late (a look is a walk over a few links: cheap even this often).
        self.interval = min(WATCH_INTERVAL, after / 4)

    def startService(self) -> None:
        super().startService()
        self._servers.failing_over = True
        self._loop.start(self.interval, now=False)

    def stopService(self):
        super().stopService()
        self._servers.failing_over = False
        if self._loop.running:
            self._loop.stop()
        for d in list(self._in_flight):
            d.cancel()
        return None

    # -- watching ----------------------------------------------------------------

    def _watch(self) -> None:
        now = self._clock.seconds()
        for link in self._servers.links():
            if link.up and self._asked.get(link.address) != link.server_id:
                self._asked[link.address] = link.server_id
                self._track(Deferred.fromCoroutine(self._adopt(link)), link)
            if link.up or link.down_since is None:
                self._attempts.pop(link.address, None)
                continue
            attempt = self._attempts.setdefault(link.address, _Attempt())
            if attempt.busy or now < attempt.next_try or now - link.down_since < self.after:
                continue
            served = attempt.done or link.server_id
            if served is not None and any(r.serving_as == served
                                          for r in self._servers.replica_links()):
                continue  # failed over already: the replica link reconnects by itself
            attempt.busy = True
            d = self._track(Deferred.fromCoroutine(self._fail_over(link, attempt)), link)
            d.addBoth(self._settled, attempt)

    def _track(self, d: Deferred, link: ServerLink) -> Deferred:
        """``d``, cancelled on stop, its unexpected failure logged."""
        self._in_flight.add(d)
        d.addErrback(self._bug, link)
        d.addBoth(lambda _: self._in_flight.discard(d))
        return d

    def _settled(self, _, attempt: _Attempt) -> None:
        attempt.busy = False

    def _bug(self, failure: Failure, link: ServerLink) -> None:
        if not failure.check(CancelledError):
            self._log.failure("failover of {address} failed", failure, address=link.address)

    # -- one failover ------------------------------------------------------------

    async def _fail_over(self, link: ServerLink, attempt: _Attempt) -> None:
        try:
            backup, server_id = await self._find_backup(link)
            reply, backup_id = await self._promote(backup, server_id)
        except _NOT_NOW as e:
            self._not_now(link, attempt, e)
            return
        except CancelledError:
            raise
        except Exception as e:  # a bug, not an outage: say so loudly, and back off
            self._log.failure("failover of {address} failed", address=link.address)
            self._not_now(link, attempt, e)
            return
        epoch = reply["epoch"]
        backup_id = str(reply.get("backup") or backup_id)
        if self._fences.promoted(Promotion(server_id, backup_id, epoch)):
            self.failovers.append({"server_id": server_id, "backup": backup_id,
                                   "epoch": epoch, "at": self._clock.seconds()})
            self._log.warn(
                "server {server_id} ({address}) failed over: its backup {backup} at "
                "{backup_address} serves its jobs from epoch {epoch}",
                server_id=server_id, address=link.address, backup=backup_id,
                backup_address=backup, epoch=epoch)
        self._fence_stale(server_id)
        attempt.done, attempt.failures, attempt.logged = server_id, 0, None
        self._servers.add_replica(self._make_replica_link(backup, server_id))

    async def _adopt(self, backup: ServerLink) -> None:
        """Use the replicas ``backup`` says it promoted (whoever asked it to)."""
        try:
            reply = await backup.request("replicas", {})
        except AllQError:
            return  # an older server (unknown_action), or gone again: nothing to adopt
        for entry in _replica_entries(reply):
            if not (entry.get("state") == "promoted" and type(entry.get("epoch")) is int
                    and backup.server_id is not None):
                continue
            server_id = entry["primary"]
            if any(r.serving_as == server_id for r in self._servers.replica_links()):
                continue
            self._fences.promoted(Promotion(server_id, backup.server_id, entry["epoch"]))
            self._fence_stale(server_id)
            self._log.info("server {backup} serves the jobs of {server_id} (promoted at "
                           "epoch {epoch}): reaching them there", backup=backup.server_id,
                           server_id=server_id, epoch=entry["epoch"])
            self._servers.add_replica(self._make_replica_link(backup.address, server_id))

    async def _find_backup(self, link: ServerLink) -> tuple[str, str]:
        """The backup's address and the primary's id, for a down link.

        :raises NoBackup: the welcome named none and no server lists a replica of it.
        """
        named = link.backup_address
        if named is not None and link.server_id is not None:
            return named, link.server_id
        asked = [l for l in self._servers.healthy() if l is not link]
        answers = await DeferredList([l.request("replicas", {}) for l in asked],
                                     consumeErrors=True)
        for backup, (ok, value) in zip(asked, answers):
            for entry in _replica_entries(value) if ok else ():
                if _names(entry, link):
                    return backup.address, entry["primary"]
        who = link.server_id or link.address
        raise NoBackup(f"no server this client knows holds a replica of {who}")

    async def _promote(self, backup: str, server_id: str) -> tuple[dict, str | None]:
        """``promote`` on ``backup``; its reply and the backup's id."""
        params = {"server_id": server_id}
        for known in self._servers.healthy():
            if known.address == backup:
                return _promoted(await known.request("promote", params)), known.server_id
        connection = await self._connect(backup)
        try:
            return _promoted(await connection.request("promote", params)), connection.server_id
        finally:
            connection.close()

    def _not_now(self, link: ServerLink, attempt: _Attempt, error: Exception) -> None:
        attempt.failures += 1
        delay = min(FIRST_RETRY * 2 ** (attempt.failures - 1), MAX_RETRY)
        attempt.next_try = self._clock.seconds() + delay
        code = getattr(error, "code", type(error).__name__)
        if code != attempt.logged:
            attempt.logged = code
            # No backup anywhere is the usual case without replication: not a warning.
            say = self._log.info if isinstance(error, NoBackup) else self._log.warn
            say(
                "server {address} down for {after:g} s or more, not failed over yet: "
                "{code}: {error}; trying again with backoff",
                address=link.address, after=self.after, code=code,
                error=str(error)[:200] or type(error).__name__)

    def _fence_stale(self, server_id: str) -> None:
        """Drop a connection that still shows ``server_id`` at an older epoch."""
        for link in self._servers.links():
            if link.server_id == server_id and link.up:
                link.refuse_if_fenced()


def _promoted(reply: object) -> dict:
    """A ``promote`` reply, checked: ``{"server_id", "epoch", "backup"}``.

    :raises ProtocolError: anything else (another version's backup, or a bug).
    """
    if not (isinstance(reply, dict) and type(reply.get("epoch")) is int):
        raise ProtocolError(f"promote: malformed reply {str(reply)[:120]}")
    return reply


def _replica_entries(reply: object) -> list[dict]:
    """The well-formed entries of a ``replicas`` reply: objects naming their primary
    (anything else, from another version or a bug, is skipped)."""
    entries = reply.get("replicas") if isinstance(reply, dict) else None
    if not isinstance(entries, list):
        return []
    return [entry for entry in entries
            if isinstance(entry, dict) and isinstance(entry.get("primary"), str)]


def _names(entry: dict, link: ServerLink) -> bool:
    """Whether a ``replicas`` entry is the replica of ``link``'s server."""
    if link.server_id is not None and entry["primary"] == link.server_id:
        return True
    address = entry.get("address")
    try:
        return isinstance(address, str) and normalize_address(address) == link.address
    except BadRequest:
        return False
