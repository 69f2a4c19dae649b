"""The job routes without Klein: exact (method, path) lookups for the hot path.

Klein binds a werkzeug URL map, adapts the request and wraps the handler in two
``maybeDeferred`` per call, about a fifth of a ``/job`` call's CPU. A
:class:`FastRouter` serves a few routes (the REST facade's job routes) by exact
method and path, calling the very methods Klein would, and answers their
Deferred as Klein would: an error becomes its JSON body, and a client that
goes away cancels the call. Every other request (and the 405s and other
spellings of the fast paths) goes to Klein.

It also answers a JSON 400 for a URL Klein cannot decode (Klein would log an
error and answer plain text), and serves every route with trailing slashes too
(``/job/`` is ``/job``, as in AllQueue, which ignored slashes in paths).
"""

from collections.abc import Callable

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from allq.client.http import json_response
from allq.client.http_request import when_done

_log = Logger()

#: A route: reads the request, returns a Deferred firing with the response body.
Route = Callable[[IRequest], Deferred]
#: Renders a route's failure as an error response body.
Failed = Callable[[Failure, IRequest], bytes]


def request_path(request: IRequest) -> str:
    """The request's path as text, for messages and logs."""
    return request.path.decode("utf-8", "replace")[:200]


def drop_trailing_slashes(request: IRequest) -> None:
    """Read ``/job/`` (or ``/job//``) as ``/job``, for the routes and for Klein,
    which sees the path through ``postpath``."""
    path = request.path
    if len(path) > 1 and path.endswith(b"/"):
        request.path = path.rstrip(b"/") or b"/"
        while len(request.postpath) > 1 and request.postpath[-1] == b"":
            request.postpath.pop()


class FastRouter(Resource):
    """Serves ``routes`` directly and every other request through ``klein``.

    :param klein: the Klein app's resource.
    :param routes: ``(method, path)`` → route.
    :param failed: renders a route's failure (the facade's error handlers).
    """

    isLeaf = True

    def __init__(self, klein: IResource, routes: dict[tuple[bytes, bytes], Route],
                 failed: Failed) -> None:
        super().__init__()
        self._klein = klein
        self._routes = routes
        self._failed = failed

    def render(self, request: IRequest) -> bytes | int:
        drop_trailing_slashes(request)
        route = self._routes.get((request.method, request.path))
        if route is None:
            return self._render_klein(request)
        try:
            d = route(request)
        except Exception:
            return self._failed(Failure(), request)
        _Answer(self._failed, request, d)
        return NOT_DONE_YET

    def _render_klein(self, request: IRequest) -> bytes | int:
        try:
            for segment in request.prepath + request.postpath:
                segment.decode("utf-8")
            request.getRequestHostname().decode("utf-8")
        except UnicodeDecodeError:
            return json_response(
                request, {"error": "bad_request", "detail": "the URL is not valid UTF-8"}, 400)
        return self._klein.render(request)


class _Answer:
    """Writes a fast route's outcome to its request, unless the client is gone."""

    __slots__ = ("_render_failure", "_request", "_call", "_gone")

    def __init__(self, render_failure: Failed, request: IRequest, call: Deferred) -> None:
        self._render_failure = render_failure
        self._request = request
        self._call = call
        self._gone = False
        when_done(request, self._ended)
        call.addCallbacks(self._write, self._failed)

    def _ended(self, completed: bool) -> None:
        if not completed:
            self._gone = True
            self._call.cancel()

    def _failed(self, failure: Failure) -> None:
        if not self._gone:
            self._write(self._render_failure(failure, self._request))
        elif not failure.check(CancelledError):
            _log.failure("error after the client went away from {path}", failure,
                         path=request_path(self._request))

    def _write(self, data: bytes) -> None:
        if not self._gone:
            self._request.write(data)
            self._request.finish()
