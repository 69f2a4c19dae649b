"""A longer run of the suite's wire fuzz (``tests/test_wire_fuzz.py``), in memory.

Usage, from the repository root::

    PYTHONPATH=.:src .venv/bin/python scripts/wire_fuzz.py [--frames 50000] [--seed N]

Throws ``--frames`` seeded hostile frames at a real :class:`ServerProtocol` over
``StringTransport`` connections (no sockets, no daemon) and fails on the first
frame that gets no reply, closes its connection, or logs a failure. Prints the
seed, the frame count and the time taken.
"""

import argparse
import random
import sys
import time

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from allq.wire.messages import loads
from tests.test_server_protocol import Peer, make_factory
from tests.test_wire_fuzz import SEED, hostile_frame


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    failures = []
    globalLogPublisher.addObserver(
        lambda event: failures.append(event) if event.get("log_failure") else None)
    rng = random.Random(args.seed)
    factory = make_factory(Clock(), max_line_length=256 * 1024)
    peers = [Peer(factory) for _ in range(8)]
    for peer in peers:
        peer.handshake()
    started = time.monotonic()
    for n in range(args.frames):
        peer = peers[n % len(peers)]
        plaintext = hostile_frame(rng, n)
        peer.send_line(peer.seal(plaintext))
        lines = peer.lines()
        if len(lines) != 1 or peer.transport.disconnecting or failures:
            print(f"frame {n} (seed {args.seed}) broke the server: {plaintext[:300]!r}")
            return 1
        loads(peer.session.open(lines[0]))
    took = time.monotonic() - started
    print(f"seed {args.seed}: {args.frames} hostile frames, all answered, in {took:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
