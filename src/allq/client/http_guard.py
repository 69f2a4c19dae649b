"""Who may talk to the client's HTTP API: the browser-borne attacks it refuses.

The API listens on loopback and needs no password, so any process of the
machine may call it, which is the point. A web page open in a browser on the
same machine must not, yet a browser will send it requests two ways:

* **DNS rebinding**: a page of ``evil.example`` makes its name resolve to
  127.0.0.1, and its scripts then read the API as their own origin. Their
  requests say ``Host: evil.example``. So only the ``Host`` names the client is
  really reached as are served: loopback names and addresses, plus the names
  given with ``--allowed-hosts`` (a container's service name, a published
  address). Anything else is answered 421 (misdirected request).
* **Cross-site requests**: a page may POST a ``text/plain`` or form body to any
  address without asking first. Browsers mark such requests with an ``Origin``
  header; a request whose ``Origin`` is not an allowed host's is refused 403,
  and a JSON body must be sent as ``application/json`` (415 otherwise, see
  :func:`allq.client.http.read_json`), which a page cannot do without a CORS
  preflight that the API never grants.

Clients that are not browsers (curl, the worker libraries) send no ``Origin``
and a ``Host`` of the address they connect to, so they pass.
"""

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from twisted.web.iweb import IRequest

from allq.client.http import json_response

#: Loopback names every client answers to.
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def parse_allowed_hosts(text: str) -> frozenset[str]:
    """``--allowed-hosts``: comma-separated host names or addresses (no ports).

    :raises ValueError: an entry with a port, a path or characters a host name has not.
    """
    hosts = set()
    for entry in text.split(","):
        entry = entry.strip().lower()
        if not entry:
            continue
        try:
            hosts.add(str(ipaddress.ip_address(entry.strip("[]"))))
            continue
        except ValueError:
            pass
        host = _host_of(entry)
        if host is None or host != entry.strip("[]"):
            raise ValueError(f"{entry[:80]!r} is not a host name or address (no port or path)")
        hosts.add(host)
    return frozenset(hosts)


def _host_of(authority: str) -> str | None:
    """The host of a ``Host`` header value (``name``, ``name:port``, ``[v6]:port``),
    lower-cased, or ``None`` when it is not one."""
    try:
        parts = urlsplit("//" + authority)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return None
    if not host or parts.path or parts.query or parts.fragment or parts.username:
        return None
    if all(c.isalnum() or c in "-._:" for c in host):
        return host
    return None


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_HOSTS or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HostGuard:
    """Decides whether a request's ``Host`` and ``Origin`` are ones this client serves.

    :param allowed: host names or addresses served besides the loopback ones.
    """

    #: ``Host`` values remembered with their verdict: a client sends the same one on
    #: every request, and parsing it costs more than the rest of the check.
    _REMEMBERED = 64

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self._allowed = frozenset(host.lower() for host in allowed)
        self._verdicts: dict[bytes, bool] = {}

    def allows(self, host: str) -> bool:
        return _is_loopback(host) or host in self._allowed

    def _host_allowed(self, raw_host: bytes) -> bool:
        verdict = self._verdicts.get(raw_host)
        if verdict is None:
            host = _host_of(raw_host.decode("latin-1"))
            verdict = host is not None and self.allows(host)
            if len(self._verdicts) >= self._REMEMBERED:
                self._verdicts.clear()
            self._verdicts[raw_host] = verdict
        return verdict

    def refusal(self, request: IRequest) -> bytes | None:
        """The error response for a request from where it may not come, or ``None``."""
        raw_host = request.getHeader(b"host")
        if raw_host is not None:
            if not self._host_allowed(raw_host):
                return json_response(request, {
                    "error": "misdirected_request",
                    "detail": "this allq client does not answer to the host "
                              f"{raw_host.decode('latin-1')[:100]!r}; add it with "
                              "--allowed-hosts (ALLQ_ALLOWED_HOSTS) if that is how it is "
                              "reached"}, 421)
        origin = request.getHeader(b"origin")
        if origin is not None and not self._origin_allowed(origin.decode("latin-1")):
            return json_response(request, {
                "error": "forbidden",
                "detail": f"requests from web pages of {origin.decode('latin-1')[:100]!r} "
                          "are not accepted (cross-site request)"}, 403)
        return None

    def _origin_allowed(self, origin: str) -> bool:
        parts = urlsplit(origin)
        host = parts.hostname
        return parts.scheme in ("http", "https") and host is not None and self.allows(host)
