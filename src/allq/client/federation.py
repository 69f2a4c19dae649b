"""The federation core: one job-queue interface over many servers.

Every front-end (REST today; AllQueue's JSON lines and beanstalkd next) calls
one :class:`Federation` and nothing beneath it. It is assembled from one piece
per concern:

* :mod:`allq.client.membership`: the servers and which one a job id names;
* :mod:`allq.client.placement`: where a put goes, with its retries and failover;
* :mod:`allq.client.longpoll`: gets that wait for a job;
* :mod:`allq.client.retry`: backoff on the injected clock, within a retry budget.

The rest lives here, each rule in one method:

* **get** tries the healthy servers in random order until one hands out a job,
  so a job anywhere is found by one call; ``[]`` only when all are empty.
* **job operations** go to the server named by the job id's prefix; when that
  server is down they fail fast with :class:`Unavailable`.
* **stats / clear / kick by tube / peek** fan out over the healthy servers.
* **failover** (:mod:`allq.client.failover`, when :meth:`Federation.fail_over`
  turns it on): a server down long enough has its backup promoted; gets, job
  operations, stats, peeks, kicks and clears then reach its jobs there, on a
  replica link acting for its server id (no puts: it drains).
* **tube settings** (pause, drain, fair queuing, maximum size, throttle) are
  sent to every healthy server. A throttle of ``tps`` jobs per second gives each
  of the N healthy servers ``tps / N``, so the federation hands out at most
  ``tps`` in total. Shares and settings are fixed when set: a server that was
  down then, or is added later, does not get them.
* **server drain** stops this client placing puts on a server and tells the
  server to refuse puts from every other client too (and the link tells it
  again whenever it reconnects).
* **caller-chosen parent ids** (AllQueue's ``set_parent_job`` ``id``): a job id
  names its server, a caller's id does not. The parent is placed like any put
  and its server keeps the id as an alias while the parent waits; a child put,
  a parent put or a job action naming it asks every healthy server which one
  holds it (``find_parent``) and goes on with the job id found. A new parent's
  id must not name a waiting parent on any reachable server.

What happened is reported to observers (:mod:`allq.client.observers`: metrics,
job logs, the ``--workers`` relay); they watch and decide nothing. Results that
reach a front-end are records (:mod:`allq.client.records`), errors are
:class:`AllQError` failures. Stopping cancels every backoff and answers every
long poll.
"""

import random
from collections.abc import Callable, Iterable
from itertools import repeat

from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError, Deferred, DeferredList, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from allq.client.chains import own_result
from allq.client.failover import Failover
from allq.client.fencing import Fences
from allq.client.link import ServerLink
from allq.client.longpoll import LongPolls
from allq.client.membership import Membership
from allq.client.observers import FederationObserver
from allq.client.placement import Placement
from allq.client.placement import idempotency_key as new_key
from allq.client.records import FetchedJob, JobStats, ServerStats
from allq.client.retry import DEFAULT_RETRY_BUDGET, Retries
from allq.client.schedules import ScheduleRouter
from allq.client.routing import InterestRouting
from allq.errors import AllQError, BadRequest, NotFound, Unavailable, WrongState
from allq.vocabulary import (
    check_concurrency,
    check_job_key,
    check_tps,
    check_tube,
    is_parent_alias,
)
from allq.wire.bodies import encode_body


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
        self._observers: list[FederationObserver] = []
        self._servers = Membership(addresses, self._syncing(make_link))
        self._servers.setServiceParent(self)
        self._retries = Retries(clock, retry_budget, self._retried, self._servers.why_down)
        self._placement = Placement(self._servers, self._retries, self._stored, self._retried)
        self._polls = LongPolls(clock, self._retries, self._get_once, self._give_back)
        self._schedules = ScheduleRouter(self._servers)
        self._routing = InterestRouting(self._servers, clock, self._each,
                                        self._placement.store, self._event_unmatched)
        self._clock = clock
        self._failover: Failover | None = None

    def _syncing(self, make_link: Callable[[str], ServerLink]) -> Callable[[str], ServerLink]:
        """``make_link``, whose links sync the servers' interests on each connection."""
        def make(address: str) -> ServerLink:
            link = make_link(address)
            hooks = getattr(link, "on_connected", None)  # test doubles may have none
            if hooks is not None:
                hooks.append(self.sync_interests)
            return link
        return make

    def observe(self, observer: FederationObserver) -> None:
        """Report what happens from now on to ``observer`` too."""
        self._observers.append(observer)

    # -- membership ------------------------------------------------------------

    def links(self) -> list[ServerLink]:
        """Every configured server link, in configuration order."""
        return self._servers.links()

    def health(self) -> dict:
        """Which servers are up, for ``GET /health`` (with failover on, also the
        failovers this client made, ``failovers``)."""
        report = self._servers.health()
        if self._failover is not None:
            report["failovers"] = list(self._failover.failovers)
        return report

    def fail_over(self, after: float, fences: Fences,
                  make_replica_link: Callable[[str, str], ServerLink],
                  connect: Callable[[str], Deferred]) -> Failover:
        """Promote the backup of a server down for ``after`` seconds and reach its
        jobs there (:class:`allq.client.failover.Failover`); call before starting.

        :param fences: the promotions seen, shared with the links ``make_link`` makes.
        """
        self._failover = Failover(self._servers, self._clock, after, fences,
                                  make_replica_link, connect)
        self._failover.setServiceParent(self)
        return self._failover

    def failovers(self) -> list[dict]:
        """The failovers this client made (``[]`` with failover off)."""
        return [] if self._failover is None else list(self._failover.failovers)

    def add_server(self, address: str) -> None:
        """Start using one more server (no-op if already known)."""
        self._servers.add(address)
        self._admin_changed("add_server", [address])

    def update_servers(self, addresses: list[str]) -> None:
        """Replace the set of servers: new ones are added, missing ones dropped."""
        self._servers.update(addresses)
        self._admin_changed("update_servers", [list(addresses)])

    def drain_server(self, server: str, draining: bool = True) -> Deferred:
        """Stop (``draining``) or resume placing new jobs on a server, by id or
        ``host:port``, and tell the server to refuse (or take again) new jobs from
        every client. Gets go on either way.

        :returns: fires with whether the server was told now; ``False`` when it
            is not connected (the link tells it when it reconnects).
        :raises NotFound: no such server in this client.
        """
        try:
            link = self._servers.find(server)
        except AllQError:
            return fail()
        link.draining = draining
        self._log.info("{what} server {address}", address=link.address,
                       what="draining" if draining else "no longer draining")
        self._admin_changed("drain_server", [server, draining])
        return link.tell_draining(draining)

    # -- put -------------------------------------------------------------------

    def put(self, tube: str, body: str | bytes, *, priority=None, ttl=None, delay=0,
            expired_limit=None, run_at=None, shard_key=None, parent_id=None,
            idempotency_key=None, unique_key=None, concurrency_key=None) -> Deferred:
        """Store a job on one server (see :mod:`allq.client.placement`); fires with its id.

        :param run_at: a unix time at which the job becomes ready (not with ``delay``).
        :param shard_key: the job's key in a fair tube.
        :param parent_id: the waiting parent this job is a child of; the job goes
            to the parent's server.
        :param idempotency_key: the caller's key (default: a fresh one); the key of
            an :class:`UnknownOutcome` sends the put to the server that may hold it.
        :param unique_key: while a job of the tube holds it, the put stores nothing
            and fires with that job's id as a :class:`DuplicateJobId`.
        :param concurrency_key: at most the tube's concurrency limit of the jobs
            with this key are reserved at once. A keyed put goes to the server its
            key chooses (:mod:`allq.client.keyed`), and only there.
        :raises Unavailable: no server stored it within the retry budget, or the
            parent's server (or the key's) is down.
        :raises UnknownOutcome: the server that may have stored it did not answer.
        :raises Draining: every reachable server refused it as draining.
        :raises QueueFull: every reachable server refused it, at least one as full.
        :raises NotFound: ``parent_id`` names no waiting job.
        """
        try:
            params = _put_params(tube, body, priority=priority, ttl=ttl, delay=delay,
                                 expired_limit=expired_limit, run_at=run_at,
                                 shard_key=shard_key, parent_id=parent_id,
                                 idempotency_key=idempotency_key, unique_key=unique_key,
                                 concurrency_key=concurrency_key)
        except AllQError:
            return self._observed("put", fail())
        if is_parent_alias(parent_id):
            d = Deferred.fromCoroutine(self._store_with_parent("put", params))
            return self._observed("put", d)
        return self._observed("put", self._placement.store("put", params))

    def put_parent(self, tube: str, body: str | bytes, *, priority=None, ttl=None,
                   expired_limit=None, shard_key=None, parent_id=None,
                   timeout=None, run_on_timeout=False, limit=None, noop=False,
                   alias=None) -> Deferred:
        """Store a parent job, waiting for ``limit`` finished children (or for
        :meth:`job_action` ``set_children_started``); placed like :meth:`put`.

        :param timeout: seconds the parent waits for its children (server default 3600).
        :param run_on_timeout: after the timeout, run it (true) or bury it (false).
        :param noop: it never runs: once its children are done it counts as a
            finished child of its own parent.
        :param alias: a caller-chosen id naming it while it waits (see above).
        :raises WrongState: ``alias`` already names a waiting parent.
        """
        params = {
            "tube": tube, "body": body, "priority": priority, "ttl": ttl,
            "expired_limit": expired_limit, "shard_key": shard_key, "parent_id": parent_id,
            "timeout": timeout, "run_on_timeout": run_on_timeout, "limit": limit,
            "idempotency_key": new_key(),
        }
        if type(body) is bytes:
            params["body"], params["body_encoding"] = encode_body(body)
        # Only when set: servers of an earlier version know neither field.
        if noop:
            params["noop"] = True
        if alias is not None:
            params["alias"] = alias
        if alias is not None or is_parent_alias(parent_id):
            d = Deferred.fromCoroutine(self._store_with_parent("put_parent", params))
            return self._observed("put_parent", d)
        return self._observed("put_parent", self._placement.store("put_parent", params))

    async def _store_with_parent(self, action: str, params: dict) -> str:
        """A put or parent put whose parent, or own id, is a caller-chosen id."""
        alias = params.get("alias")
        if alias is not None:
            try:
                await self._find_parent(alias)
            except NotFound:
                pass
            else:
                raise WrongState(f"id {alias[:90]!r} already names a waiting parent")
        if is_parent_alias(params["parent_id"]):
            params["parent_id"] = await self._find_parent(params["parent_id"])
        return await self._placement.store(action, params)

    async def _find_parent(self, alias: str) -> str:
        """The job id of the waiting parent a caller-chosen id names.

        :raises NotFound: no reachable server holds it.
        :raises Unavailable: none holds it but some server did not answer.
        """
        links = self._servers.healthy()
        if not links:
            raise self._unreachable()
        outcomes = await DeferredList(
            [link.request("find_parent", {"alias": alias}) for link in links],
            consumeErrors=True)
        unanswered = len(links) < len(self._servers.links())  # a server down may hold it
        for ok, value in outcomes:
            if ok:
                return value["job_id"]
            if value.check(Unavailable):
                unanswered = True
            elif not value.check(NotFound):
                value.raiseException()
        if unanswered:
            raise Unavailable(f"no answering server holds parent {alias[:90]!r}; "
                              f"one that is down may ({self._servers.why_down()})")
        raise NotFound(f"no waiting parent has the id {alias[:90]!r}")

    def put_many(self, jobs: list[dict]) -> Deferred:
        """Store a batch of jobs (each a dict of :meth:`put`'s arguments, ``tube`` and
        ``body`` included); fires with, per job in order, its id or the error that
        kept it out. Every tube is checked before anything is stored.
        """
        try:
            batch = [_put_params(**job) for job in jobs]
            for params in batch:
                check_tube(params["tube"])
        except AllQError:
            return self._observed("put", fail())
        d = Deferred.fromCoroutine(self._store_many(batch))
        return self._observed("put", d).addCallback(self._count_failures, "put")

    async def _store_many(self, batch: list[dict]) -> list:
        aliases = {params["parent_id"] for params in batch
                   if is_parent_alias(params["parent_id"])}
        found = {alias: await self._find_parent(alias) for alias in sorted(aliases)}
        for params in batch:
            params["parent_id"] = found.get(params["parent_id"], params["parent_id"])
        return await self._placement.store_many(batch)

    def _stored(self, action: str, tube: str, job_id: str, address: str) -> None:
        self._polls.wake(tube)
        for observer in self._observers:
            observer.stored(action, tube, job_id, address)

    # -- get -------------------------------------------------------------------

    def get(self, tube: str, *, count: int = 1, delete: bool = False,
            wait: float = 0) -> Deferred:
        """Reserve up to ``count`` jobs from any server; fires with a list of
        :class:`FetchedJob`, ``[]`` when all are empty.

        :param wait: seconds to wait for a job when none is ready (long poll).
        :raises Unavailable: no server answered within the retry budget.
        """
        chain = self._first_pass(tube, count, delete)
        if wait > 0:
            chain.addCallback(self._wait_if_none, tube, count, delete, wait)
        return self._observed("get", own_result(chain)).addCallback(self._got, tube, delete)

    def _wait_if_none(self, jobs: list[FetchedJob], tube: str, count: int, delete: bool,
                      wait: float) -> list[FetchedJob] | Deferred:
        return jobs if jobs else self._polls.wait(tube, count, delete, wait)

    def get_any(self, tubes: list[str], *, count: int = 1, delete: bool = False,
                wait: float = 0) -> Deferred:
        """Reserve up to ``count`` jobs from any of ``tubes`` on any server: each
        server hands out its best across the tubes (priority, then put order);
        servers are asked in random order, as :meth:`get` does. Fires with a list
        of :class:`FetchedJob`, ``[]`` when none came within ``wait`` seconds.

        Cancelling the Deferred gives up the wait; jobs a server handed out in
        the meantime are released again, so none stays reserved for nobody.
        (With ``wait`` 0 there is no wait to give up: it is the plain one pass.)
        """
        key: str | tuple[str, ...] = tuple(dict.fromkeys(tubes))
        if len(key) == 1:
            key = key[0]
        if wait <= 0:
            d = self._get_once(key, count, delete)
            return self._observed("get", d).addCallback(self._got_any, delete)
        get = _CancellableGet()
        d = Deferred.fromCoroutine(self._get_cancellable(get, key, count, delete, wait))
        d = self._observed("get", d).addCallback(self._got_any, delete)
        return get.result(d)

    async def _get_cancellable(self, get: "_CancellableGet", key, count: int, delete: bool,
                               wait: float) -> list[FetchedJob]:
        jobs = await self._get_once(key, count, delete)
        if get.cancelled:
            if jobs and not delete:
                await self._give_back(jobs)
            raise CancelledError()
        if not jobs and wait > 0:
            get.waiting = self._polls.wait(key, count, delete, wait)
            jobs = await get.waiting
        return jobs

    def _got_any(self, jobs: list[FetchedJob], delete: bool) -> list[FetchedJob]:
        by_tube: dict[str, list[FetchedJob]] = {}
        for job in jobs:
            by_tube.setdefault(job.tube, []).append(job)
        for tube, some in by_tube.items():
            self._got(some, tube, delete)
        return jobs

    def _got(self, jobs: list[FetchedJob], tube: str, delete: bool) -> list[FetchedJob]:
        for observer in self._observers:
            observer.got(tube, jobs, delete)
        return jobs

    def _get_once(self, tube: str | tuple[str, ...], count: int, delete: bool) -> Deferred:
        """One pass over the healthy servers in random order, backing off while
        none answers; fires with the jobs got. ``tube`` may be a tuple of tubes
        (``get_any``)."""
        return own_result(self._first_pass(tube, count, delete))

    def _first_pass(self, tube: str | tuple[str, ...], count: int, delete: bool) -> Deferred:
        """:meth:`_get_once` as a callback chain (see :func:`own_result`).

        The first server, drawn at random, is asked without a coroutine: when it
        hands out enough jobs, or is the only one, that is the whole pass.
        Otherwise :meth:`_get_passes` asks the others, in random order.
        """
        deadline = self._retries.deadline()
        links = self._servers.healthy(replicas=True)
        if not links:
            return Deferred.fromCoroutine(
                self._get_passes(tube, count, delete, deadline, [], [], False))
        first = links.pop(random.randrange(len(links)))
        return first.request(*_get_request(tube, count, delete)).addCallbacks(
            self._first_answered, self._first_failed,
            callbackArgs=(tube, count, delete, deadline, links),
            errbackArgs=(tube, count, delete, deadline, links, first))

    def _first_answered(self, result: dict, tube, count: int, delete: bool, deadline: float,
                        rest: list[ServerLink]) -> list[FetchedJob] | Deferred:
        jobs = list(map(FetchedJob.from_reply, result["jobs"]))
        if len(jobs) >= count or not rest:
            return jobs
        return Deferred.fromCoroutine(
            self._get_passes(tube, count, delete, deadline, rest, jobs, True))

    def _first_failed(self, failure: Failure, tube, count: int, delete: bool, deadline: float,
                      rest: list[ServerLink], first: ServerLink) -> Deferred:
        failure.trap(Unavailable)
        self._retried("get", first.address)
        return Deferred.fromCoroutine(
            self._get_passes(tube, count, delete, deadline, rest, [], False))

    async def _get_passes(self, tube, count: int, delete: bool, deadline: float,
                          links: list[ServerLink], jobs: list[FetchedJob],
                          answered: bool) -> list[FetchedJob]:
        """The rest of a pass (``links`` not asked yet, ``jobs`` got so far, whether
        a server ``answered``), then new passes after a backoff while none answers."""
        attempt = 0
        while True:
            random.shuffle(links)
            for link in links:
                try:
                    result = await link.request(
                        *_get_request(tube, count - len(jobs), delete))
                except Unavailable:
                    self._retried("get", link.address)
                    continue
                answered = True
                jobs += map(FetchedJob.from_reply, result["jobs"])
                if len(jobs) >= count:
                    break
            if answered:
                return jobs
            attempt = await self._retries.backoff(attempt, deadline, "get")
            links, jobs = self._servers.healthy(replicas=True), []

    async def _give_back(self, jobs: list[FetchedJob]) -> None:
        for job in jobs:
            try:
                await self.job_action("release", job.job_id)
            except AllQError as e:
                self._log.warn("could not give back job {job_id}: {error}",
                               job_id=job.job_id, error=e.message)

    # -- job operations --------------------------------------------------------

    def job_action(self, action: str, job_id: str, **params) -> Deferred:
        """Apply ``done``/``delete``/``touch``/``release``/``bury``/``kick`` or
        ``set_children_started`` to a job on the server its id names; fires with
        the job id. ``set_children_started`` may name its parent by the id its
        put chose."""
        if action == "set_children_started" and is_parent_alias(job_id):
            d = Deferred.fromCoroutine(self._find_parent(job_id))
            d.addErrback(self._failed, action)  # the action reports its own failures
            return d.addCallback(lambda found: self.job_action(action, found, **params))
        try:
            link = self._servers.holder(job_id)
        except AllQError:
            return self._observed(action, fail())
        d = link.request(action, {"job_id": job_id, **params})
        return self._observed(action, d).addCallback(self._acted, action, job_id, link)

    def reserve_job(self, job_id: str) -> Deferred:
        """Reserve one job by its id, whether ready, delayed or buried; fires
        with the :class:`FetchedJob`.

        :raises NotFound: no such job. :raises WrongState: it is reserved already.
        """
        try:
            link = self._servers.holder(job_id)
        except AllQError:
            return self._observed("get", fail())
        d = link.request("reserve_job", {"job_id": job_id})
        d.addCallback(lambda result: FetchedJob.from_reply(result["job"]))
        return self._observed("get", d).addCallback(
            lambda job: self._got([job], job.tube, False)[0])

    def peek_job(self, job_id: str) -> Deferred:
        """A job by its id, in any state; fires with the :class:`FetchedJob`."""
        try:
            link = self._servers.holder(job_id)
        except AllQError:
            return fail()
        d = link.request("peek_job", {"job_id": job_id})
        return d.addCallback(lambda result: FetchedJob.from_reply(result["job"]))

    def job_stats(self, job_id: str) -> Deferred:
        """What the job's server says of it; fires with a :class:`JobStats`."""
        try:
            link = self._servers.holder(job_id)
        except AllQError:
            return fail()
        return link.request("job_stats", {"job_id": job_id}).addCallback(JobStats.from_reply)

    def _acted(self, result: dict, action: str, job_id: str, link: ServerLink) -> str:
        for observer in self._observers:
            observer.acted(action, job_id, link.address)
        return job_id

    def job_action_many(self, action: str, job_ids: list[str], **params) -> Deferred:
        """Apply one job action to many jobs: one batch frame per server holding
        some of them. Fires with, per job in order, its id or its error (a job
        whose server is unknown or down, or whose frame's outcome is unknown,
        gets that error; nothing is retried, as with :meth:`job_action`)."""
        d = Deferred.fromCoroutine(self._job_action_many(action, job_ids, params))
        return self._observed(action, d).addCallback(self._count_failures, action)

    async def _job_action_many(self, action: str, job_ids: list[str],
                               params: dict) -> list[str | AllQError]:
        outcomes: list[str | AllQError | None] = [None] * len(job_ids)
        by_link: dict[ServerLink, list[int]] = {}
        for index, job_id in enumerate(job_ids):
            try:
                by_link.setdefault(self._servers.holder(job_id), []).append(index)
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
                outcomes[index] = (outcome if isinstance(outcome, AllQError)
                                   else self._acted(outcome, action, job_ids[index], link))
        return outcomes

    # -- fan-out ---------------------------------------------------------------

    async def _each(self, action: str, params: dict, links: list[ServerLink] | None = None,
                    replicas: bool = False) -> list[tuple[ServerLink, dict]]:
        """Send one request to every healthy server (or to ``links``; with
        ``replicas``, the replica links too); keep the answers that came."""
        links = self._servers.healthy(replicas) if links is None else links
        if not links:
            raise self._unreachable()
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
        return len(await self._each(action, {"tube": tube, **params}))

    async def throttle(self, tube: str, tps: float | None) -> int:
        """Cap the jobs per second the federation hands out from a tube: each of
        the N healthy servers gets ``tps / N``; ``None`` or ``tps <= 0`` removes
        the cap. Returns N (computed over the servers up now)."""
        tps = check_tps(tps)
        links = self._servers.healthy()
        if not links:
            raise self._unreachable()
        share = None if tps is None else tps / len(links)
        await self._each("throttle", {"tube": tube, "tps": share}, links)
        return len(links)

    async def pause(self, tube: str, paused: bool = True, delay: float | None = None) -> int:
        """Pause (no jobs handed out) or resume a tube on every reachable server.

        :param delay: seconds after which each server resumes the tube by itself.
        """
        if paused and delay is not None:
            return await self._broadcast("pause", tube, delay=delay)
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

    async def concurrency(self, tube: str, limit: int) -> int:
        """Set how many jobs of one concurrency key of a tube may be reserved at
        once, on every reachable server (each key's jobs live on one server)."""
        return await self._broadcast("concurrency", tube, limit=check_concurrency(limit))

    async def stats(self) -> list[ServerStats]:
        """Every reachable server's stats (which also tell each link whether its
        server's disk is full, for ``/health``)."""
        answers = await self._each("stats", {}, replicas=True)
        for link, result in answers:
            link.disk_full = bool(result["global"].get("disk_full", False))
        return [ServerStats.from_reply(link.address, result) for link, result in answers]

    def clear(self, tube: str, state: str = "all") -> Deferred:
        """Clear a tube on every reachable server; fires with how many jobs went."""
        d = Deferred.fromCoroutine(self._each("clear", {"tube": tube, "state": state},
                                              replicas=True))
        d.addCallback(lambda answers: sum(result["cleared"] for _, result in answers))
        return self._observed("clear", d).addCallback(self._counted, "clear", tube, int)

    def kick_tube(self, tube: str, count: int = 1, delayed: bool = False) -> Deferred:
        """Kick up to ``count`` buried jobs of a tube (with ``delayed``: delayed
        jobs, each server's soonest first), over all reachable servers; fires
        with the ids kicked."""
        d = Deferred.fromCoroutine(self._kick_tube(tube, count, delayed))
        return self._observed("kick_tube", d).addCallback(self._counted, "kick", tube, len)

    async def _kick_tube(self, tube: str, count: int, delayed: bool = False) -> list[str]:
        """Server by server until ``count`` are kicked; a server that fails is
        skipped (what others kicked is still reported), none answering is 503."""
        kicked: list[str] = []
        answered = False
        for link in self._servers.healthy(replicas=True):
            if len(kicked) >= count:
                break
            try:
                result = await link.request("kick_tube", {"tube": tube, "delayed": delayed,
                                                          "count": count - len(kicked)})
            except Unavailable:
                continue
            answered = True
            kicked += result["job_ids"]
        if not answered and not kicked:
            raise self._unreachable()
        return kicked

    def _counted(self, result, action: str, tube: str, how_many: Callable):
        for observer in self._observers:
            observer.counted(action, tube, how_many(result))
        return result

    async def peek(self, tube: str, *, buried: bool = False,
                   offset: int = 0) -> FetchedJob | None:
        """The job ``offset`` places into the tube's ready (or buried) line, counting
        servers in id order."""
        links = sorted(self._servers.healthy(replicas=True), key=lambda l: l.server_id or "")
        if not links:
            raise self._unreachable()
        for link in links:
            result = await link.request("peek", {"tube": tube, "buried": buried, "offset": offset})
            if result["job"] is not None:
                return FetchedJob.from_reply(result["job"])
            if offset:
                offset -= await self._tube_count(link, tube, "buried" if buried else "ready")
                if offset < 0:
                    return None  # the server's line changed between the two calls
        return None

    async def list_jobs(self, tube: str, state: str, *, offset: int = 0,
                        limit: int = 50) -> tuple[list[tuple[str, FetchedJob]], int]:
        """A page of a tube's jobs in one state, each with its server's id, and how
        many the reachable servers hold in that state: the servers' lists one after
        another in server-id order (as :meth:`peek` counts), ``offset`` into that."""
        links = sorted(self._servers.healthy(replicas=True), key=lambda l: l.server_id or "")
        if not links:
            raise self._unreachable()
        page: list[tuple[str, FetchedJob]] = []
        total = 0
        for link in links:
            wanted = limit - len(page)
            result = await link.request("list_jobs", {
                "tube": tube, "state": state, "offset": offset if wanted else 0,
                "limit": max(wanted, 1)})
            held = result["total"]
            if wanted:
                page += [(link.server_id, FetchedJob.from_reply(job))
                         for job in result["jobs"][:wanted]]
                offset = max(offset - held, 0)
            total += held
        return page, total

    async def peek_most_urgent(self, tube: str) -> FetchedJob | None:
        """The ready job of a tube with the lowest priority number over every
        reachable server (each server's next; ties: the first server's)."""
        answers = await self._each("peek", {"tube": tube}, replicas=True)
        jobs = [FetchedJob.from_reply(result["job"]) for _, result in answers
                if result["job"] is not None]
        return min(jobs, key=lambda job: job.priority, default=None)

    async def peek_delayed(self, tube: str) -> FetchedJob | None:
        """The delayed job of a tube due soonest over every reachable server."""
        answers = await self._each("peek", {"tube": tube, "delayed": True}, replicas=True)
        best: tuple[float, FetchedJob] | None = None
        for link, result in answers:
            if result["job"] is None:
                continue
            job = FetchedJob.from_reply(result["job"])
            try:
                stats = JobStats.from_reply(
                    await link.request("job_stats", {"job_id": job.job_id}))
            except (NotFound, Unavailable):
                continue  # it left the delayed state, or its server, meanwhile
            if best is None or stats.time_left < best[0]:
                best = (stats.time_left, job)
        return None if best is None else best[1]

    async def _tube_count(self, link: ServerLink, tube: str, state: str) -> int:
        stats = await link.request("stats", {})
        return sum(t[state] for t in stats["tubes"] if t["tube"] == tube)

    # -- recurring schedules (allq.client.schedules) ------------------------------

    def add_schedule(self, params: dict) -> Deferred:
        """Create or replace a recurring schedule on the server its name picks
        (``params``: the ``schedule_add`` wire params); fires with its description."""
        if type(params.get("body")) is bytes:
            params = dict(params)
            params["body"], params["body_encoding"] = encode_body(params["body"])
        d = Deferred.fromCoroutine(self._schedules.add(params))
        return self._observed("schedule_add", d)

    def schedules(self) -> Deferred:
        """Every schedule of every reachable server, with its next firing."""
        return self._observed("schedule_list", Deferred.fromCoroutine(self._schedules.list()))

    def schedule_action(self, action: str, name: str) -> Deferred:
        """``pause``, ``resume`` or ``remove`` the schedule ``name``."""
        d = Deferred.fromCoroutine(self._schedules.act("schedule_" + action, name))
        return self._observed("schedule_" + action, d)

    # -- interest routing (allq.client.routing) ------------------------------------

    def set_interest(self, tube: str, interests: object) -> Deferred:
        """Register ``tube``'s interests on every reachable server; fires with how
        many took them."""
        d = Deferred.fromCoroutine(self._routing.register(tube, interests))
        return self._observed("interest", d)

    def delete_interest(self, tube: str) -> Deferred:
        """Remove ``tube``'s interests everywhere; fires with how many servers did."""
        return self._observed("interest", Deferred.fromCoroutine(
            self._routing.unregister(tube)))

    def interests(self) -> Deferred:
        """Every tube's interests (``[{"tube", "interests"}]``), servers synced first."""
        return self._observed("interest", Deferred.fromCoroutine(self._routing.interests()))

    def publish_event(self, data: object, **options) -> Deferred:
        """Fan an event out to the interested tubes; fires with its
        :class:`allq.client.routing.EventCopy` list (see ``InterestRouting.publish``)."""
        return self._observed("event", Deferred.fromCoroutine(
            self._routing.publish(data, **options)))

    def sync_interests(self, link: ServerLink | None = None) -> Deferred:
        """Bring every reachable server's interests up to date (a link connected)."""
        d = Deferred.fromCoroutine(self._routing.sync(link))
        return d.addErrback(self._sync_failed)

    def _sync_failed(self, failure: Failure) -> None:
        self._log.failure("interest sync failed", failure)

    def _event_unmatched(self) -> None:
        for observer in self._observers:
            observer.counted("event_unmatched", "", 1)

    # -- reporting ---------------------------------------------------------------

    def _observed(self, operation: str, d: Deferred) -> Deferred:
        """``d``, with its :class:`AllQError` failure reported to the observers."""
        return d.addErrback(self._failed, operation)

    def _failed(self, failure: Failure, operation: str) -> Failure:
        if failure.check(AllQError):
            for observer in self._observers:
                observer.failed(operation, failure.value.code)
        return failure

    def _count_failures(self, outcomes: list, operation: str) -> list:
        """Report the jobs of a batch that failed, by error code."""
        for outcome in outcomes:
            if isinstance(outcome, AllQError):
                for observer in self._observers:
                    observer.failed(operation, outcome.code)
        return outcomes

    def _unreachable(self) -> Unavailable:
        return Unavailable(f"no server reachable ({self._servers.why_down()})")

    def _retried(self, operation: str, address: str | None) -> None:
        for observer in self._observers:
            observer.retried(operation, address)

    def _admin_changed(self, call: str, args: list) -> None:
        for observer in self._observers:
            observer.admin_changed(call, args)

    # -- lifecycle -------------------------------------------------------------

    def end_long_polls(self) -> None:
        """Answer every waiting long poll now, with no job (a client shutting down)."""
        self._polls.end_all()

    def stopService(self):
        self._retries.cancel_all()
        self._polls.end_all()
        return super().stopService()


class _CancellableGet:
    """The state of one :meth:`Federation.get_any`: cancelling its result gives
    up the long poll at once, or, while a server is being asked, lets the answer
    come and gives its jobs back (a reply cut off would leave them reserved
    until their ttl)."""

    def __init__(self) -> None:
        self.cancelled = False
        self.waiting: Deferred | None = None

    def result(self, work: Deferred) -> Deferred:
        """The Deferred the caller gets: ``work``'s outcome, cancellable."""
        def cancel(_: Deferred) -> None:
            self.cancelled = True
            if self.waiting is not None and not self.waiting.called:
                self.waiting.cancel()

        result = Deferred(canceller=cancel)

        def settle(outcome):
            if not result.called:
                if isinstance(outcome, Failure):
                    result.errback(outcome)
                else:
                    result.callback(outcome)
            elif isinstance(outcome, Failure) and not outcome.check(CancelledError):
                return outcome  # after a cancel, only the expected error is dropped
            return None

        work.addBoth(settle)
        return result


def _get_request(tube: str | tuple[str, ...], count: int, delete: bool) -> tuple[str, dict]:
    """The wire request of a get from one tube, or (a tuple) from several."""
    if type(tube) is tuple:
        return "get_any", {"tubes": list(tube), "count": count, "delete": delete}
    return "get", {"tube": tube, "count": count, "delete": delete}


def _put_params(tube: str, body: str | bytes, *, priority=None, ttl=None, delay=0,
                expired_limit=None, run_at=None, shard_key=None, parent_id=None,
                idempotency_key=None, unique_key=None, concurrency_key=None) -> dict:
    """A put request's parameters, with the caller's idempotency key or a fresh one.
    A binary body travels as base64 with its marker (:mod:`allq.wire.bodies`).

    :raises BadRequest: a key is not valid, or a child job (which goes to its
        parent's server) carries one (it goes to its key's server).
    """
    params = {
        "tube": tube, "body": body, "priority": priority, "ttl": ttl, "delay": delay,
        "expired_limit": expired_limit, "run_at": run_at, "shard_key": shard_key,
        "parent_id": parent_id, "idempotency_key": idempotency_key or new_key(),
    }
    # Only when set: servers of an earlier version know neither field.
    for name, key in (("unique_key", unique_key), ("concurrency_key", concurrency_key)):
        if key is not None:
            params[name] = check_job_key(name, key)
            if parent_id is not None:
                raise BadRequest(f"a child job goes to its parent's server: it cannot "
                                 f"carry a {name}")
    if type(body) is bytes:
        params["body"], params["body_encoding"] = encode_body(body)
    return params
