"""The synchronous transport: JSON over persistent HTTP/1.1 connections, with
failover between allq-clients.

Built on the standard library's :mod:`http.client`: it keeps connections alive,
costs the least CPU per call of the Python HTTP clients (urllib3 and httpx add
pooling and retry layers we do not need for JSON to a local allq-client), and
adds no dependency. Thread-safe: each call takes an idle connection of its
allq-client (or opens one) and puts it back afterwards.

Failover: calls go to the allq-client that answered last; when it is
unreachable, or reaches no server (503 ``unavailable``), the next one in the
list is tried, and so on once round. A connection that was idle and turns out
closed by the allq-client is reopened once (the request never reached it).
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse

from allq.worker.api import Call, ClientUnreachable, error_from, reply_json, should_fail_over

#: Seconds a call may take beyond the long-poll wait it asked for.
DEFAULT_TIMEOUT = 30.0
#: Idle connections kept per allq-client (more are opened when needed, and closed after).
MAX_IDLE = 16
_JSON = {"content-type": "application/json", "accept": "application/json"}
_NO_BODY = {"accept": "application/json"}
#: What a connection closed by the peer while idle looks like on the next request.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
          http.client.CannotSendRequest)


class Endpoint:
    """One allq-client: its URL and its idle connections."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = urllib.parse.urlsplit(url)
        self.url = url
        self._host = parts.hostname
        self._port = parts.port or 80
        self._prefix = parts.path
        self._timeout = timeout
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def request(self, call: Call) -> tuple[int, object]:
        """Send one call; its status and decoded JSON reply (``None`` if not JSON).

        :raises ClientUnreachable: no connection, or it broke before an answer.
        """
        timeout = self._timeout + call.wait
        body = None if call.body is None else json.dumps(call.body).encode("utf-8")
        target = self._prefix + call.target
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        reused = conn is not None
        for _ in range(2):
            if conn is None:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
            elif conn.sock is not None:
                conn.sock.settimeout(timeout)
            try:
                conn.request(call.method, target, body, _NO_BODY if body is None else _JSON)
                response = conn.getresponse()
                data = response.read()
            except _STALE as e:
                conn.close()
                conn = None
                if reused:
                    reused = False  # an idle connection the peer had closed: once more
                    continue
                raise ClientUnreachable(f"allq-client {self.url}: {_why(e)}") from None
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                raise ClientUnreachable(f"allq-client {self.url}: {_why(e)}") from None
            break
        if response.will_close:
            conn.close()
        else:
            with self._lock:
                if len(self._idle) < MAX_IDLE:
                    self._idle.append(conn)
                    conn = None
            if conn is not None:
                conn.close()
        return response.status, reply_json(data)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _why(error: BaseException) -> str:
    return str(error) or type(error).__name__


class Transport:
    """Calls over several allq-clients, with failover.

    :param urls: base URLs (see :func:`allq.worker.api.client_urls`).
    :param timeout: seconds a call may take (plus its long-poll wait).
    """

    def __init__(self, urls: list[str], *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._endpoints = [Endpoint(url, timeout) for url in urls]
        self._current = 0

    @property
    def urls(self) -> list[str]:
        return [endpoint.url for endpoint in self._endpoints]

    def call(self, call: Call) -> tuple[int, object]:
        """Send ``call`` to the current allq-client, failing over to the others.

        :returns: the status and reply of the first allq-client that answered
            with anything but "unreachable" or "no server"; else the last answer.
        :raises ClientUnreachable: no allq-client could be reached.
        """
        count = len(self._endpoints)
        start = self._current
        answer: tuple[int, object] | None = None
        last_error: ClientUnreachable | None = None
        for step in range(count):
            index = (start + step) % count
            try:
                status, reply = self._endpoints[index].request(call)
            except ClientUnreachable as e:
                last_error = e
                continue
            answer = status, reply
            if status == 200 or not should_fail_over(error_from(status, reply)):
                self._current = index
                return answer
        if answer is not None:
            return answer
        assert last_error is not None
        if count > 1:
            raise ClientUnreachable(f"no allq-client reachable of {count} "
                                    f"(last: {last_error.message})")
        raise last_error

    def close(self) -> None:
        """Close the idle connections."""
        for endpoint in self._endpoints:
            endpoint.close()
