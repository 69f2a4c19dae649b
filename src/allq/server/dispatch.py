"""Requests in, core calls, replies out: the one place wire meets queue.

:class:`Dispatcher` turns a decoded JSON request into one :class:`Queue` call
and the result (or the :class:`AllQError` it raised) into a reply object. It is
also the one place that maps exceptions to wire error codes. It knows nothing
of sockets or encryption; the protocol feeds it plaintext JSON values.
"""

from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from allq import __version__
from allq.core.idempotency import IdempotencyKeys
from allq.core.interests import InterestTable
from allq.core.job import Job
from allq.core.queue import Queue
from allq.errors import AllQError, BadRequest, NotFound, UnknownAction
from allq.server.schedules import ScheduleService
from allq.vocabulary import JobRef, check_seconds
from allq.server.events import fan_out
from allq.wire.bodies import decode_body, encode_body
from allq.wire.messages import decode_request, error_reply, request_id_of, result_reply


class Dispatcher:
    """Applies requests to a queue.

    :param queue: the server's queue core.
    :param clock: where ``now`` comes from.
    :param server_id: a callable giving this server's id (known once it listens).
    :param idempotency: memory of recent put idempotency keys.
    :param disk_full: whether the data directory is full (shown in ``stats``).
    :param interests: the interest table events are routed by.
    """

    _log = Logger()

    def __init__(
        self,
        queue: Queue,
        clock: IReactorTime,
        server_id: Callable[[], str],
        idempotency: IdempotencyKeys | None = None,
        log_jobs: bool = False,
        disk_full: Callable[[], bool] = lambda: False,
        schedules: ScheduleService | None = None,
        interests: InterestTable | None = None,
    ) -> None:
        self._schedules = schedules
        self.interests = interests if interests is not None else InterestTable()
        self._log_jobs = log_jobs
        self._disk_full = disk_full
        self._queue = queue
        self._clock = clock
        self._server_id = server_id
        self._idempotency = idempotency if idempotency is not None else IdempotencyKeys()
        #: Extra top-level sections of the ``stats`` reply, by name (replication's).
        self.stats_sections: dict[str, Callable[[], object]] = {}
        #: Wire actions another part of the server handles, by name (a backup's
        #: ``replicas`` and ``promote``): called as ``handler(now, **params)``.
        self.actions: dict[str, Callable[..., dict]] = {}

    def handle(self, obj: object) -> dict:
        """Apply one request (a decoded JSON value) and return its reply object."""
        self._queue.action_count += 1
        try:
            request = decode_request(obj)
            handler = getattr(self, "_do_" + request.action, None)
            if handler is None:  # a wire action another part of the server handles
                handler = self.actions.get(request.action)
                if handler is None:
                    raise UnknownAction(f"{request.action}: not handled on this connection")
            result = handler(self._clock.seconds(), **request.params)
            if self._log_jobs:
                self._log_job(request.action, result)
            return result_reply(request.id, result)
        except AllQError as error:
            return error_reply(request_id_of(obj), error)

    def _log_job(self, action: str, result: dict) -> None:
        """One event per job touched, carrying ``job_id`` (``--log-jobs``)."""
        for job in result.get("jobs", ()):
            self._log.info("{action} job {job_id}", action=action, job_id=job["job_id"],
                           tube=job["tube"])
        if "job_id" in result:
            self._log.info("{action} job {job_id}", action=action, job_id=result["job_id"])

    def handle_frame(self, obj: object) -> object:
        """Apply a frame's content: one request, or a list of them (a batch)."""
        if isinstance(obj, list):
            return [self.handle(item) for item in obj]
        return self.handle(obj)

    # -- job ids ---------------------------------------------------------------

    def job_ref(self, job: Job) -> str:
        """The id callers see: ``"<server_id>,<number>"``."""
        return str(JobRef(self._server_id(), job.id))

    def _number(self, job_id: str) -> int:
        own = self._server_id()
        ref = JobRef.parse(job_id, own_server=own)
        if ref.server_id != own:
            raise NotFound(f"job {job_id[:90]} belongs to server {ref.server_id}, not this one")
        return ref.number

    def _job_dict(self, job: Job) -> dict:
        body = job.body
        reply = {
            "job_id": self.job_ref(job),
            "tube": job.tube,
            "body": body,
            "priority": job.priority,
            "ttl": job.ttl,
            "expireds": job.expireds,
            "releases": job.releases,
        }
        if type(body) is bytes:  # a binary body: base64 and its marker
            reply["body"], reply["body_encoding"] = encode_body(body)
        error = self._queue.last_error(job.id)
        if error is not None:
            reply["error"] = error
        return reply

    # -- actions (one per wire action; keyword names are the wire params) ------

    def _do_put(self, now, *, idempotency_key, parent_id, **params):
        unique_key = params["unique_key"]
        # A retry of a put that stored its job (same idempotency key) is answered by
        # _store as the first try was: that job is no duplicate of itself.
        if unique_key is not None and (
                idempotency_key is None
                or self._idempotency.lookup(idempotency_key, now) is None):
            existing = self._queue.unique_job(params["tube"], unique_key)
            if existing is not None:  # the key's job is live: store nothing
                return {"job_id": self.job_ref(existing), "duplicate": True}
        return self._store(self._queue.put, now, idempotency_key, parent_id, params)

    def _do_put_parent(self, now, *, idempotency_key, parent_id, **params):
        return self._store(self._queue.put_parent, now, idempotency_key, parent_id, params)

    def _store(self, put, now, idempotency_key, parent_id, params):
        """Apply a put once per idempotency key."""
        body = params["body"]
        encoding = params.pop("body_encoding")
        if encoding is not None:
            body = params["body"] = decode_body(body, encoding)
        # JSON's "\ud800" escapes decode to lone surrogates that UTF-8 cannot encode:
        # stored, such a body would make every later reply carrying it fail to send.
        # isascii() is O(1), so plain bodies skip the encode.
        if type(body) is str and not body.isascii():
            try:
                body.encode("utf-8")
            except UnicodeEncodeError:
                raise BadRequest(
                    "put: body must be valid Unicode text (no lone surrogates)") from None
        if idempotency_key is not None:
            earlier = self._idempotency.lookup(idempotency_key, now)
            if earlier is not None:
                return {"job_id": f"{self._server_id()},{earlier}"}
        parent = None if parent_id is None else self._number(parent_id)
        try:
            job = put(now=now, parent_id=parent, **params)
        except NotFound:
            raise NotFound(f"parent job {parent_id[:90]} not found") from None
        if idempotency_key is not None:
            self._idempotency.remember(idempotency_key, job.id, now)
        return {"job_id": self.job_ref(job)}

    def _do_get(self, now, *, tube, count, delete):
        jobs = self._queue.get(tube, now=now, count=count, delete=delete)
        return {"jobs": [self._job_dict(job) for job in jobs]}

    def _do_get_any(self, now, *, tubes, count, delete):
        jobs = self._queue.get_any(tubes, now=now, count=count, delete=delete)
        return {"jobs": [self._job_dict(job) for job in jobs]}

    def _do_reserve_job(self, now, *, job_id):
        try:
            job = self._queue.reserve_job(self._number(job_id), now=now)
        except NotFound:
            raise NotFound(f"job {job_id[:90]} not found") from None
        return {"job": self._job_dict(job)}

    def _do_peek_job(self, now, *, job_id):
        try:
            return {"job": self._job_dict(self._queue.job(self._number(job_id)))}
        except NotFound:
            raise NotFound(f"job {job_id[:90]} not found") from None

    def _do_job_stats(self, now, *, job_id):
        number = self._number(job_id)
        try:
            job = self._queue.job(number)
        except NotFound:
            raise NotFound(f"job {job_id[:90]} not found") from None
        counters = self._queue.counters(number)
        return {
            "job_id": self.job_ref(job), "tube": job.tube, "state": job.state.value,
            "priority": job.priority, "age": max(now - job.created, 0.0),
            "delay": counters.delay, "ttl": job.ttl,
            "time_left": 0.0 if job.deadline is None else max(job.deadline - now, 0.0),
            "reserves": counters.reserves, "timeouts": counters.timeouts,
            "releases": counters.releases, "buries": counters.buries, "kicks": counters.kicks,
        }

    def _job_action(name: str):  # noqa: N805 - builds methods at class creation
        def action(self, now, *, job_id, **params):
            number = self._number(job_id)
            try:
                job = getattr(self._queue, name)(number, now=now, **params)
            except NotFound:  # the core knows numbers; the caller sent this id
                raise NotFound(f"job {job_id[:90]} not found") from None
            return {"job_id": self.job_ref(job)}

        action.__name__ = "_do_" + name
        return action

    _do_done = _job_action("done")
    _do_delete = _job_action("delete")
    _do_bury = _job_action("bury")
    _do_touch = _job_action("touch")
    _do_kick = _job_action("kick")
    _do_release = _job_action("release")
    _do_set_children_started = _job_action("set_children_started")
    del _job_action

    def _do_find_parent(self, now, *, alias):
        job = self._queue.parent_by_alias(alias)
        if job is None:
            raise NotFound(f"no waiting parent has the id {alias[:90]!r}")
        return {"job_id": self.job_ref(job)}

    def _do_kick_tube(self, now, *, tube, count, delayed):
        jobs = self._queue.kick_tube(tube, now=now, count=count, delayed=delayed)
        return {"job_ids": [self.job_ref(job) for job in jobs]}

    def _do_peek(self, now, *, tube, buried, offset, delayed):
        if delayed:
            job = self._queue.peek_delayed(tube)
        else:
            job = self._queue.peek(tube, buried=buried, offset=offset)
        return {"job": None if job is None else self._job_dict(job)}

    def _do_list_jobs(self, now, *, tube, state, offset, limit):
        jobs, total = self._queue.list_jobs(tube, state, offset=offset, limit=limit)
        return {"jobs": [self._job_dict(job) for job in jobs], "total": total}

    def _do_clear(self, now, *, tube, state):
        return {"cleared": self._queue.clear(tube, state=state)}

    def _do_throttle(self, now, *, tube, tps):
        tube_ = self._queue.set_throttle(tube, tps, now=now)
        return {"tube": tube, "tps": None if tube_.throttle is None else tube_.throttle.rate}

    def _do_pause(self, now, *, tube, delay):
        until = None if delay is None else now + check_seconds("delay", delay, positive=True)
        return {"tube": tube, "paused": self._queue.set_paused(tube, True, until=until).paused}

    def _do_unpause(self, now, *, tube):
        return {"tube": tube, "paused": self._queue.set_paused(tube, False).paused}

    def _do_drain(self, now, *, tube):
        return self._set_draining(tube, True)

    def _do_undrain(self, now, *, tube):
        return self._set_draining(tube, False)

    def _set_draining(self, tube, draining):
        if tube is None:
            self._queue.set_draining(draining)
            return {"draining": draining}
        return {"tube": tube, "draining": self._queue.set_tube_draining(tube, draining).draining}

    def _do_fair(self, now, *, tube, policy):
        tube_ = self._queue.set_fair(tube, None if policy == "default" else policy)
        return {"tube": tube, "fair": tube_.fair_policy}

    def _do_max_size(self, now, *, tube, max_size):
        return {"tube": tube, "max_size": self._queue.set_max_size(tube, max_size).max_size}

    def _do_concurrency(self, now, *, tube, limit):
        self._queue.set_concurrency(tube, limit)
        return {"tube": tube, "limit": self._queue.concurrency(tube)}

    def _do_stats(self, now):
        totals = self._queue.global_stats(now)
        reply = {
            "server_id": self._server_id(),
            "version": __version__,
            "global": {
                "action_count": totals.action_count,
                "job_put": totals.job_put,
                "job_get": totals.job_get,
                "uptime": round(totals.uptime, 3),
                "jobs": len(self._queue),
                "draining": totals.draining,
                "max_jobs": totals.max_jobs,
                "disk_full": self._disk_full(),
                "events": self.interests.events,
                "events_unmatched": self.interests.events_unmatched,
                # Firings whose put the server refused (logged and skipped).
                "schedule_failures": self._schedules.failures if self._schedules else 0,
            },
            "tubes": [
                {
                    "tube": t.tube,
                    "ready": t.ready,
                    "reserved": t.reserved,
                    "delayed": t.delayed,
                    "buried": t.buried,
                    "parents": t.parents,
                    "tps": round(t.tps, 2),
                    "avg": round(t.avg, 2),
                    "throttle_size": t.throttle,
                    "paused": t.paused,
                    "pause_time_left": round(t.pause_time_left, 3),
                    "draining": t.draining,
                    "fair": t.fair,
                    "max_size": t.max_size,
                    "expired_total": t.expired_total,
                    "buried_total": t.buried_total,
                    "concurrency": self._queue.concurrency(t.tube),
                }
                for t in self._queue.tube_stats(now)
            ],
        }
        for name, section in self.stats_sections.items():
            reply[name] = section()
        return reply

    # -- interest routing (allq.core.interests, allq.server.events) -----------------

    def _do_interest_merge(self, now, *, entries):
        return {"changed": len(self.interests.merge(entries))}

    def _do_interests(self, now):
        return {"entries": [entry.record() for entry in self.interests.entries()],
                "events": self.interests.events,
                "events_unmatched": self.interests.events_unmatched}

    def _do_event(self, now, **params):
        return fan_out(self._queue, self._idempotency, self.interests, self._server_id(),
                       now, **params)

    def _do_ping(self, now):
        return {"server_id": self._server_id()}

    # -- recurring schedules (allq.server.schedules) ---------------------------------

    def _schedule_service(self) -> ScheduleService:
        if self._schedules is None:
            raise UnknownAction("this server keeps no schedules")
        return self._schedules

    def _do_schedule_add(self, now, **params):
        return self._schedule_service().add(now, **params)

    def _do_schedule_list(self, now):
        return self._schedule_service().list()

    def _do_schedule_pause(self, now, *, name):
        return self._schedule_service().set_paused(name, True, now)

    def _do_schedule_resume(self, now, *, name):
        return self._schedule_service().set_paused(name, False, now)

    def _do_schedule_remove(self, now, *, name):
        return self._schedule_service().remove(name)
