"""The synchronous worker: a run loop that prefetches, runs handlers in threads,
acknowledges in batches, touches long jobs, retries failures, and stops cleanly.

Threads, all inside one :class:`Worker`::

    fetcher ──GET /multiple_job?count=&wait= (long poll)──▶ ready ──▶ N handler threads
                                                                         │ returned
    acker  ◀── done ids ──────────────────────────────────────────────────┘
      └─ DELETE /multiple_job every ``ack_interval`` or ``ack_batch`` ids; touches held
         jobs past ``touch_at`` of their ttl
    a handler that raises releases its job with backoff, or buries it (TubePolicy)

At least once: a job is acknowledged only after its handler returned; a crash
loses nothing (held jobs come back when their ttl runs out). On :meth:`Worker.stop`
(SIGTERM or SIGINT while :meth:`Worker.run` runs in the main thread) it stops
fetching, lets running handlers finish for up to ``grace`` seconds, releases
the jobs it fetched but did not start (and any handler still running after the
grace), flushes the acknowledgements and returns.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from allq.errors import AllQError, NotFound, WrongState
from allq.vocabulary import MAX_BATCH
from allq.worker import api
from allq.worker.client import Client
from allq.worker.jobs import Job, TubePolicy, error_text

#: Seconds between two looks at the held jobs' ttls.
TOUCH_CHECK_INTERVAL = 0.25
#: Seconds to wait before fetching again after the allq-client failed (doubling).
RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 10.0
#: Pauses between attempts to acknowledge a batch while no allq-client answers.
ACK_RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, None)

log = logging.getLogger("allq.worker")


def default_prefetch(concurrency: int) -> int:
    """Jobs fetched ahead by default: 4 per thread (Celery's multiplier), at least 100,
    so quick jobs come in batches large enough to make a fetch cheap per job."""
    return max(4 * concurrency, 100)


def checked_tubes(tubes: str | Sequence[str], concurrency: int) -> list[str]:
    """A worker's tubes as a list, each name checked, and its concurrency checked
    (both flavours of worker take the same settings)."""
    tubes = [tubes] if isinstance(tubes, str) else list(tubes)
    if not tubes:
        raise ValueError("a worker needs at least one tube")
    for tube in tubes:
        api.check_tube(tube)
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    return tubes


def held_limit(concurrency: int, prefetch: int | None) -> int:
    """The most jobs a worker holds at once: those running plus those fetched ahead."""
    return concurrency + (default_prefetch(concurrency) if prefetch is None else prefetch)


@attrs.define(eq=False)
class _Held:
    """A job this worker holds (fetched, not yet acknowledged or released)."""

    job: Job
    policy: TubePolicy
    touched_at: float  # monotonic: when its ttl last (re)started, as far as we know
    started: bool = False


@attrs.define
class WorkerStats:
    """What a worker did (counts since it started)."""

    fetched: int = 0
    done: int = 0
    failed: int = 0
    released: int = 0
    buried: int = 0
    touched: int = 0


class Worker:
    """Runs ``handler(job)`` for the jobs of ``tubes``, ``concurrency`` at a time.

    :param tubes: a tube name or several (served in turn).
    :param handler: called with each :class:`~allq.worker.jobs.Job` in a worker
        thread; returning finishes the job, raising fails it (see ``policies``).
    :param client: the :class:`Client` to use (default: one for ``url``; closed
        by :meth:`run` when it made it).
    :param prefetch: jobs held beyond those running, fetched ahead (default
        :func:`default_prefetch`; 0 fetches only for idle threads: for slow jobs
        spread over many workers).
    :param policy: the retry policy of every tube, unless ``policies`` names it.
    :param ack_interval: the longest an acknowledgement waits to share a batch.
    :param ack_batch: acknowledgements sent as soon as this many are waiting.
    :param poll_wait: seconds a fetch long-polls an empty tube (bounds how long
        stopping waits for the fetcher).
    :param grace: seconds running handlers get to finish once stopping.
    """

    def __init__(self, tubes: str | Sequence[str], handler: Callable[[Job], Any], *,
                 client: Client | None = None, url: str | Sequence[str] | None = None,
                 concurrency: int = 8, prefetch: int | None = None,
                 policy: TubePolicy = TubePolicy(),
                 policies: Mapping[str, TubePolicy] | None = None,
                 ack_interval: float = 0.005, ack_batch: int = 100, poll_wait: float = 2.0,
                 grace: float = 30.0) -> None:
        self._tubes = checked_tubes(tubes, concurrency)
        if not 1 <= ack_batch <= MAX_BATCH:
            raise ValueError(f"ack_batch must be between 1 and {MAX_BATCH}")
        self._handler = handler
        self._own_client = client is None
        self._client = Client(url) if client is None else client
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
        # One lock, three conditions: each thread is woken only for its own work
        # (with no-op handlers, waking every thread per job costs more than the jobs).
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # what the lock guards, below
        self._work = threading.Condition(lock)  # handlers: a job is ready
        self._space = threading.Condition(lock)  # fetcher: room to prefetch
        self._due = threading.Condition(lock)  # acker: acks to send
        self._held: dict[str, _Held] = {}
        self._ready: deque[_Held] = deque()
        self._acks: list[str] = []
        self._first_ack_at = 0.0
        self._stopping = threading.Event()
        self._acker_done = False
        self._busy = 0

    # -- life ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the worker to stop (thread- and signal-safe); :meth:`run` returns soon."""
        self._stopping.set()
        # Waking threads takes the condition's lock, which a signal handler must not
        # wait for (the main thread might hold it): a helper thread does it.
        threading.Thread(target=self._wake, daemon=True).start()

    def _wake(self) -> None:
        with self._cond:
            for condition in (self._work, self._space, self._due):
                condition.notify_all()

    def run(self, *, handle_signals: bool = True) -> WorkerStats:
        """Work until :meth:`stop` (or SIGTERM/SIGINT); returns what was done.

        :param handle_signals: stop on SIGTERM and SIGINT (only possible in the
            main thread; the previous handlers are put back on return).
        """
        previous = {}
        if handle_signals and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, lambda *_: self.stop())
        handlers = [threading.Thread(target=self._handle_loop, name=f"allq-handler-{i}",
                                     daemon=True) for i in range(self._concurrency)]
        fetcher = threading.Thread(target=self._fetch_loop, name="allq-fetcher", daemon=True)
        acker = threading.Thread(target=self._ack_loop, name="allq-acker", daemon=True)
        try:
            for thread in (*handlers, fetcher, acker):
                thread.start()
            while not self._stopping.wait(0.5):
                pass
            self._shut_down(handlers, fetcher, acker)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if self._own_client:
                self._client.close()
        return self.stats

    def _shut_down(self, handlers, fetcher, acker) -> None:
        deadline = time.monotonic() + self._grace
        for thread in handlers:
            thread.join(max(0.0, deadline - time.monotonic()))
        fetcher.join(self._poll_wait + 5.0)
        with self._cond:
            # Not started, or still running after the grace: give them back.
            leftovers = [held for held in self._held.values()]
            self._held.clear()
            self._ready.clear()
        for held in leftovers:
            if held.started:
                log.warning("job %s still running after %.0f s of grace: released",
                            held.job.id, self._grace)
            self._release(held.job, 0)
        with self._cond:
            self._acker_done = True
            self._due.notify_all()
        acker.join()

    # -- fetching ----------------------------------------------------------------------------

    def _may_fetch(self) -> bool:
        """Fetch when half the room is free, or any room while no job waits for a
        thread: one job freed at a time would make a fetch of one job (the lock is held)."""
        free = self._limit - len(self._held)
        return free > 0 and (free >= self._refill or not self._ready)

    def _fetch_loop(self) -> None:
        turn = 0
        empty = 0
        delay = RETRY_DELAY
        while not self._stopping.is_set():
            with self._cond:
                while not self._may_fetch() and not self._stopping.is_set():
                    self._space.wait()
                count = min(self._limit - len(self._held), MAX_BATCH)
            if self._stopping.is_set():
                return
            tube = self._tubes[turn % len(self._tubes)]
            turn += 1
            # Long-poll only once every tube came back empty.
            wait = self._poll_wait if empty >= len(self._tubes) else 0
            try:
                jobs = self._client.get_many(tube, count, wait=wait)
            except AllQError as e:
                log.warning("fetching from %s failed (%s: %s); retrying in %.1f s",
                            tube, e.code, e.message, delay)
                self._stopping.wait(delay)
                delay = min(MAX_RETRY_DELAY, delay * 2)
                continue
            delay = RETRY_DELAY
            empty = 0 if jobs else empty + 1
            if not jobs:
                continue
            policy = self._policies.get(tube, self._policy)
            now = time.monotonic()
            with self._cond:
                stopping = self._stopping.is_set()
                if not stopping:
                    for job in jobs:
                        held = _Held(job, policy, now)
                        self._held[job.id] = held
                        self._ready.append(held)
                    self.stats.fetched += len(jobs)
                    self._work.notify(len(jobs))
            if stopping:  # fetched while stopping: never started
                for job in jobs:
                    self._release(job, 0)

    # -- handling ---------------------------------------------------------------------------

    def _handle_loop(self) -> None:
        while True:
            with self._cond:
                while not self._ready and not self._stopping.is_set():
                    self._work.wait()
                if self._stopping.is_set():
                    return
                held = self._ready.popleft()
                held.started = True
                if not self._ready and self._may_fetch():
                    self._space.notify()
            try:
                self._handler(held.job)
            except Exception as e:  # the handler's failure, by contract: retry or bury
                self._failed(held, e)
                continue
            with self._cond:
                if self._held.pop(held.job.id, None) is None:
                    continue  # released at shutdown after the grace: not ours to ack
                if not self._acks:
                    self._first_ack_at = time.monotonic()
                self._acks.append(held.job.id)
                self.stats.done += 1
                if len(self._acks) == 1 or len(self._acks) >= self._ack_batch:
                    self._due.notify()  # the first starts the ack_interval clock
                if self._may_fetch():
                    self._space.notify()

    def _failed(self, held: _Held, error: Exception) -> None:
        job = held.job
        with self._cond:
            if self._held.pop(job.id, None) is None:
                return
            self.stats.failed += 1
            self._space.notify()
        delay = held.policy.after_failure(job.releases)
        if delay is None:
            log.warning("job %s failed %d times, burying it: %r", job.id, job.releases + 1,
                        error)
            try:
                self._client.bury(job.id, error=error_text(error))
                with self._cond:
                    self.stats.buried += 1
            except AllQError as e:
                log.warning("could not bury job %s (%s: %s)", job.id, e.code, e.message)
        else:
            log.info("job %s failed (%r); released, ready again in %g s", job.id, error, delay)
            self._release(job, delay)

    def _release(self, job: Job, delay: float) -> None:
        try:
            self._client.release(job.id, delay=delay)
            with self._cond:
                self.stats.released += 1
        except AllQError as e:  # its ttl brings it back
            log.warning("could not release job %s (%s: %s)", job.id, e.code, e.message)

    # -- acknowledging and touching -------------------------------------------------------

    def _ack_loop(self) -> None:
        next_touch = time.monotonic() + TOUCH_CHECK_INTERVAL
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    if self._acks and (self._acker_done or len(self._acks) >= self._ack_batch
                                       or now - self._first_ack_at >= self._ack_interval):
                        break
                    if self._acker_done and not self._acks:
                        return
                    if now >= next_touch:
                        break
                    until = next_touch
                    if self._acks:
                        until = min(until, self._first_ack_at + self._ack_interval)
                    self._due.wait(max(0.0, until - now))
                batch, self._acks = self._acks[:MAX_BATCH], self._acks[MAX_BATCH:]
                if self._acks:
                    self._first_ack_at = time.monotonic()
            if batch:
                self._acknowledge(batch)
            if time.monotonic() >= next_touch:
                self._touch_due()
                next_touch = time.monotonic() + TOUCH_CHECK_INTERVAL

    def _acknowledge(self, job_ids: list[str]) -> None:
        for delay in ACK_RETRY_DELAYS:
            try:
                outcomes = self._client_batch_done(job_ids)
            except AllQError as e:
                outcomes = [e] * len(job_ids)
                if api.should_fail_over(e) and delay is not None:
                    time.sleep(delay)  # no allq-client for now: try again shortly
                    continue
            break
        for job_id, outcome in zip(job_ids, outcomes):
            if isinstance(outcome, AllQError):
                # Done but not acknowledged: it runs again after its ttl (at least once).
                log.warning("could not acknowledge job %s (%s: %s)", job_id, outcome.code,
                            outcome.message)

    def _client_batch_done(self, job_ids: list[str]) -> list:
        try:
            return self._client.done_many(job_ids)
        except api.BatchError as e:
            return e.results

    def _touch_due(self) -> None:
        now = time.monotonic()
        with self._cond:
            due = [held for held in self._held.values()
                   if held.job.ttl and now - held.touched_at >= held.job.ttl * held.policy.touch_at]
        for held in due:
            try:
                self._client.touch(held.job.id)
            except (NotFound, WrongState) as e:
                log.warning("job %s was lost before it was touched (%s): another worker may "
                            "run it", held.job.id, e.message)
            except AllQError as e:
                log.warning("could not touch job %s (%s: %s)", held.job.id, e.code, e.message)
            else:
                with self._cond:
                    held.touched_at = now
                    self.stats.touched += 1
