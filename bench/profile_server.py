"""Where an allq server spends its time on put -> get -> done cycles.

Run from the repository root::

    .venv/bin/python bench/profile_server.py [--where twistd|inproc] [--mode pipelined]

``--where twistd`` (default) starts the real server under cProfile with a
CPU-time clock (``time.process_time``; ``twistd --profile`` would use wall time,
which on a shared machine charges other processes' time slices to whatever ran),
drives it with the same client processes as ``bench/server_cycles.py`` in the
chosen mode, stops it with SIGTERM (the stats are written at reactor shutdown)
and prints the top functions. cProfile slows the server down 2-3x; use the
proportions, not the rates.

``--where inproc`` needs no sockets: it builds the server's own objects (Queue,
Dispatcher, ServerProtocol with a ``StringTransport``, an authenticated Session),
seals every client frame *before* the clock starts, then feeds the frames to
``dataReceived`` ``--depth`` lines at a time and reports the cycles/s ceiling of
the per-frame work (decrypt, JSON, dispatch, queue, encode, encrypt, line
framing) without the reactor and the kernel, once plain and once under cProfile.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import multiprocessing as mp
import os
import pstats
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (bench/common.py: processes, daemons, the profiled twistd)
import server_cycles as sc  # noqa: E402  (the sibling bench script's client processes)


def print_stats(stats: pstats.Stats, top: int) -> None:
    for key in ("tottime", "cumulative"):
        buffer = io.StringIO()
        stats.stream = buffer
        stats.sort_stats(key).print_stats(top)
        text = buffer.getvalue()
        start = text.find("   ncalls")
        print(f"--- top {top} by {key} ---")
        print(text[start:] if start >= 0 else text)


# -- the real server under cProfile (CPU time) ------------------------------------------------


def profile_twistd(args) -> None:
    ctx = mp.get_context("spawn")
    with common.session("allq-profile-") as (procs, tmp):
        stats_path = Path(args.out) if args.out else tmp / "server.pstats"
        keys = common.generate_keys(tmp)
        server, port = common.start_allq_server(procs, tmp, keys, profile=stats_path)
        args.modes = [args.mode]
        specs = [
            s for s in sc.plans(args, port, str(keys), 0)
            if s[0] == args.mode and s[1] == "allq"
        ][0][3]
        result = sc.measure(ctx, procs, sc.allq_worker, specs, server.pid, args)
        print(f"{args.mode} under cProfile: {result['cycles_per_s']:,.0f} cycles/s, "
              f"server CPU {result['server_cpu']:.0%}, clients CPU {result['client_cpu']:.0%}, "
              f"everything else {result['other_cpu']:.0%} (errors {result['errors']})")
        os.kill(server.pid, signal.SIGTERM)
        server.wait(30)
        procs.stop_all()
        stats = pstats.Stats(str(stats_path))
        print(f"CPU-time profile of the whole server run (start-up, warm-up, window, "
              f"drain): {stats.total_tt:.2f} s of CPU")
        print_stats(stats.strip_dirs(), args.top)


# -- the server's per-frame work, in process ----------------------------------------------------


def _frames(args, client, server_id: str, first_id: int, cycles: int) -> list[list[bytes]]:
    """Sealed request lines, grouped into the chunks dataReceived will get.

    Pipelined: per group of ``depth`` cycles, ``depth`` puts, then ``depth`` gets,
    then ``depth`` dones (what the server sees from ``depth`` chains in flight).
    Batched: a batch frame of ``batch`` puts, a get of ``batch``, a batch of dones.
    Lockstep: put, get, done, one line per chunk.
    """
    from allq.wire.messages import dumps, encode_request

    body = "x" * common.BODY_BYTES
    next_request = iter(range(1, 10**9))
    chunks: list[list[bytes]] = []

    def seal(obj) -> bytes:
        return client.seal(dumps(obj)) + b"\n"

    def request(action, params):
        return encode_request(next(next_request), action, params)

    job = first_id
    if args.mode == "batched":
        size = args.batch
        for _ in range(cycles // size):
            puts = [request("put", {"tube": "t", "body": body}) for _ in range(size)]
            dones = [request("done", {"job_id": f"{server_id},{job + i}"}) for i in range(size)]
            chunks.append([seal(puts)])
            chunks.append([seal(request("get", {"tube": "t", "count": size}))])
            chunks.append([seal(dones)])
            job += size
        return chunks
    depth = 1 if args.mode == "lockstep" else args.depth
    for _ in range(cycles // depth):
        for action in ("put", "get", "done"):
            group = []
            for i in range(depth):
                params = {
                    "put": {"tube": "t", "body": body},
                    "get": {"tube": "t", "count": 1},
                    "done": {"job_id": f"{server_id},{job + i}"},
                }[action]
                group.append(seal(request(action, params)))
            chunks.append(group)
        job += depth
    return chunks


def profile_inproc(args) -> None:
    common.use_source_tree()
    from nacl.public import PrivateKey
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from allq.core.queue import Queue, QueueConfig
    from allq.server.dispatch import Dispatcher
    from allq.server.protocol import ServerFactory
    from allq.server.timer import DeadlineTimer
    from allq.wire.crypto import Authenticator, client_hello, parse_challenge_line
    from allq.wire.keys import ClientKeys, ServerKeys
    from allq.wire.messages import max_line_length

    def run(cycles: int, profiler: cProfile.Profile | None) -> tuple[float, int]:
        server_secret, client_secret = PrivateKey.generate(), PrivateKey.generate()
        server_keys = ServerKeys(server_secret, (client_secret.public_key,))
        client_keys = ClientKeys(client_secret, server_secret.public_key)
        clock = Clock()
        clock.advance(time.time())
        queue = Queue(QueueConfig(), first_id=1000, started=clock.seconds())
        timer = DeadlineTimer(queue, clock)
        timer.startService()
        factory = ServerFactory(
            authenticator=Authenticator(server_keys),
            dispatcher=Dispatcher(queue, clock, lambda: "srv"),
            clock=clock, server_id=lambda: "srv", max_job_size=16 * 1024 * 1024,
            max_line_length=max_line_length(16 * 1024 * 1024), after_frame=timer.poke)
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        challenge = parse_challenge_line(transport.value().rstrip(b"\n"))
        transport.clear()
        hello, client = client_hello(client_keys, challenge)
        protocol.dataReceived(hello + b"\n")
        welcome = transport.value()
        transport.clear()
        client.open(welcome.rstrip(b"\n"))
        chunks = _frames(args, client, "srv", 1000, cycles)
        payloads = [b"".join(chunk) for chunk in chunks]
        started = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        for payload in payloads:
            protocol.dataReceived(payload)
            transport.clear()  # the reply bytes are discarded, as a socket send would
        if profiler is not None:
            profiler.disable()
        elapsed = time.perf_counter() - started
        done = queue.job_put - len(queue)  # jobs put and finished (a failed done stays)
        timer.stopService()
        return elapsed, done

    cycles = args.inproc_cycles
    elapsed, done = run(cycles, None)
    print(f"in-process {args.mode}: {done:,} cycles in {elapsed:.2f} s = "
          f"{done / elapsed:,.0f} cycles/s of server work on one core, no reactor, no "
          f"kernel ({elapsed / done * 1e6:.1f} us per cycle)")
    profiler = cProfile.Profile(time.process_time)
    elapsed, done = run(cycles, profiler)
    print(f"same under cProfile: {done / elapsed:,.0f} cycles/s")
    stats = pstats.Stats(profiler)
    if args.out:
        stats.dump_stats(args.out)
    print_stats(stats.strip_dirs(), args.top)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--where", choices=("twistd", "inproc"), default="twistd")
    parser.add_argument("--mode", choices=("lockstep", "pipelined", "batched"),
                        default="pipelined")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--depth", type=int, default=64)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--batch-depth", type=int, default=1)
    parser.add_argument("--allq-procs", type=int, default=2)
    parser.add_argument("--bs-procs", type=int, default=8)
    parser.add_argument("--inproc-cycles", type=int, default=30_000,
                        help="cycles fed to the in-process server (30000)")
    parser.add_argument("--top", type=int, default=25, help="functions to list (25)")
    parser.add_argument("--out", metavar="PATH", help="keep the pstats file here")
    args = parser.parse_args(argv)
    common.stop_on_signals()
    common.print_machine_facts()
    if args.where == "twistd":
        profile_twistd(args)
    else:
        profile_inproc(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
