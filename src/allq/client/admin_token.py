"""The admin token: who may use a client whose HTTP API is reachable beyond loopback.

On loopback the API (and the dashboard) needs no password: any process of the
machine may call it, which is the point, and :class:`allq.client.http_guard.HostGuard`
keeps web pages out. Published beyond loopback it would let anyone who reaches the
port delete jobs, so the client refuses to start there without ``--admin-token``
(:func:`needs_token`), and then every request (the REST API, ``/metrics``, every
call the dashboard makes) must carry ``Authorization: Bearer <token>``
(:class:`TokenGuard`; 401 otherwise). Only the dashboard's static files (the page,
its script and its style: no data) are served without it, since a browser opening
the page cannot send a header; the page asks for the token and sends it. A token
given on loopback is required there too.

The token is compared in constant time (:func:`hmac.compare_digest`), so the time an
answer takes says nothing about how much of a guess was right.
"""

import hmac
import ipaddress
import re

from twisted.web.iweb import IRequest

from allq.client.http import json_response
from allq.client.workers import parse_tcp

#: At least 16 visible ASCII characters (no spaces): what fits a header unquoted.
_TOKEN = re.compile(r"[\x21-\x7e]{16,512}")
_LOOPBACK_NAMES = frozenset({"localhost"})


def check_admin_token(text: str) -> str:
    """``--admin-token``: 16 to 512 visible ASCII characters.

    :raises ValueError: anything else (the message never quotes the token).
    """
    if not _TOKEN.fullmatch(text):
        raise ValueError("the token must be 16 to 512 visible ASCII characters, no spaces "
                         "(e.g. `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
    return text


def needs_token(http: str) -> bool:
    """Whether an ``--http`` endpoint listens beyond loopback: a ``tcp:`` endpoint
    on any interface but a loopback one (none given means every interface), or any
    other kind but a UNIX socket (which only the machine reaches)."""
    if http.startswith("unix:"):
        return False
    try:
        interface = parse_tcp(http)[0].strip("[]").lower()
    except ValueError:
        return True
    if interface in _LOOPBACK_NAMES:
        return False
    try:
        return not ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return True  # a host name: where it resolves is not known here


class TokenGuard:
    """Refuses a request without ``Authorization: Bearer <token>``.

    :param token: the admin token (checked by :func:`check_admin_token`).
    """

    def __init__(self, token: str) -> None:
        self._expected = b"Bearer " + token.encode("ascii")

    def refusal(self, request: IRequest) -> bytes | None:
        """The 401 response for a request without the token, or ``None``."""
        given = request.getHeader(b"authorization") or b""
        if hmac.compare_digest(given, self._expected):
            return None
        request.setHeader(b"www-authenticate", b'Bearer realm="allq"')
        detail = ("this allq client needs its admin token: send "
                  "`Authorization: Bearer <token>` (the client's --admin-token)")
        if given:
            detail = "the admin token in Authorization is not this client's --admin-token"
        return json_response(request, {"error": "unauthorized", "detail": detail}, 401)
