"""``twistd allq-client`` wiring: options, environment fallbacks, service assembly."""

import pytest
from twisted.application.service import IServiceMaker, MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python import usage

from allq.client.tap import Options, makeService
from allq.cli import generate_keys


TOKEN = "s3cret-admin-token-0123456789"


def parse(args=(), environ=None):
    options = Options()
    options.environ = environ or {}
    options.parseOptions(list(args))
    return options


def test_defaults():
    """With no flags and no environment the client serves loopback:8090 for 127.0.0.1:5555."""
    options = parse()
    assert options["http"] == "tcp:8090:interface=127.0.0.1:backlog=1024"
    assert options["servers"] == ["127.0.0.1:5555"]
    assert options["keys"] is None
    assert options["request-timeout"] == 10.0
    assert options["retry-budget"] == 5.0
    assert options["access-log"] is False
    assert options["log-jobs"] is False


def test_environment_fallbacks_and_flags_win():
    """AllQueue's variables configure the client; flags override them."""
    env = {"SERVER_STRING": "a:1, b:2", "HTTP_SERVER_PORT": "9000", "ALLQ_KEYS_DIR": "/k",
           "ALLQ_RETRY_BUDGET": "2.5", "SIZE_LIMIT": "4096", "ALLQ_ACCESS_LOG": "true"}
    options = parse(environ=env)
    assert options["servers"] == ["a:1", "b:2"]
    assert options["http"] == "tcp:9000:interface=127.0.0.1:backlog=1024"
    assert (options["keys"], options["retry-budget"], options["max-body"]) == ("/k", 2.5, 4096)
    assert options["access-log"] is True
    inside_a_container = parse(environ={"HTTP_SERVER_PORT": "9000", "ALLQ_HTTP_INTERFACE": "0.0.0.0",
                                        "ALLQ_ADMIN_TOKEN": TOKEN})
    assert inside_a_container["http"] == "tcp:9000:interface=0.0.0.0:backlog=1024"
    options = parse(["--servers", "c:3", "--http", "tcp:0", "--admin-token", TOKEN], environ=env)
    assert (options["servers"], options["http"]) == (["c:3"], "tcp:0")


@pytest.mark.parametrize("args, env, named", [
    (["--servers", "nohost"], {}, "--servers"),
    (["--servers", "h:70000"], {}, "--servers"),
    (["--servers", " , "], {}, "--servers"),
    (["--retry-budget", "-1"], {}, "--retry-budget"),
    (["--request-timeout", "soon"], {}, "--request-timeout"),
    (["--max-body", "10"], {}, "--max-body"),
    ([], {"HTTP_SERVER_PORT": "http"}, "--http"),
    (["--workers", "0"], {}, "--workers"),
    (["--workers", "two"], {}, "--workers"),
    (["--workers", "2", "--http", "unix:/tmp/allq.sock"], {}, "--workers 2 needs a tcp"),
    ([], {"ALLQ_WORKERS": "-3"}, "--workers"),
    (["--http-parser", "llhttp"], {}, "--http-parser"),
    ([], {"ALLQ_HTTP_PARSER": "fast"}, "--http-parser"),
    ([], {"CL_PORT": "x"}, "--jsonl"),
    (["--jsonl-idle-timeout", "0"], {}, "--jsonl-idle-timeout"),
    (["--failover-after", "0"], {}, "--failover-after"),
    (["--failover-after", "soon"], {}, "--failover-after"),
    ([], {"ALLQ_FAILOVER_AFTER": "-5"}, "--failover-after"),
])
def test_bad_values_name_the_option(args, env, named):
    """A bad value stops start-up with a message naming the option."""
    with pytest.raises(usage.UsageError, match=named):
        parse(args, env)


def test_workers_option():
    """One process by default; --workers or ALLQ_WORKERS asks for more."""
    assert parse()["workers"] == 1
    assert parse(["--workers", "4"])["workers"] == 4
    assert parse(environ={"ALLQ_WORKERS": "3"})["workers"] == 3


def test_http_parser_option(tmp_path):
    """httptools by default; --http-parser or ALLQ_HTTP_PARSER picks twisted.web alone,
    and the listening factory follows."""
    from allq.client.fast_http import FastHTTPFactory
    from twisted.web.server import Site

    assert parse()["http-parser"] == "httptools"
    assert parse(["--http-parser", "twisted"])["http-parser"] == "twisted"
    assert parse(environ={"ALLQ_HTTP_PARSER": "twisted"})["http-parser"] == "twisted"
    generate_keys(str(tmp_path / "keys"))
    for parser, kind in (("httptools", FastHTTPFactory), ("twisted", Site)):
        reactor = MemoryReactorClock()
        service = makeService(parse(["--keys", str(tmp_path / "keys"), "--http-parser", parser,
                                     "--http", "tcp:0:interface=127.0.0.1",
                                     "--jsonl", "none", "--unix", "none"]), reactor=reactor)
        service.startService()
        try:
            [(_, factory, _, _)] = reactor.tcpServers
            assert isinstance(factory, kind)
        finally:
            service.stopService()


def test_make_service_listens_on_the_configured_port(tmp_path):
    """makeService wires a MultiService that listens where --http says, even with
    no server reachable yet."""
    generate_keys(str(tmp_path / "keys"))
    reactor = MemoryReactorClock()
    socket_path = str(tmp_path / "allq_client.sock")
    service = makeService(parse(["--keys", str(tmp_path / "keys"),
                                 "--http", "tcp:8123:interface=127.0.0.1",
                                 "--jsonl", "tcp:7767:interface=127.0.0.1",
                                 "--unix", socket_path]), reactor=reactor)
    assert isinstance(service, MultiService)
    service.startService()
    try:
        ports = [(port, interface) for port, _, _, interface in reactor.tcpServers]
        assert (8123, "127.0.0.1") in ports
        assert (7767, "127.0.0.1") in ports
        assert [(path, mode) for path, _, _, mode, _ in reactor.unixServers] == [
            (socket_path, 0o600)]
    finally:
        service.stopService()


def test_local_api_options():
    """The JSON-lines listeners: on by default where AllQueue had them (loopback
    here), from AllQueue's variables, or off with none."""
    options = parse()
    assert options["jsonl"] == "tcp:7766:interface=127.0.0.1"
    assert options["unix"] == "/tmp/allq_client.sock"
    assert options["jsonl-idle-timeout"] == 60.0
    assert parse(environ={"TCP_CLIENT_PORT": "7768"})["jsonl"] == "tcp:7768:interface=127.0.0.1"
    env = {"TCP_CLIENT_PORT": "7768", "CL_PORT": "7769", "CL_LISTEN": "0.0.0.0"}
    assert parse(environ=env)["jsonl"] == "tcp:7769:interface=0.0.0.0"
    assert parse(environ={"ALLQ_JSONL": "unix:/x"})["jsonl"] == "unix:/x"
    off = parse(["--jsonl", "none", "--unix", "NONE"], environ=env)
    assert (off["jsonl"], off["unix"]) == (None, None)
    assert parse(environ={"ALLQ_UNIX_SOCKET": "none"})["unix"] is None
    assert parse(["--jsonl-idle-timeout", "3"])["jsonl-idle-timeout"] == 3.0


def test_make_service_without_local_api(tmp_path):
    """--jsonl none --unix none: only the HTTP port is bound."""
    generate_keys(str(tmp_path / "keys"))
    reactor = MemoryReactorClock()
    service = makeService(parse(["--keys", str(tmp_path / "keys"), "--http",
                                 "tcp:8123:interface=127.0.0.1",
                                 "--jsonl", "none", "--unix", "none"]), reactor=reactor)
    service.startService()
    try:
        assert [port for port, *_ in reactor.tcpServers] == [8123]
        assert reactor.unixServers == []
    finally:
        service.stopService()


def test_make_service_without_keys_refuses(tmp_path):
    """Without keys the client exits with a message saying how to make them."""
    with pytest.raises(SystemExit, match="allq keys generate"):
        makeService(parse(["--keys", str(tmp_path / "none")]), reactor=MemoryReactorClock())


def test_plugin_is_discoverable():
    """twistd finds the allq-client plugin."""
    import twisted.plugins

    assert "allq-client" in {p.tapname for p in getPlugins(IServiceMaker, twisted.plugins)}


# -- --admin-token ------------------------------------------------------------------


@pytest.mark.parametrize("http", ["tcp:8090", "tcp:8090:interface=0.0.0.0",
                                  "tcp6:8090:interface=\\:\\:", "tcp:8090:interface=10.1.2.3",
                                  "tcp:8090:interface=allq.example"])
def test_beyond_loopback_needs_a_token(http):
    """Listening beyond loopback without a token is a startup error naming the option."""
    with pytest.raises(usage.UsageError, match="--admin-token TOKEN .env ALLQ_ADMIN_TOKEN"):
        parse(["--http", http])
    assert parse(["--http", http, "--admin-token", TOKEN])["admin-token"] == TOKEN
    assert parse(["--http", http], environ={"ALLQ_ADMIN_TOKEN": TOKEN})["admin-token"] == TOKEN


@pytest.mark.parametrize("http", ["tcp:8090:interface=127.0.0.1", "tcp:0:interface=localhost",
                                  "tcp6:8090:interface=\\:\\:1", "unix:/tmp/allq-http.sock"])
def test_loopback_needs_no_token(http):
    assert parse(["--http", http])["admin-token"] is None
    assert parse(["--http", http, "--admin-token", TOKEN])["admin-token"] == TOKEN


@pytest.mark.parametrize("token", ["short", "has a space in it here", "x" * 513, "tökén-0123456789abc"])
def test_bad_token_is_refused_without_quoting_it(token):
    with pytest.raises(usage.UsageError, match="--admin-token: the token must be") as raised:
        parse(["--admin-token", token])
    assert token not in str(raised.value)


def test_failover_option_and_its_wiring(tmp_path):
    """Failover is on after 5 s by default; --failover-after or ALLQ_FAILOVER_AFTER
    change it, ``off`` turns it off; the links share the failover's fences, and
    the --workers processes get the same setting."""
    from allq.client.tap import _federation, _worker_options
    from allq.client.keys import load_client_keys

    assert parse()["failover-after"] == 3.0
    assert parse(["--failover-after", "2.5"])["failover-after"] == 2.5
    assert parse(environ={"ALLQ_FAILOVER_AFTER": "off"})["failover-after"] is None
    assert parse(["--failover-after", "9"],
                 environ={"ALLQ_FAILOVER_AFTER": "off"})["failover-after"] == 9.0
    generate_keys(str(tmp_path / "keys"))
    reactor = MemoryReactorClock()
    keys = load_client_keys(str(tmp_path / "keys"), {})
    config = parse(["--keys", str(tmp_path / "keys"), "--failover-after", "3"])
    federation = _federation(config, keys, reactor)
    assert federation._failover.after == 3.0
    [link] = federation.links()
    assert link._fences is federation._failover._fences
    assert "failovers" in federation.health()
    options = _worker_options(config, federation, "127.0.0.1", 8090, 1024)
    assert options[options.index("--failover-after") + 1] == "3.0"
    off = parse(["--keys", str(tmp_path / "keys"), "--failover-after", "off"])
    federation = _federation(off, keys, reactor)
    assert federation._failover is None and "failovers" not in federation.health()
    options = _worker_options(off, federation, "127.0.0.1", 8090, 1024)
    assert options[options.index("--failover-after") + 1] == "off"
