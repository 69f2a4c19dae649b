"""Tests for allq.wire.keys: key encodings, key files, and key loading."""

from __future__ import annotations

import base64
import os
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.public import PrivateKey

from allq.cli import generate_keys
from allq.client.keys import load_client_keys
from allq.keyfiles import KeyConfigError, MissingKeys, read_key_list
from allq.server.keys import load_server_keys
from allq.wire.keys import (
    ALLQUEUE_DEFAULT_SERVER_PUBLIC,
    ClientKeys,
    ServerKeys,
    decode_key,
    encode_key,
    public_keys,
    suggested_setup_text,
    z85_decode,
    z85_encode,
)


def read_authorized_keys(path):
    """An authorized keys file, read (allq.keyfiles) and decoded (allq.wire.keys)."""
    return public_keys(read_key_list(path))

RAW = bytes(range(32))
KEY_FILES = {"server.key", "server.pub", "client.key", "client.pub", "authorized_keys"}


def allqueue_env(raw: bytes, nul: bool) -> str:
    """AllQueue's env format: base64 of the Z85 text, optionally NUL-terminated."""
    z85 = z85_encode(raw).encode("ascii") + (b"\0" if nul else b"")
    return base64.b64encode(z85).decode("ascii")


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def write(path, text: str, mode: int = 0o600) -> None:
    path.write_text(text)
    os.chmod(path, mode)


# -- Z85 and key encodings ------------------------------------------------------------------


def test_z85_rfc32_vector():
    """Z85 matches the ZMQ RFC 32 test vector 864FD26FB559F75B <-> HelloWorld."""
    raw = bytes([0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B])
    assert z85_encode(raw) == "HelloWorld"
    assert z85_decode("HelloWorld") == raw


@given(st.binary().map(lambda b: b[: len(b) - len(b) % 4]))
def test_z85_round_trip(data):
    """Z85 decoding inverts encoding for any whole number of 4-byte groups."""
    assert z85_decode(z85_encode(data)) == data


@pytest.mark.parametrize("text", ["Hell", "HelloWorl", "Hell~", "#####"])
def test_z85_rejects_bad_text(text):
    """Z85 decoding rejects bad lengths, foreign characters and groups over 32 bits."""
    with pytest.raises(ValueError):
        z85_decode(text)


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(encode_key, id="base64"),
        pytest.param(lambda raw: raw.hex(), id="hex"),
        pytest.param(lambda raw: raw.hex().upper(), id="HEX"),
        pytest.param(z85_encode, id="z85"),
        pytest.param(lambda raw: allqueue_env(raw, nul=False), id="allqueue-env"),
        pytest.param(lambda raw: allqueue_env(raw, nul=True), id="allqueue-env-nul"),
        pytest.param(lambda raw: "  " + encode_key(raw) + "\n", id="base64-whitespace"),
    ],
)
def test_decode_key_accepts_every_encoding(encode):
    """decode_key reads our base64, hex, Z85 and AllQueue's base64(Z85) with or without NUL."""
    assert decode_key(encode(RAW), "TEST") == RAW


def test_allqueue_env_vector_is_56_chars_of_z85():
    """AllQueue's env value decodes to the 40-char Z85 text (plus NUL), as REFERENCE §7.2 says."""
    with_nul = allqueue_env(RAW, nul=True)
    assert len(with_nul) == 56
    assert base64.b64decode(with_nul) == z85_encode(RAW).encode("ascii") + b"\0"


def test_encode_key_is_44_char_base64():
    """encode_key writes standard base64 of the 32 raw bytes."""
    assert encode_key(RAW) == base64.b64encode(RAW).decode("ascii")
    assert encode_key(PrivateKey(RAW)) == encode_key(RAW)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not a key",
        encode_key(RAW)[:-1],  # 43 chars
        "!" * 44,  # right length, not base64
        base64.b64encode(bytes(33)).decode()[:44],  # 44 chars, wrong size
        "g" * 64,  # right length, not hex
        "~" * 40,  # right length, not Z85
        base64.b64encode(b"x" * 42).decode(),  # 56 chars, not Z85 inside
        base64.b64encode(z85_encode(RAW).encode() + b"X").decode(),  # trailing non-NUL
    ],
)
def test_decode_key_rejects_garbage_naming_the_source(text):
    """Bad key text raises KeyConfigError naming the source and the expected formats."""
    with pytest.raises(KeyConfigError) as info:
        decode_key(text, "A_CURVE_SECRETKEY")
    message = str(info.value)
    assert message.startswith("A_CURVE_SECRETKEY: ")
    assert "base64" in message and "Z85" in message


def test_decode_key_error_does_not_echo_the_text():
    """The error for a nearly-valid secret does not contain the secret text."""
    secret = encode_key(PrivateKey.generate())[:-2]
    with pytest.raises(KeyConfigError) as info:
        decode_key(secret, "A_CURVE_SECRETKEY")
    assert secret not in str(info.value)
    assert secret[:10] not in str(info.value)


def test_secret_is_not_in_repr():
    """ServerKeys and ClientKeys keep the secret key out of their repr."""
    secret = PrivateKey.generate()
    server = ServerKeys(secret, [secret.public_key])
    client = ClientKeys(secret, secret.public_key)
    for record in (server, client):
        assert "secret" not in repr(record)
        assert encode_key(secret) not in repr(record)
    assert server.public == secret.public_key == client.public
    assert isinstance(server.authorized, tuple)


# -- generate_keys ---------------------------------------------------------------------------


def test_generate_writes_key_set_with_safe_modes(tmp_path):
    """generate_keys creates the directory 0700, secret files 0600 and public files 0644."""
    directory = tmp_path / "keys"
    generated = generate_keys(str(directory))
    assert {os.path.basename(p) for p in generated.paths} == KEY_FILES
    assert mode_of(directory) == 0o700
    for name in ("server.key", "client.key"):
        assert mode_of(directory / name) == 0o600
    for name in ("server.pub", "client.pub", "authorized_keys"):
        assert mode_of(directory / name) == 0o644


def test_generated_files_hold_base64_keys(tmp_path):
    """Every key file is the 44-char base64 key plus a newline; authorized_keys has
    client.pub, and server.pub (servers of one key set may replicate to each other)."""
    generated = generate_keys(str(tmp_path))
    assert (tmp_path / "server.key").read_text() == encode_key(generated.server_secret) + "\n"
    assert (tmp_path / "client.key").read_text() == encode_key(generated.client_secret) + "\n"
    server_pub = encode_key(generated.server_secret.public_key)
    client_pub = encode_key(generated.client_secret.public_key)
    assert (tmp_path / "server.pub").read_text() == server_pub + "\n"
    assert (tmp_path / "client.pub").read_text() == client_pub + "\n"
    authorized = (tmp_path / "authorized_keys").read_text()
    assert authorized.startswith("#") and client_pub + "\n" in authorized
    assert read_authorized_keys(str(tmp_path / "authorized_keys")) == (
        generated.client_secret.public_key, generated.server_secret.public_key,
    )


def test_generate_keeps_secrets_private_under_a_permissive_umask(tmp_path):
    """Secret files are 0600 even when the umask would allow more."""
    old = os.umask(0)
    try:
        generate_keys(str(tmp_path / "keys"))
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "keys" / "server.key") == 0o600


def test_generate_refuses_to_overwrite(tmp_path):
    """generate_keys refuses if any key file exists, and changes nothing."""
    (tmp_path / "client.pub").write_text("mine\n")
    expected = r"refusing to overwrite existing key files \(client.pub\)"
    with pytest.raises(KeyConfigError, match=expected):
        generate_keys(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["client.pub"]
    assert (tmp_path / "client.pub").read_text() == "mine\n"


def test_generate_overwrite_replaces_keys(tmp_path):
    """With overwrite=True, generate_keys replaces an existing set with new keys."""
    first = generate_keys(str(tmp_path))
    os.chmod(tmp_path / "server.key", 0o644)
    second = generate_keys(str(tmp_path), overwrite=True)
    assert encode_key(second.server_secret) != encode_key(first.server_secret)
    assert (tmp_path / "server.key").read_text() == encode_key(second.server_secret) + "\n"
    assert mode_of(tmp_path / "server.key") == 0o600


def test_generated_set_handshakes_with_itself(tmp_path):
    """A generated set's server accepts its client and the client trusts its server."""
    generated = generate_keys(str(tmp_path))
    assert generated.server_keys.authorized == (generated.client_keys.public,)
    assert generated.client_keys.server_public == generated.server_keys.public


# -- loading from a directory ----------------------------------------------------------------


def test_load_both_sides_from_directory(tmp_path):
    """Both loaders read a generated directory and agree with each other."""
    generated = generate_keys(str(tmp_path))
    server = load_server_keys(str(tmp_path), None, {})
    client = load_client_keys(str(tmp_path), {})
    assert bytes(server.secret) == bytes(generated.server_secret)
    assert server.authorized == (client.public, server.public)
    assert client.server_public == server.public


def test_directory_wins_over_environment(tmp_path):
    """A key directory is used even when the environment also holds keys."""
    generate_keys(str(tmp_path))
    other = PrivateKey.generate()
    env = {"A_CURVE_SECRETKEY": encode_key(other), "ALLQ_AUTHORIZED_KEYS": encode_key(RAW)}
    server = load_server_keys(str(tmp_path), None, env)
    assert bytes(server.secret) != bytes(other)


def test_server_falls_back_to_client_pub(tmp_path):
    """Without authorized_keys, the server accepts the directory's client.pub."""
    generated = generate_keys(str(tmp_path))
    os.unlink(tmp_path / "authorized_keys")
    server = load_server_keys(str(tmp_path), None, {})
    assert server.authorized == (generated.client_secret.public_key,)


def test_authorized_keys_option_wins_over_directory(tmp_path):
    """An explicit authorized keys file replaces the directory's authorized_keys."""
    generate_keys(str(tmp_path / "keys"))
    other = PrivateKey.generate().public_key
    listing = tmp_path / "clients"
    listing.write_text(f"# ops laptop\n\n{z85_encode(bytes(other))} laptop\n{encode_key(other)}\n")
    server = load_server_keys(str(tmp_path / "keys"), str(listing), {})
    assert server.authorized == (other,)


def test_authorized_keys_bad_line_names_file_and_line(tmp_path):
    """A bad line in an authorized keys file is reported as FILE:LINE."""
    listing = tmp_path / "clients"
    listing.write_text(f"# comment\n{encode_key(RAW)}\nnonsense\n")
    with pytest.raises(KeyConfigError, match=f"{listing}:3: expected"):
        read_authorized_keys(str(listing))


def test_empty_authorized_keys_is_refused(tmp_path):
    """A server with no authorized client keys refuses, naming --authorized-keys."""
    generate_keys(str(tmp_path / "keys"))
    empty = tmp_path / "empty"
    empty.write_text("# nobody yet\n")
    with pytest.raises(KeyConfigError, match="--authorized-keys"):
        load_server_keys(str(tmp_path / "keys"), str(empty), {})


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_group_or_world_readable_secret_is_refused(tmp_path, mode):
    """A secret key file that group or others can read is refused with a chmod 600 hint."""
    generate_keys(str(tmp_path))
    os.chmod(tmp_path / "server.key", mode)
    with pytest.raises(KeyConfigError) as info:
        load_server_keys(str(tmp_path), None, {})
    assert str(tmp_path / "server.key") in str(info.value)
    assert "chmod 600" in str(info.value)


def test_client_secret_permissions_checked(tmp_path):
    """The client's secret key file gets the same permission check."""
    generate_keys(str(tmp_path))
    os.chmod(tmp_path / "client.key", 0o644)
    with pytest.raises(KeyConfigError, match="chmod 600"):
        load_client_keys(str(tmp_path), {})


def test_directory_without_secret_is_missing_keys(tmp_path):
    """A key directory without server.key raises MissingKeys naming the file."""
    with pytest.raises(MissingKeys, match="server.key"):
        load_server_keys(str(tmp_path), None, {})


def test_malformed_key_file_names_the_file(tmp_path):
    """A key file with bad content is reported by its path."""
    generate_keys(str(tmp_path))
    write(tmp_path / "server.pub", "hello\n", 0o644)
    with pytest.raises(KeyConfigError, match=str(tmp_path / "server.pub")):
        load_client_keys(str(tmp_path), {})


# -- loading from the environment ------------------------------------------------------------


def test_server_from_environment_in_allqueue_format():
    """The server reads AllQueue-format A_CURVE_* values and ALLQ_AUTHORIZED_KEYS lists."""
    secret = PrivateKey.generate()
    clients = [PrivateKey.generate().public_key for _ in range(3)]
    env = {
        "A_CURVE_SECRETKEY": allqueue_env(bytes(secret), nul=True),
        "A_CURVE_PUBLICKEY": allqueue_env(bytes(secret.public_key), nul=False),
        "ALLQ_AUTHORIZED_KEYS": (
            f"{encode_key(clients[0])}, {bytes(clients[1]).hex()}\n"
            f" {z85_encode(bytes(clients[2]))},"
        ),
    }
    server = load_server_keys(None, None, env)
    assert bytes(server.secret) == bytes(secret)
    assert server.authorized == tuple(clients)


def test_server_env_with_authorized_keys_file(tmp_path):
    """With env keys, --authorized-keys supplies the client list."""
    client = PrivateKey.generate().public_key
    listing = tmp_path / "clients"
    listing.write_text(encode_key(client) + "\n")
    env = {"A_CURVE_SECRETKEY": encode_key(PrivateKey.generate())}
    assert load_server_keys(None, str(listing), env).authorized == (client,)


def test_server_env_without_authorized_keys_is_refused():
    """Env keys without any authorized client keys are refused, naming --authorized-keys."""
    env = {"A_CURVE_SECRETKEY": encode_key(PrivateKey.generate())}
    with pytest.raises(KeyConfigError, match="--authorized-keys"):
        load_server_keys(None, None, env)


def test_mismatched_public_key_is_refused():
    """A_CURVE_PUBLICKEY that is not the secret's public key is refused on both sides."""
    env = {
        "A_CURVE_SECRETKEY": encode_key(PrivateKey.generate()),
        "A_CURVE_PUBLICKEY": encode_key(PrivateKey.generate().public_key),
        "A_CURVE_SERVER_PUBLICKEY": encode_key(PrivateKey.generate().public_key),
        "ALLQ_AUTHORIZED_KEYS": encode_key(PrivateKey.generate().public_key),
    }
    with pytest.raises(KeyConfigError, match="A_CURVE_PUBLICKEY is not the public key"):
        load_server_keys(None, None, env)
    with pytest.raises(KeyConfigError, match="A_CURVE_PUBLICKEY is not the public key"):
        load_client_keys(None, env)


def test_client_from_environment():
    """The client reads its secret and the server's public key from the environment."""
    secret, server = PrivateKey.generate(), PrivateKey.generate().public_key
    env = {
        "A_CURVE_SECRETKEY": allqueue_env(bytes(secret), nul=True),
        "A_CURVE_PUBLICKEY": encode_key(secret.public_key),
        "A_CURVE_SERVER_PUBLICKEY": z85_encode(bytes(server)),
    }
    client = load_client_keys(None, env)
    assert bytes(client.secret) == bytes(secret)
    assert client.server_public == server


def test_client_env_without_server_key_is_refused():
    """A client secret without A_CURVE_SERVER_PUBLICKEY is refused, naming the variable."""
    env = {"A_CURVE_SECRETKEY": encode_key(PrivateKey.generate())}
    with pytest.raises(KeyConfigError, match="A_CURVE_SERVER_PUBLICKEY"):
        load_client_keys(None, env)


def test_bad_env_key_names_the_variable():
    """A malformed environment key is reported by its variable name."""
    env = {"A_CURVE_SECRETKEY": "oops", "ALLQ_AUTHORIZED_KEYS": "x"}
    with pytest.raises(KeyConfigError, match="^A_CURVE_SECRETKEY: expected"):
        load_server_keys(None, None, env)
    env = {"A_CURVE_SECRETKEY": encode_key(RAW), "ALLQ_AUTHORIZED_KEYS": f"{encode_key(RAW)},x"}
    with pytest.raises(KeyConfigError, match=r"^ALLQ_AUTHORIZED_KEYS \(entry 2\): expected"):
        load_server_keys(None, None, env)


@pytest.mark.parametrize("env", [{}, {"A_CURVE_SECRETKEY": ""}, {"A_CURVE_PUBLICKEY": "x"}])
def test_no_keys_at_all_is_missing_keys(env):
    """No directory and no (non-empty) A_CURVE_SECRETKEY raises MissingKeys with guidance."""
    with pytest.raises(MissingKeys) as server_info:
        load_server_keys(None, None, env)
    with pytest.raises(MissingKeys) as client_info:
        load_client_keys(None, env)
    for info in (server_info, client_info):
        assert "--keys DIR" in str(info.value) and "A_CURVE_SECRETKEY" in str(info.value)
    assert "A_CURVE_SERVER_PUBLICKEY" in str(client_info.value)


def test_allqueue_default_server_key_is_refused():
    """A client configured with AllQueue's public, built-in default server key is refused."""
    env = {
        "A_CURVE_SECRETKEY": encode_key(PrivateKey.generate()),
        "A_CURVE_SERVER_PUBLICKEY": ALLQUEUE_DEFAULT_SERVER_PUBLIC,
    }
    with pytest.raises(KeyConfigError, match="default"):
        load_client_keys(None, env)


# -- suggested setup ---------------------------------------------------------------------------


def test_suggested_setup_text_is_a_working_fresh_set():
    """The suggested text shows the commands and a fresh env set that the loaders accept."""
    text = suggested_setup_text()
    for command in (
        "allq keys generate ./keys",
        "twistd -n --pidfile= allq-server --keys ./keys",
        "twistd -n --pidfile= allq-client --keys ./keys",
    ):
        assert command in text
    server_part, client_part = text.split("# allq-client")
    parse = lambda part: dict(  # noqa: E731
        line.strip()[len("export ") :].split("=", 1)
        for line in part.splitlines()
        if line.strip().startswith("export ")
    )
    server = load_server_keys(None, None, parse(server_part))
    client = load_client_keys(None, parse(client_part))
    assert server.authorized == (client.public, server.public)
    assert client.server_public == server.public
    assert suggested_setup_text() != text


def test_suggested_setup_text_uses_directory_hint():
    """The directory hint appears in the suggested commands."""
    assert "allq keys generate /etc/allq" in suggested_setup_text("/etc/allq")
