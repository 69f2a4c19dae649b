"""Coalescing puts: many callers' ``put`` become few ``POST /multiple_job`` batches.

A put joins the pending batch and waits for its own outcome. A batch leaves as
soon as a sender is free and either nothing else is in flight (a lone producer
pays no delay), the batch is full (``max_batch``), or its oldest put has
waited ``linger`` seconds; while every sender is busy, puts pile up into the
next batch. So under load a few HTTP calls carry hundreds of jobs, and no put
waits more than ``linger`` for company.

Each caller gets its own job id or its own error: the allq-client answers a
batch with an id or an error per job. A batch refused whole for bad input
(which :func:`allq.worker.api.new_job` should have caught) is sent again one
job at a time, so one bad job cannot fail its neighbours.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from allq.errors import AllQError, BadRequest
from allq.worker import api

#: The longest a put waits for others to share its batch (seconds).
DEFAULT_LINGER = 0.002
#: The most jobs in one coalesced batch.
DEFAULT_MAX_BATCH = 500
#: Batches in flight at once (each on its own connection).
DEFAULT_SENDERS = 4


class PutCoalescer:
    """Gathers puts into batches sent by ``senders`` threads.

    :param send: sends one call, returns ``(status, reply)`` (a
        :class:`~allq.worker.http.Transport`'s ``call``); may raise
        :class:`AllQError`.
    """

    def __init__(self, send: Callable[[api.Call], tuple[int, object]], *,
                 linger: float = DEFAULT_LINGER, max_batch: int = DEFAULT_MAX_BATCH,
                 senders: int = DEFAULT_SENDERS) -> None:
        if not 1 <= max_batch <= api.MAX_BATCH:
            raise ValueError(f"max_batch must be between 1 and {api.MAX_BATCH}")
        if senders < 1 or linger < 0:
            raise ValueError("senders must be at least 1 and linger 0 or more")
        self._send = send
        self._linger = linger
        self._max_batch = max_batch
        self._senders = senders
        self._pending: list[tuple[dict, Future]] = []
        self._first_at = 0.0
        self._in_flight = 0
        self._closed = False
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []

    def submit(self, job: dict) -> Future:
        """Queue one checked ``NewJob``; a future of its id."""
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the client is closed")
            if not self._threads:
                self._start()
            if not self._pending:
                self._first_at = time.monotonic()
            self._pending.append((job, future))
            self._cond.notify()
        return future

    def close(self) -> None:
        """Send what is pending, then stop the senders."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join()

    def _start(self) -> None:
        for index in range(self._senders):
            thread = threading.Thread(target=self._run, name=f"allq-put-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _take(self) -> list[tuple[dict, Future]] | None:
        """Wait until a batch should leave and take it (``None``: closed and empty)."""
        with self._cond:
            while True:
                if self._pending:
                    waited = time.monotonic() - self._first_at
                    if (self._in_flight == 0 or len(self._pending) >= self._max_batch
                            or waited >= self._linger or self._closed):
                        batch = self._pending[:self._max_batch]
                        del self._pending[:self._max_batch]
                        self._first_at = time.monotonic()
                        self._in_flight += 1
                        return batch
                    self._cond.wait(self._linger - waited)
                elif self._closed:
                    return None
                else:
                    self._cond.wait()

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._deliver(batch)
            finally:
                with self._cond:
                    self._in_flight -= 1
                    self._cond.notify()

    def _deliver(self, batch: list[tuple[dict, Future]]) -> None:
        jobs = [job for job, _ in batch]
        try:
            status, reply = self._send(api.put_batch(jobs))
            outcomes = api.put_outcomes(status, reply, len(jobs))
        except AllQError as e:
            outcomes = [e] * len(jobs)
        except BaseException as e:  # a bug: every caller must still hear of it
            for _, future in batch:
                future.set_exception(e)
            raise
        if len(batch) > 1 and isinstance(outcomes[0], BadRequest) and all(
                outcome is outcomes[0] for outcome in outcomes):
            outcomes = [self._alone(job) for job in jobs]
        for (_, future), outcome in zip(batch, outcomes):
            if isinstance(outcome, AllQError):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def _alone(self, job: dict) -> str | AllQError:
        try:
            return api.put_reply(api.value(*self._send(api.put(job))))
        except AllQError as e:
            return e
