"""AllQueue's local JSON-lines API (TCP ``:7766`` and ``/tmp/allq_client.sock``).

A front-end over the :class:`~allq.client.federation.Federation`, beside the
REST one; no queue rule lives here. AllQueue's client libraries (the Ruby
``allq`` gem, ``allq_client_shard``) and its etcd updater speak it.

Framing
    One request per line: a JSON object ``{"action": NAME, "params": {...}}``
    ended by ``\\n`` (a ``\\r`` before it and blank lines are ignored; a last
    line without ``\\n`` before the client half-closes is read too). One reply
    line per request, **in request order**, even though the federation answers
    out of order: requests may be pipelined, many per connection. A client that
    half-closes (``echo ... | socat``, ``nc -q``) still gets its replies; the
    connection closes after the last.

Actions (AllQueue's, under its names; see :mod:`allq.client.jsonl_replies` for
the reply shapes)
    ``put``, ``get`` (``count``, ``delete``, and allq's long-poll ``wait``),
    ``get_multiple_jobs``, ``peek`` (``buried``, ``offset``), ``touch``, ``release``
    (``delay``), ``bury``, ``done``, ``delete``, ``kick`` (``job_id``, or ``tube`` and
    ``count``), ``clear`` (``tube``, ``cache_type``), ``throttle``, ``pause``,
    ``unpause``, ``set_parent_job`` (``limit``, ``timeout``, ``run_on_timeout``,
    ``noop``, a caller-chosen ``id``), ``set_children_started`` (a job id or that
    ``id``), ``stats``, ``ping``,
    ``drain`` / ``undrain`` (``server_id`` or ``tube``), ``add_server``
    (``server_url``), ``update_servers`` (``servers``); allq's extras under their
    REST names: ``fair`` (``tube``, ``policy``), ``max_size``, and the batches
    ``put_multiple_jobs`` (``jobs``, top-level fields as defaults) and
    ``delete_multiple_jobs`` (``job_ids``); recurring schedules (README "Recurring
    schedules"): ``add_schedule`` (the fields of ``POST /schedule``),
    ``list_schedules``, ``pause_schedule``, ``resume_schedule`` and ``delete_schedule``
    (``name``); interest routing as REST has it:
    ``interest`` (``tube``, ``interests``), ``delete_interest`` (``tube``),
    ``interests``, ``event`` (``data``, ``scope``, ``unmatched``, job options).

Errors
    ``{"response": {"action": A, "error": TEXT, "code": CODE}}``: AllQueue's shape,
    with allq's error code (``bad_request``, ``unknown_action``, ``not_found``,
    ``unavailable``, ...). Bad input never closes the connection, except a line
    longer than the size limit (answered ``too_large``, then closed: the rest of
    it cannot be told from the next request). A connection with no request
    pending that sends nothing for ``idle_timeout`` seconds is closed.

Backpressure
    At most ``max_pending`` requests of one connection are in the federation at
    once; beyond that the connection is not read (its transport is paused)
    until replies go out, so one client cannot queue unbounded work.
"""

import json
from collections import deque
from collections.abc import Callable

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from allq.client import jsonl_replies as replies
from allq.client import jsonl_requests as read
from allq.client.event_requests import event_body, interest_body
from allq.expiry import Expiry
from allq.client.federation import Federation
from allq.client.rest_requests import batch_items, job_ids_body, new_job, new_parent_job
from allq.client.schedule_requests import new_schedule
from allq.errors import AllQError, BadRequest, Timeout, TooLarge, UnknownAction
from allq.vocabulary import FRONTEND_REQUEST_TIMEOUT, check_schedule_name
from allq.wire.messages import dumps

DEFAULT_PORT = 7766
DEFAULT_UNIX_PATH = "/tmp/allq_client.sock"
#: Seconds a connection may stay silent with nothing pending (AllQueue: 3).
DEFAULT_IDLE_TIMEOUT = 60.0
#: Requests of one connection in the federation at once before it is not read.
DEFAULT_MAX_PENDING = 128

_log = Logger()

#: A request's answer: a Deferred firing with the reply object.
Answer = Callable[[str, dict], Deferred]


class JsonLinesApi:
    """The actions of the JSON-lines API, each one federation call.

    :param federation: the federation every action calls.
    :param clock: bounds each call (``request_timeout`` plus a get's ``wait``).
    :param request_timeout: seconds a call may take before it answers ``timeout``.
    """

    def __init__(self, federation: Federation, clock: IReactorTime, *,
                 request_timeout: float = FRONTEND_REQUEST_TIMEOUT) -> None:
        self._federation = federation
        self._request_timeout = request_timeout
        self._expiry = Expiry(clock)
        self._actions: dict[str, Callable[[dict], object]] = {
            "put": self._put,
            "get": self._get,
            "get_multiple_jobs": self._get,
            "peek": self._peek,
            "touch": self._job_action("touch"),
            "bury": self._job_action("bury"),
            "done": self._job_action("done"),
            "delete": self._delete,
            "release": self._release,
            "set_children_started": self._children_started,
            "kick": self._kick,
            "clear": self._clear,
            "throttle": self._throttle,
            "pause": self._tube_setting("pause", federation.pause, True),
            "unpause": self._tube_setting("unpause", federation.pause, False),
            "set_parent_job": self._set_parent_job,
            "stats": self._stats,
            "ping": self._ping,
            "drain": self._drain(True),
            "undrain": self._drain(False),
            "add_server": self._add_server,
            "update_servers": self._update_servers,
            "fair": self._fair,
            "max_size": self._max_size,
            "concurrency": self._concurrency,
            "put_multiple_jobs": self._put_many,
            "delete_multiple_jobs": self._delete_many,
            "add_schedule": self._add_schedule,
            "list_schedules": self._list_schedules,
            "pause_schedule": self._schedule_action("pause"),
            "resume_schedule": self._schedule_action("resume"),
            "delete_schedule": self._schedule_action("remove"),
            "interest": self._interest,
            "delete_interest": self._delete_interest,
            "interests": self._interests,
            "event": self._event,
        }

    @property
    def actions(self) -> list[str]:
        return sorted(self._actions)

    def answer(self, action: str, params: dict) -> Deferred:
        """The reply object to one request; errors are replies too (never a failure,
        except ``CancelledError`` when the call is cancelled)."""
        handler = self._actions.get(action)
        job_id = params.get("job_id") if isinstance(params.get("job_id"), str) else None
        if handler is None:
            error = UnknownAction(f"unknown action {action[:64]!r}; known: "
                                  + ", ".join(self.actions))
            return succeed(replies.error_reply(error, action))
        try:
            result = handler(params)
        except AllQError as e:
            return succeed(replies.error_reply(e, action, job_id))
        except Exception:
            return succeed(self._unexpected(Failure(), action, job_id))
        d = result if isinstance(result, Deferred) else succeed(result)
        return d.addErrback(self._failed, action, job_id)

    def _failed(self, failure: Failure, action: str, job_id: str | None) -> dict:
        if failure.check(AllQError):
            return replies.error_reply(failure.value, action, job_id)
        if failure.check(CancelledError):
            return failure
        return self._unexpected(failure, action, job_id)

    def _unexpected(self, failure: Failure, action: str, job_id: str | None) -> dict:
        _log.failure("unhandled error answering JSON-lines action {action}", failure,
                     action=action)
        error = AllQError("internal error (logged)")
        error.code = "internal_error"
        return replies.error_reply(error, action, job_id)

    def _bounded(self, call, wait: float = 0) -> Deferred:
        limit = self._request_timeout + wait
        d = call if isinstance(call, Deferred) else ensureDeferred(call)
        return self._expiry.watch(d, limit, lambda: Timeout(
            f"the federation did not answer within {limit:g} seconds"))

    # -- jobs --------------------------------------------------------------------

    def _put(self, params: dict) -> Deferred:
        args = new_job(read.job_fields(params))
        tube, body = args.pop("tube"), args.pop("body")
        return self._bounded(self._federation.put(tube, body, **args)).addCallback(
            replies.put_reply)

    def _get(self, params: dict) -> Deferred:
        tube = read.tube(params)
        count, single = read.count(params)
        delete = read.flag(params, "delete")
        wait = read.wait(params)
        if count == 0:
            return succeed(replies.jobs_reply([]))
        d = self._bounded(self._federation.get(tube, count=count, delete=delete, wait=wait), wait)
        if single:
            return d.addCallback(lambda jobs: replies.job_reply(jobs[0] if jobs else None))
        return d.addCallback(replies.jobs_reply)

    def _peek(self, params: dict) -> Deferred:
        tube = read.tube(params)
        call = self._federation.peek(tube, buried=read.flag(params, "buried"),
                                     offset=read.offset(params))
        return self._bounded(call).addCallback(replies.job_reply)

    def _job_action(self, action: str) -> Callable[[dict], Deferred]:
        def act(params: dict) -> Deferred:
            return self._act(action, read.job_id(params))
        return act

    def _act(self, action: str, job_id: str, **params) -> Deferred:
        d = self._bounded(self._federation.job_action(action, job_id, **params))
        return d.addCallback(lambda done_id: replies.action_reply(action, done_id))

    def _children_started(self, params: dict) -> Deferred:
        return self._act("set_children_started", read.parent_ref(params))

    def _delete(self, params: dict) -> Deferred:
        job_id = read.job_id(params)
        if params.get("tube") is not None:
            read.tube(params)  # checked, as over REST; the job id finds the job
        return self._act("delete", job_id)

    def _release(self, params: dict) -> Deferred:
        return self._act("release", read.job_id(params), delay=read.seconds(params, "delay"))

    def _kick(self, params: dict) -> Deferred:
        """AllQueue's kick named a job (for routing) and a tube; allq kicks the job
        named, or without one up to ``count`` buried jobs of the tube."""
        if params.get("job_id"):
            return self._act("kick", read.job_id(params))
        tube = read.tube(params)
        d = self._bounded(self._federation.kick_tube(tube, read.kick_count(params)))
        return d.addCallback(_kicked)

    def _set_parent_job(self, params: dict) -> Deferred:
        args = new_parent_job(read.job_fields(params))
        tube, body = args["tube"], args["body"]
        d = self._bounded(self._federation.put_parent(args.pop("tube"), args.pop("body"), **args))
        return d.addCallback(replies.parent_reply, tube, body)

    def _put_many(self, params: dict) -> Deferred:
        d = self._bounded(self._federation.put_many(batch_items(params)))
        return d.addCallback(lambda outcomes: replies.batch_reply("put", outcomes))

    def _delete_many(self, params: dict) -> Deferred:
        d = self._bounded(self._federation.job_action_many("delete", job_ids_body(params)))
        return d.addCallback(lambda outcomes: replies.batch_reply("delete", outcomes))

    # -- tubes -------------------------------------------------------------------

    def _clear(self, params: dict) -> Deferred:
        d = self._bounded(self._federation.clear(read.tube(params), read.clear_state(params)))
        return d.addCallback(lambda cleared: replies.action_reply("clear", cleared=cleared))

    def _throttle(self, params: dict) -> Deferred:
        tube, tps = read.tube(params), read.tps(params)
        d = self._bounded(self._federation.throttle(tube, tps))
        # AllQueue's server answered the tps as "value"; "false" says the throttle is off.
        value = "false" if tps is None else f"{tps:g}"
        return d.addCallback(lambda servers: replies.action_reply(
            "throttle", value=value, tube=tube, servers=servers))

    def _tube_setting(self, action: str, call, flag: bool) -> Callable[[dict], Deferred]:
        def apply(params: dict) -> Deferred:
            tube = read.tube(params)
            return self._bounded(call(tube, flag)).addCallback(
                lambda servers: replies.action_reply(action, tube=tube, servers=servers))
        return apply

    def _fair(self, params: dict) -> Deferred:
        tube, policy = read.tube(params), read.fair_policy(params)
        return self._bounded(self._federation.fair(tube, policy)).addCallback(
            lambda servers: replies.action_reply("fair", tube=tube, policy=policy,
                                                 servers=servers))

    def _max_size(self, params: dict) -> Deferred:
        tube, size = read.tube(params), read.max_size(params)
        return self._bounded(self._federation.max_size(tube, size)).addCallback(
            lambda servers: replies.action_reply("max_size", tube=tube, max_size=size,
                                                 servers=servers))

    # -- recurring schedules -------------------------------------------------------

    def _add_schedule(self, params: dict) -> Deferred:
        d = self._bounded(self._federation.add_schedule(new_schedule(params)))
        return d.addCallback(lambda schedule: replies.action_reply(
            "add_schedule", schedule=schedule))

    def _list_schedules(self, params: dict) -> Deferred:
        return self._bounded(self._federation.schedules()).addCallback(
            lambda schedules: replies.action_reply("list_schedules", schedules=schedules))

    def _schedule_action(self, action: str) -> Callable[[dict], Deferred]:
        name = "delete_schedule" if action == "remove" else f"{action}_schedule"

        def act(params: dict) -> Deferred:
            schedule = check_schedule_name(params.get("name"))
            d = self._bounded(self._federation.schedule_action(action, schedule))
            return d.addCallback(lambda result: replies.action_reply(name, schedule=result))
        return act

    # -- interest routing (REST's PUT/DELETE /interest, GET /interests, POST /event) ---

    def _interest(self, params: dict) -> Deferred:
        tube, interests = interest_body(params)
        return self._bounded(self._federation.set_interest(tube, interests)).addCallback(
            lambda servers: replies.action_reply("interest", tube=tube, interests=interests,
                                                 servers=servers))

    def _delete_interest(self, params: dict) -> Deferred:
        tube = read.tube(params)
        return self._bounded(self._federation.delete_interest(tube)).addCallback(
            lambda servers: replies.action_reply("delete_interest", tube=tube,
                                                 servers=servers))

    def _interests(self, params: dict) -> Deferred:
        return self._bounded(self._federation.interests()).addCallback(
            lambda interests: replies.action_reply("interests", interests=interests))

    def _event(self, params: dict) -> Deferred:
        args = event_body(params)
        d = self._bounded(self._federation.publish_event(args.pop("data"), **args))
        return d.addCallback(lambda copies: replies.action_reply(
            "event", matched=len(copies),
            copies=[{"tube": copy.tube, "job_id": copy.job_id} for copy in copies]))

    def _concurrency(self, params: dict) -> Deferred:
        tube, limit = read.tube(params), read.concurrency_limit(params)
        return self._bounded(self._federation.concurrency(tube, limit)).addCallback(
            lambda servers: replies.action_reply("concurrency", tube=tube, limit=limit,
                                                 servers=servers))

    # -- servers -----------------------------------------------------------------

    def _stats(self, params: dict) -> Deferred:
        return self._bounded(self._federation.stats()).addCallback(replies.stats_reply)

    def _ping(self, params: dict) -> dict:
        return replies.ping_reply([link.server_id for link in self._federation.links()
                                   if link.up and link.server_id])

    def _drain(self, draining: bool) -> Callable[[dict], Deferred]:
        action = "drain" if draining else "undrain"

        def drain(params: dict) -> Deferred:
            server = read.server_ref(params, "server_id")
            if server is None:
                if params.get("tube", params.get("tube_name")) is None:
                    raise BadRequest("give either server_id or tube")
                return self._tube_setting(action, self._federation.drain_tube, draining)(params)
            d = self._bounded(self._federation.drain_server(server, draining))
            # AllQueue answered {"server_id": <given>}.
            return d.addCallback(lambda notified: {"server_id": server, "action": action,
                                                   "draining": draining, "notified": notified})
        return drain

    def _add_server(self, params: dict) -> dict:
        url = read.server_ref(params, "server_url")
        if url is None:
            raise BadRequest("server_url is required")
        self._federation.add_server(url)
        return {"server_url": url}

    def _update_servers(self, params: dict) -> dict:
        self._federation.update_servers(read.server_list(params))
        return {}


def _kicked(job_ids: list[str]) -> dict:
    """AllQueue's kick answered one id (none when nothing was buried); allq may
    kick several, all listed in ``job_ids``."""
    if not job_ids:
        return replies.action_reply("kick", job_ids=[])
    return replies.action_reply("kick", job_ids[0], job_ids=list(job_ids))


def encode_reply(reply: dict) -> bytes:
    """One reply line."""
    try:
        return dumps(reply) + b"\n"
    except UnicodeEncodeError:  # a lone surrogate: JSON's \u escapes still carry it
        return json.dumps(reply, separators=(",", ":")).encode("ascii") + b"\n"


class _Slot:
    """One request's place in its connection's reply order."""

    __slots__ = ("call", "line")

    def __init__(self) -> None:
        self.call: Deferred | None = None
        self.line: bytes | None = None


@implementer(IHalfCloseableProtocol)
class JsonLinesProtocol(Protocol, TimeoutMixin):
    """One JSON-lines connection: reads request lines, writes replies in order.

    :param answer: the reply object to ``(action, params)``, as a Deferred.
    :param clock: schedules the idle timeout.
    :param max_line: the longest request line, in bytes.
    :param idle_timeout: seconds of silence with nothing pending before closing.
    :param max_pending: requests in progress before the connection is not read.
    :param in_flight: counts requests for a graceful shutdown (``started``/``ended``).
    """

    def __init__(self, answer: Answer, clock: IReactorTime, *, max_line: int,
                 idle_timeout: float, max_pending: int, in_flight=None) -> None:
        self._answer = answer
        self.callLater = clock.callLater  # TimeoutMixin's scheduler
        self._max_line = max_line
        self._idle_timeout = idle_timeout
        self._max_pending = max_pending
        self._in_flight = in_flight
        self._buffer = bytearray()
        self._pending: deque[_Slot] = deque()
        self._paused = False
        # False once the peer half-closed or sent a line too long: nothing more is
        # read, what is buffered is still answered, then the connection closes.
        self._accepting = True
        self._lost = False
        self._closing = False
        self._in_lines = False

    def connectionMade(self) -> None:
        self.setTimeout(self._idle_timeout)

    def dataReceived(self, data: bytes) -> None:
        if not self._accepting:
            return
        self.resetTimeout()
        self._buffer += data
        self._read_lines()

    def readConnectionLost(self) -> None:
        """The client half-closed: answer what it sent (a last line without a
        newline included), then close."""
        if self._accepting:
            self._accepting = False
            if self._buffer.strip() and not self._buffer.endswith(b"\n"):
                self._buffer += b"\n"
            self._read_lines()
        else:
            self._close_if_answered()

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()

    def timeoutConnection(self) -> None:
        if self._pending:  # waiting on the federation (a long poll) is not idle
            self.setTimeout(self._idle_timeout)
        else:
            self._closing = True
            self.transport.loseConnection()

    def connectionLost(self, reason=None) -> None:
        self._lost = True
        self.setTimeout(None)
        pending, self._pending = self._pending, deque()
        for slot in pending:
            self._ended()
            if slot.call is not None and not slot.call.called:
                slot.call.cancel()

    # -- reading ---------------------------------------------------------------

    def _read_lines(self) -> None:
        """Start the buffered requests, as many as the pending bound allows."""
        if self._in_lines:
            return  # a synchronous reply re-entered: the outer loop goes on
        self._in_lines = True
        try:
            while len(self._pending) < self._max_pending and not self._lost:
                end = self._buffer.find(b"\n")
                if end < 0:
                    if len(self._buffer) > self._max_line:
                        self._too_long()
                    break
                if end > self._max_line:
                    self._too_long()
                    break
                line = bytes(self._buffer[:end])
                del self._buffer[:end + 1]
                if line.strip():
                    self._request(line)
        finally:
            self._in_lines = False
        self._settle()

    def _too_long(self) -> None:
        self._buffer.clear()
        self._accepting = False
        error = TooLarge(f"a request line is longer than {self._max_line} bytes "
                         "(SIZE_LIMIT); closing the connection")
        self._enqueue(succeed(replies.error_reply(error, None)))

    def _request(self, line: bytes) -> None:
        try:
            action, params = read.parse_line(line.rstrip(b"\r"))
        except BadRequest as e:
            self._enqueue(succeed(replies.error_reply(e, None)))
            return
        self._enqueue(self._answer(action, params))

    def _enqueue(self, call: Deferred) -> None:
        slot = _Slot()
        self._pending.append(slot)
        if self._in_flight is not None:
            self._in_flight.started()
        slot.call = call
        call.addCallback(encode_reply).addCallbacks(self._answered, self._not_answered,
                                                    callbackArgs=(slot,),
                                                    errbackArgs=(slot,))

    def _flow(self) -> None:
        """Pause reading while too many requests are pending; resume below it."""
        if self._lost:
            return
        full = len(self._pending) >= self._max_pending
        if full and not self._paused:
            self._paused = True
            self.transport.pauseProducing()
        elif not full and self._paused:
            self._paused = False
            self.transport.resumeProducing()

    # -- writing ---------------------------------------------------------------

    def _answered(self, line: bytes, slot: _Slot) -> None:
        slot.line = line
        self._write_ready()

    def _not_answered(self, failure: Failure, slot: _Slot) -> None:
        if not failure.check(CancelledError):
            _log.failure("JSON-lines reply failed", failure)
        slot.line = b""
        self._write_ready()

    def _write_ready(self) -> None:
        """Write the replies at the head of the order that are ready."""
        if self._lost:
            return
        written = []
        while self._pending and self._pending[0].line is not None:
            written.append(self._pending.popleft().line)
            self._ended()
        if written:
            self.transport.write(b"".join(written))
        if self._in_lines:
            return  # the reading loop goes on and settles the rest
        if self._buffer:
            self._read_lines()
        else:
            self._settle()

    def _settle(self) -> None:
        """After requests started or replies went out: reading paused or resumed,
        the idle timer armed when nothing is pending, or the connection closed
        when it reads no more and all is answered."""
        self._flow()
        if not self._pending and not self._lost:
            if self._accepting:
                self.resetTimeout()  # idle from the last reply on
            else:
                self._close_if_answered()

    def _close_if_answered(self) -> None:
        if (not self._accepting and not self._pending and not self._lost
                and not self._closing and b"\n" not in self._buffer):
            self._closing = True
            self.setTimeout(None)
            self.transport.loseConnection()

    def _ended(self) -> None:
        if self._in_flight is not None:
            self._in_flight.ended()


class JsonLinesFactory(Factory):
    """Builds a :class:`JsonLinesProtocol` per connection (TCP or UNIX socket)."""

    def __init__(self, api: JsonLinesApi, clock: IReactorTime, *, max_line: int,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 max_pending: int = DEFAULT_MAX_PENDING, in_flight=None) -> None:
        self._api = api
        self._clock = clock
        self._max_line = max_line
        self._idle_timeout = idle_timeout
        self._max_pending = max_pending
        self._in_flight = in_flight

    def buildProtocol(self, addr) -> JsonLinesProtocol:
        protocol = JsonLinesProtocol(
            self._api.answer, self._clock, max_line=self._max_line,
            idle_timeout=self._idle_timeout, max_pending=self._max_pending,
            in_flight=self._in_flight)
        protocol.factory = self
        return protocol
