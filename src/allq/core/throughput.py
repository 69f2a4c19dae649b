"""Per-tube processing figures: completions per second and mean processing time.

``tps`` counts jobs finished (done, or deleted while reserved) over a sliding
window of :data:`WINDOW_SECONDS` one-second buckets; ``avg`` is the mean time
in seconds between reservation (or the last touch) and finish, over the last
:data:`AVG_SAMPLES` finished jobs, as AllQueue's ``MAX_ARRAY_SIZE`` does.
Pure: time is an argument.
"""

from collections import deque

WINDOW_SECONDS = 60
AVG_SAMPLES = 100


class Throughput:
    """Completion counter and processing-time average of one tube."""

    def __init__(self) -> None:
        self._buckets: deque[list[int]] = deque()  # [second, count], oldest first
        self._durations: deque[float] = deque(maxlen=AVG_SAMPLES)
        self._duration_sum = 0.0

    def record(self, now: float, duration: float | None) -> None:
        """Count one finished job at ``now`` that took ``duration`` seconds."""
        second = int(now)
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += 1
        else:
            self._buckets.append([second, 1])
            self._expire(second)
        if duration is not None:
            if len(self._durations) == AVG_SAMPLES:
                self._duration_sum -= self._durations[0]
            self._durations.append(duration)
            self._duration_sum += duration

    def tps(self, now: float) -> float:
        """Finished jobs per second over the last :data:`WINDOW_SECONDS`."""
        self._expire(int(now))
        return sum(count for _, count in self._buckets) / WINDOW_SECONDS

    def avg(self) -> float:
        """Mean processing time of the recent finished jobs, in seconds."""
        if not self._durations:
            return 0.0
        return max(self._duration_sum / len(self._durations), 0.0)

    def _expire(self, second: int) -> None:
        while self._buckets and self._buckets[0][0] <= second - WINDOW_SECONDS:
            self._buckets.popleft()
