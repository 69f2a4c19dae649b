"""The beanstalkd protocol front-end: beanstalkd's client libraries on a federated allq.

A thin adapter: each command of beanstalkd's text protocol (``doc/protocol.txt``,
1.12) becomes calls of :class:`allq.client.federation.Federation` and its answer
a beanstalkd reply. What is connection state in beanstalkd stays here: the tube
a connection uses and the tubes it watches, the jobs it has reserved (only it
may delete, release, bury or touch them; they are released when it closes) and
the integer job ids (:mod:`allq.client.beanstalk_ids`). Queue rules stay in the
servers.

Framing: a command is one line ending in ``\\r\\n`` (at most
:data:`MAX_LINE` bytes); ``put`` is followed by its body and ``\\r\\n``.
Commands of one connection run one at a time, in order, as beanstalkd runs
them (a ``reserve`` that waits holds back the commands behind it); while one
waits for the servers, what the client sends next is buffered, and reading
stops past :data:`HIGH_WATER` bytes (a client pipelining 10,000 commands in one
write gets its answers in order, with bounded memory). The connection is also
its transport's producer: while replies pile up unread (the transport's buffer
is full), no command runs and nothing is read. A line too long is
answered ``BAD_FORMAT`` and skipped up to its end; a put's body not followed by
``\\r\\n`` is ``EXPECTED_CRLF``; a body over the maximum job size is skipped
and answered ``JOB_TOO_BIG``. A connection holding half a command for
:data:`PARTIAL_COMMAND_TIMEOUT` seconds without sending more is closed.

Where allq differs from beanstalkd, by design (README "Coming from beanstalkd"):
ids are per client process; ``release`` keeps the job's priority; the ttl is
kept by the job's server, so a job whose ttl passes goes back to ready there
(``DEADLINE_SOON`` is this connection's view of the same deadline); jobs are
put with the largest expiry limit, so neither ttl expiries nor releases bury
them (AllQueue's own REST puts keep its limit of 3).
"""

import os
import resource
import socket
from collections.abc import Callable

import attrs
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from allq import __version__
from allq.client.beanstalk_ids import JobIds
from allq.client.federation import Federation
from allq.client.records import FetchedJob
from allq.errors import (
    AllQError,
    BadRequest,
    Draining,
    NotFound,
    QueueFull,
    TooLarge,
    WrongState,
)
from allq.socket_writes import write_now
from allq.vocabulary import MAX_EXPIRED_LIMIT, MAX_PRIORITY, MAX_SECONDS, check_tube
from allq.wire.bodies import normal_body

#: beanstalkd's default ``-z``: the largest job body, in bytes.
DEFAULT_MAX_JOB_SIZE = 65_535
#: The longest command line, ``\r\n`` included (beanstalkd's is 224: a 200-byte
#: tube name and the command around it).
MAX_LINE = 224
#: Bytes buffered before a connection stops reading (beyond one put's body).
HIGH_WATER = 64 * 1024
#: Seconds a connection may hold half a command without sending more.
PARTIAL_COMMAND_TIMEOUT = 120.0
#: A reserved job is "deadline soon" this many seconds before its ttl ends.
SAFETY_MARGIN = 1.0
#: A reserve without timeout waits in rounds of this many seconds.
WAIT_ROUND = 60.0
DEFAULT_TUBE = "default"
_MAX_INT = 2**63 - 1


class _Reply(Exception):
    """A beanstalkd error line (``NOT_FOUND``, ``BAD_FORMAT``...) to answer with."""

    def __init__(self, line: bytes) -> None:
        super().__init__(line)
        self.line = line


_NOT_FOUND = b"NOT_FOUND\r\n"
_BAD_FORMAT = b"BAD_FORMAT\r\n"


def _reply_for(error: AllQError) -> bytes:
    """The beanstalkd error line of an allq error."""
    if isinstance(error, (NotFound, WrongState)):
        return _NOT_FOUND
    if isinstance(error, Draining):
        return b"DRAINING\r\n"
    if isinstance(error, QueueFull):
        return b"OUT_OF_MEMORY\r\n"
    if isinstance(error, TooLarge):
        return b"JOB_TOO_BIG\r\n"
    if isinstance(error, BadRequest):
        return _BAD_FORMAT
    return b"INTERNAL_ERROR\r\n"


def _uint(text: bytes, maximum: int = _MAX_INT) -> int:
    """An unsigned decimal integer argument, or ``BAD_FORMAT``."""
    if not text.isdigit() or len(text) > 20:
        raise _Reply(_BAD_FORMAT)
    value = int(text)
    if value > maximum:
        raise _Reply(_BAD_FORMAT)
    return value


def _tube(text: bytes) -> str:
    """A tube name argument (allq's names), or ``BAD_FORMAT``."""
    try:
        return check_tube(text.decode("ascii"))
    except (UnicodeDecodeError, AllQError):
        raise _Reply(_BAD_FORMAT) from None


def _yaml(entries) -> bytes:
    """``OK <bytes>`` and a YAML document: a dict (mapping) or a list."""
    if isinstance(entries, dict):
        lines = [f"{key}: {value}" for key, value in entries.items()]
    else:
        lines = [f"- {item}" for item in entries]
    body = ("---\n" + "".join(line + "\n" for line in lines)).encode("utf-8")
    return b"OK %d\r\n%s\r\n" % (len(body), body)


def _seconds(value: float) -> int:
    return max(int(value), 0)


@attrs.define
class _Reservation:
    """A job this connection reserved, and when its ttl ends (this client's clock)."""

    ref: str
    ttl: float
    deadline: float


class BeanstalkFactory(Factory):
    """The beanstalkd listener: shared ids and counters of every connection.

    :param federation: the servers.
    :param clock: time for ttl views, waits and stalled connections.
    :param max_job_size: the largest body taken, in bytes (beanstalkd's ``-z``).
    :param ids: the integer id map (one per client process).
    """

    _log = Logger()

    def __init__(self, federation: Federation, clock: IReactorTime,
                 max_job_size: int = DEFAULT_MAX_JOB_SIZE, ids: JobIds | None = None) -> None:
        self.federation = federation
        self.clock = clock
        self.max_job_size = max_job_size
        self.ids = ids if ids is not None else JobIds()
        self.connections: set["BeanstalkProtocol"] = set()
        self.total_connections = 0
        self.commands: dict[str, int] = {}
        self.started = clock.seconds()

    def buildProtocol(self, addr) -> "BeanstalkProtocol":
        return BeanstalkProtocol(self)

    def count(self, command: str) -> None:
        self.commands[command] = self.commands.get(command, 0) + 1


@implementer(IPushProducer)
class BeanstalkProtocol(Protocol):
    """One beanstalkd connection (and the producer of its replies)."""

    _log = Logger()

    def __init__(self, factory: BeanstalkFactory) -> None:
        self.factory = factory
        self._federation = factory.federation
        self._clock = factory.clock
        self._ids = factory.ids
        self._buffer = bytearray()
        self._busy: Deferred | None = None
        self._paused = False
        self._closed = False
        self._processing = False
        #: The transport's buffer is full: replies wait to be read.
        self._replies_waiting = False
        #: A put waiting for its body: (priority, delay, ttr, size).
        self._put: tuple[int, int, int, int] | None = None
        #: What to skip: the rest of an over-long line (up to its ``\r\n``), and
        #: the bytes left of a body too big.
        self._skip_line = False
        self._skip_bytes = 0
        self._stall = None
        #: The get of a waiting reserve (cancelled if the connection closes).
        self._get: Deferred | None = None
        self.used = DEFAULT_TUBE
        self.watched: list[str] = [DEFAULT_TUBE]
        self.reserved: dict[int, _Reservation] = {}
        self.waiting = False
        self.producer = False
        self.worker = False

    # -- connection ------------------------------------------------------------

    def connectionMade(self) -> None:
        # A reply is one write, awaited by a client that sends nothing more until it
        # comes: Nagle's algorithm would hold it for the client's delayed ACK.
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)
        self.transport.registerProducer(self, True)
        self.factory.connections.add(self)
        self.factory.total_connections += 1

    def connectionLost(self, reason=None) -> None:
        self._closed = True
        self.factory.connections.discard(self)
        self._cancel_stall()
        if self._get is not None:
            self._get.cancel()  # a waiting reserve gives up (its jobs go back)
        self._release_all()

    def _release_all(self) -> None:
        """Release at once every job this connection holds, as beanstalkd does."""
        now = self._clock.seconds()
        refs = [r.ref for r in self.reserved.values() if r.deadline > now]
        self.reserved.clear()
        if refs:
            d = self._federation.job_action_many("release", refs)
            d.addErrback(self._log_failure, "releasing the jobs of a closed connection")

    # -- IPushProducer: the transport says when replies pile up ------------------

    def pauseProducing(self) -> None:
        self._replies_waiting = True
        self._flow()

    def resumeProducing(self) -> None:
        self._replies_waiting = False
        self._process()

    def stopProducing(self) -> None:
        pass  # the connection is closing: connectionLost follows

    def _log_failure(self, failure: Failure, doing: str) -> None:
        if failure.check(AllQError):
            self._log.warn("beanstalk: {doing}: {error}", doing=doing,
                           error=failure.value.message)
        else:
            self._log.failure("beanstalk: {doing}", failure, doing=doing)

    # -- framing ---------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        self._process()

    def _process(self) -> None:
        """Run the buffered commands, in order, until one must wait."""
        if self._processing:
            return  # a command answered at once: the loop below goes on
        self._processing = True
        try:
            self._process_commands()
        finally:
            self._processing = False
        self._flow()

    def _process_commands(self) -> None:
        buffer = self._buffer
        while self._busy is None and not self._closed and not self._replies_waiting:
            if self._skip_bytes:
                skipped = min(self._skip_bytes, len(buffer))
                del buffer[:skipped]
                self._skip_bytes -= skipped
                if self._skip_bytes:
                    break
                continue
            if self._skip_line:
                end = buffer.find(b"\r\n")
                if end < 0:
                    del buffer[:max(len(buffer) - 1, 0)]  # keep a lone trailing \r
                    break
                del buffer[:end + 2]
                self._skip_line = False
                continue
            if self._put is not None:
                size = self._put[3]
                if len(buffer) < size + 2:
                    break
                body = bytes(buffer[:size])
                crlf = buffer[size:size + 2]
                del buffer[:size + 2]
                put, self._put = self._put, None
                if crlf != b"\r\n":
                    self._answer(b"EXPECTED_CRLF\r\n")
                else:
                    self._run("put", lambda: self._do_put(put, body))
                continue
            end = buffer.find(b"\r\n", 0, MAX_LINE)
            if end < 0:
                if len(buffer) >= MAX_LINE:
                    self._skip_line = True
                    self._answer(_BAD_FORMAT)
                    continue
                break
            line = bytes(buffer[:end])
            del buffer[:end + 2]
            self._command(line)

    def _flow(self) -> None:
        """Stop reading while too much waits in the buffer; watch for a stall."""
        waiting = len(self._buffer)
        if self._put is not None:
            waiting -= self._put[3] + 2
        hold = waiting > HIGH_WATER or self._replies_waiting
        if hold and not self._paused:
            self._paused = True
            self.transport.pauseProducing()
        elif not hold and self._paused:
            self._paused = False
            self.transport.resumeProducing()
        self._cancel_stall()
        partial = (self._buffer or self._put is not None or self._skip_bytes
                   or self._skip_line)
        if partial and self._busy is None and not self._replies_waiting and not self._closed:
            self._stall = self._clock.callLater(PARTIAL_COMMAND_TIMEOUT, self._stalled)

    def _stalled(self) -> None:
        self._stall = None
        self._log.info("beanstalk: closing a connection that sent half a command "
                       "and nothing more for {seconds:g} s", seconds=PARTIAL_COMMAND_TIMEOUT)
        self.transport.loseConnection()

    def _cancel_stall(self) -> None:
        if self._stall is not None:
            if self._stall.active():
                self._stall.cancel()
            self._stall = None

    def _answer(self, reply: bytes) -> None:
        if not self._closed:
            write_now(self.transport, reply)

    def _run(self, name: str, command: Callable[[], object]) -> None:
        """Run one command: answer at once, or once its Deferred fires."""
        self.factory.count(name)
        try:
            result = command()
        except _Reply as reply:
            self._answer(reply.line)
            return
        except AllQError as error:
            self._answer(_reply_for(error))
            return
        if not isinstance(result, Deferred):
            self._answer(result)
            return
        self._busy = result
        result.addCallbacks(self._answer, self._failed, errbackArgs=(name,))
        result.addBoth(self._done)

    def _failed(self, failure: Failure, name: str) -> None:
        if failure.check(_Reply):
            self._answer(failure.value.line)
        elif failure.check(AllQError):
            self._answer(_reply_for(failure.value))
        elif failure.check(CancelledError) and self._closed:
            pass  # the connection went away while the command waited
        else:
            self._log.failure("beanstalk: {command} failed", failure, command=name)
            self._answer(b"INTERNAL_ERROR\r\n")

    def _done(self, _) -> None:
        self._busy = None
        if not self._closed:
            self._process()

    # -- commands --------------------------------------------------------------

    def _command(self, line: bytes) -> None:
        words = line.split(b" ")
        name = words[0].decode("ascii", "replace")
        if name == "put":
            self._start_put(words)
            return
        handler = _COMMANDS.get(name)
        if handler is None:
            self.factory.count("unknown")
            self._answer(b"UNKNOWN_COMMAND\r\n")
            return
        method, arity = handler
        args = words[1:]
        if len(args) != arity or any(not arg for arg in args):
            self.factory.count(name)
            self._answer(_BAD_FORMAT)
            return
        self._run(name, lambda: method(self, *args))

    def _start_put(self, words: list[bytes]) -> None:
        try:
            if len(words) != 5:
                raise _Reply(_BAD_FORMAT)
            priority = _uint(words[1], MAX_PRIORITY)
            delay = _uint(words[2], int(MAX_SECONDS))
            ttr = _uint(words[3], int(MAX_SECONDS))
            size = _uint(words[4])
        except _Reply as reply:
            self.factory.count("put")
            self._answer(reply.line)
            return
        if size > self.factory.max_job_size:
            self.factory.count("put")
            self._skip_bytes = size + 2
            self._answer(b"JOB_TOO_BIG\r\n")
            return
        self._put = (priority, delay, ttr, size)

    def _do_put(self, put: tuple[int, int, int, int], body: bytes) -> Deferred:
        priority, delay, ttr, _ = put
        self.producer = True
        d = self._federation.put(self.used, normal_body(body), priority=priority,
                                 ttl=max(ttr, 1), delay=delay,
                                 expired_limit=MAX_EXPIRED_LIMIT)
        return d.addCallback(lambda ref: b"INSERTED %d\r\n" % self._ids.id_for(ref))

    def _use(self, tube: bytes) -> bytes:
        self.used = _tube(tube)
        return b"USING %s\r\n" % tube

    def _watch(self, tube: bytes) -> bytes:
        name = _tube(tube)
        if name not in self.watched:
            self.watched.append(name)
        return b"WATCHING %d\r\n" % len(self.watched)

    def _ignore(self, tube: bytes) -> bytes:
        name = _tube(tube)
        if name in self.watched:
            if len(self.watched) == 1:
                return b"NOT_IGNORED\r\n"
            self.watched.remove(name)
        return b"WATCHING %d\r\n" % len(self.watched)

    # -- reserving -------------------------------------------------------------

    def _reserve(self) -> Deferred:
        return self._reserve_within(None)

    def _reserve_with_timeout(self, seconds: bytes) -> Deferred:
        return self._reserve_within(float(_uint(seconds, int(MAX_SECONDS))))

    def _soonest_deadline(self, now: float) -> float | None:
        """The earliest ttl end of this connection's reservations (forgetting
        the ones whose ttl passed: their servers took them back)."""
        for job_id in [i for i, r in self.reserved.items() if r.deadline <= now]:
            del self.reserved[job_id]
        return min((r.deadline for r in self.reserved.values()), default=None)

    def _reserve_within(self, timeout: float | None) -> Deferred:
        self.worker = True
        if timeout == 0 and not self.reserved:  # the common poll: one pass, no wait
            return self._federation.get_any(self.watched).addCallback(self._polled)
        return Deferred.fromCoroutine(self._reserving(timeout))

    def _polled(self, jobs: list[FetchedJob]) -> bytes:
        return self._reserved_reply(jobs[0]) if jobs else b"TIMED_OUT\r\n"

    async def _reserving(self, timeout: float | None) -> bytes:
        clock = self._clock
        end = None if timeout is None else clock.seconds() + timeout
        while True:
            now = clock.seconds()
            soonest = self._soonest_deadline(now)
            if soonest is not None and soonest - now <= SAFETY_MARGIN:
                return b"DEADLINE_SOON\r\n"
            wait = WAIT_ROUND if end is None else max(end - now, 0.0)
            if soonest is not None:
                wait = min(wait, soonest - SAFETY_MARGIN - now)
            self.waiting = wait > 0
            self._get = self._federation.get_any(self.watched, wait=wait)
            try:
                jobs = await self._get
            finally:
                self.waiting = False
                self._get = None
            if jobs:
                return self._reserved_reply(jobs[0])
            if end is not None and clock.seconds() >= end:
                return b"TIMED_OUT\r\n"

    def _reserved_reply(self, job: FetchedJob) -> bytes:
        """Hold the job for this connection and answer ``RESERVED``."""
        job_id = self._ids.id_for(job.job_id)
        if self._closed:  # the connection went away meanwhile: give it back
            d = self._federation.job_action("release", job.job_id)
            d.addErrback(self._log_failure, "releasing a job reserved for a closed connection")
            return b""
        self.reserved[job_id] = _Reservation(job.job_id, job.ttl,
                                             self._clock.seconds() + job.ttl)
        body = job.body.encode("utf-8") if isinstance(job.body, str) else job.body
        return b"RESERVED %d %d\r\n%s\r\n" % (job_id, len(body), body)

    def _reserve_job(self, job_id: bytes) -> Deferred:
        self.worker = True
        ref = self._ref(job_id)
        return self._federation.reserve_job(ref).addCallback(self._reserved_reply)

    # -- job commands ----------------------------------------------------------

    def _ref(self, job_id: bytes) -> str:
        ref = self._ids.ref_for(_uint(job_id))
        if ref is None:
            raise _Reply(_NOT_FOUND)
        return ref

    def _mine(self, job_id: bytes) -> tuple[int, _Reservation]:
        """A job reserved by this connection (``NOT_FOUND`` for any other)."""
        number = _uint(job_id)
        reservation = self.reserved.get(number)
        if reservation is None or reservation.deadline <= self._clock.seconds():
            self.reserved.pop(number, None)
            raise _Reply(_NOT_FOUND)
        return number, reservation

    def _delete(self, job_id: bytes) -> Deferred:
        number = _uint(job_id)
        reservation = self.reserved.pop(number, None)
        if reservation is not None and reservation.deadline > self._clock.seconds():
            d = self._federation.job_action("delete", reservation.ref)
        else:
            # Any job but one reserved by another connection may be deleted.
            ref = self._ref(job_id)
            d = self._federation.job_stats(ref)
            d.addCallback(self._delete_unreserved, ref)
        return d.addCallback(self._deleted, number)

    def _delete_unreserved(self, stats, ref: str) -> Deferred:
        if stats.state == "reserved":
            raise _Reply(_NOT_FOUND)
        return self._federation.job_action("delete", ref)

    def _deleted(self, _, number: int) -> bytes:
        self._ids.forget(number)
        return b"DELETED\r\n"

    def _release(self, job_id: bytes, priority: bytes, delay: bytes) -> Deferred:
        _uint(priority, MAX_PRIORITY)  # checked; allq keeps the job's priority
        seconds = _uint(delay, int(MAX_SECONDS))
        number, reservation = self._mine(job_id)
        del self.reserved[number]
        d = self._federation.job_action("release", reservation.ref, delay=seconds)
        return d.addCallback(lambda _: b"RELEASED\r\n")

    def _bury(self, job_id: bytes, priority: bytes) -> Deferred:
        _uint(priority, MAX_PRIORITY)
        number, reservation = self._mine(job_id)
        del self.reserved[number]
        return self._federation.job_action("bury", reservation.ref).addCallback(
            lambda _: b"BURIED\r\n")

    def _touch(self, job_id: bytes) -> Deferred:
        number, reservation = self._mine(job_id)

        def touched(_) -> bytes:
            reservation.deadline = self._clock.seconds() + reservation.ttl
            return b"TOUCHED\r\n"

        return self._federation.job_action("touch", reservation.ref).addCallback(touched)

    def _kick_job(self, job_id: bytes) -> Deferred:
        return self._federation.job_action("kick", self._ref(job_id)).addCallback(
            lambda _: b"KICKED\r\n")

    def _kick(self, bound: bytes) -> Deferred | bytes:
        count = min(_uint(bound), 2**31)
        if count == 0:
            return b"KICKED 0\r\n"
        return Deferred.fromCoroutine(self._kicking(count))

    async def _kicking(self, count: int) -> bytes:
        # beanstalkd kicks buried jobs when the tube has any, else delayed ones.
        kicked = await self._federation.kick_tube(self.used, count)
        if not kicked:
            kicked = await self._federation.kick_tube(self.used, count, delayed=True)
        return b"KICKED %d\r\n" % len(kicked)

    # -- peeking ---------------------------------------------------------------

    def _found(self, job: FetchedJob | None) -> bytes:
        if job is None:
            return _NOT_FOUND
        body = job.body.encode("utf-8") if isinstance(job.body, str) else job.body
        return b"FOUND %d %d\r\n%s\r\n" % (self._ids.id_for(job.job_id), len(body), body)

    def _peek(self, job_id: bytes) -> Deferred:
        return self._federation.peek_job(self._ref(job_id)).addCallback(self._found)

    def _peek_ready(self) -> Deferred:
        d = Deferred.fromCoroutine(self._federation.peek_most_urgent(self.used))
        return d.addCallback(self._found)

    def _peek_buried(self) -> Deferred:
        d = Deferred.fromCoroutine(self._federation.peek(self.used, buried=True))
        return d.addCallback(self._found)

    def _peek_delayed(self) -> Deferred:
        d = Deferred.fromCoroutine(self._federation.peek_delayed(self.used))
        return d.addCallback(self._found)

    # -- stats -----------------------------------------------------------------

    def _stats_job(self, job_id: bytes) -> Deferred:
        number = _uint(job_id)
        return self._federation.job_stats(self._ref(job_id)).addCallback(
            self._job_stats_reply, number)

    def _job_stats_reply(self, stats, number: int) -> bytes:
        state = {"waiting": "delayed"}.get(stats.state, stats.state)
        return _yaml({
            "id": number, "tube": stats.tube, "state": state, "pri": stats.priority,
            "age": _seconds(stats.age), "delay": _seconds(stats.delay),
            "ttr": _seconds(stats.ttl), "time-left": _seconds(stats.time_left), "file": 0,
            "reserves": stats.reserves, "timeouts": stats.timeouts,
            "releases": stats.releases, "buries": stats.buries, "kicks": stats.kicks,
        })

    def _stats_tube(self, tube: bytes) -> Deferred:
        name = _tube(tube)
        return Deferred.fromCoroutine(self._federation.stats()).addCallback(
            self._tube_stats_reply, name)

    def _tube_stats_reply(self, servers, name: str) -> bytes:
        tubes = [t for server in servers for t in server.tubes if t.tube == name]
        if not tubes and name != DEFAULT_TUBE:  # "default" always exists
            raise _Reply(_NOT_FOUND)
        connections = self.factory.connections
        paused = any(t.paused for t in tubes)
        ready = sum(t.ready for t in tubes)
        return _yaml({
            "name": name,
            "current-jobs-urgent": 0,
            "current-jobs-ready": ready,
            "current-jobs-reserved": sum(t.reserved for t in tubes),
            "current-jobs-delayed": sum(t.delayed for t in tubes),
            "current-jobs-buried": sum(t.buried for t in tubes),
            "total-jobs": sum(t.ready + t.reserved + t.delayed + t.buried for t in tubes),
            "current-using": sum(1 for c in connections if c.used == name),
            "current-watching": sum(1 for c in connections if name in c.watched),
            "current-waiting": sum(1 for c in connections if c.waiting and name in c.watched),
            "cmd-delete": self.factory.commands.get("delete", 0),
            "cmd-pause-tube": self.factory.commands.get("pause-tube", 0),
            "pause": _seconds(max((t.pause_time_left for t in tubes), default=0))
            if paused else 0,
            "pause-time-left": _seconds(max((t.pause_time_left for t in tubes), default=0)),
        })

    def _stats(self) -> Deferred:
        return Deferred.fromCoroutine(self._federation.stats()).addCallback(self._stats_reply)

    def _stats_reply(self, servers) -> bytes:
        factory = self.factory
        tubes = [t for server in servers for t in server.tubes]
        connections = factory.connections
        usage = resource.getrusage(resource.RUSAGE_SELF)
        entries = {
            "current-jobs-urgent": 0,
            "current-jobs-ready": sum(t.ready for t in tubes),
            "current-jobs-reserved": sum(t.reserved for t in tubes),
            "current-jobs-delayed": sum(t.delayed for t in tubes),
            "current-jobs-buried": sum(t.buried for t in tubes),
        }
        for name in _STATS_COMMANDS:
            entries["cmd-" + name] = factory.commands.get(name, 0)
        entries.update({
            "job-timeouts": 0,
            "total-jobs": sum(int(s.totals.get("job_put", 0)) for s in servers),
            "max-job-size": factory.max_job_size,
            "current-tubes": len({t.tube for t in tubes}),
            "current-connections": len(connections),
            "current-producers": sum(1 for c in connections if c.producer),
            "current-workers": sum(1 for c in connections if c.worker),
            "current-waiting": sum(1 for c in connections if c.waiting),
            "total-connections": factory.total_connections,
            "pid": os.getpid(),
            "version": f'"allq {__version__}"',
            "rusage-utime": f"{usage.ru_utime:.6f}",
            "rusage-stime": f"{usage.ru_stime:.6f}",
            "uptime": _seconds(self._clock.seconds() - factory.started),
            "binlog-oldest-index": 0,
            "binlog-current-index": 0,
            "binlog-records-migrated": 0,
            "binlog-records-written": 0,
            "binlog-max-size": 0,
            "draining": "false",
            "id": ",".join(s.server_id for s in servers),
            "hostname": socket.gethostname(),
            "os": os.uname().sysname,
            "platform": os.uname().machine,
        })
        return _yaml(entries)

    def _list_tubes(self) -> Deferred:
        return Deferred.fromCoroutine(self._federation.stats()).addCallback(
            lambda servers: _yaml(sorted({t.tube for s in servers for t in s.tubes}
                                         | {DEFAULT_TUBE})))

    def _list_tube_used(self) -> bytes:
        return b"USING %s\r\n" % self.used.encode("ascii")

    def _list_tubes_watched(self) -> bytes:
        return _yaml(self.watched)

    def _pause_tube(self, tube: bytes, delay: bytes) -> Deferred:
        name = _tube(tube)
        seconds = _uint(delay, int(MAX_SECONDS))
        return Deferred.fromCoroutine(self._pausing(name, seconds))

    async def _pausing(self, name: str, seconds: int) -> bytes:
        servers = await self._federation.stats()
        if name != DEFAULT_TUBE and not any(t.tube == name for s in servers for t in s.tubes):
            return _NOT_FOUND
        if seconds:
            await self._federation.pause(name, True, delay=seconds)
        else:
            await self._federation.pause(name, False)
        return b"PAUSED\r\n"

    def _quit(self) -> bytes:
        self.transport.loseConnection()
        return b""


#: command name → (method, number of arguments).
_COMMANDS: dict[str, tuple[Callable, int]] = {
    "use": (BeanstalkProtocol._use, 1),
    "reserve": (BeanstalkProtocol._reserve, 0),
    "reserve-with-timeout": (BeanstalkProtocol._reserve_with_timeout, 1),
    "reserve-job": (BeanstalkProtocol._reserve_job, 1),
    "delete": (BeanstalkProtocol._delete, 1),
    "release": (BeanstalkProtocol._release, 3),
    "bury": (BeanstalkProtocol._bury, 2),
    "touch": (BeanstalkProtocol._touch, 1),
    "watch": (BeanstalkProtocol._watch, 1),
    "ignore": (BeanstalkProtocol._ignore, 1),
    "peek": (BeanstalkProtocol._peek, 1),
    "peek-ready": (BeanstalkProtocol._peek_ready, 0),
    "peek-delayed": (BeanstalkProtocol._peek_delayed, 0),
    "peek-buried": (BeanstalkProtocol._peek_buried, 0),
    "kick": (BeanstalkProtocol._kick, 1),
    "kick-job": (BeanstalkProtocol._kick_job, 1),
    "stats-job": (BeanstalkProtocol._stats_job, 1),
    "stats-tube": (BeanstalkProtocol._stats_tube, 1),
    "stats": (BeanstalkProtocol._stats, 0),
    "list-tubes": (BeanstalkProtocol._list_tubes, 0),
    "list-tube-used": (BeanstalkProtocol._list_tube_used, 0),
    "list-tubes-watched": (BeanstalkProtocol._list_tubes_watched, 0),
    "pause-tube": (BeanstalkProtocol._pause_tube, 2),
    "quit": (BeanstalkProtocol._quit, 0),
}
_STATS_COMMANDS = ["put", "peek", "peek-ready", "peek-delayed", "peek-buried", "reserve",
                   "reserve-with-timeout", "touch", "use", "watch", "ignore", "delete",
                   "release", "bury", "kick", "stats", "stats-job", "stats-tube",
                   "list-tubes", "list-tube-used", "list-tubes-watched", "pause-tube"]


class BeanstalkConnections(Service):
    """Closes every beanstalkd connection when the client stops (their waiting
    reserves give up, their reserved jobs are released while the servers are
    still linked)."""

    def __init__(self, factory: BeanstalkFactory) -> None:
        self._factory = factory

    def stopService(self):
        super().stopService()
        for connection in list(self._factory.connections):
            connection.transport.loseConnection()
            connection.connectionLost()
