"""Job bodies on the wire: text as it is, binary bodies in base64 with a marker.

A job body is ``str`` when it is UTF-8 text and ``bytes`` otherwise (any byte,
``\\r\\n`` and NUL included). JSON carries text only, so a binary body travels
as its base64 text beside the marker ``"body_encoding": "base64"``; a text body
travels as it is, with no marker, exactly as before binary bodies existed. The
one normal form: bytes that are valid UTF-8 become ``str`` (so a body reads the
same through every front-end, whichever one put it), and only other bytes stay
``bytes``. The journal stores bodies the same way (:mod:`allq.server.records`).
Pure: no I/O.
"""

import base64
import binascii

from allq.errors import BadRequest

#: The marker's value for a base64 body (the only encoding there is).
BASE64 = "base64"


def normal_body(body: str | bytes) -> str | bytes:
    """``body`` in its normal form: ``str`` when it is UTF-8 text, else ``bytes``."""
    if isinstance(body, bytes):
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            return body
    return body


def encode_body(body: str | bytes) -> tuple[str, str | None]:
    """The text and marker (``None`` for text) a body travels as in JSON."""
    if isinstance(body, bytes):
        return base64.b64encode(body).decode("ascii"), BASE64
    return body, None


def decode_body(text: str, encoding: str | None) -> str | bytes:
    """The body a JSON text and its marker stand for, in normal form.

    :raises BadRequest: an unknown marker, or text that is not base64.
    """
    if encoding is None:
        return text
    if encoding != BASE64:
        raise BadRequest(f"body_encoding must be {BASE64!r}, not {encoding[:40]!r}")
    try:
        return normal_body(base64.b64decode(text.encode("ascii"), validate=True))
    except (binascii.Error, UnicodeEncodeError):
        raise BadRequest("body is not valid base64 (body_encoding is 'base64')") from None
