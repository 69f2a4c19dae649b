"""Memory of recent idempotency keys, so a retried put creates no duplicate.

A client that times out waiting for a put's reply cannot know whether the job
was stored; it retries with the same key and gets the first job's id back. Keys
are remembered for ``window`` seconds and at most ``capacity`` of them, oldest
dropped first. Pure: time is an argument.

With a data directory the server journals each key (``on_remember``) and puts
the remembered ones back at start-up (:meth:`IdempotencyKeys.restore`), so a
retry that reaches a restarted server still finds its job.
"""

from collections import OrderedDict
from collections.abc import Callable, Iterator

DEFAULT_WINDOW = 600.0
DEFAULT_CAPACITY = 200_000


class IdempotencyKeys:
    """Recently seen idempotency keys and the job id each produced."""

    def __init__(self, window: float = DEFAULT_WINDOW, capacity: int = DEFAULT_CAPACITY,
                 on_remember: Callable[[str, int, float], None] | None = None) -> None:
        self._window = window
        self._capacity = capacity
        self._seen: OrderedDict[str, tuple[float, int]] = OrderedDict()
        #: Called as ``on_remember(key, job_id, expires)`` for each new key.
        self.on_remember = on_remember

    def __len__(self) -> int:
        return len(self._seen)

    def lookup(self, key: str, now: float) -> int | None:
        """The job id first stored under ``key``, if it is still remembered."""
        self._prune(now)
        entry = self._seen.get(key)
        return None if entry is None else entry[1]

    def remember(self, key: str, job_id: int, now: float) -> None:
        """Record that ``key`` produced ``job_id`` at ``now``."""
        expires = now + self._window
        self._keep(key, expires, job_id)
        if self.on_remember is not None:
            self.on_remember(key, job_id, expires)

    def restore(self, key: str, job_id: int, expires: float, now: float) -> None:
        """Put back a key remembered before a restart (ignored once it expired)."""
        if expires > now:
            self._keep(key, expires, job_id)

    def entries(self) -> Iterator[tuple[str, int, float]]:
        """``(key, job_id, expires)`` of every remembered key, oldest first."""
        for key, (expires, job_id) in self._seen.items():
            yield key, job_id, expires

    def _keep(self, key: str, expires: float, job_id: int) -> None:
        self._seen[key] = (expires, job_id)
        self._seen.move_to_end(key)
        while len(self._seen) > self._capacity:
            self._seen.popitem(last=False)

    def _prune(self, now: float) -> None:
        seen = self._seen
        while seen:
            key, (expires, _) = next(iter(seen.items()))
            if expires > now:
                break
            del seen[key]
