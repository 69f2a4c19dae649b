"""Docker HEALTHCHECK for the allq images: ``allq-healthcheck server`` or ``... client``.

* ``server``: open a TCP connection to the server and expect its ``ALLQ1 `` greeting, then
  close without a HELLO (the server drops such a connection silently).
* ``client``: ``GET /health`` on the REST API and expect 200, which the client answers
  while at least one server is up (503 when none is).

The address comes from the environment variables the daemon itself reads, in the same
order (``ALLQ_LISTEN``, then ``SERVER_PORT``; ``ALLQ_HTTP``, then ``HTTP_SERVER_PORT``),
so a container configured by environment is checked where it listens. An interface of
``0.0.0.0`` (or none) is checked on 127.0.0.1. ``ALLQ_HEALTHCHECK_ADDRESS=host:port``
overrides it, for a daemon given ``--listen``/``--http`` as arguments instead.

Standard library only, nothing imported from allq: it runs every few seconds. Exit
status 0 means healthy, 1 unhealthy (the reason on stderr, which Docker keeps in
``docker inspect``'s health log).
"""

import os
import re
import socket
import sys
import urllib.error
import urllib.request

GREETING = b"ALLQ1 "
TIMEOUT = 3.0


def endpoint_address(description: str) -> tuple[str, int]:
    """The host and port to probe for a Twisted ``tcp:``/``tcp6:`` server endpoint string.

    :raises ValueError: for another kind of endpoint (a unix socket, TLS, ...).
    """
    # Split on the colons that are not escaped (an IPv6 interface is written \:\:1).
    parts = [part.replace("\\:", ":") for part in re.split(r"(?<!\\):", description)]
    if parts[0] not in ("tcp", "tcp6"):
        raise ValueError(f"cannot probe endpoint {description!r}; set ALLQ_HEALTHCHECK_ADDRESS")
    named = dict(part.split("=", 1) for part in parts[1:] if "=" in part)
    positional = [part for part in parts[1:] if "=" not in part]  # port, interface, backlog
    port = named.get("port") or (positional[0] if positional else "")
    interface = named.get("interface") or (positional[1] if len(positional) > 1 else "")
    if interface in ("", "0.0.0.0"):
        interface = "127.0.0.1"
    elif interface == "::":
        interface = "::1"
    return interface, int(port)


def address(kind: str, environ) -> tuple[str, int]:
    """Where the daemon of ``kind`` listens, from the same variables it reads."""
    override = environ.get("ALLQ_HEALTHCHECK_ADDRESS")
    if override:
        host, _, port = override.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)
    if kind == "server":
        listen = environ.get("ALLQ_LISTEN")
        if listen:
            return endpoint_address(listen)
        return "127.0.0.1", int(environ.get("SERVER_PORT") or 5555)
    http = environ.get("ALLQ_HTTP")
    if http:
        return endpoint_address(http)
    return "127.0.0.1", int(environ.get("HTTP_SERVER_PORT") or 8090)


def check_server(host: str, port: int) -> str | None:
    """``None`` if the server greets us, else what went wrong."""
    with socket.create_connection((host, port), timeout=TIMEOUT) as connection:
        greeting = b""
        while len(greeting) < len(GREETING):
            chunk = connection.recv(len(GREETING) - len(greeting))
            if not chunk:
                break
            greeting += chunk
    return None if greeting == GREETING else f"unexpected greeting {greeting!r}"


def check_client(host: str, port: int) -> str | None:
    """``None`` if ``GET /health`` answers 200, else what went wrong."""
    url = f"http://[{host}]:{port}/health" if ":" in host else f"http://{host}:{port}/health"
    token = os.environ.get("ALLQ_ADMIN_TOKEN")  # the client's own, when it has one
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=TIMEOUT) as response:
            return None if response.status == 200 else f"HTTP {response.status}"
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}: {e.read(300).decode('utf-8', 'replace')}"


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in ("server", "client"):
        print("usage: allq-healthcheck server|client", file=sys.stderr)
        return 2
    kind = argv[1]
    try:
        host, port = address(kind, os.environ)
        problem = (check_server if kind == "server" else check_client)(host, port)
    except (OSError, ValueError) as e:
        problem = str(e)
    if problem is not None:
        print(f"allq-{kind} unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
