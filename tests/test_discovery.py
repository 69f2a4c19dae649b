"""Server discovery by DNS (:mod:`allq.client.discovery`).

Unit tests run a real federation over in-memory servers on a ``Clock``, with a
``twisted.names`` in-memory authority (``tests/dns_fixture.py``) as the DNS whose
records change during the test. The integration test serves that authority with
``twisted.names.server.DNSServerFactory`` on 127.0.0.1 (a subprocess, port 0) and
points a real ``twistd allq-client`` at it with ``ALLQ_DNS_SERVER``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python import usage

from allq.client.discovery import (
    DnsDiscovery,
    DnsName,
    dns_server_lookup,
    parse_dns_entry,
    parse_dns_server,
)
from allq.client.tap import Options, makeService
from allq.cli import generate_keys
from dns_fixture import RecordsAuthority
from memory_servers import start_federation

INTERVAL = 5.0
NAME = DnsName("allq-server", 5555)


@pytest.fixture
def log_lines():
    lines = []

    def observer(event):
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    yield lines
    globalLogPublisher.removeObserver(observer)


def follow(records, static=(), names=(NAME,)):
    """A started federation (``static`` servers) and a started discovery of ``names``
    asking an in-memory authority serving ``records``."""
    clock = Clock()
    federation, made = start_federation(clock, static)
    authority = RecordsAuthority(lambda: records)
    discovery = DnsDiscovery(federation, names, dns_server_lookup(authority), clock,
                             INTERVAL, static=static)
    discovery.startService()
    return clock, federation, discovery, authority


def addresses(federation) -> list[str]:
    return sorted(link.address for link in federation.links())


# -- parsing ----------------------------------------------------------------------


def test_dns_entries_and_servers_parse():
    """dns:NAME:PORT and HOST:PORT (port 53 by default) parse; garbage is refused."""
    assert parse_dns_entry(" dns:Allq-Server.:5555 ") == NAME
    assert str(NAME) == "dns:allq-server:5555"
    for bad in ("dns:allq-server", "dns::5555", "dns:a b:1", "dns:x:0", "dns:x:http"):
        with pytest.raises(ValueError, match="dns:NAME:PORT"):
            parse_dns_entry(bad)
    assert parse_dns_server("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_dns_server("10.0.0.2") == ("10.0.0.2", 53)
    assert parse_dns_server("[::1]:5353") == ("::1", 5353)
    for bad in ("dns.local:53", "127.0.0.1:99999", "", "1.2.3.4:x"):
        with pytest.raises(ValueError):
            parse_dns_server(bad)


def parse(args=(), environ=None) -> Options:
    options = Options()
    options.environ = environ or {}
    options.parseOptions(list(args))
    return options


def test_client_options_take_dns_names_beside_addresses():
    """SERVER_STRING mixes host:port and dns: entries; the interval and the DNS server
    come from flags or ALLQ_DNS_INTERVAL / ALLQ_DNS_SERVER."""
    options = parse(environ={"SERVER_STRING": "10.0.0.9:5555, dns:allq-server:5555"})
    assert options["servers"] == ["10.0.0.9:5555"]
    assert options["dns-names"] == [NAME]
    assert (options["dns-interval"], options["dns-server"]) == (5.0, None)
    options = parse(["--servers", "dns:allq-server:5555", "--dns-interval", "0.5"],
                    environ={"ALLQ_DNS_SERVER": "127.0.0.1:5353"})
    assert options["servers"] == [] and options["dns-names"] == [NAME]
    assert (options["dns-interval"], options["dns-server"]) == (0.5, ("127.0.0.1", 5353))
    assert parse()["dns-names"] == []


@pytest.mark.parametrize("args, named", [
    (["--servers", "dns:allq-server"], "--servers"),
    (["--servers", "dns:allq-server:5555", "--dns-interval", "0"], "--dns-interval"),
    (["--servers", "dns:allq-server:5555", "--dns-server", "my-dns:53"], "--dns-server"),
])
def test_bad_dns_options_name_the_option(args, named):
    with pytest.raises(usage.UsageError, match=named):
        parse(args)


def test_the_client_assembles_discovery_only_for_dns_names(tmp_path):
    """makeService adds a DnsDiscovery when --servers names one, and none otherwise."""
    generate_keys(str(tmp_path))

    def discoveries(args):
        service = makeService(parse(["--keys", str(tmp_path), *args]),
                              reactor=MemoryReactorClock())
        found, stack = [], [service]
        while stack:
            node = stack.pop()
            found += [node] if isinstance(node, DnsDiscovery) else []
            stack += list(getattr(node, "services", []))
        return found

    assert discoveries([]) == []
    (discovery,) = discoveries(["--servers", "dns:allq-server:5555",
                                "--dns-server", "127.0.0.1:5353"])
    assert discovery._names == [NAME]


# -- following the records --------------------------------------------------------


def test_every_address_behind_the_name_is_a_server_and_changes_are_followed():
    """All A and AAAA records become servers; on the next lookup new ones are added,
    gone ones dropped, and the links of those still there are kept."""
    records = {"allq-server": ["10.0.0.1", "10.0.0.2"]}
    clock, federation, discovery, _ = follow(records, static=["10.0.0.9:5555"])
    assert addresses(federation) == ["10.0.0.1:5555", "10.0.0.2:5555", "10.0.0.9:5555"]
    kept = next(link for link in federation.links() if link.address == "10.0.0.2:5555")
    records["allq-server"] = ["10.0.0.2", "10.0.0.3", "fd00::5"]
    clock.advance(INTERVAL)
    assert addresses(federation) == ["10.0.0.2:5555", "10.0.0.3:5555", "10.0.0.9:5555",
                                     "[fd00::5]:5555"]
    assert kept in federation.links() and kept.running
    discovery.stopService()
    federation.stopService()


def test_a_client_given_only_names_starts_empty_and_fills_in():
    """No static server: nothing until the first answer (operations are Unavailable,
    as with every server down), then the servers behind the name."""
    records = {}
    clock, federation, discovery, _ = follow(records)
    assert federation.links() == []
    assert federation.health()["total"] == 0
    records["allq-server"] = ["10.0.0.1"]
    clock.advance(INTERVAL)
    assert addresses(federation) == ["10.0.0.1:5555"]
    discovery.stopService()
    federation.stopService()


def test_a_failed_lookup_keeps_the_last_servers_and_is_logged_once(log_lines):
    """NXDOMAIN keeps what the name gave last; the warning is logged once however
    many rounds fail, and recovery is logged."""
    records = {"allq-server": ["10.0.0.1", "10.0.0.2"]}
    clock, federation, discovery, _ = follow(records)
    del records["allq-server"]
    for _ in range(3):
        clock.advance(INTERVAL)
    assert addresses(federation) == ["10.0.0.1:5555", "10.0.0.2:5555"]
    warnings = [line for line in log_lines if "DNS lookup of dns:allq-server:5555 failed" in line]
    assert len(warnings) == 1 and "failed (no such name)" in warnings[0]
    assert "keeping the 2 servers it gave last (10.0.0.1:5555, 10.0.0.2:5555)" in warnings[0]
    records["allq-server"] = ["10.0.0.2"]
    clock.advance(INTERVAL)
    assert addresses(federation) == ["10.0.0.2:5555"]
    assert any("resolves again" in line for line in log_lines)
    discovery.stopService()
    federation.stopService()


def test_an_answer_without_addresses_drops_but_never_the_last_server(log_lines):
    """A name that exists with no address gives no servers: its servers are dropped,
    unless they are the client's last ones."""
    other = DnsName("allq-other", 5555)
    records = {"allq-server": ["10.0.0.1"], "allq-other": ["10.0.0.2"]}
    clock, federation, discovery, _ = follow(records, names=(NAME, other))
    records["allq-server"] = []
    clock.advance(INTERVAL)
    assert addresses(federation) == ["10.0.0.2:5555"]
    records["allq-other"] = []
    clock.advance(INTERVAL)
    assert addresses(federation) == ["10.0.0.2:5555"]
    assert any("keeping 10.0.0.2:5555, the client's last servers" in line for line in log_lines)
    records["allq-other"] = ["10.0.0.3"]
    clock.advance(INTERVAL)
    assert addresses(federation) == ["10.0.0.3:5555"]
    discovery.stopService()
    federation.stopService()


def test_the_system_resolver_counts_no_address_as_a_failure():
    """getaddrinfo's failures reach us as no address: a failure, not an answer."""
    from allq.client.discovery import system_lookup

    class Resolver:
        def resolveHostName(self, receiver, name):
            receiver.resolutionBegan(None)
            receiver.resolutionComplete()

    class Reactor:
        nameResolver = Resolver()

    failures = []
    system_lookup(Reactor())("allq-server").addErrback(failures.append)
    assert failures and "no address" in str(failures[0].value)


def test_an_address_another_source_names_is_not_dropped():
    """A static address, or one another name also gives, stays when a name drops it."""
    other = DnsName("allq-backup", 5555)
    records = {"allq-server": ["10.0.0.1", "10.0.0.2"], "allq-backup": ["10.0.0.2"]}
    clock, federation, discovery, _ = follow(records, static=["10.0.0.1:5555"],
                                             names=(NAME, other))
    records["allq-server"] = ["10.0.0.3"]
    clock.advance(INTERVAL)
    assert addresses(federation) == ["10.0.0.1:5555", "10.0.0.2:5555", "10.0.0.3:5555"]
    discovery.stopService()
    federation.stopService()


def test_lookups_never_pile_up_and_stop_leaves_nothing_scheduled(observe_errors):
    """A lookup that hangs holds the next round back; stopping cancels it quietly
    and leaves no timer behind."""
    clock = Clock()
    federation, _ = start_federation(clock, ["10.0.0.9:5555"])
    started = []

    def hanging_lookup(name):
        started.append(Deferred())
        return started[-1]

    discovery = DnsDiscovery(federation, [NAME], hanging_lookup, clock, INTERVAL)
    discovery.startService()
    for _ in range(3):
        clock.advance(INTERVAL)
    assert len(started) == 1
    discovery.stopService()
    assert [call for call in clock.getDelayedCalls() if call.active()] == []
    assert addresses(federation) == ["10.0.0.9:5555"]
    federation.stopService()


def test_the_authority_is_asked_every_interval():
    """One round of lookups (A and AAAA) per interval, not more."""
    clock, federation, discovery, authority = follow({"allq-server": ["10.0.0.1"]})
    assert (discovery.rounds, authority.queries) == (1, 2)
    for _ in range(3):
        clock.advance(INTERVAL)
    assert (discovery.rounds, authority.queries) == (4, 8)
    clock.advance(INTERVAL / 2)
    assert discovery.rounds == 4
    discovery.stopService()
    federation.stopService()


# -- through the real client daemon -----------------------------------------------


@pytest.fixture
def dns_server(tmp_path):
    """A twisted.names DNS server on 127.0.0.1 (a subprocess), answering from a
    records file the test rewrites; yields (port, write_records)."""
    path = tmp_path / "records.json"

    def write_records(records):
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(records))
        temporary.replace(path)  # whole, never half-written, for the server's reads

    write_records({})
    process = subprocess.Popen(
        [sys.executable, "dns_fixture.py", str(path)],
        cwd=str(__import__("pathlib").Path(__file__).parent),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = process.stdout.readline()
        match = re.fullmatch(r"port (\d+)\n", line)
        assert match, f"DNS fixture did not start: {line!r}"
        yield int(match[1]), write_records
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.mark.integration
def test_the_client_daemon_follows_dns_records(daemons, dns_server):
    """twistd allq-client with only dns: names in SERVER_STRING finds the servers the
    DNS names, adds one that appears, drops one whose name stops giving it, and
    keeps the last set while a name fails."""
    from test_client_integration import CLIENT_SERVING, Api, wait_for

    dns_port, write_records = dns_server
    keys = daemons.generate_keys()
    first, second = daemons.start_servers(2, keys)
    write_records({"one.allq.test": ["127.0.0.1"]})
    client = daemons.spawn(
        "allq-client",
        ["--keys", str(keys.directory), "--http", "tcp:0:interface=127.0.0.1",
         "--dns-interval", "0.2"],
        env={"SERVER_STRING": f"dns:one.allq.test:{first.port},dns:two.allq.test:{second.port}",
             "ALLQ_DNS_SERVER": f"127.0.0.1:{dns_port}"},
        name="client")
    api = Api(int(client.wait_for_log(CLIENT_SERVING)["port"]))

    def servers():
        return sorted((s["address"], s["up"]) for s in api.call("GET", "/health")[1]["servers"])

    wait_for(servers, lambda s: s == [(f"127.0.0.1:{first.port}", True)],
             what="the server behind one.allq.test")
    job_id = api.put("dns", "found by name")

    write_records({"one.allq.test": ["127.0.0.1"], "two.allq.test": ["127.0.0.1"]})
    wait_for(servers, lambda s: len(s) == 2 and all(up for _, up in s),
             what="the server behind two.allq.test, added")

    write_records({"one.allq.test": [], "two.allq.test": ["127.0.0.1"]})
    wait_for(servers, lambda s: s == [(f"127.0.0.1:{second.port}", True)],
             what="the server one.allq.test no longer gives, dropped")
    # The job put on the dropped server is out of this client's reach now.
    assert api.call("GET", "/job", tube="dns")[1] == {}

    write_records({})  # NXDOMAIN for both: the last servers stay
    client.wait_for_log(re.compile(r"DNS lookup of dns:two.allq.test:\d+ failed"))
    assert servers() == [(f"127.0.0.1:{second.port}", True)]
    # The first server still holds the job: nothing was lost, only unfollowed.
    assert job_id.startswith(first.server_id + ",")


def test_a_worker_started_before_any_answer_gets_the_names():
    """--workers: a worker started while the names have not answered yet gets the
    names as its --servers (parseable), one started later the addresses found."""
    from allq.client.tap import _worker_options

    config = parse(["--servers", "dns:allq-server:5555", "--workers", "2"])
    clock = Clock()
    federation, _ = start_federation(clock, [])
    options = _worker_options(config, federation, "127.0.0.1", 8090, 1024)
    servers = options[options.index("--servers") + 1]
    assert servers == "dns:allq-server:5555"
    assert parse(["--servers", servers])["dns-names"] == [NAME]
    federation.add_server("10.0.0.1:5555")
    options = _worker_options(config, federation, "127.0.0.1", 8090, 1024)
    assert options[options.index("--servers") + 1] == "10.0.0.1:5555"
    federation.stopService()
