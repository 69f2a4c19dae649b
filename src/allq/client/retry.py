"""Backoff between tries, on the injected clock, bounded by a retry budget.

Every sleep is a Deferred that :meth:`Retries.cancel_all` cancels, so a client
that stops leaves no timer behind; a cancelled backoff ends its operation with
:class:`Unavailable` ("client is stopping").
"""

from collections.abc import Callable

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from allq.errors import Unavailable

DEFAULT_RETRY_BUDGET = 5.0
FIRST_BACKOFF = 0.05
MAX_BACKOFF = 1.0


class Retries:
    """Backoff and naps for the federation's operations.

    :param clock: where time comes from.
    :param budget: seconds one operation may spend retrying before it fails.
    :param retried: told ``(operation, None)`` before each backoff round.
    :param why: why no server is reachable, for the error that ends a budget.
    """

    def __init__(self, clock: IReactorTime, budget: float,
                 retried: Callable[[str, str | None], None],
                 why: Callable[[], str] = str) -> None:
        self._clock = clock
        self.budget = budget
        self._retried = retried
        self._why = why
        self._sleeps: set[Deferred] = set()

    def deadline(self) -> float:
        """When an operation starting now must give up."""
        return self._clock.seconds() + self.budget

    def expired(self, deadline: float) -> bool:
        return self._clock.seconds() >= deadline

    async def backoff(self, attempt: int, deadline: float, operation: str) -> int:
        """Sleep before try ``attempt + 1`` (doubling, capped); the next attempt number.

        :raises Unavailable: the deadline has passed, or the client is stopping.
        """
        remaining = deadline - self._clock.seconds()
        if remaining <= 0:
            raise Unavailable(f"{operation}: no server reachable ({self._why()})")
        self._retried(operation, None)
        try:
            await self.nap(min(FIRST_BACKOFF * 2**attempt, MAX_BACKOFF, remaining))
        except CancelledError:
            raise Unavailable("client is stopping") from None
        return attempt + 1

    def nap(self, seconds: float) -> Deferred:
        """A cancellable sleep, cancelled by :meth:`cancel_all`."""
        d = deferLater(self._clock, seconds, lambda: None)
        self._sleeps.add(d)
        return d.addBoth(self._woke, d)

    def _woke(self, result, d: Deferred):
        self._sleeps.discard(d)
        return result

    def cancel_all(self) -> None:
        for d in list(self._sleeps):
            d.cancel()
