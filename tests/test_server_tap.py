"""Tests of the ``twistd allq-server`` wiring: :mod:`allq.server.tap` and its plugin.

Options get a private ``environ`` dict so the host's environment never leaks in;
``makeService`` gets a :class:`MemoryReactorClock`, so nothing really listens.
"""

import os
import socket

import pytest
import twisted.plugins
from twisted.application.service import IServiceMaker, MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python import usage

from allq.server import tap
from allq.server.protocol import ServerFactory
from allq.server.tap import Options, derived_server_id, makeService
from allq.cli import generate_keys
from allq.keyfiles import SERVER_SECRET_FILE
from allq.wire.messages import max_line_length

DEFAULTS = {
    "listen": "tcp:5555",
    "keys": None,
    "authorized-keys": None,
    "expiry-limit": 3,
    "max-job-size": 1024 * 1024,
    "max-line-length": max_line_length(1024 * 1024),
    "default-ttl": 3600.0,
    "server-id": None,
    "data-dir": None,
    "fsync": "interval:50",
    "metrics": None,
    "max-jobs": None,
    "fair-prefix": "fq-",
    "fair-suffix": None,
    "log-jobs": False,
    "backlog": 1024,
    "idle-timeout": 300.0,
    "allow-any-client": False,
    "import-allqueue": False,
    "replica": None,
    "replica-server-key": None,
    "replication": "available",
    "replica-timeout": 2.0,
    "replica-max-lag": 64 * 1024 * 1024,
}


def parse(argv: list[str], environ: dict[str, str] | None = None) -> Options:
    options = Options()
    options.environ = {} if environ is None else environ
    options.parseOptions(argv)
    return options


@pytest.fixture
def keys_dir(tmp_path) -> str:
    directory = str(tmp_path / "keys")
    generate_keys(directory)
    return directory


# -- options ----------------------------------------------------------------------


def test_defaults():
    """With no flags and an empty environment every option has its documented default."""
    assert dict(parse([])) == DEFAULTS


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--listen", "tcp:7000:interface=127.0.0.1"], {"listen": "tcp:7000:interface=127.0.0.1"}),
        (["--keys", "/etc/allq"], {"keys": "/etc/allq"}),
        (["--authorized-keys", "/etc/clients"], {"authorized-keys": "/etc/clients"}),
        (["--expiry-limit", "7"], {"expiry-limit": 7}),
        (["--max-job-size", "100"], {"max-job-size": 100, "max-line-length": max_line_length(100)}),
        (["--max-line-length", "2048"], {"max-line-length": 2048}),
        (["--default-ttl", "1.5"], {"default-ttl": 1.5}),
        (["--server-id", "east_1-a"], {"server-id": "east_1-a"}),
    ],
)
def test_each_flag(argv, expected):
    """Each flag sets its own option, converted, and nothing else."""
    assert dict(parse(argv)) == {**DEFAULTS, **expected}


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({"SERVER_PORT": "6000"}, {"listen": "tcp:6000"}),
        ({"ALLQ_LISTEN": "unix:/run/allq.sock"}, {"listen": "unix:/run/allq.sock"}),
        ({"ALLQ_LISTEN": "tcp:1", "SERVER_PORT": "2"}, {"listen": "tcp:1"}),
        ({"ALLQ_KEYS_DIR": "/k"}, {"keys": "/k"}),
        ({"ALLQ_AUTHORIZED_KEYS_FILE": "/a"}, {"authorized-keys": "/a"}),
        ({"DEFAULT_TTL": "60"}, {"default-ttl": 60.0}),
        ({"ALLQ_EXPIRY_LIMIT": "9"}, {"expiry-limit": 9}),
        ({"ALLQ_MAX_JOB_SIZE": "500"},
         {"max-job-size": 500, "max-line-length": max_line_length(500)}),
        ({"ALLQ_MAX_LINE_LENGTH": "4096"}, {"max-line-length": 4096}),
        ({"ALLQ_SERVER_ID": "west"}, {"server-id": "west"}),
        ({"SERVER_PORT": "", "ALLQ_SERVER_ID": ""}, {}),
    ],
)
def test_environment_fallbacks(environ, expected):
    """An option without a flag takes its environment variable; empty means unset."""
    assert dict(parse([], environ)) == {**DEFAULTS, **expected}


def test_flags_win_over_the_environment():
    """A flag beats its environment variable."""
    environ = {
        "SERVER_PORT": "6000", "ALLQ_LISTEN": "tcp:6001", "ALLQ_KEYS_DIR": "/env",
        "DEFAULT_TTL": "60", "ALLQ_EXPIRY_LIMIT": "9", "ALLQ_MAX_JOB_SIZE": "500",
        "ALLQ_SERVER_ID": "env",
    }
    argv = [
        "--listen", "tcp:7000", "--keys", "/flag", "--default-ttl", "5", "--expiry-limit", "2",
        "--max-job-size", "50", "--server-id", "flag",
    ]
    assert dict(parse(argv, environ)) == {
        **DEFAULTS,
        "listen": "tcp:7000", "keys": "/flag", "default-ttl": 5.0, "expiry-limit": 2,
        "max-job-size": 50, "max-line-length": max_line_length(50), "server-id": "flag",
    }


@pytest.mark.parametrize(
    "argv, environ, named",
    [
        (["--expiry-limit", "0"], {}, "--expiry-limit"),
        (["--max-job-size", "abc"], {}, "--max-job-size"),
        (["--max-line-length", "100"], {}, "--max-line-length"),
        (["--default-ttl", "-1"], {}, "--default-ttl"),
        (["--default-ttl", "inf"], {}, "--default-ttl"),
        (["--server-id", "a,b"], {}, "--server-id"),
        (["--server-id", "x" * 65], {}, "--server-id"),
        ([], {"SERVER_PORT": "x"}, "SERVER_PORT"),
        ([], {"SERVER_PORT": "70000"}, "SERVER_PORT"),
        ([], {"ALLQ_EXPIRY_LIMIT": "-3"}, "--expiry-limit"),
    ],
)
def test_bad_values_are_usage_errors_naming_the_option(argv, environ, named):
    """A bad value stops option parsing with a UsageError that names the option."""
    with pytest.raises(usage.UsageError, match=named):
        parse(argv, environ)


# -- makeService ------------------------------------------------------------------


def test_make_service_listens_on_the_configured_port(keys_dir):
    """The service tree listens on exactly the configured port and interface once started."""
    reactor = MemoryReactorClock()
    config = parse(["--keys", keys_dir, "--listen", "tcp:7001:interface=127.0.0.1",
                    "--max-job-size", "100"])
    service = makeService(config, reactor=reactor)
    assert isinstance(service, MultiService)
    assert reactor.tcpServers == []
    service.startService()
    [(port, factory, _, interface)] = reactor.tcpServers
    assert (port, interface) == (7001, "127.0.0.1")
    assert isinstance(factory, ServerFactory)
    assert (factory.max_job_size, factory.max_line_length) == (100, max_line_length(100))
    assert factory.server_id() == derived_server_id(socket.gethostname(), 7001)
    service.stopService()
    assert reactor.getDelayedCalls() == []


def test_an_explicit_server_id_is_kept(keys_dir):
    """--server-id replaces the derived id."""
    reactor = MemoryReactorClock()
    service = makeService(parse(["--keys", keys_dir, "--server-id", "east"]), reactor=reactor)
    service.startService()
    [(_, factory, _, _)] = reactor.tcpServers
    assert factory.server_id() == "east"
    service.stopService()


def test_without_keys_the_server_refuses_to_start():
    """No keys anywhere: SystemExit saying it refuses to start, with the commands to fix it."""
    with pytest.raises(SystemExit) as exit_:
        makeService(parse([]), reactor=MemoryReactorClock())
    message = str(exit_.value.code)
    assert "refusing to start" in message
    assert "allq keys generate" in message


def test_config_only_prints_a_key_set_and_exits_0(capsys):
    """CONFIG_ONLY=true prints the suggested setup and exits with status 0."""
    with pytest.raises(SystemExit) as exit_:
        makeService(parse([], {"CONFIG_ONLY": "true"}), reactor=MemoryReactorClock())
    assert exit_.value.code == 0
    assert "allq keys generate" in capsys.readouterr().out


def test_a_bad_key_file_names_the_file(keys_dir):
    """An unreadable server key stops start-up with a message naming the file."""
    path = os.path.join(keys_dir, SERVER_SECRET_FILE)
    with open(path, "w") as f:
        f.write("not a key\n")
    with pytest.raises(SystemExit) as exit_:
        makeService(parse(["--keys", keys_dir]), reactor=MemoryReactorClock())
    assert path in str(exit_.value.code)


def test_derived_server_id_is_stable_and_differs_by_port():
    """The derived id depends only on host name and port, and is 10 URL-safe characters."""
    first = derived_server_id("host-a", 5555)
    assert first == derived_server_id("host-a", 5555)
    assert first != derived_server_id("host-a", 5556)
    assert first != derived_server_id("host-b", 5555)
    assert tap.SERVER_ID.fullmatch(first) and len(first) == 10


# -- plugin -----------------------------------------------------------------------


def test_the_plugin_is_discoverable():
    """twistd finds a service maker named allq-server that uses this module's Options."""
    [maker] = [p for p in getPlugins(IServiceMaker, twisted.plugins) if p.tapname == "allq-server"]
    assert maker.options is Options


def test_metrics_endpoint_is_off_by_default_and_listens_when_asked(tmp_path):
    """--metrics (or ALLQ_METRICS) adds a Prometheus endpoint beside the queue port."""
    keys = str(tmp_path / "keys")
    generate_keys(keys)
    assert parse([], {"ALLQ_METRICS": "tcp:9555"})["metrics"] == "tcp:9555"
    reactor = MemoryReactorClock()
    service = makeService(parse(["--keys", keys, "--listen", "tcp:5555:interface=127.0.0.1",
                                 "--metrics", "tcp:9555:interface=127.0.0.1"]), reactor=reactor)
    service.startService()
    try:
        assert sorted(port for port, *_ in reactor.tcpServers) == [5555, 9555]
    finally:
        service.stopService()


def test_fair_queue_naming_and_server_bound_reach_the_queue(tmp_path):
    """FQ_PREFIX / FQ_SUFFIX / ALLQ_MAX_JOBS (or their flags) configure the queue core."""
    options = parse([], {"FQ_SUFFIX": "-fair", "ALLQ_MAX_JOBS": "2"})
    assert (options["fair-suffix"], options["max-jobs"]) == ("-fair", 2)
    assert parse(["--fair-prefix", "f_"], {"FQ_PREFIX": "x"})["fair-prefix"] == "f_"
    with pytest.raises(usage.UsageError, match="--max-jobs"):
        parse(["--max-jobs", "0"])
    keys = str(tmp_path / "keys")
    generate_keys(keys)
    reactor = MemoryReactorClock()
    service = makeService(parse(["--keys", keys, "--listen", "tcp:5555"],
                                {"FQ_SUFFIX": "-fair", "ALLQ_MAX_JOBS": "2"}), reactor=reactor)
    service.startService()
    try:
        factory = reactor.tcpServers[0][1]
        queue = factory.dispatcher._queue
        assert (queue.config.fair_suffix, queue.config.max_jobs) == ("-fair", 2)
    finally:
        service.stopService()


# -- backlog, idle timeout, key reloading (issue 10) ----------------------------------


def test_the_listener_gets_a_backlog_of_1024(keys_dir):
    """By default the TCP listener asks the kernel for a backlog of 1024."""
    reactor = MemoryReactorClock()
    service = makeService(parse(["--keys", keys_dir, "--listen", "tcp:7002"]), reactor=reactor)
    service.startService()
    [(port, _, backlog, _)] = reactor.tcpServers
    assert (port, backlog) == (7002, 1024)
    service.stopService()


@pytest.mark.parametrize("argv, environ, backlog", [
    (["--backlog", "64"], {}, 64),
    ([], {"ALLQ_BACKLOG": "4096"}, 4096),
    (["--listen", "tcp:7003:backlog=7"], {}, 7),
])
def test_the_backlog_is_configurable(keys_dir, argv, environ, backlog):
    """--backlog / ALLQ_BACKLOG set it; a backlog in --listen itself wins."""
    reactor = MemoryReactorClock()
    argv = ["--keys", keys_dir, "--listen", "tcp:7003", *argv]
    service = makeService(parse(argv, environ), reactor=reactor)
    service.startService()
    [(_, _, got, _)] = reactor.tcpServers
    assert got == backlog
    service.stopService()


def test_with_backlog_leaves_other_endpoints_alone():
    """Only tcp, tcp6 and unix descriptions take a backlog argument."""
    from allq.server.tap import with_backlog

    assert with_backlog("tcp:5555", 10) == "tcp:5555:backlog=10"
    assert with_backlog("unix:/run/a.sock", 10) == "unix:/run/a.sock:backlog=10"
    assert with_backlog("ssl:5555:privateKey=k", 10) == "ssl:5555:privateKey=k"


@pytest.mark.parametrize("argv, environ, expected", [
    (["--idle-timeout", "30"], {}, 30.0),
    ([], {"ALLQ_IDLE_TIMEOUT": "45.5"}, 45.5),
    (["--idle-timeout", "0"], {}, 0.0),
])
def test_idle_timeout_option(argv, environ, expected):
    """--idle-timeout / ALLQ_IDLE_TIMEOUT in seconds; 0 turns it off."""
    assert parse(argv, environ)["idle-timeout"] == expected


@pytest.mark.parametrize("value", ["-1", "soon", "inf"])
def test_bad_idle_timeouts_name_the_option(value):
    """A negative, non-numeric or infinite idle timeout is a UsageError naming it."""
    with pytest.raises(usage.UsageError, match="--idle-timeout"):
        parse(["--idle-timeout", value])


def test_the_factory_gets_the_idle_timeout(keys_dir):
    """The configured idle timeout reaches the server factory (0: None, no timer)."""
    for argv, expected in ((["--idle-timeout", "12"], 12.0), (["--idle-timeout", "0"], None)):
        reactor = MemoryReactorClock()
        service = makeService(parse(["--keys", keys_dir, "--listen", "tcp:7004", *argv]),
                              reactor=reactor)
        service.startService()
        assert reactor.tcpServers[0][1].idle_timeout == expected
        service.stopService()


def _write_authorized(path, *secrets):
    from allq.wire.keys import encode_key

    with open(path, "w") as f:
        f.write("# clients\n" + "".join(encode_key(s.public_key) + "\n" for s in secrets))


def test_the_authorized_keys_file_is_polled_and_reloaded(keys_dir, observe_errors):
    """A change to authorized_keys is picked up within one poll: the factory gets the
    new set and a removed key's sessions are closed; a broken file keeps the old set;
    stopping leaves nothing scheduled."""
    from nacl.public import PrivateKey

    from allq.server.keyreload import AuthorizedKeysWatcher

    reactor = MemoryReactorClock()
    service = makeService(parse(["--keys", keys_dir, "--listen", "tcp:7005"]), reactor=reactor)
    service.startService()
    factory = reactor.tcpServers[0][1]
    watcher = next(s for s in service if isinstance(s, AuthorizedKeysWatcher))
    path = os.path.join(keys_dir, "authorized_keys")
    newcomer = PrivateKey.generate()
    old_authenticator = factory.authenticator
    _write_authorized(path, newcomer)
    os.utime(path, ns=(1, 1))  # a different mtime, whatever the clock's resolution
    reactor.advance(2.0)
    assert watcher.reloads == 1 and factory.authenticator is not old_authenticator
    assert factory.authenticator.accepts(bytes(newcomer.public_key))
    kept = factory.authenticator
    with open(path, "w") as f:
        f.write("not a key\n")
    reactor.advance(2.0)
    assert watcher.reloads == 1 and factory.authenticator is kept  # old set kept
    service.stopService()
    assert [c for c in reactor.getDelayedCalls() if c.active()] == []


def test_sighup_reloads_the_keys(keys_dir):
    """SIGHUP (with a reactor) hands a reload to the reactor thread."""
    import signal

    from allq.server.keyreload import AuthorizedKeysWatcher

    calls = []

    class Reactor:
        def callFromThread(self, f, *args):
            calls.append((f, args))

    watcher = AuthorizedKeysWatcher(None, None, None, None, MemoryReactorClock(),
                                    reactor=Reactor())
    previous = signal.getsignal(signal.SIGHUP)
    watcher.startService()
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        assert calls == [(watcher.reload, ("SIGHUP",))]
    finally:
        watcher.stopService()
    assert signal.getsignal(signal.SIGHUP) == previous
