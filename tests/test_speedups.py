"""allq.speedups: every private-API shortcut gives what its public slow path gives."""

import os

from hypothesis import given
from hypothesis import strategies as st
from nacl.public import Box, PrivateKey
from twisted.web.http_headers import Headers

from allq import speedups

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30)


@given(json_values, st.booleans())
def test_json_encoder_matches_json_dumps(value, ensure_ascii):
    fast = speedups.compact_json_encoder(ensure_ascii=ensure_ascii)
    assert fast(value) == speedups.public_compact_json(value, ensure_ascii=ensure_ascii)


def test_json_encoder_refuses_cycles_and_recovers():
    encode = speedups.compact_json_encoder(ensure_ascii=False)
    cycle = []
    cycle.append(cycle)
    for _ in range(2):
        try:
            encode(cycle)
        except ValueError as e:
            assert "Circular reference" in str(e)
        else:
            raise AssertionError("a cycle was encoded")
    shared = [1]
    assert encode([shared, shared]) == "[[1],[1]]"  # a repeat is not a cycle


KEY = Box(PrivateKey.generate(), PrivateKey.generate().public_key).shared_key()


@given(st.binary(max_size=2000))
def test_box_seal_and_open_match_nacl_bindings(plaintext):
    nonce = os.urandom(24)
    sealed = speedups.box_seal(KEY, nonce, plaintext)
    assert sealed == speedups.public_box_seal(KEY, nonce, plaintext)
    assert speedups.box_open(KEY, nonce, sealed) == plaintext
    assert speedups.public_box_open(KEY, nonce, sealed) == plaintext
    tampered = bytes([sealed[0] ^ 1]) + sealed[1:]
    assert speedups.box_open(KEY, nonce, tampered) is None
    assert speedups.public_box_open(KEY, nonce, tampered) is None


def test_http_head_is_what_twisted_writes_in_pieces():
    headers = Headers({b"content-type": [b"application/json"], b"x-two": [b"a", b"b"]})
    pieces = [b"HTTP/1.1", b" ", b"200", b" ", b"OK", b"\r\n"]
    for name, values in headers.getAllRawHeaders():
        for value in values:
            pieces += [name, b": ", value, b"\r\n"]
    pieces.append(b"\r\n")
    assert speedups.http_head(b"HTTP/1.1", b"200", b"OK",
                              headers.getAllRawHeaders()) == b"".join(pieces)
