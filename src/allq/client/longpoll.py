"""Long polls: callers waiting for a job of a tube, served by one poller per tube.

A get with ``wait`` that finds nothing joins the waiters of its (tube, delete);
``tube`` may also be a tuple of tubes (a get over several, served by priority
across them), polled as one.
One poller per (tube, delete) fetches for all of them at once (up to
:data:`MAX_COUNT` jobs a round), hands the jobs out in arrival order, answers
``[]`` to a waiter whose time is up, and naps between rounds, backing off from
:data:`POLL_FIRST` to :data:`POLL_MAX` while the tube stays empty. A put through
this client to the tube cuts the nap short (:meth:`LongPolls.wake`). Jobs
fetched for waiters that left meanwhile are released again.
"""

from collections import deque
from collections.abc import Awaitable, Callable

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from allq.client.records import FetchedJob
from allq.client.retry import Retries
from allq.errors import Unavailable
from allq.vocabulary import MAX_COUNT

POLL_FIRST = 0.02
POLL_MAX = 0.5

#: ``fetch(tube, count, delete)``: one pass over the servers.
Fetch = Callable[[str, int, bool], Awaitable[list[FetchedJob]]]
#: ``give_back(jobs)``: release jobs nobody waits for any more.
GiveBack = Callable[[list[FetchedJob]], Awaitable[None]]


class _Waiter:
    """One caller of a long poll."""

    __slots__ = ("deferred", "count", "deadline")

    def __init__(self, count: int, deadline: float) -> None:
        self.deferred: Deferred = Deferred()
        self.count = count
        self.deadline = deadline


class LongPolls:
    """The waiting gets of one client.

    :param clock: deadlines.
    :param retries: naps (cancelled when the client stops).
    :param fetch: fetches jobs from the servers.
    :param give_back: releases jobs fetched for waiters that went away.
    """

    _log = Logger()

    def __init__(self, clock: IReactorTime, retries: Retries, fetch: Fetch,
                 give_back: GiveBack) -> None:
        self._clock = clock
        self._retries = retries
        self._fetch = fetch
        self._give_back = give_back
        self._waiters: dict[tuple[str, bool], deque[_Waiter]] = {}
        self._pollers: dict[tuple[str, bool], Deferred] = {}
        self._naps: dict[tuple[str, bool], Deferred] = {}

    def wait(self, tube: str, count: int, delete: bool, wait: float) -> Deferred:
        """Fires with up to ``count`` jobs once some arrive, or ``[]`` after ``wait`` seconds."""
        waiter = _Waiter(count, self._clock.seconds() + wait)
        key = (tube, delete)
        self._waiters.setdefault(key, deque()).append(waiter)
        if key not in self._pollers:
            self._pollers[key] = Deferred.fromCoroutine(self._poll(key))
        return waiter.deferred

    def wake(self, tube: str) -> None:
        """A job was put into ``tube``: poll it now (and every poll of several
        tubes that include it)."""
        for (polled, _), nap in list(self._naps.items()):
            if polled == tube or (type(polled) is tuple and tube in polled):
                nap.cancel()

    def end_all(self) -> None:
        """Answer every waiting long poll now, with no job (a client shutting down)."""
        for waiters in self._waiters.values():
            while waiters:
                waiter = waiters.popleft()
                if not waiter.deferred.called:
                    waiter.deferred.callback([])

    async def _poll(self, key: tuple[str, bool]) -> None:
        """Fetch for every waiter of one (tube, delete) until none is left."""
        tube, delete = key
        waiters = self._waiters[key]
        interval = POLL_FIRST
        try:
            while waiters:
                wanted = min(sum(w.count for w in waiters), MAX_COUNT)
                try:
                    jobs = await self._fetch(tube, wanted, delete)
                except Unavailable:
                    jobs = []
                while jobs and waiters:
                    waiter = waiters.popleft()
                    if waiter.deferred.called:  # its caller went away (cancelled)
                        continue
                    share, jobs = jobs[:waiter.count], jobs[waiter.count:]
                    waiter.deferred.callback(share)
                if jobs:  # every waiter left while the fetch was in flight
                    if delete:
                        self._log.warn("{n} jobs taken with delete=true had no waiter left",
                                       n=len(jobs))
                    else:
                        await self._give_back(jobs)
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
        nap = self._naps[key] = self._retries.nap(seconds)
        try:
            await nap
        except CancelledError:
            pass  # woken by a put, or the client is stopping (waiters are gone then)
        finally:
            self._naps.pop(key, None)
