"""Interest routing for the federation: interests kept alike on every server,
events placed once and fanned out there.

Where interests live: *every* server holds the whole table
(:mod:`allq.core.interests`), like a tube setting. A registration is sent to
every reachable server, versioned by this client's clock (later wins; a
deletion is a versioned tombstone). So any server can route any event by
itself, an event costs one request to one server, and losing a server loses no
interest. A server that was down when an interest changed catches up when a
link to it (re)connects: the client gathers every reachable server's entries
and sends each server the ones it lacks; servers merge them last-writer-wins,
so the order of these pushes, or two clients pushing at once, cannot matter
(clients' clocks should agree to better than the time between two changes of
one tube). Hashing each tube's interests onto one server would need every
event to ask every server anyway, and would lose the interests of a server
that is down.

An event goes through :class:`allq.client.placement.Placement` like a put (same
retry loop, same idempotency key rules): the chosen server stores one copy per
interested tube, all or none, and answers which (:mod:`allq.server.events`).
An event with the caller's own ``idempotency_key`` goes to the server that key
hashes to (rendezvous hashing over the healthy, undrained servers), so the
caller's retry reaches the server that has the copies, while the same servers are
up, and answers them again instead of storing a second set. (A plain put's key
is only known to the server it went to; an event's retry is the usual case, as
publishers often re-send.) If that server went down meanwhile, the retry is
placed like any put: at least once.
"""

import hashlib

from collections.abc import Awaitable, Callable

import attrs
from twisted.internet.defer import DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from allq.client.link import ServerLink
from allq.client.membership import Membership
from allq.client.placement import idempotency_key as new_key
from allq.errors import AllQError, BadRequest, NotFound, Unavailable
from allq.vocabulary import EVENT_UNMATCHED, check_event_data, check_event_scope, check_tube


@attrs.frozen
class EventCopy:
    """One copy of an event: the tube it went to and its job id there."""

    tube: str
    job_id: str


class InterestRouting:
    """The federation's interest registry and event publisher.

    :param servers: the membership (interests go to all of it).
    :param clock: versions of this client's registrations.
    :param each: the federation's ``_each`` (one request to each healthy server).
    :param store: the placement's ``store`` (the retry loop of a put).
    :param unmatched: told once per event that no tube wanted.
    """

    _log = Logger()

    def __init__(self, servers: Membership, clock: IReactorTime,
                 each: Callable[..., Awaitable[list]], store: Callable,
                 unmatched: Callable[[], None]) -> None:
        self._servers = servers
        self._clock = clock
        self._each = each
        self._store = store
        self._unmatched = unmatched
        self._last_version = 0.0

    def _version(self) -> float:
        # Strictly increasing in this process, so two changes of one tube in the
        # same clock tick still order as they were made.
        self._last_version = max(self._clock.seconds(), self._last_version + 1e-6)
        return self._last_version

    async def register(self, tube: str, interests: object) -> int:
        """Set ``tube``'s interests (``"*"`` or ``{field: regex}``; the servers
        check the patterns) on every reachable server; how many took it.

        :raises BadRequest: a bad tube, shape or pattern.
        """
        check_tube(tube)
        if interests != "*" and not isinstance(interests, dict):
            raise BadRequest('interests must be "*" or an object of field: regex')
        return await self._merge([[tube, interests, self._version()]])

    async def unregister(self, tube: str) -> int:
        """Remove ``tube``'s interests on every reachable server."""
        check_tube(tube)
        return await self._merge([[tube, None, self._version()]])

    async def _merge(self, entries: list) -> int:
        answers = await self._each("interest_merge", {"entries": entries})
        return len(answers)

    async def interests(self) -> list[dict]:
        """Every tube's interests, ``[{"tube", "interests"}]`` by tube, once the
        reachable servers agree (:meth:`sync`)."""
        await self.sync()
        link, reply = (await self._each("interests", {}))[0]
        return [{"tube": tube, "interests": interests}
                for tube, interests, _ in reply["entries"] if interests is not None]

    async def sync(self, _link: ServerLink | None = None) -> None:
        """Send each reachable server the interest entries others have and it
        lacks (the servers merge them, later wins). Called when a link connects."""
        try:
            answers = await self._each("interests", {})
        except Unavailable:
            return  # nobody to sync; the next connection tries again
        except AllQError as e:  # e.g. a server too old to know the action
            self._log.warn("interest sync skipped: {error}", error=e.message)
            return
        held = {link: {_key(entry) for entry in reply["entries"]} for link, reply in answers}
        union = {key for keys in held.values() for key in keys}
        pushes = [(link, sorted(union - keys, key=repr)) for link, keys in held.items()]
        pushes = [(link, missing) for link, missing in pushes if missing]
        outcomes = await DeferredList(
            [link.request("interest_merge", {"entries": [_entry(key) for key in missing]})
             for link, missing in pushes], consumeErrors=True)
        for (link, missing), (ok, value) in zip(pushes, outcomes):
            if ok:
                self._log.info("sent {count} interest entries to {address}",
                               count=len(missing), address=link.address)
            elif value.check(AllQError):
                self._log.warn("sending interests to {address} failed: {error}",
                               address=link.address, error=value.value.message)
            else:
                value.raiseException()

    async def publish(self, data: object, *, scope: str = "any", unmatched: str = "drop",
                      idempotency_key: str | None = None, **options) -> list[EventCopy]:
        """Put one copy of an event into every interested tube (on one server).

        :param unmatched: ``drop`` (answer no copies) or ``error``.
        :returns: the copies, by tube (none: the event was dropped and counted).
        :raises NotFound: no tube wanted it and ``unmatched`` is ``error``.
        """
        check_event_data(data)
        check_event_scope(scope)
        if unmatched not in EVENT_UNMATCHED:
            raise BadRequest('unmatched must be "drop" or "error"')
        if idempotency_key is None:
            idempotency_key = new_key()
        elif ":" not in idempotency_key:
            idempotency_key = self._pin(idempotency_key)
        params = {"data": data, "scope": scope, "idempotency_key": idempotency_key,
                  **options}
        copies = await self._store("event", params)
        if not copies:
            self._unmatched()
            if unmatched == "error":
                raise NotFound("no tube's interests match this event")
        return [EventCopy(copy["tube"], copy["job_id"]) for copy in copies]


    def _pin(self, key: str) -> str:
        """``<server_id>:<key>`` for the server ``key`` hashes to (``key`` alone
        when none is up); placement sends a key so named to that server only."""
        links = [link for link in self._servers.healthy()
                 if not link.draining and link.server_id is not None]
        if not links:
            return key
        chosen = max(links, key=lambda link: hashlib.blake2b(
            f"{link.server_id}\0{key}".encode(), digest_size=8).digest())
        return f"{chosen.server_id}:{key}"


def _key(entry: list) -> tuple:
    """An entry as a hashable value (its interests as sorted pairs)."""
    tube, interests, version = entry
    if isinstance(interests, dict):
        interests = ("{}", tuple(sorted(interests.items())))
    return tube, interests, version


def _entry(key: tuple) -> list:
    tube, interests, version = key
    if isinstance(interests, tuple):
        interests = dict(interests[1])
    return [tube, interests, version]
