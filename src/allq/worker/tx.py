"""The Twisted flavour of :mod:`allq.worker`: the same client and worker on treq.

:class:`TxClient` has the synchronous :class:`~allq.worker.client.Client`'s methods,
returning Deferreds; :class:`TxWorker` the :class:`~allq.worker.worker.Worker`'s
behaviour (prefetch with long polls, batched acknowledgements after the handler
returned, touches, backoff and bury, a bounded graceful stop), with handlers that
may return a Deferred or be ``async def``. Nothing blocks the reactor; every timer
takes the injected clock and is cancelled on stop. The HTTP client is injected
(a :class:`treq.client.HTTPClient`, persistent connections by default).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from treq.client import HTTPClient
from twisted.internet import error as net_error
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    ensureDeferred,
    fail,
    maybeDeferred,
    succeed,
)
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseFailed,
)

from allq.errors import AllQError, BadRequest, NotFound, WrongState
from allq.vocabulary import MAX_BATCH
from allq.worker import api
from allq.worker.coalesce import DEFAULT_LINGER, DEFAULT_MAX_BATCH, DEFAULT_SENDERS
from allq.worker.http import DEFAULT_TIMEOUT
from allq.worker.jobs import Job, TubePolicy, error_text
from allq.worker.worker import (
    ACK_RETRY_DELAYS,
    MAX_RETRY_DELAY,
    RETRY_DELAY,
    TOUCH_CHECK_INTERVAL,
    WorkerStats,
    checked_tubes,
    held_limit,
)

_JSON = {b"content-type": [b"application/json"], b"accept": [b"application/json"]}
_NO_BODY = {b"accept": [b"application/json"]}
#: What an unreachable allq-client (or one that hung up) looks like.
_UNREACHABLE = (net_error.ConnectError, net_error.ConnectionLost, net_error.TimeoutError,
                CancelledError, ResponseFailed, RequestTransmissionFailed)




class TxTransport:
    """Calls over several allq-clients, with failover (as :class:`allq.worker.http.Transport`)."""

    def __init__(self, urls: list[str], *, reactor: Any, http_client: HTTPClient | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self._urls = urls
        self._reactor = reactor
        self._pool: HTTPConnectionPool | None = None
        if http_client is None:
            # Persistent connections, a few per allq-client; ours to close.
            self._pool = HTTPConnectionPool(reactor, persistent=True)
            self._pool.maxPersistentPerHost = 16
            http_client = HTTPClient(Agent(reactor, pool=self._pool))
        self._http = http_client
        self._timeout = timeout
        self._current = 0

    @property
    def urls(self) -> list[str]:
        return list(self._urls)

    def call(self, call: api.Call) -> Deferred:
        """Fires with ``(status, reply)``; see :meth:`allq.worker.http.Transport.call`."""
        return Deferred.fromCoroutine(self._call(call))

    async def _call(self, call: api.Call) -> tuple[int, object]:
        count = len(self._urls)
        start = self._current
        answer = None
        last_error: api.ClientUnreachable | None = None
        for step in range(count):
            index = (start + step) % count
            try:
                status, reply = await self._request(self._urls[index], call)
            except api.ClientUnreachable as e:
                last_error = e
                continue
            answer = status, reply
            if status == 200 or not api.should_fail_over(api.error_from(status, reply)):
                self._current = index
                return answer
        if answer is not None:
            return answer
        assert last_error is not None
        if count > 1:
            raise api.ClientUnreachable(f"no allq-client reachable of {count} "
                                        f"(last: {last_error.message})")
        raise last_error

    async def _request(self, url: str, call: api.Call) -> tuple[int, object]:
        body = None if call.body is None else json.dumps(call.body).encode("utf-8")
        try:
            response = await self._http.request(
                call.method, url + call.target, data=body,
                headers=_NO_BODY if body is None else _JSON,
                timeout=self._timeout + call.wait)
            data = await response.content()
        except _UNREACHABLE as e:
            why = str(e) or type(e).__name__
            raise api.ClientUnreachable(f"allq-client {url}: {why}") from None
        return response.code, api.reply_json(data)

    def close(self) -> Deferred:
        """Close the idle connections of the pool made here (an injected client's
        are its owner's to close)."""
        return self._pool.closeCachedConnections() if self._pool is not None else succeed(None)


class TxPutCoalescer:
    """The reactor's :class:`~allq.worker.coalesce.PutCoalescer`: puts of one
    reactor turn leave together at its end; while ``senders`` batches are in
    flight the next one waits at most ``linger`` (or until it is full)."""

    def __init__(self, send: Callable[[api.Call], Deferred], clock: IReactorTime, *,
                 linger: float = DEFAULT_LINGER, max_batch: int = DEFAULT_MAX_BATCH,
                 senders: int = DEFAULT_SENDERS) -> None:
        if not 1 <= max_batch <= MAX_BATCH:
            raise ValueError(f"max_batch must be between 1 and {MAX_BATCH}")
        self._send = send
        self._clock = clock
        self._linger = linger
        self._max_batch = max_batch
        self._senders = senders
        self._pending: list[tuple[dict, Deferred]] = []
        self._first_at = 0.0
        self._flights: set[Deferred] = set()
        self._timer: IDelayedCall | None = None

    def submit(self, job: dict) -> Deferred:
        d: Deferred = Deferred()
        if not self._pending:
            self._first_at = self._clock.seconds()
        self._pending.append((job, d))
        self._schedule()
        return d

    def _schedule(self) -> None:
        if not self._pending or len(self._flights) >= self._senders:
            return
        if self._flights and len(self._pending) < self._max_batch:
            delay = max(0.0, self._first_at + self._linger - self._clock.seconds())
        else:
            delay = 0.0
        if self._timer is not None:
            if self._timer.getTime() <= self._clock.seconds() + delay:
                return
            self._timer.cancel()
        self._timer = self._clock.callLater(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        while self._pending and len(self._flights) < self._senders:
            batch = self._pending[:self._max_batch]
            del self._pending[:self._max_batch]
            self._first_at = self._clock.seconds()
            flight = Deferred.fromCoroutine(self._deliver(batch))
            self._flights.add(flight)
            flight.addBoth(self._landed, flight)
        self._schedule()

    def _landed(self, result: object, flight: Deferred) -> None:
        self._flights.discard(flight)
        self._schedule()
        if isinstance(result, Failure):
            return result
        return None

    async def _deliver(self, batch: list[tuple[dict, Deferred]]) -> None:
        jobs = [job for job, _ in batch]
        try:
            status, reply = await self._send(api.put_batch(jobs))
            outcomes = api.put_outcomes(status, reply, len(jobs))
        except AllQError as e:
            outcomes = [e] * len(jobs)
        if len(batch) > 1 and isinstance(outcomes[0], BadRequest) and all(
                outcome is outcomes[0] for outcome in outcomes):
            outcomes = [await self._alone(job) for job in jobs]
        for (_, d), outcome in zip(batch, outcomes):
            if isinstance(outcome, AllQError):
                d.errback(outcome)
            else:
                d.callback(outcome)

    async def _alone(self, job: dict):
        try:
            return api.put_reply(api.value(*await self._send(api.put(job))))
        except AllQError as e:
            return e

    def close(self) -> Deferred:
        """Send what is pending now; fires once every batch has landed."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._senders = max(self._senders, len(self._flights) + 1)
        while self._pending:
            self._fire()
            self._senders = len(self._flights) + 1
        return DeferredList(list(self._flights), consumeErrors=True)


class TxClient:
    """The Twisted :class:`~allq.worker.client.Client`: the same methods, returning
    Deferreds.

    :param reactor: the reactor (its clock times coalesced puts).
    :param http_client: the treq client to use (default: persistent connections).
    """

    def __init__(self, reactor: Any, url: str | Sequence[str] | None = None, *,
                 http_client: HTTPClient | None = None, timeout: float = DEFAULT_TIMEOUT,
                 put_linger: float = DEFAULT_LINGER, put_batch: int = DEFAULT_MAX_BATCH,
                 put_senders: int = DEFAULT_SENDERS) -> None:
        self._transport = TxTransport(api.client_urls(url), reactor=reactor,
                                      http_client=http_client, timeout=timeout)
        self._puts = TxPutCoalescer(self._transport.call, reactor, linger=put_linger,
                                    max_batch=put_batch, senders=put_senders)

    @property
    def urls(self) -> list[str]:
        return self._transport.urls

    def close(self) -> Deferred:
        """Send pending puts, then close idle connections."""
        d = self._puts.close()
        return d.addCallback(lambda _: self._transport.close())

    def _value(self, call: api.Call) -> Deferred:
        return self._transport.call(call).addCallback(lambda answer: api.value(*answer))

    def put(self, tube: str, body: str, **options: Any) -> Deferred:
        """Put one job (coalesced with the puts around it); fires with its
        :class:`~allq.worker.api.JobId` (``duplicate`` when its ``unique_key``
        found a live job)."""
        try:
            job = api.new_job(tube, body, options)
        except BadRequest:
            return fail()
        return self._puts.submit(job)

    def put_many(self, jobs, tube: str | None = None, **defaults: Any) -> Deferred:
        """Put many jobs in batches of up to 1,000; fires with their ids, or
        fails with :class:`~allq.worker.api.BatchError`."""
        return Deferred.fromCoroutine(self._put_many(jobs, tube, defaults))

    async def _put_many(self, jobs, tube, defaults) -> list[str]:
        results: list = []
        for chunk in api.chunks(api.new_jobs(jobs, tube, defaults)):
            try:
                status, reply = await self._transport.call(api.put_batch(chunk))
            except api.ClientUnreachable as e:
                results += [e] * len(chunk)
                continue
            results += api.put_outcomes(status, reply, len(chunk))
        return api.raise_for_batch(results, "put")

    def get_many(self, tube: str, count: int, *, wait: float = 0,
                 delete: bool = False) -> Deferred:
        """Fires with up to ``count`` reserved :class:`Job` of a tube."""
        d = self._value(api.get(tube, count, wait=wait, delete=delete))
        return d.addCallback(lambda reply: [Job.from_rest(job) for job in reply["jobs"]])

    def get(self, tube: str, *, wait: float = 0) -> Deferred:
        """Fires with the next reserved :class:`Job`, or ``None``."""
        return self.get_many(tube, 1, wait=wait).addCallback(lambda jobs: jobs[0] if jobs else None)

    def done(self, job_id: str) -> Deferred:
        return self._value(api.job_action("done", job_id))

    def done_many(self, job_ids: list[str]) -> Deferred:
        """Fires with, per id, the id or its :class:`AllQError` (never fails for
        one job's error)."""
        return Deferred.fromCoroutine(self._done_many(job_ids))

    async def _done_many(self, job_ids: list[str]) -> list:
        results: list = []
        for chunk in api.chunks(job_ids):
            status, reply = await self._transport.call(api.done_batch(chunk))
            results += api.batch_outcomes(status, reply, len(chunk))
        return results

    def touch(self, job_id: str) -> Deferred:
        return self._value(api.job_action("touch", job_id))

    def release(self, job_id: str, *, delay: float = 0) -> Deferred:
        return self._value(api.job_action("release", job_id, delay=delay or None))

    def bury(self, job_id: str, *, error: str | None = None) -> Deferred:
        return self._value(api.job_action("bury", job_id, error=error))

    def kick(self, job_id: str) -> Deferred:
        return self._value(api.job_action("kick", job_id))

    def peek(self, tube: str, *, buried: bool = False, offset: int = 0) -> Deferred:
        d = self._value(api.tube_call("GET", "/peek", tube=tube, buried=buried or None,
                                      offset=offset or None))
        return d.addCallback(lambda reply: Job.from_rest(reply) if reply else None)

    def stats(self) -> Deferred:
        return self._value(api.Call("GET", "/stats"))

    def concurrency(self, tube: str, limit: int) -> Deferred:
        """See :meth:`allq.worker.Client.concurrency`."""
        try:
            return self._value(api.concurrency(tube, limit))
        except BadRequest:
            return fail()

    def event(self, data, **options: Any) -> Deferred:
        """See :meth:`allq.worker.Client.event`."""
        try:
            return self._value(api.event(data, options))
        except BadRequest:
            return fail()

    def set_interest(self, tube: str, interests) -> Deferred:
        """See :meth:`allq.worker.Client.set_interest`."""
        try:
            return self._value(api.set_interest(tube, interests))
        except BadRequest:
            return fail()

    def delete_interest(self, tube: str) -> Deferred:
        return self._value(api.tube_call("DELETE", "/interest", tube=tube))

    def interests(self) -> Deferred:
        return self._value(api.Call("GET", "/interests")).addCallback(
            lambda reply: reply["interests"])

    def schedule(self, name: str, tube: str, **fields: Any) -> Deferred:
        """See :meth:`allq.worker.Client.schedule`."""
        return self._value(api.schedule(name, tube, fields)).addCallback(
            lambda reply: reply["schedule"])

    def schedules(self) -> Deferred:
        return self._value(api.Call("GET", "/schedules")).addCallback(
            lambda reply: reply["schedules"])

    def delete_schedule(self, name: str) -> Deferred:
        return self._value(api.tube_call("DELETE", "/schedule", name=name))


class TxWorker:
    """Runs ``handler(job)`` (a value, a Deferred or a coroutine) for the jobs of
    ``tubes``, ``concurrency`` at a time, as :class:`allq.worker.worker.Worker` does.

    :meth:`start` begins; :meth:`stop` returns a Deferred that fires once the
    worker has let go of every job; :meth:`run` starts it and stops it before the
    reactor shuts down (SIGTERM under ``twistd`` or ``task.react``).
    """

    _log = Logger()

    def __init__(self, reactor: Any, tubes: str | Sequence[str],
                 handler: Callable[[Job], Any], *, client: TxClient,
                 concurrency: int = 8, prefetch: int | None = None,
                 policy: TubePolicy = TubePolicy(),
                 policies: Mapping[str, TubePolicy] | None = None,
                 ack_interval: float = 0.005, ack_batch: int = 100, poll_wait: float = 2.0,
                 grace: float = 30.0) -> None:
        self._tubes = checked_tubes(tubes, concurrency)
        self._reactor = reactor
        self._handler = handler
        self._client = client
        self._concurrency = concurrency
        self._limit = held_limit(concurrency, prefetch)
        self._refill = max(1, self._limit // 2)
        self._policy = policy
        self._policies = dict(policies or {})
        self._ack_interval = ack_interval
        self._ack_batch = ack_batch
        self._poll_wait = poll_wait
        self._grace = grace
        self.stats = WorkerStats()
        self._held: dict[str, list] = {}  # id -> [job, policy, touched_at, started]
        self._ready: deque[str] = deque()
        self._running: dict[str, Deferred] = {}
        self._acks: list[str] = []
        self._ack_timer: IDelayedCall | None = None
        self._touch_timer: IDelayedCall | None = None
        self._space: Deferred | None = None
        self._fetching: Deferred | None = None
        self._stopping = False
        self._stopped = False
        self._waiters: list[Deferred] = []
        self._pending_calls: set[Deferred] = set()

    # -- life ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start fetching and handling."""
        self._fetching = Deferred.fromCoroutine(self._fetch_loop())
        self._fetching.addErrback(lambda f: self._log.failure("the fetch loop failed", f))
        self._touch_timer = self._reactor.callLater(TOUCH_CHECK_INTERVAL, self._touch_due)

    def run(self) -> Deferred:
        """Start, and stop before the reactor shuts down; fires (with
        :attr:`stats`) once stopped."""
        self.start()
        self._reactor.addSystemEventTrigger("before", "shutdown", self.stop)
        return self.stopped()

    def stopped(self) -> Deferred:
        """A Deferred that fires with :attr:`stats` once the worker has stopped."""
        if self._stopped:
            return succeed(self.stats)
        d: Deferred = Deferred()
        self._waiters.append(d)
        return d

    def stop(self) -> Deferred:
        """Stop fetching, let running handlers finish (up to ``grace``), release
        the rest, flush acknowledgements; fires with :attr:`stats` when done."""
        done = self.stopped()
        if not self._stopping:
            self._stopping = True
            if self._space is not None:
                space, self._space = self._space, None
                space.callback(None)
            Deferred.fromCoroutine(self._shut_down()).addBoth(self._shut)
        return done

    def _shut(self, result: object) -> None:
        self._stopped = True
        waiters, self._waiters = self._waiters, []
        if isinstance(result, Failure):
            self._log.failure("stopping the worker failed", result)
        for d in waiters:
            d.callback(self.stats)

    async def _shut_down(self) -> WorkerStats:
        if self._touch_timer is not None and self._touch_timer.active():
            self._touch_timer.cancel()
        self._touch_timer = None
        running = list(self._running.values())
        if running:
            # Whichever comes first: every running handler returned, or the grace
            # ran out (handlers still running then are released below, not cancelled).
            enough: Deferred = Deferred()

            def over(_: object = None) -> None:
                if not enough.called:
                    enough.callback(None)

            timer = self._reactor.callLater(self._grace, over)
            DeferredList(running, consumeErrors=True).addBoth(over)
            await enough
            if timer.active():
                timer.cancel()
        if self._fetching is not None:
            await self._fetching
        leftovers = list(self._held.values())
        self._held.clear()
        self._ready.clear()
        await DeferredList([self._release(job, 0) for job, _, _, _ in leftovers],
                           consumeErrors=True)
        if self._ack_timer is not None and self._ack_timer.active():
            self._ack_timer.cancel()
        self._ack_timer = None
        while self._acks:
            await self._flush_acks()
        await DeferredList(list(self._pending_calls), consumeErrors=True)
        return self.stats

    # -- fetching ----------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        turn = empty = 0
        delay = RETRY_DELAY
        while not self._stopping:
            if not self._may_fetch():
                self._space = Deferred()
                await self._space
                continue
            count = min(self._limit - len(self._held), MAX_BATCH)
            tube = self._tubes[turn % len(self._tubes)]
            turn += 1
            wait = self._poll_wait if empty >= len(self._tubes) else 0
            try:
                jobs = await self._client.get_many(tube, count, wait=wait)
            except AllQError as e:
                self._log.warn("fetching from {tube} failed ({code}: {message}); retrying in "
                               "{delay} s", tube=tube, code=e.code, message=e.message, delay=delay)
                await deferLater(self._reactor, delay, lambda: None)
                delay = min(MAX_RETRY_DELAY, delay * 2)
                continue
            delay = RETRY_DELAY
            empty = 0 if jobs else empty + 1
            if self._stopping:
                await DeferredList([self._release(job, 0) for job in jobs], consumeErrors=True)
                return
            policy = self._policies.get(tube, self._policy)
            now = self._reactor.seconds()
            for job in jobs:
                self._held[job.id] = [job, policy, now, False]
                self._ready.append(job.id)
            self.stats.fetched += len(jobs)
            self._dispatch()

    def _may_fetch(self) -> bool:
        """As :meth:`allq.worker.worker.Worker._may_fetch`: half the room free, or
        any while no job waits."""
        free = self._limit - len(self._held)
        return free > 0 and (free >= self._refill or not self._ready)

    def _made_space(self) -> None:
        if self._space is not None and self._may_fetch():
            space, self._space = self._space, None
            space.callback(None)

    # -- handling ---------------------------------------------------------------------------

    def _dispatch(self) -> None:
        while self._ready and len(self._running) < self._concurrency and not self._stopping:
            job_id = self._ready.popleft()
            entry = self._held.get(job_id)
            if entry is None:
                continue
            entry[3] = True
            d = maybeDeferred(self._call_handler, entry[0])
            self._running[job_id] = d
            d.addCallbacks(self._succeeded, self._failed, callbackArgs=(entry,),
                           errbackArgs=(entry,))
            d.addBoth(self._finished, job_id)
        self._made_space()

    def _call_handler(self, job: Job) -> Any:
        result = self._handler(job)
        if hasattr(result, "__await__") and not isinstance(result, Deferred):
            return ensureDeferred(result)
        return result

    def _finished(self, result: object, job_id: str) -> None:
        self._running.pop(job_id, None)
        self._dispatch()
        if isinstance(result, Failure):
            self._log.failure("handling job {job_id} failed unexpectedly", result, job_id=job_id)

    def _succeeded(self, _: object, entry: list) -> None:
        job = entry[0]
        if self._held.pop(job.id, None) is None:
            return  # released at shutdown after the grace
        self.stats.done += 1
        self._acks.append(job.id)
        if len(self._acks) >= self._ack_batch:
            self._track(self._flush_acks())
        elif self._ack_timer is None:
            self._ack_timer = self._reactor.callLater(self._ack_interval, self._ack_due)
        self._made_space()

    def _failed(self, failure: Failure, entry: list) -> Deferred | None:
        job, policy = entry[0], entry[1]
        if self._held.pop(job.id, None) is None:
            return None
        self.stats.failed += 1
        self._made_space()
        delay = policy.after_failure(job.releases)
        if delay is None:
            self._log.warn("job {job_id} failed {n} times, burying it: {error!r}",
                           job_id=job.id, n=job.releases + 1, error=failure.value)
            d = self._client.bury(job.id, error=error_text(failure.value))

            def buried(_):
                self.stats.buried += 1

            return d.addCallbacks(buried, self._could_not, errbackArgs=("bury", job.id))
        self._log.info("job {job_id} failed ({error!r}); released, ready again in {delay} s",
                       job_id=job.id, error=failure.value, delay=delay)
        return self._release(job, delay)

    def _release(self, job: Job, delay: float) -> Deferred:
        def released(_):
            self.stats.released += 1

        d = self._client.release(job.id, delay=delay)
        return d.addCallbacks(released, self._could_not, errbackArgs=("release", job.id))

    def _could_not(self, failure: Failure, action: str, job_id: str) -> None:
        failure.trap(AllQError)
        self._log.warn("could not {action} job {job_id} ({code}: {message})", action=action,
                       job_id=job_id, code=failure.value.code, message=failure.value.message)

    def _track(self, d: Deferred) -> None:
        self._pending_calls.add(d)
        d.addBoth(lambda result: self._pending_calls.discard(d))

    # -- acknowledging and touching ------------------------------------------------------

    def _ack_due(self) -> None:
        self._ack_timer = None
        self._track(self._flush_acks())

    def _flush_acks(self) -> Deferred:
        batch, self._acks = self._acks[:MAX_BATCH], self._acks[MAX_BATCH:]
        if self._ack_timer is not None and not self._acks:
            self._ack_timer.cancel()
            self._ack_timer = None
        return Deferred.fromCoroutine(self._acknowledge(batch))

    async def _acknowledge(self, job_ids: list[str]) -> None:
        if not job_ids:
            return
        outcomes: list = []
        for delay in ACK_RETRY_DELAYS:
            try:
                outcomes = await self._client.done_many(job_ids)
            except AllQError as e:
                outcomes = [e] * len(job_ids)
                if api.should_fail_over(e) and delay is not None:
                    await deferLater(self._reactor, delay, lambda: None)
                    continue
            break
        for job_id, outcome in zip(job_ids, outcomes):
            if isinstance(outcome, AllQError):
                self._log.warn("could not acknowledge job {job_id} ({code}: {message})",
                               job_id=job_id, code=outcome.code, message=outcome.message)

    def _touch_due(self) -> None:
        self._touch_timer = None
        now = self._reactor.seconds()
        for entry in list(self._held.values()):
            job, policy, touched_at, _ = entry
            if job.ttl and now - touched_at >= job.ttl * policy.touch_at:
                entry[2] = now
                self._track(self._client.touch(job.id).addCallbacks(
                    self._touched, self._touch_failed, errbackArgs=(job.id,)))
        if not self._stopping:
            self._touch_timer = self._reactor.callLater(TOUCH_CHECK_INTERVAL, self._touch_due)

    def _touched(self, _: object) -> None:
        self.stats.touched += 1

    def _touch_failed(self, failure: Failure, job_id: str) -> None:
        failure.trap(AllQError)
        if failure.check(NotFound, WrongState):
            self._log.warn("job {job_id} was lost before it was touched: another worker "
                           "may run it", job_id=job_id)
        else:
            self._could_not(failure, "touch", job_id)
