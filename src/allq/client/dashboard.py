"""The client's web dashboard: ``GET /`` and ``GET /static/<file>``.

Serves the plain HTML, JavaScript and CSS files shipped in
``allq/client/static/`` (package data; no build step). The page itself talks
only to the same origin's REST API (``/health``, ``/stats``, ``/kick``,
``/pause``, ``/unpause``, ``/tube``, ``/peek``), polling every couple of seconds.

The files are read once, when the resource is built, and only files that exist
in that directory at that time are served, so no request can name a path
outside it. Every response forbids framing and inline scripts
(``Content-Security-Policy``), so the page's buttons cannot be clicked through
another site and job text can never run as script. This module knows nothing
about jobs or servers.
"""

import hashlib
import re
from importlib.resources import files

from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from allq.client.rest import json_response

#: File names the static directory may serve (no directories, no dot files).
_STATIC_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".ico": b"image/x-icon",
}
SECURITY_HEADERS = {
    b"content-security-policy": (
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
    b"x-frame-options": b"DENY",
}
INDEX = "index.html"


class Dashboard(Resource):
    """``/`` (the page) and ``/static/<name>`` (its files), read from ``static``.

    :param static: a directory (any ``importlib.resources`` traversable) holding
        ``index.html`` and the files it loads; by default the package's own.
    :raises FileNotFoundError: ``index.html`` is missing (a broken install).
    """

    isLeaf = True

    def __init__(self, static=None) -> None:
        super().__init__()
        directory = files("allq.client") / "static" if static is None else static
        self._files: dict[str, tuple[bytes, bytes, bytes]] = {}
        for entry in directory.iterdir():
            suffix = "." + entry.name.rpartition(".")[2]
            if (entry.is_file() and _STATIC_NAME.fullmatch(entry.name)
                    and suffix in CONTENT_TYPES):
                body = entry.read_bytes()
                etag = b'"' + hashlib.sha256(body).hexdigest()[:20].encode("ascii") + b'"'
                self._files[entry.name] = (body, CONTENT_TYPES[suffix], etag)
        if INDEX not in self._files:
            raise FileNotFoundError(f"dashboard page {INDEX} is missing from {directory}")

    def render(self, request: IRequest) -> bytes:
        """Serve the page for ``/`` and a file for ``/static/<name>``; 404 otherwise."""
        segments = request.postpath
        if segments == [b""]:
            name = INDEX
        elif len(segments) == 2 and segments[0] == b"static":
            name = segments[1].decode("ascii", "replace")
        else:
            name = None
        found = self._files.get(name) if name is not None else None
        if found is None:
            return json_response(request, {
                "error": "not_found",
                "detail": f"no dashboard file {request.path.decode('utf-8', 'replace')[:200]}"},
                404)
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return json_response(request, {
                "error": "method_not_allowed", "detail": "the dashboard accepts GET"}, 405)
        body, content_type, etag = found
        for header, value in SECURITY_HEADERS.items():
            request.setHeader(header, value)
        request.setHeader(b"content-type", content_type)
        # Revalidate every time: after an upgrade the page and its script must match.
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"etag", etag)
        if request.getHeader(b"if-none-match") == etag:
            request.setResponseCode(304)
            return b""
        return body
