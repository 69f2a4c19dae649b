"""The REST front-end of ``twistd allq-client``: AllQueue's HTTP API, with real status codes.

A thin adapter: each route reads its request (:mod:`allq.client.rest_requests`),
makes one call on the :class:`~allq.client.federation.Federation` and writes the
answer in AllQueue's shape (:mod:`allq.client.rest_replies`), so the Ruby
``allq_rest`` clients keep working. No queue rule lives here. It differs from
AllQueue where ``ALLQ-REFERENCE.md`` §15 marks a FIX:

* errors are HTTP 4xx/5xx with a JSON body ``{"error": <code>, "detail": <text>}``
  (400 bad input, 404 unknown job or route, 405 wrong method, 409 wrong state,
  413 too large, 503 no server reachable, 504 timeout, 500 a bug), never an
  empty 200;
* ``delete``/``buried`` are parsed as booleans (``delete=false`` no longer deletes);
* ``GET /multiple_job`` always answers ``{"jobs": [...]}``, ``count`` defaults to 1;
* ``PUT /kick?tube=`` kicks buried jobs of a tube, ``PUT /release`` takes ``delay``,
  ``GET /peek`` takes ``offset``; admin routes ``/update_servers``, ``/drain``,
  ``/undrain``, ``/add_server`` and ``/health`` exist;
* a throttle is split over the healthy servers in fractional shares, so the
  federation as a whole hands out at most ``tps`` jobs per second (§15 items
  16, 32); pause is sent to every server (§15 item 13); drain exists per tube
  and per server and really refuses new jobs (§15 item 30); ``PUT /pause``,
  ``/unpause``, ``/fair`` and ``/max_size`` are new;
* a child put naming a missing parent stores nothing and answers 404 (§15 item 9);
* ``noop`` parents never run (once their children are done they count as a
  finished child of their own parent), and a parent's caller-chosen ``id`` names it
  while it waits (unique: a second one answers 409; AllQueue overwrote);
* ``GET /openapi.json`` describes exactly the routes served (:mod:`allq.client.openapi`);
* a trailing slash is accepted on every route (``/job/`` is ``/job``), as AllQueue
  ignored slashes (it also ignored case and inner slashes; allq does not).

How a request reaches its route (the client's site, :mod:`allq.client.site`)::

    SiteRoot ──/, /static/*──▶ Dashboard
             ──/metrics─────▶ MetricsResource
             ──anything else▶ TimedResource (latency metric) ──▶ FastRouter
    FastRouter ──(method, path) of a job route, exactly──▶ RestApi.<route> (no Klein)
               ──everything else──▶ Klein ──▶ RestApi.<route>, or a JSON 404/405

The job routes (``/job``, ``/multiple_job``) are the hot path:
:class:`~allq.client.fast_routes.FastRouter` calls the very methods Klein would
(:meth:`RestApi.fast_routes`), saving Klein's per-call overhead; a test checks
each answers exactly as its Klein route does. The next front-ends (AllQueue's
JSON lines, beanstalkd) are siblings of this module: protocol adapters over the
same federation.

Every federation call is bounded by ``request_timeout`` (plus the long-poll
``wait``) on the injected clock, so a hung call ends as a 504 rather than a
request that never answers.
"""

import os
import re
from collections.abc import Callable

from klein import Klein
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound as NoRoute
from werkzeug.routing import RequestRedirect

from allq.client import openapi
from allq.expiry import Expiry
from allq.client.fast_routes import FastRouter, request_path
from allq.client.event_requests import event_body, interest_body
from allq.client.federation import Federation
from allq.client.http import (
    check_json_type,
    error_body,
    json_response,
    parse_json_object,
    read_body,
    read_json,
)
from allq.client.records import DuplicateJobId, FetchedJob
from allq.client.rest_replies import batch_reply, rest_job, rest_stats
from allq.client.schedule_requests import new_schedule
from allq.client.rest_requests import (
    arg,
    batch_items,
    bool_arg,
    check_keys,
    check_server_ref,
    field_str,
    int_arg,
    job_id_arg,
    job_ids_body,
    max_size_arg,
    new_job,
    new_parent_job,
    parent_ref_arg,
    required_arg,
    seconds_arg,
    throttle_body,
    tube_arg,
)
from allq.wire.bodies import encode_body
from allq.errors import AllQError, BadRequest, Timeout
from allq.vocabulary import (
    DEFAULT_CONCURRENCY,
    FRONTEND_REQUEST_TIMEOUT,
    MAX_BATCH,
    MAX_CONCURRENCY,
    MAX_KICK_COUNT,
    MAX_LIST_LIMIT,
    MAX_OFFSET,
    MAX_WAIT,
    check_clear_state,
    check_concurrency,
    check_error_text,
    check_fair_setting,
    check_list_state,
    check_schedule_name,
)

KIB = 1024
MIB = 1024 * KIB
DEFAULT_PORT = 8090
#: Twice the server's default maximum job size, plus room for the JSON envelope.
DEFAULT_MAX_BODY = 2 * MIB + 64 * KIB

_log = Logger()


def _put_reply(job_id: str, request: IRequest) -> bytes:
    if isinstance(job_id, DuplicateJobId):  # a unique key's live job: nothing stored
        return json_response(request, {"action": "put", "job_id": job_id, "duplicate": True})
    return json_response(request, {"action": "put", "job_id": job_id})


def _action_reply(job_id: str, request: IRequest, action: str) -> bytes:
    return json_response(request, {"action": action, "job_id": job_id})


def _job_reply(jobs: list[FetchedJob], request: IRequest) -> bytes:
    return json_response(request, rest_job(jobs[0]) if jobs else {})


def _jobs_reply(jobs: list[FetchedJob], request: IRequest) -> bytes:
    return json_response(request, {"jobs": [rest_job(job) for job in jobs]})


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _batch_reply(outcomes: list, request: IRequest, action: str) -> bytes:
    body, status = batch_reply(outcomes, action)
    return json_response(request, body, status)


# -- the facade --------------------------------------------------------------------


class RestApi:
    """The HTTP API of the client daemon.

    :param federation: the federation layer (see :class:`Federation`).
    :param clock: bounds every federation call (``request_timeout`` + ``wait``).
    :param max_body: the largest request body accepted, in bytes (413 beyond).
    :param request_timeout: seconds a federation call may take, not counting the
        long-poll ``wait`` it was asked for, before the request fails with 504.
    """

    app = Klein()

    def __init__(
        self,
        federation: Federation,
        clock: IReactorTime,
        *,
        max_body: int = DEFAULT_MAX_BODY,
        request_timeout: float = FRONTEND_REQUEST_TIMEOUT,
    ) -> None:
        self._federation = federation
        self._clock = clock
        self._max_body = max_body
        self._request_timeout = request_timeout
        self._expiry = Expiry(clock)
        self._openapi = openapi.document(
max_body=max_body)

    def resource(self) -> IResource:
        """The resource to serve, e.g. ``Site(RestApi(federation, reactor).resource())``."""
        return FastRouter(self.app.resource(), self.fast_routes(), self.failed)

    def fast_routes(self) -> dict[tuple[bytes, bytes], Callable[[IRequest], Deferred]]:
        """The job routes :class:`FastRouter` serves without Klein: the very
        methods Klein serves for them, by exact method and path."""
        return {
            (b"POST", b"/job"): self.put_job,
            (b"GET", b"/job"): self.get_job,
            (b"DELETE", b"/job"): self.delete_job,
            (b"POST", b"/multiple_job"): self.put_jobs,
            (b"GET", b"/multiple_job"): self.get_multiple_jobs,
            (b"DELETE", b"/multiple_job"): self.delete_jobs,
        }

    def _bounded(self, call, wait: float = 0) -> Deferred:
        """One federation call (a Deferred or a coroutine) as a Deferred that fails
        with 504 once its time is up."""
        limit = self._request_timeout + wait
        d = call if isinstance(call, Deferred) else ensureDeferred(call)
        return self._expiry.watch(d, limit, lambda: Timeout(
            f"the federation did not answer within {limit:g} seconds"))

    # -- jobs ------------------------------------------------------------------
    # The routes of /job and /multiple_job are plain functions returning a
    # Deferred: :class:`FastRouter` calls them without Klein (see there).

    @app.route("/job", methods=["POST"])
    def put_job(self, request: IRequest) -> Deferred:
        """Put a job (``NewJob`` body) → ``{"action": "put", "job_id"}``."""
        args = new_job(read_json(request, self._max_body))
        tube, body = args.pop("tube"), args.pop("body")
        d = self._bounded(self._federation.put(tube, body, **args))
        return d.addCallback(_put_reply, request)

    @app.route("/multiple_job", methods=["POST"])
    def put_jobs(self, request: IRequest) -> Deferred:
        """Put a batch of jobs (``{"jobs": [NewJob, ...]}``, top-level fields being
        defaults for each) → ``{"action": "put", "job_ids": [...]}`` in order."""
        batch = batch_items(read_json(request, self._max_body))
        d = self._bounded(self._federation.put_many(batch))
        return d.addCallback(_batch_reply, request, "put")

    @app.route("/job", methods=["GET"])
    def get_job(self, request: IRequest) -> Deferred:
        """Reserve (or with ``delete`` take) the next job of a tube → job or ``{}``."""
        tube = tube_arg(request)
        delete = bool_arg(request, "delete")
        wait = seconds_arg(request, "wait", maximum=MAX_WAIT)
        d = self._bounded(self._federation.get(tube, count=1, delete=delete, wait=wait), wait)
        return d.addCallback(_job_reply, request)

    @app.route("/multiple_job", methods=["GET"])
    def get_multiple_jobs(self, request: IRequest) -> Deferred:
        """Reserve up to ``count`` jobs → ``{"jobs": [...]}`` (always a list)."""
        tube = tube_arg(request)
        count = int_arg(request, "count", default=1, minimum=1, maximum=MAX_BATCH)
        delete = bool_arg(request, "delete")
        wait = seconds_arg(request, "wait", maximum=MAX_WAIT)
        d = self._bounded(
            self._federation.get(tube, count=count, delete=delete, wait=wait), wait)
        return d.addCallback(_jobs_reply, request)

    @app.route("/job", methods=["DELETE"])
    def delete_job(self, request: IRequest) -> Deferred:
        """Finish or remove a job (``tube`` is optional and only checked)."""
        job_id = job_id_arg(request)
        if arg(request, "tube", "tube_name") is not None:
            tube_arg(request)
        return self._job_action(request, "delete", job_id)

    @app.route("/multiple_job", methods=["DELETE"])
    def delete_jobs(self, request: IRequest) -> Deferred:
        """Finish or remove a batch of jobs (``{"job_ids": [...]}``)
        → ``{"action": "delete", "job_ids": [...]}``."""
        job_ids = job_ids_body(read_json(request, self._max_body))
        d = self._bounded(self._federation.job_action_many("delete", job_ids))
        return d.addCallback(_batch_reply, request, "delete")

    @app.route("/touch", methods=["PUT"])
    async def touch_job(self, request: IRequest) -> bytes:
        """Restart a reserved job's ttl."""
        return await self._job_action(request, "touch", job_id_arg(request))

    @app.route("/release", methods=["PUT"])
    async def release_job(self, request: IRequest) -> bytes:
        """Give a reserved job back, ready at once or after ``delay`` seconds."""
        job_id = job_id_arg(request)
        delay = seconds_arg(request, "delay")
        return await self._job_action(request, "release", job_id, delay=delay)

    @app.route("/bury", methods=["PUT"])
    async def bury_job(self, request: IRequest) -> bytes:
        """Bury a reserved job, with the ``error`` that made it fail (a query
        parameter, or ``{"error"}`` as a JSON body: a traceback is too long for a URL),
        kept as the job's last error."""
        job_id = job_id_arg(request)
        error = self._body_field(request, "error")
        if error is None:
            error = arg(request, "error")
        params = {} if error is None else {"error": check_error_text(error)}
        return await self._job_action(request, "bury", job_id, **params)

    @app.route("/kick", methods=["PUT"])
    async def kick(self, request: IRequest) -> bytes:
        """Kick one job (``job_id``), or up to ``count`` buried jobs of ``tube``."""
        if arg(request, "job_id") is not None:
            job_id = job_id_arg(request)
            if arg(request, "tube", "tube_name") is not None:
                tube_arg(request)
            return await self._job_action(request, "kick", job_id)
        if arg(request, "tube", "tube_name") is None:
            raise BadRequest("tube or job_id is required")
        tube = tube_arg(request)
        count = int_arg(request, "count", default=1, minimum=1, maximum=MAX_KICK_COUNT)
        job_ids = await self._bounded(self._federation.kick_tube(tube, count))
        return json_response(request, {"action": "kick", "job_ids": list(job_ids)})

    @app.route("/set_children_started", methods=["PUT"])
    async def set_children_started(self, request: IRequest) -> bytes:
        """Say every child of a waiting parent (``job_id``: its job id or the id its
        put chose) has been put."""
        return await self._job_action(request, "set_children_started", parent_ref_arg(request))

    def _job_action(self, request: IRequest, action: str, job_id: str, **params) -> Deferred:
        d = self._bounded(self._federation.job_action(action, job_id, **params))
        return d.addCallback(_action_reply, request, action)

    @app.route("/peek", methods=["GET"])
    async def peek(self, request: IRequest) -> bytes:
        """The next ready (or buried) job of a tube without reserving it, or ``{}``."""
        tube = tube_arg(request)
        buried = bool_arg(request, "buried")
        offset = int_arg(request, "offset", default=0, minimum=0, maximum=MAX_OFFSET)
        job = await self._bounded(self._federation.peek(tube, buried=buried, offset=offset))
        return json_response(request, {} if job is None else rest_job(job))

    @app.route("/jobs", methods=["GET"])
    async def list_jobs(self, request: IRequest) -> bytes:
        """A page of a tube's jobs in one state (``state``), the servers' lists one
        after another in server-id order; each job names its ``server``."""
        tube = tube_arg(request)
        state = check_list_state(arg(request, "state"))
        offset = int_arg(request, "offset", default=0, minimum=0, maximum=MAX_OFFSET)
        limit = int_arg(request, "limit", default=50, minimum=1, maximum=MAX_LIST_LIMIT)
        page, total = await self._bounded(
            self._federation.list_jobs(tube, state, offset=offset, limit=limit))
        return json_response(request, {
            "tube": tube, "state": state, "offset": offset, "limit": limit, "total": total,
            "jobs": [{**rest_job(job), "server": server} for server, job in page]})

    # -- tubes -----------------------------------------------------------------

    @app.route("/tube", methods=["DELETE"])
    async def clear_tube(self, request: IRequest) -> bytes:
        """Drop a tube's jobs in one state (``cache_type``, default all) on every server."""
        tube = tube_arg(request)
        state = arg(request, "cache_type")
        state = "all" if state is None else check_clear_state(state)
        cleared = await self._bounded(self._federation.clear(tube, state))
        return json_response(request, {"action": "clear", "cleared": cleared})

    @app.route("/parent_job", methods=["POST"])
    async def put_parent_job(self, request: IRequest) -> bytes:
        """Put a parent job (``NewParentJob`` body) → ``{"action": "set_parent",
        "job_id", "job"}``; it becomes ready when ``limit`` children are finished."""
        args = new_parent_job(read_json(request, self._max_body))
        tube, body = args.pop("tube"), args.pop("body")
        job_id = await self._bounded(self._federation.put_parent(tube, body, **args))
        job = {"job_id": job_id, "tube": tube, "body": body, "expireds": 0, "releases": 0}
        if type(body) is bytes:  # shown as a fetched job's binary body is
            del job["body"]
            job["body_base64"], job["body_encoding"] = encode_body(body)
        return json_response(request, {"action": "set_parent", "job_id": job_id, "job": job})

    @app.route("/throttle", methods=["POST"])
    async def throttle(self, request: IRequest) -> bytes:
        """Cap the jobs per second a tube hands out over the whole federation
        (``{"tube", "tps"}``; ``tps`` null or <= 0 removes the cap)."""
        tube, tps = throttle_body(read_json(request, self._max_body))
        servers = await self._bounded(self._federation.throttle(tube, tps))
        # "value": "true" is AllQueue's whole reply (old clients look for it) when a
        # throttle is set; removing one says "false": no throttle now.
        return json_response(request, {"action": "throttle", "value": _flag(tps is not None),
                                       "tube": tube, "tps": tps, "servers": servers})

    @app.route("/pause", methods=["PUT"])
    async def pause(self, request: IRequest) -> bytes:
        """Stop handing out a tube's jobs on every server (puts are still taken)."""
        return await self._tube_setting(request, "pause", self._federation.pause, True)

    @app.route("/unpause", methods=["PUT"])
    async def unpause(self, request: IRequest) -> bytes:
        """Hand out a paused tube's jobs again, on every server."""
        return await self._tube_setting(request, "unpause", self._federation.pause, False)

    @app.route("/fair", methods=["PUT"])
    async def fair(self, request: IRequest) -> bytes:
        """Set a tube's fair-queuing ``policy`` on every server."""
        tube = tube_arg(request)
        policy = check_fair_setting(required_arg(request, "policy"))
        servers = await self._bounded(self._federation.fair(tube, policy))
        return json_response(request, {"action": "fair", "tube": tube, "policy": policy,
                                       "servers": servers})

    @app.route("/concurrency", methods=["PUT"])
    async def concurrency(self, request: IRequest) -> bytes:
        """Set how many jobs of one ``concurrency_key`` of a tube are reserved at
        once (``limit``, default 1), on every server."""
        tube = tube_arg(request)
        limit = check_concurrency(int_arg(request, "limit", default=DEFAULT_CONCURRENCY,
                                          minimum=1, maximum=MAX_CONCURRENCY))
        servers = await self._bounded(self._federation.concurrency(tube, limit))
        return json_response(request, {"action": "concurrency", "tube": tube,
                                       "limit": limit, "servers": servers})

    @app.route("/max_size", methods=["PUT"])
    async def max_size(self, request: IRequest) -> bytes:
        """Bound a tube to ``max_size`` jobs on each server (empty or absent: unbounded)."""
        tube = tube_arg(request)
        size = max_size_arg(request)
        servers = await self._bounded(self._federation.max_size(tube, size))
        return json_response(request, {"action": "max_size", "tube": tube, "max_size": size,
                                       "servers": servers})

    async def _tube_setting(self, request: IRequest, action: str, call, flag: bool) -> bytes:
        tube = tube_arg(request)
        servers = await self._bounded(call(tube, flag))
        return json_response(request, {"action": action, "tube": tube, "servers": servers})

    # -- recurring schedules (allq.client.schedules) -------------------------------

    @app.route("/schedule", methods=["POST"])
    async def add_schedule(self, request: IRequest) -> bytes:
        """Create or replace a recurring schedule (``NewSchedule``) on its server."""
        params = new_schedule(read_json(request, self._max_body))
        schedule = await self._bounded(self._federation.add_schedule(params))
        return json_response(request, {"action": "schedule", "schedule": schedule})

    @app.route("/schedules", methods=["GET"])
    async def list_schedules(self, request: IRequest) -> bytes:
        """Every schedule, with its next firing, from every reachable server."""
        schedules = await self._bounded(self._federation.schedules())
        return json_response(request, {"schedules": schedules})

    @app.route("/schedule/pause", methods=["PUT"])
    async def pause_schedule(self, request: IRequest) -> bytes:
        """Stop a schedule's firings until it is resumed."""
        return await self._schedule_action(request, "pause")

    @app.route("/schedule/resume", methods=["PUT"])
    async def resume_schedule(self, request: IRequest) -> bytes:
        """Fire a paused schedule again, from its next firing after now."""
        return await self._schedule_action(request, "resume")

    @app.route("/schedule", methods=["DELETE"])
    async def remove_schedule(self, request: IRequest) -> bytes:
        """Remove a schedule (jobs it already put stay)."""
        return await self._schedule_action(request, "remove")

    async def _schedule_action(self, request: IRequest, action: str) -> bytes:
        name = check_schedule_name(required_arg(request, "name"))
        result = await self._bounded(self._federation.schedule_action(action, name))
        if action == "remove":
            return json_response(request, {"action": "remove_schedule", "name": name,
                                           "server_id": result["server_id"]})
        return json_response(request, {"action": f"{action}_schedule", "schedule": result})

    # -- interest routing (allq.client.routing) ----------------------------------

    @app.route("/interest", methods=["PUT"])
    async def put_interest(self, request: IRequest) -> bytes:
        """Register a tube's interests (``{"tube", "interests": {field: regex} | "*"}``)
        on every server; a bad regex is 400."""
        tube, interests = interest_body(read_json(request, self._max_body))
        servers = await self._bounded(self._federation.set_interest(tube, interests))
        return json_response(request, {"action": "interest", "tube": tube,
                                       "interests": interests, "servers": servers})

    @app.route("/interest", methods=["DELETE"])
    async def delete_interest(self, request: IRequest) -> bytes:
        """Remove a tube's interests (``?tube=``) on every server."""
        tube = tube_arg(request)
        servers = await self._bounded(self._federation.delete_interest(tube))
        return json_response(request, {"action": "delete_interest", "tube": tube,
                                       "servers": servers})

    @app.route("/interests", methods=["GET"])
    async def interests(self, request: IRequest) -> bytes:
        """Every tube's interests, by tube."""
        interests = await self._bounded(self._federation.interests())
        return json_response(request, {"interests": interests})

    @app.route("/event", methods=["POST"])
    async def post_event(self, request: IRequest) -> bytes:
        """Publish an event: one job (its body the data as JSON) into every tube whose
        interests match; ``copies`` says which (empty: dropped, unless ``unmatched``
        is ``error``: 404)."""
        args = event_body(read_json(request, self._max_body))
        copies = await self._bounded(self._federation.publish_event(args.pop("data"), **args))
        return json_response(request, {
            "action": "event", "matched": len(copies),
            "copies": [{"tube": copy.tube, "job_id": copy.job_id} for copy in copies]})

    # -- servers ---------------------------------------------------------------

    @app.route("/stats", methods=["GET"])
    async def stats(self, request: IRequest) -> bytes:
        """Per-server counters and per-tube counts of every reachable server."""
        servers = await self._bounded(self._federation.stats())
        return json_response(request, [rest_stats(server) for server in servers])

    @app.route("/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        """The federation's view of its servers: 200 when one is up, else 503; ``pid``
        names the client process that answered (one of several with ``--workers``)."""
        report = {**self._federation.health(), "pid": os.getpid()}
        return json_response(request, report, 200 if report["up"] > 0 else 503)

    @app.route("/update_servers", methods=["PUT"])
    def update_servers(self, request: IRequest) -> bytes:
        """Replace the set of servers with ``server_urls`` (``h:p,h:p``)."""
        urls = [url.strip() for url in required_arg(request, "server_urls").split(",")]
        self._federation.update_servers([url for url in urls if url])
        return json_response(request, {})

    @app.route("/drain", methods=["PUT"])
    async def drain(self, request: IRequest) -> bytes:
        """Drain a tube on every server (``tube``), or a whole server (``server_id``:
        its id or ``host:port``): no new jobs are taken, jobs held are still handed out."""
        return await self._drain(request, True)

    @app.route("/undrain", methods=["PUT"])
    async def undrain(self, request: IRequest) -> bytes:
        """Take new jobs again in a tube (``tube``) or on a server (``server_id``)."""
        return await self._drain(request, False)

    async def _drain(self, request: IRequest, draining: bool) -> bytes:
        action = "drain" if draining else "undrain"
        server = arg(request, "server_id")
        has_tube = arg(request, "tube", "tube_name") is not None
        if (server is None) == (not has_tube):
            raise BadRequest("give either tube or server_id")
        if server is None:
            return await self._tube_setting(request, action, self._federation.drain_tube,
                                            draining)
        server = check_server_ref("server_id", server)
        notified = await self._bounded(self._federation.drain_server(server, draining))
        return json_response(request, {"action": action, "server_id": server,
                                       "draining": draining, "notified": notified})

    @app.route("/add_server", methods=["POST"])
    def add_server(self, request: IRequest) -> bytes:
        """Add a server, from a ``{"server_url"}`` body or a ``server_url`` query parameter."""
        url = self._body_field(request, "server_url")
        if url is None:
            url = required_arg(request, "server_url")
        url = check_server_ref("server_url", url)
        self._federation.add_server(url)
        return json_response(request, {"server_url": url})

    def _body_field(self, request: IRequest, name: str) -> str | None:
        """The one field ``name`` of an optional ``{name: text}`` JSON body (``None``
        without a body): for routes that also take it as a query parameter."""
        data = read_body(request, self._max_body)
        if not data.strip():
            return None
        check_json_type(request)
        obj = parse_json_object(data)
        check_keys(obj, frozenset({name}))
        return field_str(obj, name)

    @app.route("/openapi.json", methods=["GET"])
    def openapi_json(self, request: IRequest) -> bytes:
        """This API's OpenAPI 3.1 document."""
        return json_response(request, self._openapi)

    # -- errors (order matters: Klein tries the handlers top to bottom) --------

    @app.handle_errors(AllQError)
    def _allq_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        return json_response(request, error_body(error), error.http_status)

    def failed(self, failure: Failure, request: IRequest) -> bytes:
        """The error response for ``failure`` (a route's, outside Klein)."""
        if failure.check(AllQError):
            return self._allq_error(request, failure)
        return self._unexpected(request, failure)

    @app.handle_errors(NoRoute)
    def _no_route(self, request: IRequest, failure: Failure) -> bytes:
        detail = f"no route {request.method.decode('ascii', 'replace')} {request_path(request)}"
        return json_response(request, {"error": "not_found", "detail": detail}, 404)

    @app.handle_errors(MethodNotAllowed)
    def _wrong_method(self, request: IRequest, failure: Failure) -> bytes:
        allowed = sorted(failure.value.valid_methods or ())
        request.setHeader(b"allow", ", ".join(allowed).encode("ascii"))
        detail = (f"{request_path(request)} does not accept "
                  f"{request.method.decode('ascii', 'replace')[:20]}; use {', '.join(allowed)}")
        return json_response(request, {"error": "method_not_allowed", "detail": detail}, 405)

    @app.handle_errors(HTTPException)
    def _other_http_error(self, request: IRequest, failure: Failure) -> bytes:
        # e.g. werkzeug's redirect of "//job" to "/job" (merge_slashes).
        error = failure.value
        if isinstance(error, RequestRedirect):
            request.setHeader(b"location", error.new_url.encode("utf-8"))
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", type(error).__name__).lower()
        return json_response(request, {"error": name, "detail": str(error.description)},
                             error.code or 500)

    @app.handle_errors
    def _unexpected(self, request: IRequest, failure: Failure) -> bytes:
        _log.failure(
            "unhandled error serving {method} {path}", failure,
            method=request.method.decode("ascii", "replace"), path=request_path(request))
        return json_response(
            request, {"error": "internal_error", "detail": "internal error (logged)"}, 500)


def _path(request: IRequest) -> str:
    return request.path.decode("utf-8", "replace")[:200]


def _drop_implicit_head(app: Klein) -> None:
    """Serve exactly the documented methods.

    werkzeug adds HEAD to every GET rule; a HEAD of ``/job`` would reserve a job
    and throw its body away, so HEAD is refused (405) like any other method.
    """
    for rule in app.url_map.iter_rules():
        if rule.methods is not None:
            rule.methods.discard("HEAD")


_drop_implicit_head(RestApi.app)
