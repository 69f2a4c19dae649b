"""Placement: which server stores a new job, with one retry loop for every put.

* A put (and a parent put) goes to the healthy servers this client is not
  draining, in round-robin order. Round robin rather than least-loaded because
  it needs no stats round trip on the hot path, spreads evenly when servers are
  alike, and cannot herd every client onto the one server whose (stale) stats
  looked emptiest.
* Every put carries a fresh idempotency key. If the connection is lost or a
  reply times out, the outcome is unknown: the put is retried on the *same*
  server once it is back (the key makes that retry return the first job id
  instead of storing a duplicate); while that server stays down it fails over
  to the others (at-least-once: a duplicate is possible only if the lost server
  had stored the job and comes back with it). "The same server" is the same
  server *id*: when the server's welcome named a backup and failover is on
  (:mod:`allq.client.failover`), the put waits, within its retry budget, for
  that id to be back, on the server or on its backup's replica link, and never
  goes elsewhere with a key the backup may already hold. The promoted replica
  answers a key it knows with its job id, and refuses any other put as draining
  (it stored nothing: the put moves on).
* A server that answers ``draining``, ``full``, ``disk_full`` or ``replica_unavailable``
  (a strict primary without its backup) did not store the
  job: the put moves on, and fails with that error only when every reachable
  server refused.
* A put naming a parent (``parent_id``) goes to the parent's server and nowhere
  else: parent and children always live on one server. When that server is down
  the put fails at once with :class:`Unavailable`.
* A put with a ``unique_key`` or a ``concurrency_key`` goes to the one server
  the key chooses (:mod:`allq.client.keyed`: rendezvous hashing over the
  configured servers' ids), so a key's jobs are all on one server, which
  enforces uniqueness and the concurrency limit; a batch's keyed jobs go
  alone. That server is never swapped for another: while it is down, not yet
  connected, or draining, the put fails (:class:`Unavailable`, or
  :class:`Draining`; HTTP 503) rather than break the key's guarantee.
* A batch is cut into contiguous slices, one per server in round-robin order,
  each sent as one frame; a job without a definite answer there goes on alone
  through the same retry loop, from where it stands.

A put is reported stored only on a server's reply, and failed only when the
retry budget is spent or every reachable server refused it.
"""

import uuid
from collections.abc import Callable
from itertools import count

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.python.failure import Failure

from allq.client.chains import own_result
from allq.client.keyed import key_holder, routing_key
from allq.client.link import NotConnected, ServerLink
from allq.client.membership import Membership
from allq.client.records import DuplicateJobId
from allq.client.retry import Retries
from allq.errors import (
    AllQError,
    DiskFull,
    Draining,
    QueueFull,
    ReplicaUnavailable,
    Unavailable,
    UnknownOutcome,
)

#: Answers of a server that did not store the job: another server may take it.
_REFUSALS = (Draining, QueueFull, DiskFull, ReplicaUnavailable)
from allq.vocabulary import SERVER_ID

#: Idempotency keys: a random prefix per client process, then a counter. Unique
#: across processes and restarts, and far cheaper per put than a uuid4.
_KEY_PREFIX = uuid.uuid4().hex[:20] + "."
_key_numbers = count()


def idempotency_key() -> str:
    return _KEY_PREFIX + str(next(_key_numbers))


def _alone(params: dict) -> bool:
    """Whether a batch's job goes through the retry loop on its own: a child (to
    its parent's server) or a keyed job (to its key's server)."""
    return params["parent_id"] is not None or routing_key(params) is not None


def _slices(items: list, parts: int) -> list[list]:
    """``items`` cut into ``parts`` contiguous slices whose sizes differ by one at most."""
    if parts <= 0:
        return []
    size, extra = divmod(len(items), parts)
    slices, start = [], 0
    for part in range(parts):
        end = start + size + (part < extra)
        slices.append(items[start:end])
        start = end
    return slices


class Placement:
    """Stores jobs on the federation's servers.

    :param servers: the membership to place on.
    :param retries: backoff and budget.
    :param stored: told ``(action, tube, job_id, address)`` for every job stored.
    :param retried: told ``(action, address)`` when a put's outcome on a server is unknown.
    """

    _log = Logger()

    def __init__(self, servers: Membership, retries: Retries,
                 stored: Callable[[str, str, str, str], None],
                 retried: Callable[[str, str | None], None]) -> None:
        self._servers = servers
        self._retries = retries
        self._stored = stored
        self._retried = retried
        self._round_robin = 0

    def store(self, action: str, params: dict) -> Deferred:
        """Place one job (``params``: the wire put's, with ``idempotency_key``);
        fires with its job id.

        The first try of a plain put (no parent, no key naming a server, no
        unique or concurrency key) is a callback chain rather than a coroutine:
        when the first candidate stores the job, as it nearly always does, that
        is the whole put. Any other outcome goes on in :meth:`_store` exactly
        where its loop would stand.
        """
        if (params.get("parent_id") is not None or ":" in params["idempotency_key"]
                or routing_key(params) is not None):
            return Deferred.fromCoroutine(self._store(action, params))
        deadline = self._retries.deadline()
        candidates = self._candidates(None, {})
        if not candidates:
            return Deferred.fromCoroutine(
                self._store(action, params, deadline=deadline, candidates=[]))
        first = candidates[0]
        return own_result(first.request(action, params).addCallbacks(
            self._first_stored, self._first_failed,
            callbackArgs=(action, params, first),
            errbackArgs=(action, params, first, candidates[1:], deadline)))

    def _first_stored(self, reply: dict, action: str, params: dict, link: ServerLink) -> str:
        return self._done(action, params, reply, link)

    def _first_failed(self, failure: Failure, action: str, params: dict, link: ServerLink,
                      rest: list[ServerLink], deadline: float) -> Deferred | Failure:
        """What :meth:`_store`'s loop does with a first try that failed, then the loop."""
        if failure.check(NotConnected):
            pass  # never sent: the next candidate
        elif failure.check(*_REFUSALS):
            return Deferred.fromCoroutine(self._store(
                action, params, refused={link: failure.value}, deadline=deadline,
                candidates=rest))
        elif failure.check(Unavailable):
            self._unknown(action, link, failure.value)
            return Deferred.fromCoroutine(self._store(
                action, params, unsure=link, deadline=deadline, candidates=[]))
        else:
            return failure
        return Deferred.fromCoroutine(
            self._store(action, params, deadline=deadline, candidates=rest))

    def _unknown(self, action: str, link: ServerLink, error: AllQError) -> None:
        self._log.info("put on {address} outcome unknown ({error}); retrying",
                       address=link.address, error=error.message)
        self._retried(action, link.address)

    async def store_many(self, batch: list[dict]) -> list[str | AllQError]:
        """Place a batch of ``put`` jobs; per job, in order, its id or its error."""
        outcomes: list[str | AllQError | None] = [None] * len(batch)
        # (index, the server that may hold it, servers that refused it)
        later: list[tuple[int, ServerLink | None, dict]] = [
            (index, None, {}) for index, params in enumerate(batch) if _alone(params)]
        placed = [index for index, params in enumerate(batch) if not _alone(params)]
        links = self._candidates(None, {}) if placed else []
        slices = [(link, chunk) for link, chunk in zip(links, _slices(placed, len(links)))
                  if chunk]
        replies = await DeferredList(
            [link.batch([("put", batch[index]) for index in chunk]) for link, chunk in slices],
            consumeErrors=True)
        for (link, chunk), (answered, value) in zip(slices, replies):
            if not answered:
                if not value.check(Unavailable):
                    value.raiseException()
                unsure = None if value.check(NotConnected) else link
                if unsure is not None:
                    self._log.info("batch put on {address} outcome unknown ({error}); "
                                   "retrying each job", address=link.address,
                                   error=value.value.message)
                    self._retried("put", link.address)
                later += [(index, unsure, {}) for index in chunk]
                continue
            for index, reply in zip(chunk, value):
                if isinstance(reply, _REFUSALS):
                    later.append((index, None, {link: reply}))
                elif isinstance(reply, Unavailable):
                    later.append((index, link, {}))
                elif isinstance(reply, AllQError):
                    outcomes[index] = reply
                else:
                    outcomes[index] = self._done("put", batch[index], reply, link)
        if placed and not slices:
            later += [(index, None, {}) for index in placed]
        retried = await DeferredList(
            [Deferred.fromCoroutine(self._store("put", batch[index], unsure, refused))
             for index, unsure, refused in later], consumeErrors=True)
        for (index, _, _), (stored, value) in zip(later, retried):
            if not stored and not value.check(AllQError):
                value.raiseException()
            outcomes[index] = value if stored else value.value
        return outcomes

    def _done(self, action: str, params: dict, reply: dict, link: ServerLink) -> str:
        if action == "event":  # allq.client.routing: one job per interested tube
            for copy in reply["copies"]:
                self._stored(action, copy["tube"], copy["job_id"], link.address)
            return reply["copies"]
        job_id = reply["job_id"]
        if reply.get("duplicate"):  # a unique key's live job: nothing new stored
            return DuplicateJobId(job_id)
        self._stored(action, params["tube"], job_id, link.address)
        return job_id

    async def _store(self, action: str, params: dict, unsure: ServerLink | None = None,
                     refused: dict[ServerLink, AllQError] | None = None,
                     deadline: float | None = None,
                     candidates: list[ServerLink] | None = None) -> str:
        """The retry loop: try the candidates, back off, until stored or refused
        everywhere or out of budget.

        :param unsure: the server that may already hold the job (an earlier try's
            outcome is unknown there).
        :param refused: servers that already refused it as draining or full.
        :param deadline: when the put began, plus the budget (default: now).
        :param candidates: the rest of a first round begun by :meth:`store`.
        :raises UnknownOutcome: the budget ran out while the job may be stored on
            ``unsure``; it names the key to retry with.
        """
        deadline = self._retries.deadline() if deadline is None else deadline
        parent = params.get("parent_id")
        # A child goes to its parent's server only: no failover, no refusal list.
        # A retry with the key of an unknown outcome goes to that server only,
        # unless it says it did not store the job (draining, full).
        holder = None if parent is None else self._servers.holder(parent, "parent")
        key = routing_key(params) if holder is None else None
        if key is not None:
            holder = key_holder(self._servers.links(), key)
        pinned, params = (None, params) if holder is not None else self._pinned(params)
        refused = {} if refused is None else refused
        attempt = 0
        while True:
            if candidates is None:
                only = holder or pinned
                if only is not None and not only.up:  # its id may be served by its backup
                    only = self._servers.serving(only.server_id) or only
                candidates = [only] if only is not None else self._candidates(unsure, refused)
            for link in candidates:
                try:
                    result = await link.request(action, params)
                except NotConnected:
                    continue
                except _REFUSALS as e:
                    if holder is not None:
                        raise
                    # Refused before storing (an earlier try of this key would have
                    # been answered with its job id), so another server may take it.
                    refused[link] = e
                    if unsure is not None and link.server_id == unsure.server_id:
                        unsure = None
                    pinned = None
                    continue
                except Unavailable as e:
                    unsure = link
                    self._unknown(action, link, e)
                    break
                return self._done(action, params, result, link)
            candidates = None
            if unsure is None:
                if key is not None:
                    raise Unavailable("the server this job's key goes to is down")
                if holder is not None:
                    raise Unavailable(f"the server holding parent {parent[:90]} is down")
                if pinned is not None:
                    raise Unavailable("the server holding this job (its idempotency_key "
                                      "names it) is down")
                refusal = self._refusal(refused)
                if refusal is not None:
                    raise refusal
            elif self._retries.expired(deadline):
                key = f"{unsure.server_id}:{params['idempotency_key']}"
                raise UnknownOutcome(
                    f"{action}: no answer from {unsure.address}, which may have stored the "
                    f"job; put it again with idempotency_key {key!r} to be sure, never twice",
                    idempotency_key=key)
            attempt = await self._retries.backoff(attempt, deadline, action)

    def _pinned(self, params: dict) -> tuple[ServerLink | None, dict]:
        """The server an idempotency key of an unknown outcome (``<server_id>:<key>``)
        names, and the params with the key that server knows; ``(None, params)``
        for any other key.

        :raises Unavailable: the key names a server id not known yet, while some
            server has not said its id.
        """
        server_id, sep, inner = params["idempotency_key"].partition(":")
        if not sep or not inner or not SERVER_ID.fullmatch(server_id):
            return None, params
        links = self._servers.links()
        for link in links:
            if link.server_id == server_id:
                return (self._servers.serving(server_id) or link,
                        {**params, "idempotency_key": inner})
        replica = self._servers.serving(server_id)  # its server now has another id
        if replica is not None:
            return replica, {**params, "idempotency_key": inner}
        if any(link.server_id is None for link in links):
            raise Unavailable("the server holding this job (its idempotency_key names it) "
                              "is not connected")
        return None, params

    def _candidates(self, unsure: ServerLink | None,
                    refused: dict[ServerLink, AllQError]) -> list[ServerLink]:
        if unsure is not None:
            live = self._servers.serving(unsure.server_id)
            if live is not None:
                return [live]
            if self._servers.backed_up(unsure):
                return []  # wait for its id to come back, here or on its backup
        links = [l for l in self._servers.healthy() if not l.draining and l not in refused]
        if not links:
            return []
        self._round_robin = (self._round_robin + 1) % len(links)
        return links[self._round_robin:] + links[:self._round_robin]

    def _refusal(self, refused: dict[ServerLink, AllQError]) -> AllQError | None:
        """The error to answer once every reachable server has refused a put, or
        ``None`` while one may still take it (or none is reachable: retry then)."""
        up = self._servers.healthy()
        if not up or any(l not in refused and not l.draining for l in up):
            return None
        errors = [refused[l] for l in up if l in refused]
        # "full" wins: the servers that would take new jobs at all have no room.
        full = [e for e in errors if isinstance(e, QueueFull)]
        if full:
            return QueueFull(f"every reachable server is full ({full[0].message[:200]})")
        disk_full = [e for e in errors if isinstance(e, DiskFull)]
        if disk_full:
            return DiskFull("every reachable server's disk is full "
                            f"({disk_full[0].message[:200]})")
        without_backup = [e for e in errors if isinstance(e, ReplicaUnavailable)]
        if without_backup and len(without_backup) == len(errors):
            return ReplicaUnavailable("every reachable server refused: no backup "
                                      f"({without_backup[0].message[:200]})")
        if errors:
            return Draining(f"every reachable server is draining ({errors[0].message[:200]})")
        return Draining("every reachable server is drained by this client")
