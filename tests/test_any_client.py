"""The any-client switch: AllQueue's key behaviour, only when asked for.

AllQueue's servers accepted every client holding the server's public key; allq
accepts listed client keys only, unless ``ALLQ_AUTHORIZED_KEYS=*`` or
``--allow-any-client`` says otherwise. Unit tests of loading, the handshake and the
reload, then the real daemons configured with AllQueue's variables only.
"""

from __future__ import annotations

import base64
import os
import re
import signal

import pytest
from nacl.public import PrivateKey
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher

from allq.cli import generate_keys
from allq.keyfiles import KeyConfigError
from allq.server.keyreload import AuthorizedKeysWatcher
from allq.server.keys import load_server_keys
from allq.server.tap import Options, makeService
from allq.wire.crypto import (
    Authenticator,
    HandshakeError,
    client_hello,
    new_challenge,
)
from allq.wire.keys import ClientKeys, ServerKeys, encode_key, z85_encode

SERVER = PrivateKey.generate()


def allqueue_env(key) -> str:
    """A key as AllQueue's deployments write it: base64 of the Z85 text plus a NUL."""
    return base64.b64encode(z85_encode(bytes(key)).encode("ascii") + b"\0").decode("ascii")


def handshake(authenticator: Authenticator, client: PrivateKey):
    challenge = new_challenge()
    hello, session = client_hello(ClientKeys(client, SERVER.public_key), challenge)
    return session, authenticator.accept(hello, challenge)


# -- loading ----------------------------------------------------------------------


def test_allqueue_variables_alone_are_refused_naming_the_switch():
    """A_CURVE_SECRETKEY and A_CURVE_PUBLICKEY without a client list: refused, and the
    message names both forms of the switch."""
    env = {"A_CURVE_SECRETKEY": allqueue_env(SERVER),
           "A_CURVE_PUBLICKEY": allqueue_env(SERVER.public_key)}
    with pytest.raises(KeyConfigError) as info:
        load_server_keys(None, None, env)
    message = str(info.value)
    assert "no authorized client keys" in message
    assert "ALLQ_AUTHORIZED_KEYS=*" in message and "--allow-any-client" in message


@pytest.mark.parametrize("how", ["env", "flag"])
def test_the_switch_loads_keys_that_accept_any_client(how):
    """ALLQ_AUTHORIZED_KEYS=* or allow_any_client: no list needed, any_client set."""
    env = {"A_CURVE_SECRETKEY": allqueue_env(SERVER),
           "A_CURVE_PUBLICKEY": allqueue_env(SERVER.public_key)}
    if how == "env":
        env["ALLQ_AUTHORIZED_KEYS"] = " * "
    keys = load_server_keys(None, None, env, allow_any_client=how == "flag")
    assert keys.any_client and keys.authorized == ()
    assert bytes(keys.secret) == bytes(SERVER)


def test_star_beside_keys_is_refused():
    """'*' mixed with client keys is ambiguous: refused, naming the variable."""
    env = {"A_CURVE_SECRETKEY": encode_key(SERVER),
           "ALLQ_AUTHORIZED_KEYS": f"*,{encode_key(PrivateKey.generate().public_key)}"}
    with pytest.raises(KeyConfigError, match="ALLQ_AUTHORIZED_KEYS: '\\*' .*must stand alone"):
        load_server_keys(None, None, env)


def test_the_switch_with_a_key_directory_needs_no_client_key_files(tmp_path):
    """--keys DIR with only server.key and the switch loads; without the switch the
    missing client.pub is still an error."""
    generate_keys(str(tmp_path))
    os.unlink(tmp_path / "authorized_keys")
    os.unlink(tmp_path / "client.pub")
    keys = load_server_keys(str(tmp_path), None, {}, allow_any_client=True)
    assert keys.any_client and keys.authorized == ()
    with pytest.raises(KeyConfigError, match="client.pub"):
        load_server_keys(str(tmp_path), None, {})


def test_without_the_switch_nothing_changes(tmp_path):
    """A listed key set loads as before: any_client stays off."""
    generate_keys(str(tmp_path))
    keys = load_server_keys(str(tmp_path), None, {})
    assert not keys.any_client and len(keys.authorized) == 2  # client.pub, server.pub


# -- handshake --------------------------------------------------------------------


def test_any_client_key_completes_the_handshake():
    """With the switch, an unlisted client gets a working session; without it,
    unknown_key as before."""
    stranger = PrivateKey.generate()
    authenticator = Authenticator(ServerKeys(SERVER, (), any_client=True))
    client, server = handshake(authenticator, stranger)
    assert server.open(client.seal(b"put")) == b"put"
    assert client.open(server.seal(b"ok")) == b"ok"
    assert authenticator.accepts(bytes(stranger.public_key))
    assert "any client" in repr(authenticator)
    strict = Authenticator(ServerKeys(SERVER, (PrivateKey.generate().public_key,)))
    with pytest.raises(HandshakeError) as info:
        handshake(strict, stranger)
    assert info.value.code == "unknown_key"


def test_any_client_still_needs_the_proof():
    """The switch does not skip the proof: a HELLO for another server is bad_proof."""
    authenticator = Authenticator(ServerKeys(SERVER, (), any_client=True))
    challenge = new_challenge()
    hello, _ = client_hello(
        ClientKeys(PrivateKey.generate(), PrivateKey.generate().public_key), challenge)
    with pytest.raises(HandshakeError) as info:
        authenticator.accept(hello, challenge)
    assert info.value.code == "bad_proof"


def test_a_low_order_client_key_is_a_bad_hello():
    """An all-zero client key (no key agreement possible) is refused, not a crash."""
    authenticator = Authenticator(ServerKeys(SERVER, (), any_client=True))
    challenge = new_challenge()
    hello = b"HELLO " + base64.b64encode(bytes(32)) + b" " + base64.b64encode(bytes(72))
    with pytest.raises(HandshakeError) as info:
        authenticator.accept(hello, challenge)
    assert info.value.code == "bad_hello"


# -- the daemon wiring ------------------------------------------------------------


def parse(argv, environ) -> Options:
    options = Options()
    options.environ = environ
    options.parseOptions(argv)
    return options


@pytest.fixture
def log_lines():
    lines = []

    def observer(event):
        from twisted.logger import formatEvent

        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    yield lines
    globalLogPublisher.removeObserver(observer)


def test_the_option_is_parsed_and_off_by_default():
    """--allow-any-client is a flag, off unless given."""
    assert parse([], {})["allow-any-client"] is False
    assert parse(["--allow-any-client"], {})["allow-any-client"] is True


def test_the_server_refuses_to_start_naming_the_switch():
    """makeService with AllQueue's variables alone exits with the switch in its message."""
    env = {"A_CURVE_SECRETKEY": allqueue_env(SERVER)}
    with pytest.raises(SystemExit) as info:
        makeService(parse([], env), reactor=MemoryReactorClock())
    assert "ALLQ_AUTHORIZED_KEYS=* or --allow-any-client" in str(info.value.code)


def test_the_switch_is_logged_as_a_warning_and_reload_keeps_it(tmp_path, log_lines):
    """A server started with the switch warns once, accepts an unlisted key, and a
    reload (SIGHUP's work) keeps accepting any key and closes nobody."""
    generate_keys(str(tmp_path))
    reactor = MemoryReactorClock()
    service = makeService(
        parse(["--keys", str(tmp_path), "--allow-any-client", "--listen", "tcp:7006"], {}),
        reactor=reactor)
    service.startService()
    try:
        factory = reactor.tcpServers[0][1]
        warnings = [line for line in log_lines if "accepting ANY client key" in line]
        assert len(warnings) == 1 and "--allow-any-client" in warnings[0]
        stranger = bytes(PrivateKey.generate().public_key)
        assert factory.authenticator.accepts(stranger)
        watcher = next(s for s in service if isinstance(s, AuthorizedKeysWatcher))
        assert watcher.reload("SIGHUP") is True
        assert factory.authenticator.accepts(stranger)
        assert any("any client key accepted" in line for line in log_lines)
    finally:
        service.stopService()


def test_a_reload_under_the_environment_switch_keeps_it():
    """Keys from the environment with ALLQ_AUTHORIZED_KEYS=*: a reload applies a new
    authenticator that still accepts any key."""
    env = {"A_CURVE_SECRETKEY": encode_key(SERVER), "ALLQ_AUTHORIZED_KEYS": "*"}
    keys = load_server_keys(None, None, env)
    applied = []
    watcher = AuthorizedKeysWatcher(
        keys, lambda: load_server_keys(None, None, env),
        lambda authenticator: applied.append(authenticator) or 0, None,
        MemoryReactorClock())
    assert watcher.reload("SIGHUP")
    assert watcher.keys.any_client
    assert applied[0].accepts(bytes(PrivateKey.generate().public_key))


# -- real daemons -----------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("switch", ["env", "flag"])
def test_daemons_configured_as_allqueue_deployments_work_with_the_switch(daemons, switch):
    """A server with only A_CURVE_SECRETKEY/A_CURVE_PUBLICKEY plus the switch serves a
    client configured only with AllQueue's three variables (its key listed nowhere)."""
    from tests.servers import SERVER_LISTENING, RunningServer, wait_for_greeting
    from tests.test_client_integration import CLIENT_SERVING, Api

    client = PrivateKey.generate()
    server_env = {"A_CURVE_SECRETKEY": allqueue_env(SERVER),
                  "A_CURVE_PUBLICKEY": allqueue_env(SERVER.public_key)}
    args = ["--listen", "tcp:0:interface=127.0.0.1"]
    if switch == "env":
        server_env["ALLQ_AUTHORIZED_KEYS"] = "*"
    else:
        args.append("--allow-any-client")
    daemon = daemons.spawn("allq-server", args, env=server_env, name="server")
    match = daemon.wait_for_log(SERVER_LISTENING)
    server = RunningServer(daemon, match["host"], int(match["port"]), match["server_id"])
    wait_for_greeting(server)
    assert "accepting ANY client key" in daemon.log()
    assert "(any client key)" in daemon.log()

    client_daemon = daemons.spawn(
        "allq-client",
        ["--servers", f"127.0.0.1:{server.port}", "--http", "tcp:0:interface=127.0.0.1"],
        env={"A_CURVE_SECRETKEY": allqueue_env(client),
             "A_CURVE_PUBLICKEY": allqueue_env(client.public_key),
             "A_CURVE_SERVER_PUBLICKEY": allqueue_env(SERVER.public_key)},
        name="client")
    api = Api(int(client_daemon.wait_for_log(CLIENT_SERVING)["port"]))
    api.wait_until(lambda health: health["up"] == 1)
    job_id = api.put("switch", "hello")
    status, job = api.call("GET", "/job", tube="switch")
    assert status == 200 and job["id"] == job_id and job["body"] == "hello"
    if switch == "env":
        # SIGHUP reloads the keys; the switch stays in force and the link stays up.
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for_log(re.compile(r"authorized keys reloaded \(SIGHUP\).*any client"))
        assert api.call("DELETE", "/job", job_id=job_id)[0] == 200
        assert api.call("GET", "/health")[1]["up"] == 1


@pytest.mark.integration
def test_the_real_server_refuses_allqueue_variables_alone(daemons):
    """twistd allq-server with AllQueue's variables and no switch exits 1, naming it."""
    daemon = daemons.spawn(
        "allq-server", ["--listen", "tcp:0:interface=127.0.0.1"],
        env={"A_CURVE_SECRETKEY": allqueue_env(SERVER),
             "A_CURVE_PUBLICKEY": allqueue_env(SERVER.public_key)},
        name="refused")
    assert daemon.wait() != 0
    assert "ALLQ_AUTHORIZED_KEYS=* or --allow-any-client" in daemon.log()
