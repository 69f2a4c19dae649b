"""The client's HTTP site: dashboard, metrics and the REST API under one root.

:func:`build_site` puts the web dashboard at ``/`` and ``/static/*``, the
Prometheus exposition at ``/metrics`` and hands every other path, untouched, to
the REST facade's resource (timed by the metrics). Routing only: no request is
answered here.
"""

from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from allq.client.admin_token import TokenGuard
from allq.client.http_guard import HostGuard
from allq.client.metrics import ClientMetrics
from allq.client.metrics_http import RouteNames
from allq.speedups import http_head


class SiteRoot(Resource):
    """Dispatches on the first path segment; a leaf, so the REST resource sees
    the request's path exactly as if it were the root itself.

    Every request is first checked by the :class:`HostGuard` (DNS rebinding and
    cross-site requests are refused before any route sees them), then, with an
    admin token, by its :class:`TokenGuard`: nothing but the dashboard's static
    files (the page and its script and style) is served without the token.

    :param api: the REST facade's resource.
    :param metrics: the ``/metrics`` resource, or ``None`` for none.
    :param dashboard: serves ``/`` and ``/static/*``, or ``None`` for none.
    :param guard: which ``Host`` and ``Origin`` values are served.
    :param token: the admin token's guard, or ``None`` (no token needed).
    """

    isLeaf = True

    def __init__(self, api: IResource, metrics: IResource | None = None,
                 dashboard: IResource | None = None, guard: HostGuard = HostGuard(),
                 token: TokenGuard | None = None) -> None:
        super().__init__()
        self._api = api
        self._metrics = metrics
        self._dashboard = dashboard
        self._guard = guard
        self._token = token

    def render(self, request: IRequest) -> bytes | int:
        refusal = self._guard.refusal(request)
        if refusal is not None:
            return refusal
        segments = request.postpath
        if self._dashboard is not None and (segments == [b""] or segments[:1] == [b"static"]):
            # The page's own files hold no data and a browser cannot send a token
            # when it opens a page: the page asks for it and sends it on every call.
            return self._dashboard.render(request)
        if self._token is not None:
            refusal = self._token.refusal(request)
            if refusal is not None:
                return refusal
        if self._metrics is not None and segments == [b"metrics"]:
            return self._metrics.render(request)
        return self._api.render(request)


class OneWriteHTTPChannel(HTTPChannel):
    """An HTTP/1.1 channel that hands a response's status line and headers to the
    transport as one string, and asks the transport for its addresses once.

    twisted.web passes them as some 25 small pieces to ``writeSequence``, which
    type-checks each: several percent of a small JSON answer's CPU. The site uses
    this channel directly rather than twisted.web's HTTP/2-negotiating wrapper,
    which only matters behind TLS with ALPN (the client serves plain HTTP on
    localhost).
    """

    _host = None
    _peer = None

    # Every Request asks for both addresses; a TCP transport answers each with a
    # system call. They cannot change while the connection lives.

    def getHost(self):
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def getPeer(self):
        if self._peer is None:
            self._peer = super().getPeer()
        return self._peer

    def writeHeaders(self, version, code, reason, headers) -> None:
        if not isinstance(headers, Headers):
            super().writeHeaders(version, code, reason, headers)
            return
        self.transport.write(http_head(version, code, reason, headers.getAllRawHeaders()))


def build_site(api_resource: IResource, metrics: ClientMetrics | None,
               dashboard: IResource | None, *, routes: RouteNames | None = None,
               site_class: type[Site] = Site, guard: HostGuard = HostGuard(),
               admin_token: str | None = None) -> Site:
    """The client's :class:`Site`.

    :param api_resource: ``RestApi(...).resource()``.
    :param metrics: serves ``/metrics`` and times the API's requests; ``None``: neither.
    :param dashboard: a :class:`allq.client.dashboard.Dashboard`; ``None``: no page.
    :param routes: names API routes for the latency labels; by default the rules
        of :class:`allq.client.rest.RestApi`'s Klein app.
    :param site_class: e.g. a ``Site`` subclass that writes no access log.
    :param guard: which ``Host`` and ``Origin`` values are served.
    :param admin_token: every request must carry it (``Authorization: Bearer``);
        ``None``: none needed.
    """
    api = api_resource
    metrics_resource = None
    if metrics is not None:
        if routes is None:
            from allq.client.rest import RestApi

            routes = RouteNames(RestApi.app.url_map)
        api = metrics.instrument(api_resource, routes)
        metrics_resource = metrics.resource()
    token = None if admin_token is None else TokenGuard(admin_token)
    site = site_class(SiteRoot(api, metrics_resource, dashboard, guard, token))
    site.protocol = OneWriteHTTPChannel
    site.noisy = False
    return site
