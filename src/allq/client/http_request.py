"""The client's twisted.web request, and how code learns that a request ended.

:class:`ClientRequest` differs from ``twisted.web.server.Request`` in three ways:

* it does not parse HTML form posts (the API takes JSON; the parse is an
  email-package run, ~5% of a call's CPU);
* it runs plain end hooks when it is answered or its client goes away, so the
  in-flight count, the latency metric and the REST answer need no
  ``notifyFinish`` Deferred each (three Deferreds per call otherwise);
* it refuses a body larger than :attr:`ClientRequest.max_body` as it arrives:
  at once from its ``Content-Length``, or once a chunked body passes the limit.
  twisted.web would otherwise spool any body whole (into a temporary file)
  before a route could look at its size. The 413 is written straight to the
  connection, which is then closed: the rest of the body is never read.

:func:`when_done` registers such a hook on any request, falling back to
``notifyFinish`` for other request classes (tests' ``DummyRequest``, a plain
``Site``).
"""

from collections.abc import Callable
from io import BytesIO
from typing import Protocol

from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import Request

#: Called once with ``True`` when the response was finished, ``False`` when the
#: connection was lost first.
EndHook = Callable[[bool], None]


class Tracker(Protocol):
    """Told when each request starts being processed and when it ends."""

    def started(self) -> None: ...

    def ended(self) -> None: ...


class ClientRequest(Request):
    """A request that runs :data:`EndHook` callables when it ends."""

    #: Told of every request of this class (see :func:`request_class`).
    tracker: Tracker | None = None
    #: The largest body taken, in bytes (``None``: twisted.web's default, no limit).
    max_body: int | None = None

    def __init__(self, *args, **kwargs) -> None:
        kwargs["parsePOSTFormSubmission"] = False
        super().__init__(*args, **kwargs)
        self._end_hooks: list[EndHook] | None = None  # a list once processing began
        self._received = 0
        self._refused = False

    # -- the body, bounded ----------------------------------------------------------

    def gotLength(self, length: int | None) -> None:
        if self.max_body is not None and length is not None and length > self.max_body:
            self.content = BytesIO()
            self._refuse()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self.max_body is not None and self._received > self.max_body:
            self._refuse()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command, path, version):
        if not self._refused:
            super().requestReceived(command, path, version)

    def _refuse(self) -> None:
        """Answer 413 now, before the request is complete, and close the connection."""
        self._refused = True
        self.channel.transport.write(too_large_response(self.max_body))
        self.channel.transport.loseConnection()

    def process(self):
        self._end_hooks = []
        if self.tracker is not None:
            self.tracker.started()
        return super().process()

    def when_done(self, hook: EndHook) -> None:
        """Run ``hook(completed)`` once, when this request ends."""
        if self._end_hooks is None:
            raise RuntimeError("when_done() before the request is processed")
        self._end_hooks.append(hook)

    def finish(self):
        super().finish()
        self._ended(True)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self._ended(False)

    def _ended(self, completed: bool) -> None:
        hooks, self._end_hooks = self._end_hooks, None
        if hooks is None:  # never processed, or ended already
            return
        if self.tracker is not None:
            self.tracker.ended()
        for hook in hooks:
            hook(completed)


def too_large_response(max_body: int) -> bytes:
    """The whole 413 response to a body over ``max_body`` bytes, written before the
    body is read; the connection is closed after it (also by :mod:`allq.client.fast_http`)."""
    body = b'{"error":"too_large","detail":"request body is larger than %d bytes"}\n' % max_body
    return (b"HTTP/1.1 413 Request Entity Too Large\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))


def request_class(tracker: Tracker, max_body: int | None = None) -> type[ClientRequest]:
    """A :class:`ClientRequest` subclass whose every request tells ``tracker``
    and takes bodies of at most ``max_body`` bytes."""
    return type("TrackedClientRequest", (ClientRequest,),
                {"tracker": tracker, "max_body": max_body})


def when_done(request: IRequest, hook: EndHook) -> None:
    """Run ``hook(completed)`` once when ``request`` is answered (``True``) or its
    client went away first (``False``)."""
    register = getattr(request, "when_done", None)
    if register is not None:
        register(hook)
        return
    request.notifyFinish().addBoth(lambda result: hook(not isinstance(result, Failure)))
