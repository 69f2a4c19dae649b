"""Time limits for many Deferreds at once, on one timer.

``Deferred.addTimeout`` schedules (and later cancels) one reactor timer per
Deferred; on the client's hot path that is two timers per HTTP call (the REST
call's bound and the server request's). :class:`Expiry` instead drops each
Deferred into a bucket by its deadline, rounded up to ``resolution`` seconds, and
keeps a single ``callLater`` for the earliest bucket. A Deferred that fires
leaves its bucket at once, so nothing outlives its result; a Deferred still
waiting when its bucket comes due is cancelled and fails with the error its
caller chose. Deadlines are therefore late by at most ``resolution``.
"""

import heapq
import math
from collections.abc import Callable

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

DEFAULT_RESOLUTION = 0.1


class Expiry:
    """Cancels the Deferreds it watches once their time is up.

    :param clock: where time comes from and the one timer is scheduled.
    :param resolution: deadlines are rounded up to a multiple of this (seconds).
    """

    def __init__(self, clock: IReactorTime, resolution: float = DEFAULT_RESOLUTION) -> None:
        self._clock = clock
        self._resolution = resolution
        self._buckets: dict[int, set[Deferred]] = {}
        self._ticks: list[int] = []  # a heap of the bucket keys
        self._timer: IDelayedCall | None = None
        self._timer_tick: int | None = None
        self._expiring: set[Deferred] = set()
        self._watched = 0

    def __len__(self) -> int:
        """How many watched Deferreds have not fired yet."""
        return self._watched

    def watch(self, d: Deferred, seconds: float,
              error: Callable[[], BaseException]) -> Deferred:
        """Fail ``d`` with ``error()`` unless it fires within ``seconds``.

        The failure replaces the ``CancelledError`` of the cancellation, so later
        callbacks see only ``error()``. Returns ``d``.
        """
        if d.called and not d.paused:  # answered already: nothing to watch
            return d
        tick = math.ceil((self._clock.seconds() + seconds) / self._resolution)
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = set()
            heapq.heappush(self._ticks, tick)
            if self._timer_tick is None or tick < self._timer_tick:
                self._schedule(tick)
        bucket.add(d)
        self._watched += 1
        return d.addBoth(self._settled, d, bucket, error)

    def stop(self) -> None:
        """Forget every watched Deferred (leaving them waiting) and the timer."""
        self._watched = 0
        for bucket in self._buckets.values():
            bucket.clear()
        self._buckets.clear()
        self._ticks.clear()
        self._cancel_timer()

    def _settled(self, result: object, d: Deferred, bucket: set[Deferred],
                 error: Callable[[], BaseException]) -> object:
        if d in bucket:
            bucket.discard(d)
            self._watched -= 1
            if not self._watched:
                self.stop()  # idle: no timer left behind
        if d in self._expiring:
            self._expiring.discard(d)
            if isinstance(result, Failure) and result.check(CancelledError):
                return Failure(error())
        return result

    def _schedule(self, tick: int) -> None:
        self._cancel_timer()
        delay = max(tick * self._resolution - self._clock.seconds(), 0)
        self._timer = self._clock.callLater(delay, self._expire)
        self._timer_tick = tick

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._timer_tick = None

    def _expire(self) -> None:
        self._timer = None
        self._timer_tick = None
        now_tick = self._clock.seconds() / self._resolution
        while self._ticks and self._ticks[0] <= now_tick:
            bucket = self._buckets.pop(heapq.heappop(self._ticks))
            for d in list(bucket):
                if not d.called:
                    self._expiring.add(d)
                    d.cancel()
                    self._expiring.discard(d)  # a canceller that fired it later
        while self._ticks and not self._buckets[self._ticks[0]]:
            del self._buckets[heapq.heappop(self._ticks)]
        if self._ticks:
            self._schedule(self._ticks[0])
