"""A bounded, seeded fuzz of the server protocol (issue 10): hostile frames never
cost a reply or the server.

Unauthenticated connections get random handshake bytes; authenticated ones get
random JSON shapes, huge and non-finite numbers, deep nesting, wrong types and
batches, sealed in valid boxes. Every authenticated frame must get exactly one
encrypted reply, the connection must stay open, a fresh connection must still be
served, and nothing may be logged as a failure (the autouse ``observe_errors``
fixture). ``scripts/wire_fuzz.py`` runs the same generator for longer.
"""

import random

import pytest
from twisted.internet.task import Clock

from allq.wire.messages import ACTIONS, loads

from tests.test_server_protocol import SERVER_ID, Peer, make_factory

SEED = 20_241_010
FRAMES = 2_000
HANDSHAKES = 200
_HUGE = ["1" + "0" * 309, "-" + "9" * 400, "9" * 4301, "1e400", "-1e999", "NaN",
         "Infinity", "-Infinity", str(2**63), str(-(2**63) - 1), "1e308", "0.0", "-0"]
_SCALARS = ['""', '"t"', '"x,1"', '"srv1,5"', "true", "false", "null", "0", "1", "-1", "3.5",
            '"\\ud800"', '"\\u0000"', '"' + "a" * 300 + '"']


def _value(rng: random.Random, depth: int = 0) -> str:
    """A random JSON value as text (so numbers Python cannot produce get through)."""
    roll = rng.random()
    if depth > 3 or roll < 0.35:
        return rng.choice(_SCALARS)
    if roll < 0.55:
        return rng.choice(_HUGE)
    if roll < 0.65:
        n = rng.randint(100, 5000)
        opener, closer = rng.choice([("[", "]"), ('{"a":', "}")])
        return opener * n + "1" + closer * n
    if roll < 0.8:
        return "[" + ",".join(_value(rng, depth + 1) for _ in range(rng.randint(0, 4))) + "]"
    keys = rng.sample(["id", "action", "params", "tube", "body", "x", "job_id", "count"],
                      rng.randint(0, 4))
    return "{" + ",".join(f'"{k}":{_value(rng, depth + 1)}' for k in keys) + "}"


def _request(rng: random.Random, request_id: int) -> str:
    """A request with a real action and random params (some right, most wrong)."""
    action = rng.choice(sorted(ACTIONS) + ["nope"])
    names = sorted(ACTIONS.get(action, {})) + ["bogus"]
    params = {name: _value(rng) for name in rng.sample(names, rng.randint(0, len(names)))}
    if "tube" in params and rng.random() < 0.5:
        params["tube"] = '"t"'
    id_text = str(request_id) if rng.random() < 0.9 else _value(rng)
    body = ",".join(f'"{k}":{v}' for k, v in params.items())
    return f'{{"id":{id_text},"action":"{action}","params":{{{body}}}}}'


def hostile_frame(rng: random.Random, request_id: int) -> bytes:
    """One frame's plaintext: a request, a batch, or any JSON-ish garbage."""
    roll = rng.random()
    if roll < 0.5:
        text = _request(rng, request_id)
    elif roll < 0.7:
        text = "[" + ",".join(_request(rng, request_id + i)
                              for i in range(rng.randint(0, 5))) + "]"
    elif roll < 0.9:
        text = _value(rng)
    else:
        raw = _request(rng, request_id).encode()
        cut = rng.randint(0, len(raw))
        return raw[:cut] + bytes(rng.randrange(256) for _ in range(rng.randint(0, 8)))
    return text.encode()


def hostile_hello(rng: random.Random) -> bytes:
    """Bytes a stranger might send instead of a HELLO (no newline inside)."""
    kind = rng.random()
    if kind < 0.3:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 200))).replace(b"\n", b"")
    if kind < 0.6:
        parts = [b"HELLO"] + [bytes(rng.choice(b"ABCxyz+/=0189") for _ in range(rng.randint(0, 60)))
                              for _ in range(rng.randint(0, 4))]
        return b" ".join(parts)
    return b"GET / HTTP/1.1" if kind < 0.8 else b"A" * rng.randint(900, 1100)


def test_hostile_frames_all_get_replies_and_the_server_keeps_serving():
    """2,000 seeded hostile frames over a few connections: one reply each, no
    connection dropped, no failure logged, and the queue still works after."""
    rng = random.Random(SEED)
    clock = Clock()
    factory = make_factory(clock, max_line_length=256 * 1024)
    peers = [Peer(factory) for _ in range(4)]
    for peer in peers:
        peer.handshake()
    for n in range(FRAMES):
        peer = peers[n % len(peers)]
        plaintext = hostile_frame(rng, n)
        if len(plaintext) * 4 // 3 + 128 > 256 * 1024:
            # Sealed, over the line limit: refused and closed by design (see
            # test_wire_limits); which frames are this big depends on the seeded
            # draw over ACTIONS, which grows with the protocol.
            continue
        peer.send_line(peer.seal(plaintext))
        lines = peer.lines()
        assert len(lines) == 1, (n, plaintext[:200])
        reply = loads(peer.session.open(lines[0]))
        assert isinstance(reply, dict | list), (n, plaintext[:200])
        assert not peer.transport.disconnecting, (n, plaintext[:200])
    for peer in peers:
        assert peer.request("ping")["result"] == {"server_id": SERVER_ID}
    fresh = Peer(factory)
    fresh.handshake()
    assert "result" in fresh.request("undrain")  # the fuzz may have drained the server
    job_id = fresh.request("put", tube="after-fuzz", body="ok")["result"]["job_id"]
    assert fresh.request("get", tube="after-fuzz")["result"]["jobs"][0]["job_id"] == job_id


@pytest.mark.parametrize("seed", range(4))
def test_hostile_handshakes_are_refused_cleanly(seed):
    """Random first lines get one clear-text ERROR line and a close, never an
    exception; the server still accepts a good client afterwards."""
    rng = random.Random(SEED + seed)
    clock = Clock()
    factory = make_factory(clock)
    for _ in range(HANDSHAKES // 4):
        peer = Peer(factory)
        peer.challenge()
        peer.protocol.dataReceived(hostile_hello(rng) + b"\n")
        (line,) = peer.lines()
        assert line.startswith(b"ERROR ") and peer.transport.disconnecting
        peer.lose()
    good = Peer(factory)
    good.handshake()
    assert good.request("ping")["result"] == {"server_id": SERVER_ID}
    good.lose()
    assert clock.getDelayedCalls() == []
