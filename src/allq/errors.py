"""The error vocabulary shared by every layer.

One hierarchy, each class with a wire ``code`` and, for the REST facade, an
``http_status``. The core raises these; the server maps them to wire error
replies in exactly one place; the client turns a wire code back into the same
class with :func:`error_for_code`. Standard library only.
"""


class AllQError(Exception):
    """Base of every error that has a meaning for a caller.

    :param message: a short human-readable explanation, safe to show to clients.
    """

    code = "error"
    http_status = 500

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.code)
        self.message = message or self.code


class BadRequest(AllQError):
    """The request is malformed or a value is out of range."""

    code = "bad_request"
    http_status = 400


class UnknownAction(BadRequest):
    """The request names an action this server does not have."""

    code = "unknown_action"


class TooLarge(BadRequest):
    """A job body or frame exceeds a configured size limit."""

    code = "too_large"
    http_status = 413


class NotFound(AllQError):
    """No job with that id exists on this server."""

    code = "not_found"
    http_status = 404


class WrongState(AllQError):
    """The job exists but is not in a state the operation applies to."""

    code = "wrong_state"
    http_status = 409


class Draining(AllQError):
    """The server (or the tube) is draining: it hands out jobs but takes no new ones."""

    code = "draining"
    http_status = 503


class QueueFull(AllQError):
    """The tube or the server holds as many jobs as it is allowed to."""

    code = "full"
    http_status = 507


class DiskFull(AllQError):
    """The server's data directory is full: it serves gets and peeks but takes no
    changes until space returns (it recovers by itself)."""

    code = "disk_full"
    http_status = 507


class Unavailable(AllQError):
    """A transient failure: no server could be reached or it went away."""

    code = "unavailable"
    http_status = 503


class ConnectionLost(Unavailable):
    """The connection carrying a request closed before the reply arrived."""

    code = "connection_lost"


class Timeout(Unavailable):
    """No reply arrived in time; the outcome of the request is unknown."""

    code = "timeout"
    http_status = 504


class UnknownOutcome(Timeout):
    """A put got no answer from the server that may have stored it, within the
    retry budget. Putting it again with :attr:`idempotency_key` goes to that
    server and can never store it twice.

    :param idempotency_key: the key to retry with.
    """

    code = "outcome_unknown"

    def __init__(self, message: str = "", idempotency_key: str | None = None) -> None:
        super().__init__(message)
        self.idempotency_key = idempotency_key


class ReplicaUnavailable(Unavailable):
    """A primary refused a request (docs/replication.md): ``--replication strict``
    without its backup, or starting before its backup answered. A definite answer,
    not a lost connection: nothing was changed, another server may take a put, and a
    get moves on to the other servers."""

    code = "replica_unavailable"


class Fenced(AllQError):
    """A backup refused a primary's stream: it took the primary's jobs over at a
    later epoch, so the primary must not serve them (docs/replication.md)."""

    code = "fenced"
    http_status = 409


class ReplicaGap(BadRequest):
    """A stream message came out of order (its ``seq`` is not the next one)."""

    code = "replica_gap"


class ReplicaIncomplete(AllQError):
    """``promote`` of a replica whose snapshot never finished arriving."""

    code = "replica_incomplete"
    http_status = 409


class PrimaryAlive(AllQError):
    """``promote`` refused: the backup still hears from the primary."""

    code = "primary_alive"
    http_status = 409


class ProtocolError(AllQError):
    """A frame could not be decoded into a known, well-typed request."""

    code = "protocol_error"
    http_status = 502


_BY_CODE = {
    cls.code: cls
    for cls in (
        AllQError,
        BadRequest,
        UnknownAction,
        TooLarge,
        NotFound,
        WrongState,
        Draining,
        QueueFull,
        DiskFull,
        Unavailable,
        ConnectionLost,
        Timeout,
        UnknownOutcome,
        ReplicaUnavailable,
        Fenced,
        ReplicaGap,
        ReplicaIncomplete,
        PrimaryAlive,
        ProtocolError,
    )
}


def error_for_code(code: str, message: str) -> AllQError:
    """Rebuild the exception a peer reported by wire code.

    :param code: the wire code from an error reply.
    :param message: the message that came with it.
    :returns: an instance of the matching class, or of :class:`AllQError` for a
        code this version does not know.
    """
    error = _BY_CODE.get(code, AllQError)(message)
    if error.code != code:
        error.code = code
    return error
