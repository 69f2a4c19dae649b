"""HTTP plumbing the client's web resources share: JSON bodies in and out.

Protocol-neutral of the REST API's routes: how a JSON answer is written (status,
content type, length), how a request body is read within a size limit, and the
shape of an error body. No queue knowledge.
"""

import json

from twisted.web.iweb import IRequest

from allq.errors import AllQError, BadRequest, TooLarge
from allq.wire.messages import dumps

#: The longest ``detail`` an error body carries.
DETAIL_LIMIT = 500


def json_response(request: IRequest, obj: object, code: int = 200) -> bytes:
    """Encode ``obj`` as the JSON body of the response to ``request``.

    :param request: the request being answered; its status and content type are set.
    :param obj: any JSON-encodable value.
    :param code: the HTTP status.
    :returns: the body bytes, for a Klein route or error handler to return.
    """
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    try:
        data = dumps(obj)
    except UnicodeEncodeError:
        # A lone surrogate (from a "\ud800" escape) has no UTF-8 form; JSON's
        # \u escapes can still carry it.
        data = json.dumps(obj, separators=(",", ":")).encode("ascii")
    data += b"\n"  # a shell prompt after `curl` starts on its own line
    # A known length spares the chunked framing of a deferred answer.
    request.setHeader(b"content-length", b"%d" % len(data))
    return data


def read_body(request: IRequest, max_size: int) -> bytes:
    """The raw request body, refusing more than ``max_size`` bytes before reading it all.

    :raises TooLarge: ``Content-Length`` or the body itself exceeds ``max_size``.
    :raises BadRequest: ``Content-Length`` is not a number.
    """
    declared = request.getHeader(b"content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise BadRequest("Content-Length must be a number")
        if int(declared) > max_size:
            raise TooLarge(f"request body is larger than {max_size} bytes")
    content = getattr(request, "content", None)
    if content is None:
        return b""
    data = content.read(max_size + 1)
    if len(data) > max_size:
        raise TooLarge(f"request body is larger than {max_size} bytes")
    return data


def parse_json_object(data: bytes) -> dict:
    """Decode a request body that must be one JSON object.

    :raises BadRequest: not UTF-8, not JSON (``NaN`` and ``Infinity`` included),
        nested too deeply, or not an object.
    """
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"request body is not valid JSON: {str(e)[:80]}") from None
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None
    if not isinstance(obj, dict):
        raise BadRequest("request body must be a JSON object")
    return obj


def read_json(request: IRequest, max_size: int) -> dict:
    """Read and decode a JSON object request body of at most ``max_size`` bytes.

    :raises UnsupportedMediaType: the body is not sent as JSON.
    :raises TooLarge: the body is larger than ``max_size`` (checked before parsing).
    :raises BadRequest: the body is not a JSON object.
    """
    check_json_type(request)
    return parse_json_object(read_body(request, max_size))


class UnsupportedMediaType(BadRequest):
    """A body in a format the API does not take."""

    code = "unsupported_media_type"
    http_status = 415


#: The JSON media types. A page may send text/plain and form bodies anywhere without
#: asking first (no CORS preflight); a JSON API that took them could be driven by any page.
_JSON_TYPES = ("application/json",)


def check_json_type(request: IRequest) -> None:
    """A JSON body must say so: ``Content-Type: application/json`` (or a
    ``+json`` type; none at all is taken, as from raw tools).

    :raises UnsupportedMediaType: any other type, ``text/plain`` and forms included.
    """
    header = request.getHeader(b"content-type")
    if header is None:
        return
    media = header.decode("latin-1").split(";", 1)[0].strip().lower()
    if media in _JSON_TYPES or media.endswith("+json"):
        return
    raise UnsupportedMediaType(
        f"send the JSON body with Content-Type: application/json, not {media[:60]!r} "
        "(curl: -H 'content-type: application/json')")


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not allowed")


def error_body(error: AllQError) -> dict:
    """The JSON body of an error response: ``{"error": code, "detail": message}``,
    plus the ``idempotency_key`` to retry a put whose outcome is unknown with."""
    body = {"error": error.code, "detail": error.message[:DETAIL_LIMIT]}
    key = getattr(error, "idempotency_key", None)
    if key is not None:
        body["idempotency_key"] = key
    return body
