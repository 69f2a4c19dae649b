"""A DNS server for tests: ``twisted.names`` answering from records the test changes.

:class:`RecordsAuthority` is an in-memory authority: ``records`` maps a name to
its addresses (IPv4 and IPv6 mixed); a name that is absent is NXDOMAIN, a name
with an empty list exists but has no address. It is an ``IResolver``, so unit
tests hand it straight to :func:`allq.client.discovery.dns_server_lookup`.

Run as a script (``python tests/dns_fixture.py RECORDS.json``) it serves that
authority with :class:`twisted.names.server.DNSServerFactory` over UDP on
127.0.0.1, port 0, prints ``port N`` once listening, and reads the records file
again for every query, so an integration test changes the answers by rewriting
the file. It stops on SIGTERM.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from collections.abc import Callable

from twisted.internet import defer
from twisted.names import common, dns


class RecordsAuthority(common.ResolverBase):
    """Answers A and AAAA queries from ``records()`` (name -> list of addresses)."""

    def __init__(self, records: Callable[[], dict[str, list[str]]]) -> None:
        super().__init__()
        self.records = records
        self.queries = 0

    def _lookup(self, name, cls, type, timeout):  # noqa: A002 - ResolverBase's signature
        self.queries += 1
        text = name.decode("ascii") if isinstance(name, bytes) else name
        hosts = self.records().get(text.lower().rstrip("."))
        if hosts is None:
            return defer.fail(dns.DomainError(name))
        answers = []
        for host in hosts:
            version = ipaddress.ip_address(host).version
            if type == dns.A and version == 4:
                answers.append(dns.RRHeader(name, dns.A, dns.IN, 0, dns.Record_A(host, 0),
                                            auth=True))
            elif type == dns.AAAA and version == 6:
                answers.append(dns.RRHeader(name, dns.AAAA, dns.IN, 0,
                                            dns.Record_AAAA(host, 0), auth=True))
        return defer.succeed((answers, [], []))


def main(path: str) -> None:  # pragma: no cover - run as a subprocess
    from twisted.internet import reactor
    from twisted.names.server import DNSServerFactory

    def records() -> dict[str, list[str]]:
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    authority = RecordsAuthority(records)
    factory = DNSServerFactory(authorities=[authority])
    port = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
    print(f"port {port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1])
