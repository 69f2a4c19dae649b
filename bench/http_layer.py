"""The allq-client's HTTP layer alone: CPU per request for each ``--http-parser``.

Run from the repository root::

    .venv/bin/python bench/http_layer.py [--requests N] [--rounds R]

Feeds keep-alive ``POST /job``, ``GET /job`` and ``DELETE /job`` requests, as the
``rest_cycles.py`` workers send them, into one connection of the client's real
site (Host guard, latency metric, ``FastRouter``, access log off) over a
``StringTransport``, behind each HTTP parser. The job routes are replaced by
stubs that answer at once with a job-sized JSON reply, so the figure is what
reading, routing, timing and writing cost, without the federation, the network
or the reactor. CPU time (``time.process_time``), the best of ``--rounds``: on a
shared machine the least disturbed round is the closest to the cost.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.defer import succeed  # noqa: E402
from twisted.internet.protocol import connectionDone  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402

from allq.client.fast_http import PARSERS, http_factory  # noqa: E402
from allq.client.fast_routes import FastRouter  # noqa: E402
from allq.client.graceful import InFlight  # noqa: E402
from allq.client.http import json_response, read_json  # noqa: E402
from allq.client.metrics import ClientMetrics  # noqa: E402
from allq.client.rest import RestApi  # noqa: E402
from allq.client.site import build_site  # noqa: E402
from allq.client.tap import QuietSite  # noqa: E402

JOB_ID = "yaReodaVXJ,1234567"
BODY = "x" * 100
HOST = b"Host: 127.0.0.1:8090\r\n"


def requests() -> bytes:
    """One cycle's three requests, as the raw load generator writes them."""
    put = json.dumps({"tube": "bench", "body": BODY}).encode()
    return (b"POST /job HTTP/1.1\r\n" + HOST + b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(put), put)
            + b"GET /job?tube=bench HTTP/1.1\r\n" + HOST + b"\r\n"
            + b"DELETE /job?job_id=" + JOB_ID.replace(",", "%2C").encode()
            + b" HTTP/1.1\r\n" + HOST + b"\r\n")


def stub_routes() -> dict:
    """The job routes, answering at once with replies of the real routes' shapes."""
    job = {"id": JOB_ID, "tube": "bench", "body": BODY, "expireds": 0, "releases": 0}

    def put(request):
        read_json(request, 1 << 20)
        return succeed(json_response(request, {"action": "put", "job_id": JOB_ID}))

    def get(request):
        return succeed(json_response(request, job))

    def delete(request):
        return succeed(json_response(request, {"action": "delete", "job_id": JOB_ID}))

    return {(b"POST", b"/job"): put, (b"GET", b"/job"): get, (b"DELETE", b"/job"): delete}


def measure(parser: str, cycles: int) -> float:
    """CPU microseconds per request through ``parser``'s connection."""
    routes = stub_routes()
    resource = FastRouter(RestApi.app.resource(), routes, lambda failure, request: b"")
    site = build_site(resource, ClientMetrics(Clock(), process=False), None,
                      site_class=QuietSite)
    site.requestFactory = InFlight().request_factory(1 << 20)
    protocol = http_factory(site, routes, parser).buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    protocol.makeConnection(transport)
    data = requests()
    started = time.process_time()
    for n in range(cycles):
        protocol.dataReceived(data)
        if n % 100 == 0:
            transport.clear()
    elapsed = time.process_time() - started
    assert transport.value().count(b"HTTP/1.1 200 OK") > 0
    protocol.connectionLost(connectionDone)
    return elapsed / (3 * cycles) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=30_000,
                        help="requests per round (default 30,000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per parser (default 5)")
    args = parser.parse_args()
    cycles = max(1, args.requests // 3)
    best = {}
    for _ in range(args.rounds):  # interleaved, so both see the same machine
        for name in PARSERS:
            best[name] = min(best.get(name, float("inf")), measure(name, cycles))
    for name in PARSERS:
        print(f"--http-parser {name:<9} {best[name]:6.1f} us of CPU per request "
              f"(best of {args.rounds} rounds of {3 * cycles:,})")
    print(f"httptools / twisted: {best['httptools'] / best['twisted']:.2f}")


if __name__ == "__main__":
    main()
