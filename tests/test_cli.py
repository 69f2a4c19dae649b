"""Tests for the ``allq`` command line tool (allq.cli)."""

from __future__ import annotations

import os
import stat

import pytest

from allq.cli import main
from allq.client.keys import load_client_keys
from allq.server.keys import load_server_keys
from allq.wire.keys import encode_key


def test_keys_generate_writes_set_and_prints_instructions(tmp_path, capsys):
    """`allq keys generate DIR` writes loadable keys and prints how to pass them, exit 0."""
    directory = str(tmp_path / "keys")
    assert main(["keys", "generate", directory]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    for name in ("server.key", "server.pub", "client.key", "client.pub", "authorized_keys"):
        assert os.path.join(directory, name) in out
    assert f"twistd -n --pidfile= allq-server --keys {directory}" in out
    assert f"twistd -n --pidfile= allq-client --keys {directory}" in out
    assert "server: server.key and authorized_keys" in out
    assert "client: client.key and server.pub" in out
    assert "A_CURVE_SECRETKEY" in out and "A_CURVE_SERVER_PUBLICKEY" in out
    assert "ALLQ_AUTHORIZED_KEYS" in out
    server = load_server_keys(directory, None, {})
    client = load_client_keys(directory, {})
    assert server.authorized == (client.public, server.public)  # server.pub: replication
    assert stat.S_IMODE(os.stat(os.path.join(directory, "server.key")).st_mode) == 0o600


def test_keys_generate_prints_no_secret(tmp_path, capsys):
    """`allq keys generate` never prints a secret key."""
    directory = str(tmp_path / "keys")
    main(["keys", "generate", directory])
    out, _ = capsys.readouterr()
    server = load_server_keys(directory, None, {})
    client = load_client_keys(directory, {})
    assert encode_key(server.secret) not in out
    assert encode_key(client.secret) not in out


def test_keys_generate_refuses_existing_set(tmp_path, capsys):
    """A second generate into the same directory fails with one line on stderr and exit 2."""
    directory = str(tmp_path)
    assert main(["keys", "generate", directory]) == 0
    before = (tmp_path / "server.key").read_text()
    capsys.readouterr()
    assert main(["keys", "generate", directory]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("allq: error: ") and err.count("\n") == 1
    assert "--force" in err
    assert (tmp_path / "server.key").read_text() == before


def test_keys_generate_force_replaces(tmp_path, capsys):
    """`--force` replaces an existing key set."""
    directory = str(tmp_path)
    main(["keys", "generate", directory])
    before = (tmp_path / "server.key").read_text()
    assert main(["keys", "generate", directory, "--force"]) == 0
    assert (tmp_path / "server.key").read_text() != before


def test_keys_generate_unwritable_directory_is_error(tmp_path, capsys):
    """A directory that cannot be created is a one-line error with exit 2."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["keys", "generate", str(blocker / "keys")]) == 2
    _, err = capsys.readouterr()
    assert err.startswith("allq: error: ") and err.count("\n") == 1


def test_keys_suggest_prints_setup(capsys):
    """`allq keys suggest` prints the suggested setup text, exit 0."""
    assert main(["keys", "suggest"]) == 0
    out, _ = capsys.readouterr()
    assert "allq keys generate ./keys" in out
    assert "export A_CURVE_SECRETKEY=" in out
    assert "export ALLQ_AUTHORIZED_KEYS=" in out


@pytest.mark.parametrize("argv", [[], ["keys"], ["keys", "rotate"], ["keys", "generate"]])
def test_usage_errors_exit_2(argv, capsys):
    """Missing or unknown commands print usage on stderr and return 2."""
    assert main(argv) == 2
    _, err = capsys.readouterr()
    assert "usage: allq" in err


def test_help_exits_0(capsys):
    """`allq --help` prints help and returns 0."""
    assert main(["--help"]) == 0
    assert "keys" in capsys.readouterr().out
