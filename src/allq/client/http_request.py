"""The client's twisted.web request, and how code learns that a request ended.

:class:`ClientRequest` differs from ``twisted.web.server.Request`` in two ways,
both for the cost of a call on the hot path:

* it does not parse HTML form posts (the API takes JSON; the parse is an
  email-package run, ~5% of a call's CPU);
* it runs plain end hooks when it is answered or its client goes away, so the
  in-flight count, the latency metric and the REST answer need no
  ``notifyFinish`` Deferred each (three Deferreds per call otherwise).

:func:`when_done` registers such a hook on any request, falling back to
``notifyFinish`` for other request classes (tests' ``DummyRequest``, a plain
``Site``).
"""

from collections.abc import Callable
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

    def __init__(self, *args, **kwargs) -> None:
        kwargs["parsePOSTFormSubmission"] = False
        super().__init__(*args, **kwargs)
        self._end_hooks: list[EndHook] | None = None  # a list once processing began

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


def request_class(tracker: Tracker) -> type[ClientRequest]:
    """A :class:`ClientRequest` subclass whose every request tells ``tracker``."""
    return type("TrackedClientRequest", (ClientRequest,), {"tracker": tracker})


def when_done(request: IRequest, hook: EndHook) -> None:
    """Run ``hook(completed)`` once when ``request`` is answered (``True``) or its
    client went away first (``False``)."""
    register = getattr(request, "when_done", None)
    if register is not None:
        register(hook)
        return
    request.notifyFinish().addBoth(lambda result: hook(not isinstance(result, Failure)))
