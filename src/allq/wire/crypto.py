"""The encrypted session layer between allq-client and allq-server: handshake and frames.

Responsibility: authenticate a client to a server, and encrypt and authenticate every line
after that with one NaCl ``Box`` per connection, rejecting replayed, reordered, reflected
and tampered frames.

What this module must not do: no sockets, no reactor, no Twisted imports, no logging, no
message parsing. It takes and returns lines *without* the ``\\n`` delimiter; the transport
adds and strips it. Its errors are :class:`allq.errors.ProtocolError` subclasses whose
``code`` names the reason on the wire; their messages never contain keys or plaintext.

Handshake (``b64`` is standard base64 without a newline)::

    server -> client   ALLQ1 b64(challenge)                      challenge = 16 random bytes
    client -> server   HELLO b64(client_public) b64(proof)
                       proof = Box(client_secret, server_public).encrypt(
                                   b"allq-hello-v1" + challenge)  (random nonce, prepended)

The server looks the client's public key up among its authorized keys (one ``Box`` each,
built once by :class:`Authenticator`; a server given the any-client switch builds the
``Box`` of an unlisted key for that connection instead of refusing it) and checks that
the proof decrypts to the context string plus *this connection's* challenge, so a HELLO captured on one connection is useless
on another. A client that is not authorized, or cannot prove it holds the secret key, gets
:class:`HandshakeError` with a code for the wire. The server proves itself implicitly: only
the holder of the server's secret key can produce frames the client's ``Box`` opens.

Frames, after the handshake, each direction independently::

    line  = b64(nonce || ciphertext)
    nonce = challenge[:15] || direction (1 byte) || counter (8 bytes, big-endian)

Direction is 0 for client-to-server and 1 for server-to-client. Each direction's counter
starts at 0 and goes up by one per frame, so a receiver knows the exact nonce it expects
next. A frame with another connection's prefix, the other direction's byte (a reflected
frame) or an unexpected counter is a :class:`ReplayedFrame`; one that fails
authentication is a :class:`TamperedFrame`; one that is not even base64 is a
:class:`MalformedFrame`. None of them advances the receive counter, so the next genuine
frame still opens. A connection should be dropped on any of them all the same.

Size: a frame of ``n`` plaintext bytes is ``4 * ceil((n + 40) / 3)`` bytes on the wire
(24 nonce + 16 MAC, then base64); see :func:`frame_length`.
"""

from __future__ import annotations

import binascii
import hmac
import os

import attrs
from nacl.exceptions import CryptoError
from nacl.public import Box, PublicKey

from allq.errors import ProtocolError
from allq.speedups import box_open, box_seal
from allq.wire.keys import ClientKeys, ServerKeys, encode_key

CHALLENGE_BYTES = 16
NONCE_BYTES = Box.NONCE_SIZE
MAC_BYTES = 16
CLIENT_TO_SERVER = 0
SERVER_TO_CLIENT = 1

_CHALLENGE_TAG = b"ALLQ1 "
_HELLO_TAG = b"HELLO"
_HELLO_CONTEXT = b"allq-hello-v1"
_PREFIX_BYTES = 15
_MAX_COUNTER = (1 << 64) - 1


class WireError(ProtocolError):
    """Base of the errors of the encrypted session layer.

    A :class:`allq.errors.ProtocolError`: the peer is not speaking allq correctly, so
    the connection is dropped; the message is safe to log and to send to the peer.
    """

    code = "wire_error"


class HandshakeError(WireError):
    """The handshake failed.

    :ivar code: a short machine-readable reason, safe to send to the peer:
        ``"bad_challenge"``, ``"bad_hello"``, ``"unknown_key"`` or ``"bad_proof"``.
    :ivar message: a one-line human-readable explanation, safe to log.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class FrameError(WireError):
    """A received frame was rejected; the session's state is unchanged."""

    code = "bad_frame"


class MalformedFrame(FrameError):
    """The line is not base64, or too short to hold a nonce and a MAC."""

    code = "malformed_frame"


class ReplayedFrame(FrameError):
    """The frame's nonce is not the next one expected on this session and direction."""

    code = "replayed_frame"


class TamperedFrame(FrameError):
    """The frame failed authentication: modified, or sealed with another key."""

    code = "tampered_frame"


def _b64(data: bytes) -> bytes:
    return binascii.b2a_base64(data, newline=False)


def _unb64(data: bytes) -> bytes:
    """Strict base64 decoding; raises ``binascii.Error`` (a ``ValueError``)."""
    return binascii.a2b_base64(data, strict_mode=True)


def frame_length(plaintext_length: int) -> int:
    """The length of a sealed line (without ``\\n``) for a plaintext of the given length.

    Use it to size the line protocol's ``MAX_LENGTH`` from the largest message.
    """
    return 4 * -(-(plaintext_length + NONCE_BYTES + MAC_BYTES) // 3)


# -- sessions --------------------------------------------------------------------------------


@attrs.define(eq=False)
class Session:
    """One connection's encryption state: the shared ``Box`` and both frame counters.

    Built by :func:`client_hello` or :meth:`Authenticator.accept`; not thread-safe, and
    not meant to be shared between connections.

    :ivar peer_public: the other side's public key (raw bytes), e.g. to log which client.
    """

    _box: Box = attrs.field(repr=False)
    _challenge: bytes = attrs.field(repr=False)
    _sending: int = attrs.field()
    peer_public: bytes = attrs.field(repr=False)
    _send_prefix: bytes = attrs.field(init=False, repr=False)
    _receive_prefix: bytes = attrs.field(init=False, repr=False)
    _shared_key: bytes = attrs.field(init=False, repr=False)
    _send_counter: int = attrs.field(init=False, default=0)
    _receive_counter: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        if len(self._challenge) != CHALLENGE_BYTES:
            raise ValueError(f"a challenge is {CHALLENGE_BYTES} bytes")
        head = self._challenge[:_PREFIX_BYTES]
        self._send_prefix = head + bytes([self._sending])
        self._receive_prefix = head + bytes([1 - self._sending])
        # Frames go straight to libsodium with the Box's precomputed key: what
        # Box.encrypt/decrypt end up calling, without their layers (allq.speedups).
        self._shared_key = self._box.shared_key()

    def seal(self, plaintext: bytes) -> bytes:
        """Encrypt one message into one line, using the next nonce of our direction.

        :param plaintext: the message.
        :returns: the line to send, without ``\\n``.
        """
        counter = self._send_counter
        if counter > _MAX_COUNTER:
            raise WireError("frame counter exhausted; reconnect")
        nonce = self._send_prefix + counter.to_bytes(8, "big")
        sealed = box_seal(self._shared_key, nonce, plaintext)
        self._send_counter = counter + 1
        return _b64(nonce + sealed)

    def open(self, line: bytes) -> bytes:
        """Decrypt one received line, which must carry the next nonce of the peer's direction.

        :param line: the received line, without ``\\n``.
        :returns: the plaintext.
        :raises MalformedFrame: if the line is not base64 or too short.
        :raises ReplayedFrame: if the nonce belongs to another connection, our own
            direction, or another position in the stream.
        :raises TamperedFrame: if authentication fails.
        """
        try:
            raw = _unb64(line)
        except ValueError:
            raise MalformedFrame("frame is not base64") from None
        if len(raw) < NONCE_BYTES + MAC_BYTES:
            raise MalformedFrame("frame too short")
        if raw[: _PREFIX_BYTES + 1] != self._receive_prefix:
            raise ReplayedFrame("frame belongs to another connection or direction")
        if int.from_bytes(raw[_PREFIX_BYTES + 1 : NONCE_BYTES], "big") != self._receive_counter:
            raise ReplayedFrame("frame out of sequence")
        opened = box_open(self._shared_key, raw[:NONCE_BYTES], raw[NONCE_BYTES:])
        if opened is None:
            raise TamperedFrame("frame failed authentication")
        self._receive_counter += 1
        return opened


# -- handshake ---------------------------------------------------------------------------------


def new_challenge() -> bytes:
    """A fresh random challenge for one connection (16 bytes from ``os.urandom``)."""
    return os.urandom(CHALLENGE_BYTES)


def challenge_line(challenge: bytes) -> bytes:
    """The server's first line: ``ALLQ1 <base64 challenge>`` (without ``\\n``)."""
    return _CHALLENGE_TAG + _b64(challenge)


def parse_challenge_line(line: bytes) -> bytes:
    """Read the server's first line.

    :returns: the challenge.
    :raises HandshakeError: ``bad_challenge`` if the line is anything else (not an allq
        server, or another protocol version).
    """
    if line.startswith(_CHALLENGE_TAG):
        try:
            challenge = _unb64(line[len(_CHALLENGE_TAG) :])
        except ValueError:
            challenge = b""
        if len(challenge) == CHALLENGE_BYTES:
            return challenge
    raise HandshakeError("bad_challenge", "the server's greeting is not an ALLQ1 challenge")


def client_hello(keys: ClientKeys, challenge: bytes) -> tuple[bytes, Session]:
    """Answer a server's challenge.

    :param keys: the client's keys.
    :param challenge: from :func:`parse_challenge_line`.
    :returns: the HELLO line to send (without ``\\n``) and the session for the connection.
    """
    box = Box(keys.secret, keys.server_public)
    proof = box.encrypt(_HELLO_CONTEXT + challenge)
    line = b" ".join([_HELLO_TAG, _b64(bytes(keys.public)), _b64(bytes(proof))])
    return line, Session(box, challenge, CLIENT_TO_SERVER, bytes(keys.server_public))


class Authenticator:
    """The server side of the handshake, built once per server from its keys.

    Precomputes one ``Box`` per authorized client key, so accepting a connection costs a
    dictionary lookup and one decryption. With ``keys.any_client`` an unlisted key costs
    one key agreement more (its ``Box`` is built for that connection, not kept): the
    proof still shows the client holds the secret of the key it presents.
    """

    def __init__(self, keys: ServerKeys) -> None:
        """
        :param keys: the server's secret key and the authorized client keys.
        """
        self._boxes = {bytes(public): Box(keys.secret, public) for public in keys.authorized}
        self._any_client = keys.any_client
        self._secret = keys.secret

    def __repr__(self) -> str:
        if self._any_client:
            return "<Authenticator for any client key>"
        return f"<Authenticator for {len(self._boxes)} client key(s)>"

    def accepts(self, client_public: bytes) -> bool:
        """Whether this authenticator accepts the client key ``client_public`` (raw bytes)."""
        return self._any_client or client_public in self._boxes

    def accept(self, line: bytes, challenge: bytes) -> Session:
        """Check a client's HELLO line against this connection's challenge.

        :param line: the client's first line, without ``\\n``.
        :param challenge: the challenge this connection sent.
        :returns: the session for the connection.
        :raises HandshakeError: ``bad_hello`` if the line is not a well-formed HELLO,
            ``unknown_key`` if the client's key is not authorized (the message shows the
            first 8 characters of the key's base64), ``bad_proof`` if the proof does not
            decrypt to this challenge.
        """
        parts = line.split(b" ")
        try:
            if len(parts) != 3 or parts[0] != _HELLO_TAG:
                raise ValueError
            client_public = _unb64(parts[1])
            proof = _unb64(parts[2])
            if len(client_public) != PublicKey.SIZE:
                raise ValueError
        except ValueError:
            raise HandshakeError("bad_hello", "expected HELLO <public key> <proof>") from None
        box = self._boxes.get(client_public)
        if box is None and self._any_client:
            box = self._box_for_any(client_public)
        if box is None:
            raise HandshakeError(
                "unknown_key",
                f"client key {encode_key(client_public)[:8]}... is not authorized",
            )
        try:
            opened = box.decrypt(proof)
        except CryptoError:
            opened = b""
        if not hmac.compare_digest(opened, _HELLO_CONTEXT + challenge):
            raise HandshakeError("bad_proof", "the client's proof does not match this challenge")
        return Session(box, challenge, SERVER_TO_CLIENT, client_public)

    def _box_for_any(self, client_public: bytes) -> Box:
        try:
            return Box(self._secret, PublicKey(client_public))
        except CryptoError:
            # libsodium refuses a key agreement with a low-order point (an all-zero key).
            raise HandshakeError("bad_hello", "the client's key is not a usable public key") from None
