"""Graceful shutdown of ``twistd allq-client``.

On SIGTERM the client stops accepting HTTP, answers waiting long polls with no
job, lets the HTTP calls already in flight finish (for at most a grace period),
and only then closes its links to the servers. Without this ordering the
calls in flight would fail as the links close under them.
"""

from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from allq.client.http_request import ClientRequest, request_class

DEFAULT_GRACE = 10.0
_POLL = 0.05


class InFlight:
    """Counts HTTP requests between their arrival and their last byte."""

    def __init__(self) -> None:
        self.count = 0

    def request_factory(self, max_body: int | None = None) -> type[ClientRequest]:
        """A ``Site.requestFactory`` whose requests are counted here (and take
        bodies of at most ``max_body`` bytes)."""
        return request_class(self, max_body)

    def started(self) -> None:
        self.count += 1

    def ended(self) -> None:
        self.count -= 1

    async def idle(self, clock: IReactorTime, grace: float) -> None:
        """Wait until no request is in flight, or ``grace`` seconds."""
        deadline = clock.seconds() + grace
        while self.count > 0 and clock.seconds() < deadline:
            await deferLater(clock, _POLL, lambda: None)


class GracefulClient(MultiService):
    """The client's top service: stops HTTP first, the server links last.

    :param http: the listening HTTP service (a child of this one).
    :param in_flight: the counter of HTTP requests being answered.
    :param end_long_polls: answers every waiting long poll at once.
    :param grace: seconds in-flight calls may take to finish.
    """

    _log = Logger()

    def __init__(self, http: IService | None, in_flight: InFlight, end_long_polls,
                 clock: IReactorTime, grace: float = DEFAULT_GRACE) -> None:
        super().__init__()
        self._http = http
        self._in_flight = in_flight
        self._end_long_polls = end_long_polls
        self._clock = clock
        self._grace = grace
        self._workers: IService | None = None

    @property
    def in_flight(self) -> InFlight:
        """The counter of requests being answered (HTTP, and JSON lines too)."""
        return self._in_flight

    def set_http(self, http: IService) -> None:
        """Name the HTTP service (already a child) to stop first."""
        self._http = http

    def set_workers(self, workers: IService) -> None:
        """Name the worker processes' service (already a child): they are told to
        stop as HTTP stops here, and the links close only once they are gone."""
        self._workers = workers

    def stopService(self) -> Deferred:
        d = maybeDeferred(self._http.disownServiceParent)  # stops listening
        workers_gone = None
        if self._workers is not None:
            workers_gone = maybeDeferred(self._workers.disownServiceParent)
        d.addCallback(lambda _: self._end_long_polls())
        d.addCallback(lambda _: Deferred.fromCoroutine(
            self._in_flight.idle(self._clock, self._grace)))
        d.addCallback(self._report)
        if workers_gone is not None:
            d.addCallback(lambda _: workers_gone)
        d.addCallback(lambda _: super(GracefulClient, self).stopService())
        return d

    def _report(self, _) -> None:
        if self._in_flight.count:
            self._log.warn("stopping with {n} HTTP requests still unanswered after {grace:g} s",
                           n=self._in_flight.count, grace=self._grace)
