"""The client's metrics over HTTP: request timing and the ``/metrics`` resource.

* :class:`TimedResource` wraps the REST resource and observes each request from
  ``render`` until the response is finished, labelled by method, route (the
  Klein rule, so paths stay a bounded set; anything unknown is ``other``) and
  status class.
* :class:`MetricsResource` answers ``GET /metrics`` from a registry's exposition.

The metrics object both take is :class:`allq.client.metrics.ClientMetrics` in
the primary process, or a worker's stand-in (:mod:`allq.client.workers`).
"""

from collections.abc import Iterable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from werkzeug.exceptions import HTTPException

from allq.client.http import json_response
from allq.client.http_request import when_done

#: Methods that get their own label value; others are ``other`` (bounded labels).
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


class RouteNames:
    """Maps a request to its route template, so latency labels stay a bounded set.

    :param url_map: the Klein app's ``url_map`` (``RestApi.app.url_map``); rules
        with converters are matched by werkzeug, the rest by a set lookup.
    """

    OTHER = "other"

    def __init__(self, url_map: Any) -> None:
        rules = list(url_map.iter_rules())
        self._static = frozenset(rule.rule for rule in rules if not rule.arguments)
        self._dynamic = any(rule.arguments for rule in rules)
        self._adapter = url_map.bind("allq.invalid", "/")

    @classmethod
    def of(cls, paths: Iterable[str]) -> "RouteNames":
        """Names for a fixed list of plain paths (tests, or a non-Klein resource)."""
        from werkzeug.routing import Map, Rule

        return cls(Map([Rule(path, endpoint=path) for path in paths]))

    def name(self, method: str, path: bytes) -> str:
        """The route template ``path`` matches, or ``other``."""
        try:
            text = path.decode("utf-8")
        except UnicodeDecodeError:
            return self.OTHER
        text = text.rstrip("/") or "/"  # the API serves /job/ as /job
        if text in self._static:
            return text
        if not self._dynamic:
            return self.OTHER
        try:
            rule, _ = self._adapter.match(text, method=method, return_rule=True)
        except HTTPException:
            return self.OTHER
        return rule.rule


class TimedResource(Resource):
    """Observes how long each request to ``inner`` takes, until its response ends.

    :param inner: a leaf resource (the REST facade's).
    :param metrics: where observations go.
    :param routes: names the route of each request.
    :param clock: the time source.
    """

    isLeaf = True

    def __init__(self, inner: IResource, metrics: Any, routes: RouteNames,
                 clock: IReactorTime) -> None:
        super().__init__()
        self._inner = inner
        self._metrics = metrics
        self._routes = routes
        self._clock = clock

    def render(self, request: IRequest) -> bytes | int:
        started = self._clock.seconds()
        method = request.method.decode("ascii", "replace")
        method = method if method in _METHODS else "other"
        route = self._routes.name(method, request.path)

        def finished(completed: bool) -> None:
            status = f"{int(request.code) // 100}xx" if completed else "aborted"
            self._metrics.observe_request(method, route, status,
                                          self._clock.seconds() - started)

        when_done(request, finished)
        return self._inner.render(request)


class MetricsResource(Resource):
    """``GET /metrics``: the registry in Prometheus (or OpenMetrics) text format."""

    isLeaf = True

    def __init__(self, metrics: Any) -> None:
        super().__init__()
        self._metrics = metrics

    def render(self, request: IRequest) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return json_response(request, {
                "error": "method_not_allowed", "detail": "/metrics accepts GET"}, 405)
        accept = request.getHeader(b"accept")
        body, content_type = self._metrics.exposition(
            None if accept is None else accept.decode("latin-1"))
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return body
