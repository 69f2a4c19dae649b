"""Callback chains in place of coroutines on the federation's hot paths.

A put or get whose first try succeeds (nearly all of them) runs as a plain
callback chain on the server request's Deferred, and only a first try that fails
hands over to the coroutine with the retry loop (``Deferred.fromCoroutine`` and
each ``await`` cost more than the rest of the client's routing of a call).
:func:`own_result` gives such a chain the Deferred its caller gets.
"""

from twisted.internet.defer import Deferred


def own_result(chain: Deferred) -> Deferred:
    """A Deferred of its own that fires with ``chain``'s outcome; cancelling it
    cancels ``chain``.

    ``chain`` itself will not do for a caller: once a callback of it returns
    another Deferred (the hand-over to a retry loop) it counts as ``called``
    though it has no result yet, unlike the Deferred of a coroutine.
    """
    result = Deferred(lambda _: chain.cancel())
    chain.chainDeferred(result)
    return result
