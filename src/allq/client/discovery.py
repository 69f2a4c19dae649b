"""Server discovery by DNS: ``--servers dns:NAME:PORT`` follows every address behind a name.

AllQueue's deployments pushed ``update_servers`` into the client from an etcd
watcher. With ``dns:allq-server:5555`` in ``--servers`` (``SERVER_STRING``) the
client needs no sidecar: :class:`DnsDiscovery` looks the name up now and every
``--dns-interval`` seconds, and every address behind it is a server on that port.
So ``docker compose up --scale server=5`` (Docker's DNS answers a service name
with every container's address) and a Kubernetes headless service (one address
per ready pod) give the client all the servers, and it follows them as they come
and go.

Rules, for each name:

* an answer is believed: new addresses are added (:meth:`Federation.add_server`),
  addresses the name no longer has are dropped (:meth:`Federation.update_servers`
  with the rest), and the links of addresses still present are kept as they are
  (connections, drain flags). An answer may hold no address (the name exists
  without A/AAAA records): its servers are dropped;
* a lookup that fails (no such name, a timeout, an error) keeps the servers the
  name gave last, and is logged once until the name answers again: a DNS hiccup
  never empties a client. The system resolver cannot tell "no such name" from
  "no address", so there no address counts as a failure;
* an address also given statically, or by another name, stays while any of them
  names it; the client never drops its last server;
* servers added or dropped through the REST API are left alone unless a name
  gave them.

The lookups go through a ``lookup(name) -> Deferred[list[str]]`` function:
:func:`system_lookup` (the default) asks the operating system (``getaddrinfo``
in Twisted's resolver thread pool, so ``/etc/hosts``, ``resolv.conf`` search
domains and ndots work as for any program: what Kubernetes' short service names
need, which ``twisted.names``' own client does not do); :func:`dns_server_lookup`
asks one DNS server directly with ``twisted.names`` (``--dns-server
HOST:PORT``, ``ALLQ_DNS_SERVER``), A and AAAA records.

What it must not do: keep anything scheduled after :meth:`stopService`, or
decide anything about placement (the federation does).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable

import attrs
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.names.error import DNSQueryTimeoutError, DomainError
from twisted.python.failure import Failure

from allq.client.link import normalize_address
from allq.errors import AllQError

#: The prefix of a name to look up in ``--servers``.
DNS_PREFIX = "dns:"
#: Seconds between lookups of each name.
DEFAULT_DNS_INTERVAL = 5.0
#: Seconds one query to ``--dns-server`` may take (tried twice).
DNS_QUERY_TIMEOUTS = (1, 3)
_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})")

Lookup = Callable[[str], Deferred]


@attrs.frozen
class DnsName:
    """One ``dns:NAME:PORT`` entry of ``--servers``."""

    name: str
    port: int

    def __str__(self) -> str:
        return f"{DNS_PREFIX}{self.name}:{self.port}"

    def address(self, host: str) -> str:
        """The ``host:port`` (``[v6]:port``) of one address behind the name."""
        return normalize_address(f"[{host}]:{self.port}" if ":" in host
                                 else f"{host}:{self.port}")


def is_dns_entry(entry: str) -> bool:
    return entry.strip().startswith(DNS_PREFIX)


def parse_dns_entry(entry: str) -> DnsName:
    """Read ``dns:NAME:PORT``.

    :raises ValueError: anything else, saying what is expected.
    """
    text = entry.strip()[len(DNS_PREFIX):]
    name, _, port = text.rpartition(":")
    if not _NAME.fullmatch(name) or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected dns:NAME:PORT (a host name and a port 1-65535), "
                         f"got {entry.strip()[:80]!r}")
    return DnsName(name.rstrip(".").lower(), int(port))


def parse_dns_server(text: str) -> tuple[str, int]:
    """Read ``--dns-server HOST:PORT`` (an IP address; port 53 if left out).

    :raises ValueError: not an IP address and port.
    """
    text = text.strip()
    host, port = text, "53"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else "53"
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"expected an IP address and port (HOST:PORT), got {text[:80]!r}") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"the port must be 1-65535, got {port[:10]!r}")
    return host, int(port)


# -- lookups -----------------------------------------------------------------------------


class _Addresses:
    """An ``IResolutionReceiver`` collecting the addresses of one name."""

    def __init__(self) -> None:
        self.hosts: list[str] = []
        self.done: Deferred = Deferred()

    def resolutionBegan(self, resolution) -> None:
        pass

    def addressResolved(self, address) -> None:
        self.hosts.append(address.host)

    def resolutionComplete(self) -> None:
        self.done.callback(self.hosts)


def system_lookup(reactor) -> Lookup:
    """Look names up as the operating system does (``getaddrinfo`` in a thread).

    :param reactor: an ``IReactorPluggableNameResolver``.
    """
    def lookup(name: str) -> Deferred:
        receiver = _Addresses()
        reactor.nameResolver.resolveHostName(receiver, name)
        return receiver.done.addCallback(_some)

    return lookup


def _some(hosts: list[str]) -> list[str]:
    # Twisted's getaddrinfo resolver reports a failed lookup as no address.
    if not hosts:
        raise LookupError("no address")
    return hosts


def dns_server_lookup(resolver) -> Lookup:
    """Look names up with a ``twisted.names`` resolver: its A and AAAA records.

    :param resolver: an ``IResolver``, e.g. ``twisted.names.client.Resolver(
        servers=[(host, port)])``, or an in-memory authority in tests.
    """
    def lookup(name: str) -> Deferred:
        queries = [resolver.lookupAddress(name, DNS_QUERY_TIMEOUTS),
                   resolver.lookupIPV6Address(name, DNS_QUERY_TIMEOUTS)]

        def gathered(results):
            ipv4, ipv6 = results
            if not ipv4[0] and not ipv6[0]:
                return ipv4[1]  # both failed: the A lookup's reason
            hosts = []
            for ok, answer in results:
                if ok:
                    hosts += [record.payload.dottedQuad() if record.type == 1
                              else _ipv6(record.payload.address)
                              for record in answer[0] if record.type in (1, 28)]
            return hosts

        return DeferredList(queries, consumeErrors=True).addCallback(gathered)

    return lookup


def _ipv6(packed: bytes) -> str:
    return str(ipaddress.IPv6Address(packed))


# -- the service -------------------------------------------------------------------------


class DnsDiscovery(Service):
    """Keeps the federation's servers in step with the addresses behind some names.

    :param federation: gives ``links()`` and takes ``add_server``/``update_servers``
        (:class:`allq.client.federation.Federation`).
    :param names: the names to follow.
    :param lookup: resolves one name to addresses (:func:`system_lookup`,
        :func:`dns_server_lookup`).
    :param clock: runs the lookups every ``interval`` seconds.
    :param static: the addresses configured as such: never dropped by a name.
    """

    _log = Logger()

    def __init__(self, federation, names: Iterable[DnsName], lookup: Lookup,
                 clock: IReactorTime, interval: float = DEFAULT_DNS_INTERVAL,
                 static: Iterable[str] = ()) -> None:
        self._federation = federation
        self._names = list(dict.fromkeys(names))
        self._lookup = lookup
        self._clock = clock
        self._interval = interval
        self._static = {normalize_address(address) for address in static}
        #: The addresses each name gave last (absent: no answer yet).
        self.known: dict[DnsName, set[str]] = {}
        self._failing: set[DnsName] = set()
        self._loop: LoopingCall | None = None
        self._in_flight: list[Deferred] = []
        self.rounds = 0

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.refresh)
        self._loop.clock = self._clock
        # The first lookups now: a client given only names has no server until they answer.
        self._loop.start(self._interval, now=True).addErrback(
            lambda failure: self._log.failure("DNS discovery stopped", failure))

    def stopService(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        for lookup in list(self._in_flight):
            lookup.cancel()
        return super().stopService()

    def refresh(self) -> Deferred:
        """Look every name up once and apply the answers. The loop waits for this
        Deferred, so lookups never pile up behind a slow resolver."""
        lookups = []
        for name in self._names:
            lookup = self._start(name)
            lookups.append(lookup.addBoth(self._answered, name))
        return DeferredList(lookups).addCallback(self._round_done)

    def _start(self, name: DnsName) -> Deferred:
        try:
            lookup = self._lookup(name.name)
        except Exception:
            return succeed(Failure())
        self._in_flight.append(lookup)
        lookup.addBoth(self._landed, lookup)
        return lookup

    def _landed(self, result, lookup: Deferred):
        self._in_flight.remove(lookup)
        return result

    def _round_done(self, _) -> None:
        self.rounds += 1

    def _answered(self, result, name: DnsName) -> None:
        if isinstance(result, Failure):
            if result.check(CancelledError) and not self.running:
                return None
            self._failed(name, _reason(result))
            return None
        hosts = {name.address(host) for host in result}
        if name in self._failing:
            self._failing.discard(name)
            self._log.info("DNS name {name} resolves again", name=str(name))
        self._apply(name, hosts)
        return None

    def _failed(self, name: DnsName, why: str) -> None:
        if name in self._failing:
            return  # said once already
        self._failing.add(name)
        kept = sorted(self.known.get(name, ()))
        self._log.warn(
            "DNS lookup of {name} failed ({why}); keeping the {count} servers it gave "
            "last{servers}", name=str(name), why=why, count=len(kept),
            servers=f" ({', '.join(kept)})" if kept else "")

    def _apply(self, name: DnsName, hosts: set[str]) -> None:
        before = self.known.get(name, set())
        self.known[name] = hosts
        others = set(self._static).union(
            *(known for other, known in self.known.items() if other != name))
        current = [link.address for link in self._federation.links()]
        for address in sorted(hosts - set(current)):
            self._federation.add_server(address)
            self._log.info("DNS name {name} added server {address}",
                           name=str(name), address=address)
        gone = (before - hosts) - others
        if not gone:
            return
        remaining = [address for address in current if address not in gone]
        remaining += [address for address in sorted(hosts) if address not in remaining]
        if not remaining:
            # Never the last server (the federation refuses an empty set anyway).
            self._log.warn("DNS name {name} gives no address; keeping {servers}, the "
                           "client's last servers", name=str(name),
                           servers=", ".join(sorted(gone)))
            self.known[name] = before
            return
        try:
            self._federation.update_servers(remaining)
        except AllQError as e:
            self._log.warn("DNS name {name}: servers not updated: {error}",
                           name=str(name), error=e.message)
            return
        self._log.info("DNS name {name} no longer gives {servers}: dropped",
                       name=str(name), servers=", ".join(sorted(gone)))


def _reason(failure: Failure) -> str:
    """One short line: what DNS said, or the error's type and text."""
    if failure.check(DomainError):  # NXDOMAIN (DNSNameError over the network)
        return "no such name"
    if failure.check(DNSQueryTimeoutError, TimeoutError):
        return "timed out"
    text = str(failure.value)
    kind = type(failure.value).__name__
    return f"{kind}: {text}"[:200] if text else kind
