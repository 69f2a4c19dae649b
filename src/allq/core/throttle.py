"""A token bucket capping how many jobs per second a tube hands out.

Rates may be fractional (a client that splits 1 job/s over three servers gives
each 1/3), and the bucket holds at most one second's worth (at least one job),
so a burst never exceeds the cap over any one-second window by more than one.
Pure: time is an argument.
"""


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

    def take(self, wanted: int, now: float) -> int:
        """Take up to ``wanted`` whole tokens; returns how many were taken."""
        if now > self._last:
            self._tokens = min(self._capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
        granted = min(wanted, int(self._tokens))
        self._tokens -= granted
        return granted

    def give_back(self, count: int) -> None:
        """Return tokens taken for jobs that were not there after all."""
        self._tokens = min(self._capacity, self._tokens + count)
