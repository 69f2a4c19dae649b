"""A token bucket capping how many jobs per second a tube hands out.

Rates may be fractional (a client that splits 1 job/s over three servers gives
each 1/3), and the bucket holds at most one second's worth (at least one job).
A bucket alone would let a full burst plus a second's refill through within one
second (2 x rate), so grants are also logged for the trailing second and capped
at ``ceil(rate)`` there: no one-second window sees more, as with AllQueue's
sliding window. Pure: time is an argument.
"""

import math
from collections import deque

WINDOW_SECONDS = 1.0


class TokenBucket:
    """Allows ``rate`` jobs per second.

    :param rate: jobs per second, greater than 0.
    :param now: the time the bucket starts (full).
    """

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self._capacity = max(rate, 1.0)
        self._tokens = self._capacity
        self._last = now
        self._window_cap = math.ceil(rate)
        # [time, count] of each grant in the trailing window, oldest first.
        self._recent: deque[list] = deque()
        self._recent_count = 0

    def take(self, wanted: int, now: float) -> int:
        """Take up to ``wanted`` whole tokens; returns how many were taken."""
        if now > self._last:
            self._tokens = min(self._capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
        recent = self._recent
        while recent and recent[0][0] <= now - WINDOW_SECONDS:
            self._recent_count -= recent.popleft()[1]
        granted = max(min(wanted, int(self._tokens), self._window_cap - self._recent_count), 0)
        if granted:
            self._tokens -= granted
            recent.append([now, granted])
            self._recent_count += granted
        return granted

    def give_back(self, count: int) -> None:
        """Return tokens taken (by the last :meth:`take`) for jobs that were not there."""
        self._tokens = min(self._capacity, self._tokens + count)
        if self._recent:
            last = self._recent[-1]
            returned = min(count, last[1])
            last[1] -= returned
            self._recent_count -= returned
            if not last[1]:
                self._recent.pop()
