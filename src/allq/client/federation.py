"""Federation over many servers: placement, search, routing, retry and failover.

The REST facade calls one :class:`Federation`. It owns a :class:`ServerLink` per
configured server and decides, per operation:

* **put** (and **put_parent**) goes to the healthy servers this client is not
  draining, in round-robin order. Round robin rather than least-loaded because
  it needs no stats round trip on the hot path, spreads evenly when servers are
  alike, and cannot herd every client onto the one server whose (stale) stats
  looked emptiest. Every put carries a fresh idempotency key. If the connection
  is lost or a reply times out, the outcome is unknown: the put is retried on
  the *same* server once it is back (the key makes that retry return the first
  job id instead of storing a duplicate); while that server stays down it fails
  over to the others (at-least-once: a duplicate is possible only if the lost
  server had stored the job and comes back with it). A server that answers
  ``draining`` or ``full`` did not store the job: the put moves on to the next
  server, and fails with that error only when every reachable server refused.
  A put is reported stored only on a server's reply, and reported failed only
  when the retry budget is spent or every reachable server refused it.
* **a put naming a parent** (``parent_id``) goes to the server named by the
  parent id's prefix, where the parent waits, and nowhere else: parent and
  children always live on one server. When that server is down the put fails at
  once with :class:`Unavailable`; it never fails over.
* **get** tries the healthy servers in random order until one hands out a job,
  so a job anywhere is found by one call; ``[]`` only when all are empty. With
  ``wait`` it joins a per-tube long poll: one poller per (tube, delete) fetches
  for all waiting callers at once, backing off while the tube is empty.
* **job operations** go to the server named by the job id's prefix
  (``<server_id>,<n>``); when that server is down they fail fast with
  :class:`Unavailable`.
* **stats / clear / kick by tube / peek** fan out over the healthy servers.
* **tube settings** (pause, drain, fair queuing, maximum size, throttle) are
  sent to every healthy server. A throttle of ``tps`` jobs per second gives each
  of the N healthy servers a share of ``tps / N`` (fractional), so the
  federation hands out at most ``tps`` jobs per second in total. Shares and
  settings are fixed at the moment they are set: a server that was down then,
  or is added later, does not get them.
* **server drain** stops this client placing puts on a server and tells the
  server to drain itself, so that it refuses puts from every other client too
  (and the link tells it again whenever it reconnects).

Retries sleep with :func:`deferLater` on the injected clock; every pending sleep
is cancelled when the service stops.
"""

import math
import random
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from itertools import count, repeat

from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError, Deferred, DeferredList, fail
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from allq.client.link import NotConnected, ServerLink, normalize_address
from allq.vocabulary import MAX_COUNT, check_count, check_tube
from allq.errors import AllQError, BadRequest, Draining, NotFound, QueueFull, Unavailable

DEFAULT_RETRY_BUDGET = 5.0
FIRST_BACKOFF = 0.05
MAX_BACKOFF = 1.0
POLL_FIRST = 0.02
POLL_MAX = 0.5
MAX_WAIT = 60.0


#: Idempotency keys: a random prefix per client process, then a counter. Unique
#: across processes and restarts, and far cheaper per put than a uuid4.
_KEY_PREFIX = uuid.uuid4().hex[:20] + "."
_key_numbers = count()


def _idempotency_key() -> str:
    return _KEY_PREFIX + str(next(_key_numbers))


def _put_params(tube: str, body: str, *, priority=None, ttl=None, delay=0,
                expired_limit=None, run_at=None, shard_key=None, parent_id=None) -> dict:
    """A put request's parameters, with a fresh idempotency key."""
    return {
        "tube": tube, "body": body, "priority": priority, "ttl": ttl, "delay": delay,
        "expired_limit": expired_limit, "run_at": run_at, "shard_key": shard_key,
        "parent_id": parent_id, "idempotency_key": _idempotency_key(),
    }


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


def _outcome_name(outcome: object) -> str:
    return outcome.code if isinstance(outcome, AllQError) else "ok"


class _Waiter:
    """One caller of a long poll."""

    __slots__ = ("deferred", "count", "deadline")

    def __init__(self, count: int, deadline: float) -> None:
        self.deferred: Deferred = Deferred()
        self.count = count
        self.deadline = deadline


class Federation(MultiService):
    """All the servers a client knows, behind one job-queue interface.

    :param addresses: ``host:port`` of each server.
    :param make_link: builds the :class:`ServerLink` (or a test double) for an address.
    :param clock: time for backoff and long polls.
    :param retry_budget: seconds a put or get may spend retrying before it fails.
    """

    _log = Logger()

    def __init__(
        self,
        addresses: Iterable[str],
        make_link: Callable[[str], ServerLink],
        clock: IReactorTime,
        retry_budget: float = DEFAULT_RETRY_BUDGET,
    ) -> None:
        super().__init__()
        self._make_link = make_link
        self._clock = clock
        self._retry_budget = retry_budget
        self._links: dict[str, ServerLink] = {}
        self._round_robin = 0
        self._sleeps: set[Deferred] = set()
        self._waiters: dict[tuple[str, bool], deque[_Waiter]] = {}
        self._pollers: dict[tuple[str, bool], Deferred] = {}
        self._kicks: dict[tuple[str, bool], Deferred] = {}
        #: Called as ``on_retry(operation, address)`` each time a call is retried
        #: (``address`` is ``None`` for a backoff round); metrics count these.
        self.on_retry: Callable[[str, str | None], None] | None = None
        #: Log one event per job operation, with its ``job_id`` (``--log-jobs``).
        self.log_jobs = False
        addresses = list(addresses)
        if not addresses:
            raise BadRequest("at least one server address is needed")
        for address in addresses:
            self.add_server(address)

    # -- membership ------------------------------------------------------------

    def links(self) -> list[ServerLink]:
        """Every configured server link, in configuration order."""
        return list(self._links.values())

    def add_server(self, address: str) -> None:
        """Start using one more server (no-op if already known)."""
        address = normalize_address(address)
        if address in self._links:
            return
        link = self._make_link(address)
        self._links[link.address] = link
        link.setServiceParent(self)
        self._log.info("using server {address}", address=link.address)

    def update_servers(self, addresses: list[str]) -> None:
        """Replace the set of servers: new ones are added, missing ones dropped."""
        if not addresses:
            raise BadRequest("server_urls must name at least one host:port")
        wanted = dict.fromkeys(normalize_address(address) for address in addresses)
        for address in list(self._links):
            if address not in wanted:
                link = self._links.pop(address)
                link.disownServiceParent()
                self._log.info("dropped server {address}", address=address)
        for address in wanted:
            self.add_server(address)

    async def drain_server(self, server: str, draining: bool = True) -> bool:
        """Stop (``draining``) or resume placing new jobs on a server, by id or
        ``host:port``, and tell the server to refuse (or take again) new jobs from
        every client. Gets go on either way.

        :returns: whether the server was told now; ``False`` when it is not
            connected (the link tells it when it reconnects).
        :raises NotFound: no such server in this client.
        """
        link = self._find_link(server)
        link.draining = draining
        self._log.info("{what} server {address}", address=link.address,
                       what="draining" if draining else "no longer draining")
        return await link.tell_draining(draining)

    def _find_link(self, server: str) -> ServerLink:
        for link in self._links.values():
            if server in (link.server_id, link.address):
                return link
        raise NotFound(f"no server {server[:80]!r} in this client")

    def health(self) -> dict:
        """Which servers are up, for ``GET /health``."""
        servers = [
            {"address": l.address, "server_id": l.server_id, "up": l.up, "draining": l.draining}
            for l in self._links.values()
        ]
        return {"servers": servers, "up": sum(s["up"] for s in servers), "total": len(servers)}

    def _healthy(self) -> list[ServerLink]:
        return [link for link in self._links.values() if link.up]

    def _link_for_job(self, job_id: str, what: str = "job") -> ServerLink:
        if not isinstance(job_id, str):
            raise BadRequest(f"{what} id must be a string")
        server_id, sep, number = job_id.partition(",")
        if not sep or not number.isdigit():
            raise BadRequest(f"{what} id must look like <server_id>,<number>")
        for link in self._links.values():
            if link.server_id == server_id:
                if not link.up:
                    raise Unavailable(f"the server holding {what} {job_id[:90]} is down")
                return link
        if any(link.server_id is None for link in self._links.values()):
            raise Unavailable(f"the server holding {what} {job_id[:90]} is not connected")
        raise NotFound(f"{what} {job_id[:90]} names server {server_id[:64]!r}, unknown here")

    # -- put -------------------------------------------------------------------

    async def put(self, tube: str, body: str, *, priority=None, ttl=None, delay=0,
                  expired_limit=None, run_at=None, shard_key=None, parent_id=None) -> str:
        """Store a job on one server; returns its id.

        :param run_at: a unix time at which the job becomes ready (not with ``delay``).
        :param shard_key: the job's key in a fair tube.
        :param parent_id: the waiting parent this job is a child of; the job goes
            to the parent's server.
        :raises Unavailable: no server stored it within the retry budget, or the
            parent's server is down.
        :raises Draining: every reachable server refused it as draining.
        :raises QueueFull: every reachable server refused it, at least one as full.
        :raises NotFound: ``parent_id`` names no waiting job.
        """
        return await self._store("put", _put_params(
            tube, body, priority=priority, ttl=ttl, delay=delay, expired_limit=expired_limit,
            run_at=run_at, shard_key=shard_key, parent_id=parent_id))

    async def put_many(self, jobs: list[dict]) -> list[str | AllQError]:
        """Store a batch of jobs (each a dict of :meth:`put`'s arguments, ``tube`` and
        ``body`` included); per job, in order, its id or the error that kept it out.

        Each job is placed as :meth:`put` places one, with its own idempotency
        key, but the jobs without a parent go out as one batch frame per server:
        the batch is cut into contiguous slices, one per server in round-robin
        order. A job without a definite answer there (its frame's connection
        failed, or its server said draining or full) goes on alone through
        :meth:`put`'s retry and failover, from where it stands.
        """
        batch = [_put_params(**job) for job in jobs]
        for params in batch:
            check_tube(params["tube"])
        outcomes: list[str | AllQError | None] = [None] * len(batch)
        # (index, the server that may hold it, servers that refused it)
        later: list[tuple[int, ServerLink | None, dict]] = [
            (index, None, {}) for index, params in enumerate(batch)
            if params["parent_id"] is not None]
        placed = [index for index, params in enumerate(batch) if params["parent_id"] is None]
        links = self._put_candidates(None, {}) if placed else []
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
                if isinstance(reply, Draining | QueueFull):
                    later.append((index, None, {link: reply}))
                elif isinstance(reply, Unavailable):
                    later.append((index, link, {}))
                elif isinstance(reply, AllQError):
                    outcomes[index] = reply
                else:
                    outcomes[index] = self._stored(
                        "put", batch[index]["tube"], reply["job_id"], link)
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

    async def put_parent(self, tube: str, body: str, *, priority=None, ttl=None,
                         expired_limit=None, shard_key=None, parent_id=None,
                         timeout=None, run_on_timeout=False, limit=None) -> str:
        """Store a parent job, waiting for ``limit`` finished children (or for
        :meth:`job_action` ``set_children_started``); placed like :meth:`put`.

        :param timeout: seconds the parent waits for its children (server default 3600).
        :param run_on_timeout: after the timeout, run it (true) or bury it (false).
        :raises: as :meth:`put`.
        """
        return await self._store("put_parent", {
            "tube": tube, "body": body, "priority": priority, "ttl": ttl,
            "expired_limit": expired_limit, "shard_key": shard_key, "parent_id": parent_id,
            "timeout": timeout, "run_on_timeout": run_on_timeout, "limit": limit,
            "idempotency_key": _idempotency_key(),
        })

    def _stored(self, action: str, tube: str, job_id: str, link: ServerLink) -> str:
        self._wake_pollers(tube)
        if self.log_jobs:
            self._log.info("{action} job {job_id} on {server}", action=action, job_id=job_id,
                           tube=tube, server=link.address)
        return job_id

    async def _store(self, action: str, params: dict, unsure: ServerLink | None = None,
                     refused: dict[ServerLink, AllQError] | None = None) -> str:
        """Place one job (``params`` carry its idempotency key), retrying and failing
        over until the retry budget is spent.

        :param unsure: the server that may already hold the job (an earlier try's
            outcome is unknown there).
        :param refused: servers that already refused it as draining or full.
        """
        tube = check_tube(params["tube"])
        deadline = self._clock.seconds() + self._retry_budget
        if params.get("parent_id") is not None:
            link = self._link_for_job(params["parent_id"], "parent")
            return await self._store_on(link, action, params, deadline)
        refused = {} if refused is None else refused
        attempt = 0
        while True:
            for link in self._put_candidates(unsure, refused):
                try:
                    result = await link.request(action, params)
                except NotConnected:
                    continue
                except (Draining, QueueFull) as e:
                    # Refused before storing (an earlier try of this key would have
                    # been answered with its job id), so another server may take it.
                    refused[link] = e
                    if link is unsure:
                        unsure = None
                    continue
                except Unavailable as e:
                    unsure = link
                    self._log.info("put on {address} outcome unknown ({error}); retrying",
                                   address=link.address, error=e.message)
                    self._retried(action, link.address)
                    break
                return self._stored(action, tube, result["job_id"], link)
            if unsure is None:
                refusal = self._refusal(refused)
                if refusal is not None:
                    raise refusal
            attempt = await self._backoff(attempt, deadline, action)

    async def _store_on(self, link: ServerLink, action: str, params: dict,
                        deadline: float) -> str:
        """Store on one given server (a child's parent's): no failover."""
        unsure = False
        attempt = 0
        while True:
            try:
                result = await link.request(action, params)
            except NotConnected:
                if not unsure:
                    raise Unavailable(
                        f"the server holding parent {params['parent_id'][:90]} is down") from None
            except Unavailable as e:
                unsure = True
                self._log.info("put on {address} outcome unknown ({error}); retrying",
                               address=link.address, error=e.message)
                self._retried(action, link.address)
            else:
                return self._stored(action, params["tube"], result["job_id"], link)
            attempt = await self._backoff(attempt, deadline, action)

    def _put_candidates(self, unsure: ServerLink | None,
                        refused: dict[ServerLink, AllQError]) -> list[ServerLink]:
        if unsure is not None and unsure.up:
            return [unsure]
        links = [l for l in self._links.values()
                 if l.up and not l.draining and l not in refused]
        if not links:
            return []
        self._round_robin = (self._round_robin + 1) % len(links)
        return links[self._round_robin:] + links[:self._round_robin]

    def _refusal(self, refused: dict[ServerLink, AllQError]) -> AllQError | None:
        """The error to answer once every reachable server has refused a put, or
        ``None`` while one may still take it (or none is reachable: retry then)."""
        up = [l for l in self._links.values() if l.up]
        if not up or any(l not in refused and not l.draining for l in up):
            return None
        errors = [refused[l] for l in up if l in refused]
        # "full" wins: the servers that would take new jobs at all have no room.
        full = [e for e in errors if isinstance(e, QueueFull)]
        if full:
            return QueueFull(f"every reachable server is full ({full[0].message[:200]})")
        if errors:
            return Draining(f"every reachable server is draining ({errors[0].message[:200]})")
        return Draining("every reachable server is drained by this client")

    async def _backoff(self, attempt: int, deadline: float, what: str) -> int:
        delay = min(FIRST_BACKOFF * 2**attempt, MAX_BACKOFF)
        remaining = deadline - self._clock.seconds()
        if remaining <= 0:
            raise Unavailable(f"{what}: no server reachable")
        self._retried(what, None)
        await self._sleep(min(delay, remaining))
        return attempt + 1

    def _retried(self, operation: str, address: str | None) -> None:
        if self.on_retry is not None:
            self.on_retry(operation, address)

    async def _sleep(self, seconds: float) -> None:
        d = deferLater(self._clock, seconds, lambda: None)
        self._sleeps.add(d)
        try:
            await d
        except CancelledError:
            raise Unavailable("client is stopping") from None
        finally:
            self._sleeps.discard(d)

    # -- get -------------------------------------------------------------------

    async def get(self, tube: str, *, count: int = 1, delete: bool = False,
                  wait: float = 0) -> list[dict]:
        """Reserve up to ``count`` jobs from any server; ``[]`` when all are empty.

        :param wait: seconds to wait for a job when none is ready (long poll).
        :raises Unavailable: no server answered within the retry budget.
        """
        check_tube(tube)
        count = check_count("count", count, maximum=MAX_COUNT)
        if not 0 <= wait <= MAX_WAIT:
            raise BadRequest(f"wait must be between 0 and {MAX_WAIT:g} seconds")
        jobs = await self._get_once(tube, count, delete)
        if not jobs and wait > 0:
            waiter = _Waiter(count, self._clock.seconds() + wait)
            key = (tube, delete)
            self._waiters.setdefault(key, deque()).append(waiter)
            if key not in self._pollers:
                self._pollers[key] = Deferred.fromCoroutine(self._poll(key))
            jobs = await waiter.deferred
        if self.log_jobs:
            for job in jobs:
                self._log.info("got job {job_id}", action="get", job_id=job["job_id"], tube=tube)
        return jobs

    async def _get_once(self, tube: str, count: int, delete: bool) -> list[dict]:
        deadline = self._clock.seconds() + self._retry_budget
        attempt = 0
        while True:
            links = self._healthy()
            random.shuffle(links)
            jobs: list[dict] = []
            answered = False
            for link in links:
                try:
                    result = await link.request(
                        "get", {"tube": tube, "count": count - len(jobs), "delete": delete})
                except Unavailable:
                    self._retried("get", link.address)
                    continue
                answered = True
                jobs += result["jobs"]
                if len(jobs) >= count:
                    break
            if answered:
                return jobs
            attempt = await self._backoff(attempt, deadline, "get")

    async def _poll(self, key: tuple[str, bool]) -> None:
        """Fetch for every waiter of one (tube, delete) until none is left."""
        tube, delete = key
        waiters = self._waiters[key]
        interval = POLL_FIRST
        try:
            while waiters:
                wanted = min(sum(w.count for w in waiters), MAX_COUNT)
                try:
                    jobs = await self._get_once(tube, wanted, delete)
                except Unavailable:
                    jobs = []
                while jobs and waiters:
                    waiter = waiters.popleft()
                    if waiter.deferred.called:  # its caller went away (cancelled)
                        continue
                    share, jobs = jobs[:waiter.count], jobs[waiter.count:]
                    waiter.deferred.callback(share)
                if jobs:  # every waiter left while the fetch was in flight
                    await self._give_back(jobs, delete)
                now = self._clock.seconds()
                for waiter in [w for w in waiters if w.deadline <= now or w.deferred.called]:
                    waiters.remove(waiter)
                    if not waiter.deferred.called:
                        waiter.deferred.callback([])
                if not waiters:
                    break
                interval = POLL_FIRST if jobs else min(interval * 2, POLL_MAX)
                earliest = min(w.deadline for w in waiters)
                await self._nap(key, min(interval, max(earliest - now, 0)))
        finally:
            del self._pollers[key]
            if not waiters:
                self._waiters.pop(key, None)

    async def _nap(self, key: tuple[str, bool], seconds: float) -> None:
        """Sleep between polls; a put to the tube through this client cuts it short."""
        d = deferLater(self._clock, seconds, lambda: None)
        self._kicks[key] = d
        self._sleeps.add(d)
        try:
            await d
        except CancelledError:
            pass  # woken by a put, or the client is stopping (waiters are gone then)
        finally:
            self._sleeps.discard(d)
            self._kicks.pop(key, None)

    def _wake_pollers(self, tube: str) -> None:
        for delete in (False, True):
            nap = self._kicks.get((tube, delete))
            if nap is not None:
                nap.cancel()

    async def _give_back(self, jobs: list[dict], deleted: bool) -> None:
        if deleted:
            self._log.warn("{n} jobs taken with delete=true had no waiter left", n=len(jobs))
            return
        for job in jobs:
            try:
                await self.job_action("release", job["job_id"])
            except AllQError as e:
                self._log.warn("could not give back job {job_id}: {error}",
                               job_id=job["job_id"], error=e.message)

    # -- job operations --------------------------------------------------------

    def job_action(self, action: str, job_id: str, **params) -> Deferred:
        """Apply ``done``/``delete``/``touch``/``release``/``bury``/``kick`` or
        ``set_children_started`` to a job on the server its id names.

        A plain Deferred (no coroutine): it runs on every job a worker finishes.
        """
        try:
            link = self._link_for_job(job_id)
        except AllQError:
            return fail()
        d = link.request(action, {"job_id": job_id, **params})
        if self.log_jobs:
            d.addCallback(self._acted, action, job_id, link)
        return d

    def _acted(self, result: dict, action: str, job_id: str, link: ServerLink) -> dict:
        self._log.info("{action} job {job_id} on {server}", action=action, job_id=job_id,
                       server=link.address)
        return result

    async def job_action_many(self, action: str, job_ids: list[str],
                              **params) -> list[dict | AllQError]:
        """Apply one job action to many jobs: one batch frame per server holding
        some of them. Per job, in order, the server's result or the error (a job
        whose server is unknown or down, or whose frame's outcome is unknown,
        gets that error; nothing is retried, as with :meth:`job_action`)."""
        outcomes: list[dict | AllQError | None] = [None] * len(job_ids)
        by_link: dict[ServerLink, list[int]] = {}
        for index, job_id in enumerate(job_ids):
            try:
                by_link.setdefault(self._link_for_job(job_id), []).append(index)
            except AllQError as e:
                outcomes[index] = e
        groups = list(by_link.items())
        replies = await DeferredList(
            [link.batch([(action, {"job_id": job_ids[index], **params}) for index in indexes])
             for link, indexes in groups], consumeErrors=True)
        for (link, indexes), (answered, value) in zip(groups, replies):
            if not answered and not value.check(AllQError):
                value.raiseException()
            for index, outcome in zip(indexes, value if answered else repeat(value.value)):
                outcomes[index] = outcome
            if self.log_jobs:
                for index in indexes:
                    self._log.info("{action} job {job_id} on {server}", action=action,
                                   job_id=job_ids[index], server=link.address,
                                   outcome=_outcome_name(outcomes[index]))
        return outcomes

    # -- fan-out ---------------------------------------------------------------

    async def _each(self, action: str, params: dict,
                    links: list[ServerLink] | None = None) -> list[tuple[ServerLink, dict]]:
        """Send one request to every healthy server (or to ``links``); keep the
        answers that came."""
        links = self._healthy() if links is None else links
        if not links:
            raise Unavailable("no server reachable")
        outcomes = await DeferredList(
            [link.request(action, params) for link in links], consumeErrors=True)
        answers = []
        for link, (ok, value) in zip(links, outcomes):
            if ok:
                answers.append((link, value))
            elif not value.check(Unavailable):
                value.raiseException()
        if not answers:
            raise Unavailable("no server answered")
        return answers

    async def _broadcast(self, action: str, tube: str, **params) -> int:
        """Apply a tube setting on every reachable server; how many applied it."""
        check_tube(tube)
        return len(await self._each(action, {"tube": tube, **params}))

    async def throttle(self, tube: str, tps: float | None) -> int:
        """Cap the jobs per second the federation hands out from a tube: each of
        the N healthy servers gets ``tps / N``; ``None`` or ``tps <= 0`` removes
        the cap. Returns N.

        The shares are computed now, over the servers up now.
        """
        check_tube(tube)
        if tps is not None and (isinstance(tps, bool) or not isinstance(tps, int | float)
                                or not math.isfinite(tps)):
            raise BadRequest("tps must be a number")
        links = self._healthy()
        if not links:
            raise Unavailable("no server reachable")
        share = tps / len(links) if tps is not None and tps > 0 else None
        await self._each("throttle", {"tube": tube, "tps": share}, links)
        return len(links)

    async def pause(self, tube: str, paused: bool = True) -> int:
        """Pause (no jobs handed out) or resume a tube on every reachable server."""
        return await self._broadcast("pause" if paused else "unpause", tube)

    async def drain_tube(self, tube: str, draining: bool = True) -> int:
        """Make a tube refuse new jobs (or take them again) on every reachable server."""
        return await self._broadcast("drain" if draining else "undrain", tube)

    async def fair(self, tube: str, policy: str) -> int:
        """Set a tube's fair-queuing policy (``round_robin``, ``weighted``, ``off``
        or ``default``) on every reachable server."""
        return await self._broadcast("fair", tube, policy=policy)

    async def max_size(self, tube: str, max_size: int | None) -> int:
        """Bound a tube to ``max_size`` jobs per server (``None``: unbounded) on
        every reachable server."""
        return await self._broadcast("max_size", tube, max_size=max_size)

    async def stats(self) -> list[dict]:
        """Every reachable server's stats, with its address."""
        return [
            {**result, "address": link.address}
            for link, result in await self._each("stats", {})
        ]

    async def clear(self, tube: str, state: str = "all") -> int:
        """Clear a tube on every reachable server; returns how many jobs went."""
        check_tube(tube)
        answers = await self._each("clear", {"tube": tube, "state": state})
        return sum(result["cleared"] for _, result in answers)

    async def kick_tube(self, tube: str, count: int = 1) -> list[str]:
        """Kick up to ``count`` buried jobs of a tube, over all reachable servers."""
        check_tube(tube)
        count = check_count("count", count, maximum=2**31)
        kicked: list[str] = []
        for link in self._healthy():
            if len(kicked) >= count:
                break
            try:
                result = await link.request("kick_tube", {"tube": tube, "count": count - len(kicked)})
            except NotConnected:
                continue
            kicked += result["job_ids"]
        return kicked

    async def peek(self, tube: str, *, buried: bool = False, offset: int = 0) -> dict | None:
        """The job ``offset`` places into the tube's ready (or buried) line, counting
        servers in id order."""
        check_tube(tube)
        check_count("offset", offset, minimum=0, maximum=2**31)
        links = sorted(self._healthy(), key=lambda l: l.server_id or "")
        if not links:
            raise Unavailable("no server reachable")
        for link in links:
            result = await link.request("peek", {"tube": tube, "buried": buried, "offset": offset})
            if result["job"] is not None:
                return result["job"]
            if offset:
                offset -= await self._tube_count(link, tube, "buried" if buried else "ready")
                if offset < 0:
                    return None  # the server's line changed between the two calls
        return None

    async def _tube_count(self, link: ServerLink, tube: str, state: str) -> int:
        stats = await link.request("stats", {})
        return sum(t[state] for t in stats["tubes"] if t["tube"] == tube)

    # -- lifecycle -------------------------------------------------------------

    def end_long_polls(self) -> None:
        """Answer every waiting long poll now, with no job (a client shutting down)."""
        for waiters in self._waiters.values():
            while waiters:
                waiter = waiters.popleft()
                if not waiter.deferred.called:
                    waiter.deferred.callback([])

    def stopService(self):
        for d in list(self._sleeps):
            d.cancel()
        self.end_long_polls()
        return super().stopService()


