"""The synchronous allq client: every REST operation as a method, puts coalesced.

Thread-safe, one per process is enough: its connections are shared by the
threads that call it. Errors are :mod:`allq.errors` exceptions rebuilt from the
allq-client's answer (``NotFound``, ``WrongState``, ``Unavailable``, ...), or
:class:`~allq.worker.api.ClientUnreachable` when no allq-client answers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from allq.worker import api
from allq.worker.coalesce import DEFAULT_LINGER, DEFAULT_MAX_BATCH, DEFAULT_SENDERS, PutCoalescer
from allq.worker.http import DEFAULT_TIMEOUT, Transport
from allq.worker.jobs import Job


class Client:
    """Talks to one or several allq-clients (failover in list order).

    :param url: ``"http://127.0.0.1:8090"``, several comma-separated, or a list;
        default ``$ALLQ_URL`` or ``http://127.0.0.1:8090``.
    :param timeout: seconds a call may take, beyond a long poll's ``wait``.
    :param put_linger: the longest a :meth:`put` waits for other puts to share
        its batch (seconds; 0: never wait, batch only what piles up).
    :param put_batch: the most jobs in one coalesced batch.
    :param put_senders: coalesced batches in flight at once.
    """

    def __init__(self, url: str | Sequence[str] | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT, put_linger: float = DEFAULT_LINGER,
                 put_batch: int = DEFAULT_MAX_BATCH,
                 put_senders: int = DEFAULT_SENDERS) -> None:
        self._transport = Transport(api.client_urls(url), timeout=timeout)
        self._puts = PutCoalescer(self._transport.call, linger=put_linger,
                                  max_batch=put_batch, senders=put_senders)

    @property
    def urls(self) -> list[str]:
        """The allq-clients, in order of preference."""
        return self._transport.urls

    def close(self) -> None:
        """Send the puts still pending, then close the connections."""
        self._puts.close()
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _value(self, call: api.Call) -> Any:
        return api.value(*self._transport.call(call))

    # -- producing ---------------------------------------------------------------------

    def put(self, tube: str, body: str, **options: Any) -> api.JobId:
        """Put one job; its id (a ``str`` whose ``duplicate`` is true when its
        ``unique_key`` found a live job: nothing stored, the id is that job's).
        Puts made at about the same time (from several threads) travel together
        in one batch.

        :param options: ``ttl``, ``delay``, ``run_at``, ``priority``,
            ``expired_limit``, ``shard_key``, ``parent_id``, ``idempotency_key``,
            ``unique_key``, ``concurrency_key``.
        :raises BadRequest: a bad option (checked before anything is sent).
        """
        return self.put_async(tube, body, **options).result()

    def put_async(self, tube: str, body: str, **options: Any) -> Future:
        """Like :meth:`put`, without waiting: a :class:`~concurrent.futures.Future`
        of the id (or of the error). A loop of these fills whole batches."""
        return self._puts.submit(api.new_job(tube, body, options))

    def put_many(self, jobs: Iterable[Mapping[str, Any] | str], tube: str | None = None,
                 **defaults: Any) -> list[api.JobId]:
        """Put many jobs in batches of up to 1,000; their ids (:class:`JobId`,
        with ``duplicate``), in order.

        :param jobs: ``NewJob`` mappings (``{"body": ..., "tube": ..., "ttl": ...}``)
            or plain bodies.
        :param tube: the tube of jobs that name none; ``defaults``: options of
            jobs that do not set them.
        :raises BatchError: some failed; its ``results`` has each job's id or error.
        """
        results: list = []
        for chunk in api.chunks(api.new_jobs(jobs, tube, defaults)):
            try:
                status, reply = self._transport.call(api.put_batch(chunk))
            except api.ClientUnreachable as e:
                results += [e] * len(chunk)
                continue
            results += api.put_outcomes(status, reply, len(chunk))
        return api.raise_for_batch(results, "put")

    # -- consuming -------------------------------------------------------------------------

    def get(self, tube: str, *, wait: float = 0) -> Job | None:
        """Reserve the next job of a tube (waiting up to ``wait`` seconds), or ``None``."""
        jobs = self.get_many(tube, 1, wait=wait)
        return jobs[0] if jobs else None

    def get_many(self, tube: str, count: int, *, wait: float = 0,
                 delete: bool = False) -> list[Job]:
        """Reserve (with ``delete``: take) up to ``count`` jobs of a tube."""
        reply = self._value(api.get(tube, count, wait=wait, delete=delete))
        return [Job.from_rest(job) for job in reply["jobs"]]

    def done(self, job_id: str) -> None:
        """Finish a reserved job (or delete one in any state)."""
        self._value(api.job_action("done", job_id))

    def done_many(self, job_ids: Sequence[str]) -> list[str]:
        """Finish many jobs in batches of up to 1,000.

        :raises BatchError: some failed; its ``results`` has each job's id or error.
        """
        results: list = []
        for chunk in api.chunks(job_ids):
            status, reply = self._transport.call(api.done_batch(chunk))
            results += api.batch_outcomes(status, reply, len(chunk))
        return api.raise_for_batch(results, "done")

    def touch(self, job_id: str) -> None:
        """Restart a reserved job's ttl."""
        self._value(api.job_action("touch", job_id))

    def release(self, job_id: str, *, delay: float = 0) -> None:
        """Give a reserved job back, ready again now or after ``delay`` seconds."""
        self._value(api.job_action("release", job_id, delay=delay or None))

    def bury(self, job_id: str, *, error: str | None = None) -> None:
        """Bury a reserved job, recording ``error`` as its last error."""
        self._value(api.job_action("bury", job_id, error=error))

    def kick(self, job_id: str) -> None:
        """Make a buried (or delayed) job ready again."""
        self._value(api.job_action("kick", job_id))

    def kick_tube(self, tube: str, count: int = 1) -> list[str]:
        """Kick up to ``count`` buried jobs of a tube; their ids."""
        return self._value(api.tube_call("PUT", "/kick", tube=tube, count=count))["job_ids"]

    def peek(self, tube: str, *, buried: bool = False, offset: int = 0) -> Job | None:
        """The next ready (or buried) job of a tube, without reserving it."""
        reply = self._value(api.tube_call("GET", "/peek", tube=tube, buried=buried or None,
                                          offset=offset or None))
        return Job.from_rest(reply) if reply else None

    # -- tubes and servers ------------------------------------------------------------------

    def clear(self, tube: str, state: str = "all") -> int:
        """Drop a tube's jobs (in one state) on every server; how many."""
        return self._value(api.tube_call("DELETE", "/tube", tube=tube,
                                         cache_type=state))["cleared"]

    def throttle(self, tube: str, tps: float | None) -> dict:
        """At most ``tps`` jobs per second from a tube (``None``: no limit)."""
        return self._value(api.Call("POST", "/throttle", body={"tube": tube, "tps": tps}))

    def pause(self, tube: str, paused: bool = True) -> dict:
        """Stop (or resume) handing out a tube's jobs."""
        return self._value(api.tube_call("PUT", "/pause" if paused else "/unpause", tube=tube))

    def drain(self, tube: str, draining: bool = True) -> dict:
        """Make a tube refuse (or take again) new jobs."""
        return self._value(api.tube_call("PUT", "/drain" if draining else "/undrain",
                                         tube=tube))

    def drain_server(self, server: str, draining: bool = True) -> dict:
        """Stop (or resume) placing new jobs on a server (its id or ``host:port``)."""
        return self._value(api.tube_call("PUT", "/drain" if draining else "/undrain",
                                         server_id=server))

    def concurrency(self, tube: str, limit: int) -> dict:
        """Reserve at most ``limit`` jobs of one ``concurrency_key`` of a tube at once
        (on every server); the allq-client's answer."""
        return self._value(api.concurrency(tube, limit))

    # -- interest routing and schedules -----------------------------------------------------

    def event(self, data: Mapping[str, Any], **options: Any) -> dict:
        """Publish an event (``POST /event``): a copy into every tube whose interests
        match ``data``; the answer (``matched``, ``copies``: tube and job id each).

        :param options: ``priority``, ``ttl``, ``delay``, ``run_at``,
            ``expired_limit``, ``shard_key``, ``idempotency_key``, ``scope``,
            ``unmatched`` (``"error"``: :class:`~allq.errors.NotFound` when none match).
        """
        return self._value(api.event(data, options))

    def set_interest(self, tube: str, interests: Mapping[str, str] | str) -> dict:
        """Register a tube's interests: ``"*"`` or ``{field: regex}`` (on every server)."""
        return self._value(api.set_interest(tube, interests))

    def delete_interest(self, tube: str) -> dict:
        """Remove a tube's interests."""
        return self._value(api.tube_call("DELETE", "/interest", tube=tube))

    def interests(self) -> list[dict]:
        """Every tube's interests (``{"tube", "interests"}`` each)."""
        return self._value(api.Call("GET", "/interests"))["interests"]

    def schedule(self, name: str, tube: str, **fields: Any) -> dict:
        """Create or replace a recurring schedule: ``every=`` seconds or ``cron=``
        (with ``timezone``, ``missed``), and the job's ``body``, ``priority``,
        ``ttl``, ...; the schedule as stored (with ``next_run``)."""
        return self._value(api.schedule(name, tube, fields))["schedule"]

    def schedules(self) -> list[dict]:
        """Every schedule of the reachable servers, with its next firing."""
        return self._value(api.Call("GET", "/schedules"))["schedules"]

    def delete_schedule(self, name: str) -> dict:
        """Remove a schedule (jobs it already put stay)."""
        return self._value(api.tube_call("DELETE", "/schedule", name=name))

    def stats(self) -> list[dict]:
        """Per server: its counters and per-tube counts (``GET /stats``)."""
        return self._value(api.Call("GET", "/stats"))

    def health(self) -> dict:
        """The allq-client's view of its servers (``GET /health``), even when none is up."""
        status, reply = self._transport.call(api.Call("GET", "/health"))
        if status in (200, 503) and isinstance(reply, dict) and "servers" in reply:
            return reply
        raise api.error_from(status, reply)
