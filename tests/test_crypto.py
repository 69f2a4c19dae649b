"""Tests for allq.wire.crypto: the handshake and the encrypted frames."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.public import PrivateKey

from allq.errors import ProtocolError
from allq.wire.crypto import (
    Authenticator,
    FrameError,
    HandshakeError,
    MalformedFrame,
    ReplayedFrame,
    Session,
    TamperedFrame,
    challenge_line,
    client_hello,
    frame_length,
    new_challenge,
    parse_challenge_line,
)
from allq.wire.keys import ClientKeys, ServerKeys, encode_key

SERVER_SECRET = PrivateKey.generate()
CLIENT_SECRET = PrivateKey.generate()
SERVER_KEYS = ServerKeys(SERVER_SECRET, (CLIENT_SECRET.public_key,))
CLIENT_KEYS = ClientKeys(CLIENT_SECRET, SERVER_SECRET.public_key)


def connect(
    client_keys: ClientKeys = CLIENT_KEYS, server_keys: ServerKeys = SERVER_KEYS
) -> tuple[Session, Session]:
    """Run the whole handshake in memory; returns (client session, server session)."""
    challenge = parse_challenge_line(challenge_line(new_challenge()))
    hello, client = client_hello(client_keys, challenge)
    server = Authenticator(server_keys).accept(hello, challenge)
    return client, server


def flip_byte(line: bytes, index: int) -> bytes:
    raw = bytearray(base64.b64decode(line))
    raw[index] ^= 0x01
    return base64.b64encode(bytes(raw))


# -- handshake -----------------------------------------------------------------------------


def test_challenge_line_round_trip():
    """The server's greeting is ALLQ1 plus base64, and parses back to the challenge."""
    challenge = new_challenge()
    assert len(challenge) == 16
    line = challenge_line(challenge)
    assert line.startswith(b"ALLQ1 ") and b"\n" not in line
    assert parse_challenge_line(line) == challenge


@pytest.mark.parametrize(
    "line",
    [b"", b"HELLO", b"ALLQ1", b"ALLQ1 !!!", b"ALLQ1 " + base64.b64encode(b"short"), b"ALLQ2 x"],
)
def test_parse_challenge_line_rejects_others(line):
    """Anything but an ALLQ1 line with a 16-byte challenge is a bad_challenge."""
    with pytest.raises(HandshakeError) as info:
        parse_challenge_line(line)
    assert info.value.code == "bad_challenge"


def test_handshake_success_both_ways():
    """After the handshake, each side opens what the other sealed, in both directions."""
    client, server = connect()
    assert server.open(client.seal(b"put")) == b"put"
    assert client.open(server.seal(b"ok")) == b"ok"
    assert server.open(client.seal(b"second")) == b"second"
    assert server.peer_public == bytes(CLIENT_SECRET.public_key)
    assert client.peer_public == bytes(SERVER_SECRET.public_key)


def test_server_accepts_any_of_several_clients():
    """Every authorized client key gets through, each with its own session."""
    others = [PrivateKey.generate() for _ in range(3)]
    server_keys = ServerKeys(SERVER_SECRET, [k.public_key for k in others])
    for secret in others:
        client, server = connect(ClientKeys(secret, SERVER_SECRET.public_key), server_keys)
        assert server.open(client.seal(b"hi")) == b"hi"


def test_unknown_key_is_rejected_with_its_prefix():
    """A client key that is not authorized gets unknown_key, naming its first 8 characters."""
    stranger = ClientKeys(PrivateKey.generate(), SERVER_SECRET.public_key)
    challenge = new_challenge()
    hello, _ = client_hello(stranger, challenge)
    with pytest.raises(HandshakeError) as info:
        Authenticator(SERVER_KEYS).accept(hello, challenge)
    assert info.value.code == "unknown_key"
    assert encode_key(stranger.public)[:8] in info.value.message
    assert encode_key(stranger.public) not in info.value.message


def test_bad_proof_wrong_server_key():
    """A client that encrypted its proof to another server's key gets bad_proof."""
    confused = ClientKeys(CLIENT_SECRET, PrivateKey.generate().public_key)
    challenge = new_challenge()
    hello, _ = client_hello(confused, challenge)
    with pytest.raises(HandshakeError) as info:
        Authenticator(SERVER_KEYS).accept(hello, challenge)
    assert info.value.code == "bad_proof"


def test_bad_proof_impersonation():
    """Claiming an authorized public key without its secret key gets bad_proof."""
    impostor = ClientKeys(PrivateKey.generate(), SERVER_SECRET.public_key)
    challenge = new_challenge()
    hello, _ = client_hello(impostor, challenge)
    tag, _, proof = hello.split(b" ")
    forged = b" ".join([tag, base64.b64encode(bytes(CLIENT_SECRET.public_key)), proof])
    with pytest.raises(HandshakeError) as info:
        Authenticator(SERVER_KEYS).accept(forged, challenge)
    assert info.value.code == "bad_proof"


def test_hello_for_one_challenge_fails_another():
    """A HELLO captured for challenge A is rejected on a connection that sent challenge B."""
    challenge_a, challenge_b = new_challenge(), new_challenge()
    hello, _ = client_hello(CLIENT_KEYS, challenge_a)
    authenticator = Authenticator(SERVER_KEYS)
    with pytest.raises(HandshakeError) as info:
        authenticator.accept(hello, challenge_b)
    assert info.value.code == "bad_proof"
    authenticator.accept(hello, challenge_a)


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"HELLO",
        b"HELLO a b",
        b"HOLA " + base64.b64encode(bytes(32)) + b" " + base64.b64encode(bytes(40)),
        b"HELLO " + base64.b64encode(bytes(31)) + b" " + base64.b64encode(bytes(40)),
        b"HELLO " + base64.b64encode(bytes(32)) + b" !!",
        b"HELLO " + base64.b64encode(bytes(32)) + b" x y",
    ],
)
def test_malformed_hello_is_bad_hello(line):
    """A line that is not HELLO <base64 32-byte key> <base64 proof> is bad_hello."""
    with pytest.raises(HandshakeError) as info:
        Authenticator(SERVER_KEYS).accept(line, new_challenge())
    assert info.value.code == "bad_hello"


def test_short_proof_is_bad_proof():
    """A well-formed HELLO whose proof is too short to decrypt is bad_proof, not a crash."""
    line = b"HELLO " + base64.b64encode(bytes(CLIENT_SECRET.public_key)) + b" AAAA"
    with pytest.raises(HandshakeError) as info:
        Authenticator(SERVER_KEYS).accept(line, new_challenge())
    assert info.value.code == "bad_proof"


def test_authenticator_repr_shows_no_keys():
    """The Authenticator's repr counts keys and shows none of them."""
    assert repr(Authenticator(SERVER_KEYS)) == "<Authenticator for 1 client key(s)>"


# -- frames --------------------------------------------------------------------------------


@given(st.lists(st.binary(max_size=2048), max_size=8))
def test_seal_open_round_trip(messages):
    """open(seal(x)) == x for arbitrary bytes, for a sequence of frames in both directions."""
    client, server = connect()
    for message in messages:
        assert server.open(client.seal(message)) == message
        assert client.open(server.seal(message)) == message


@given(st.binary(max_size=4096))
def test_frame_is_one_base64_line_of_predicted_length(message):
    """A sealed frame is standard base64 without newlines, of frame_length() bytes."""
    client, _ = connect()
    line = client.seal(message)
    assert b"\n" not in line
    assert len(line) == frame_length(len(message))
    assert base64.b64decode(line, validate=True)


def test_nonce_layout():
    """Frame nonces are challenge[:15] + direction + big-endian counter."""
    challenge = new_challenge()
    hello, client = client_hello(CLIENT_KEYS, challenge)
    server = Authenticator(SERVER_KEYS).accept(hello, challenge)
    client.seal(b"first")
    nonce = base64.b64decode(client.seal(b"second"))[:24]
    assert nonce == challenge[:15] + b"\x00" + (1).to_bytes(8, "big")
    nonce = base64.b64decode(server.seal(b"reply"))[:24]
    assert nonce == challenge[:15] + b"\x01" + bytes(8)


def test_replay_on_same_session_is_rejected():
    """A frame opened once is ReplayedFrame the second time."""
    client, server = connect()
    frame = client.seal(b"done 42")
    assert server.open(frame) == b"done 42"
    with pytest.raises(ReplayedFrame):
        server.open(frame)
    assert server.open(client.seal(b"next")) == b"next"


def test_reordered_frames_are_rejected():
    """A frame that skips ahead in the sequence is ReplayedFrame; the skipped one still opens."""
    client, server = connect()
    first, second = client.seal(b"1"), client.seal(b"2")
    with pytest.raises(ReplayedFrame):
        server.open(second)
    assert server.open(first) == b"1"
    assert server.open(second) == b"2"


def test_frame_from_another_session_is_rejected():
    """A frame captured on session 1 is ReplayedFrame on session 2 with the same keys."""
    client_1, _ = connect()
    _, server_2 = connect()
    with pytest.raises(ReplayedFrame):
        server_2.open(client_1.seal(b"delete everything"))


def test_reflected_frame_is_rejected():
    """A server cannot be fed its own frame back (wrong direction)."""
    _, server = connect()
    with pytest.raises(ReplayedFrame):
        server.open(server.seal(b"ok"))


def test_client_rejects_client_direction_frame():
    """A client rejects a frame in the client-to-server direction, e.g. its own echoed back."""
    client, server = connect()
    with pytest.raises(ReplayedFrame):
        client.open(client.seal(b"get"))


@pytest.mark.parametrize("index", [0, 15, 23, 24, 40, -1])
def test_flipped_byte_is_rejected_and_session_recovers(index):
    """A flipped byte anywhere is rejected, and the next genuine frame still opens."""
    client, server = connect()
    frame = client.seal(b"put tube body")
    with pytest.raises((TamperedFrame, ReplayedFrame)):
        server.open(flip_byte(frame, index))
    assert server.open(frame) == b"put tube body"


def test_flipped_ciphertext_byte_is_tampered():
    """A flipped byte in the ciphertext or MAC (not the nonce) is TamperedFrame."""
    client, server = connect()
    frame = client.seal(b"put tube body")
    with pytest.raises(TamperedFrame):
        server.open(flip_byte(frame, 30))
    assert server.open(frame) == b"put tube body"


def test_frame_under_other_keys_is_tampered():
    """A frame with the right nonce but sealed under another client's key is TamperedFrame."""
    challenge = new_challenge()
    other = ClientKeys(PrivateKey.generate(), SERVER_SECRET.public_key)
    _, outsider = client_hello(other, challenge)
    hello, _ = client_hello(CLIENT_KEYS, challenge)
    server = Authenticator(SERVER_KEYS).accept(hello, challenge)
    with pytest.raises(TamperedFrame):
        server.open(outsider.seal(b"x"))


@pytest.mark.parametrize(
    "line",
    [b"", b"!!!!", b"not base64 at all", b"AAAA\nAAAA", base64.b64encode(bytes(39)), b"AAA"],
)
def test_garbage_is_malformed(line):
    """Non-base64 or too-short lines are MalformedFrame and do not disturb the session."""
    client, server = connect()
    with pytest.raises(MalformedFrame):
        server.open(line)
    assert server.open(client.seal(b"fine")) == b"fine"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (MalformedFrame, "malformed_frame"),
        (ReplayedFrame, "replayed_frame"),
        (TamperedFrame, "tampered_frame"),
    ],
)
def test_frame_errors_are_protocol_errors_with_codes(error, code):
    """Frame errors are allq ProtocolErrors carrying a wire code."""
    assert issubclass(error, FrameError) and issubclass(error, ProtocolError)
    assert error("x").code == code


def test_handshake_error_carries_code_and_message():
    """HandshakeError keeps its code and message apart, and is a ProtocolError."""
    error = HandshakeError("bad_proof", "nope")
    assert isinstance(error, ProtocolError)
    assert (error.code, error.message) == ("bad_proof", "nope")


def test_session_repr_hides_box_and_challenge():
    """A Session's repr shows no key material."""
    client, _ = connect()
    assert "box" not in repr(client).lower()
    assert "challenge" not in repr(client)
