"""The private-API shortcuts of allq's hot paths, each beside its public slow path.

Three places call below a library's public surface because the public call
costs more than the work it wraps, on every frame or request. Each shortcut is
here, next to the public function it stands for; ``tests/test_speedups.py``
checks that both give the same bytes, so a library upgrade that changes either
side fails a test instead of the wire.

* **JSON encoding**: ``json.dumps`` builds a C encoder on every call
  (``json.encoder.c_make_encoder``); :func:`compact_json_encoder` builds it once.
  Used for every frame (:mod:`allq.wire.messages`) and journal record
  (:mod:`allq.server.records`).
* **NaCl boxes**: ``Box.encrypt``/``decrypt`` wrap libsodium's
  ``crypto_box_(open_)easy_afternm`` in message objects, encoders and argument
  checks that format an error message on every call; :func:`box_seal` and
  :func:`box_open` call the cffi module ``nacl.bindings`` is built on
  (``nacl._sodium``). Used for every frame (:mod:`allq.wire.crypto`).
* **HTTP response heads**: twisted.web hands a head to the transport as some 25
  small pieces; :func:`http_head` joins them into the one string the client's
  ``OneWriteHTTPChannel.writeHeaders`` writes (:mod:`allq.client.site`).

Ground floor: the standard library and pynacl.
"""

import json
from collections.abc import Callable, Iterable

import nacl.bindings  # runs sodium_init() before _sodium is used
import nacl.exceptions
from nacl._sodium import ffi as _ffi
from nacl._sodium import lib as _sodium

# -- JSON ----------------------------------------------------------------------------------


def compact_json_encoder(*, ensure_ascii: bool) -> Callable[[object], str]:
    """``json.dumps(obj, separators=(",", ":"), ensure_ascii=...)``, built once.

    The encoder keeps one table of the containers being encoded (to refuse
    cycles, as ``json.dumps`` does); it is shared between calls, so call it from
    one thread (the reactor's) at a time.
    """
    public = json.JSONEncoder(separators=(",", ":"), ensure_ascii=ensure_ascii)
    if json.encoder.c_make_encoder is None:  # pragma: no cover - no C accelerator
        return public.encode
    markers: dict = {}
    escape = (json.encoder.encode_basestring_ascii if ensure_ascii
              else json.encoder.encode_basestring)
    encoder = json.encoder.c_make_encoder(
        markers, public.default, escape, None, ":", ",", False, False, True)

    def encode(obj: object) -> str:
        try:
            return "".join(encoder(obj, 0))
        except BaseException:
            # A failed encode leaves its containers' ids behind; a later call must
            # not mistake them for a cycle.
            markers.clear()
            raise

    return encode


def public_compact_json(obj: object, *, ensure_ascii: bool) -> str:
    """The public slow path of :func:`compact_json_encoder`."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=ensure_ascii)


# -- NaCl boxes ------------------------------------------------------------------------------

MAC_BYTES = 16  # crypto_box_MACBYTES


def box_seal(key: bytes, nonce: bytes, plaintext: bytes) -> bytes:
    """``crypto_box_easy_afternm``: the MAC and ciphertext of ``plaintext`` under a
    precomputed shared ``key`` (the sizes are the caller's to get right)."""
    size = len(plaintext) + MAC_BYTES
    sealed = _ffi.new("unsigned char[]", size)
    if _sodium.crypto_box_easy_afternm(sealed, plaintext, len(plaintext), nonce, key) != 0:
        raise RuntimeError("Unexpected library error")  # as nacl.bindings words it
    return _ffi.buffer(sealed, size)[:]


def box_open(key: bytes, nonce: bytes, ciphertext: bytes) -> bytes | None:
    """``crypto_box_open_easy_afternm``: the plaintext, or ``None`` when the MAC
    does not authenticate (``ciphertext`` is at least :data:`MAC_BYTES` long)."""
    size = len(ciphertext) - MAC_BYTES
    opened = _ffi.new("unsigned char[]", max(1, size))
    if _sodium.crypto_box_open_easy_afternm(opened, ciphertext, len(ciphertext), nonce,
                                            key) != 0:
        return None
    return _ffi.buffer(opened, size)[:]


def public_box_seal(key: bytes, nonce: bytes, plaintext: bytes) -> bytes:
    """The public slow path of :func:`box_seal`."""
    return nacl.bindings.crypto_box_easy_afternm(plaintext, nonce, key)


def public_box_open(key: bytes, nonce: bytes, ciphertext: bytes) -> bytes | None:
    """The public slow path of :func:`box_open`."""
    try:
        return nacl.bindings.crypto_box_open_easy_afternm(ciphertext, nonce, key)
    except nacl.exceptions.CryptoError:
        return None


# -- HTTP response heads -----------------------------------------------------------------------


def http_head(version: bytes, code: bytes, reason: bytes,
              headers: Iterable[tuple[bytes, Iterable[bytes]]]) -> bytes:
    """A response's status line and headers, as ``HTTPChannel.writeHeaders``
    writes them in pieces (``headers``: ``Headers.getAllRawHeaders()``)."""
    parts = [version, b" ", code, b" ", reason, b"\r\n"]
    for name, values in headers:
        for value in values:
            parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)
