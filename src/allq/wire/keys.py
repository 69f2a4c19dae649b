"""Key material for allq: text encodings, key files, and where each daemon finds its keys.

Responsibility: turn operator-supplied key text (files, environment variables) into NaCl
key objects, and write fresh key sets. Every key is a Curve25519 key of 32 raw bytes.

Accepted key text (:func:`decode_key`), told apart by length after stripping whitespace:

* 44 characters: standard base64 of the 32 bytes. This is our own format; it is what
  :func:`generate_keys` and :func:`encode_key` write.
* 64 characters: hexadecimal.
* 40 characters: Z85, the CurveZMQ text form (ZMQ RFC 32).
* 56 characters: AllQueue's environment format, standard base64 of the 40-character Z85
  text, optionally followed by a NUL byte (AllQueue's patched ``curve_keypair`` writes 41
  bytes). See ALLQ-REFERENCE §7.2.

Files written by :func:`generate_keys` (``DIR`` is the key directory, mode 0700)::

    server.key       server secret key      0600   the server needs this ...
    authorized_keys  client keys to accept  0644   ... and this
    client.key       client secret key      0600   a client needs this ...
    server.pub       server public key      0644   ... and this
    client.pub       client public key      0644   (goes into authorized_keys)

Environment (the original AllQueue names, plus one of ours): ``A_CURVE_SECRETKEY`` (own
secret key, either side), ``A_CURVE_PUBLICKEY`` (own public key, optional, checked against
the secret), ``A_CURVE_SERVER_PUBLICKEY`` (client only), ``ALLQ_AUTHORIZED_KEYS`` (server
only: client public keys separated by commas or whitespace).

What this module must not do: no sockets, no reactor, no Twisted imports. Files are read
and written only by the explicit loader and generator functions, which run at startup.
Error messages never contain key text: they name the source (an environment variable or
a file path) and say what was expected.
"""

from __future__ import annotations

import binascii
import os
import re
from collections.abc import Mapping

import attrs
from nacl.public import PrivateKey, PublicKey

KEY_BYTES = 32

SERVER_SECRET_FILE = "server.key"
SERVER_PUBLIC_FILE = "server.pub"
CLIENT_SECRET_FILE = "client.key"
CLIENT_PUBLIC_FILE = "client.pub"
AUTHORIZED_KEYS_FILE = "authorized_keys"

ENV_SECRET = "A_CURVE_SECRETKEY"
ENV_PUBLIC = "A_CURVE_PUBLICKEY"
ENV_SERVER_PUBLIC = "A_CURVE_SERVER_PUBLICKEY"
ENV_AUTHORIZED = "ALLQ_AUTHORIZED_KEYS"

_EXPECTED = (
    "expected a 32-byte key as 44-character base64 (what `allq keys generate` writes), "
    "64 hex digits, 40-character Z85, or AllQueue's base64-encoded Z85"
)
_HEX = re.compile(r"\A[0-9a-fA-F]{64}\Z")

#: The public key of AllQueue's built-in default server key pair. Its secret key ships with
#: AllQueue, so it protects nothing; both loaders refuse it (ALLQ-REFERENCE §7.2, §15).
ALLQUEUE_DEFAULT_SERVER_PUBLIC = "W}@/*{s8T8&/j%H5>>/m+O?MdJO]$Vbo2FC0pAS@"


class KeyConfigError(Exception):
    """Keys are missing, malformed, inconsistent or unsafely stored.

    The message names where the bad key came from and never contains key material.
    """


class MissingKeys(KeyConfigError):
    """No keys where they were looked for: no key directory and no environment keys, or
    a key directory without the secret key file."""


# -- Z85 (ZMQ RFC 32) ---------------------------------------------------------------------

_Z85_ALPHABET = (
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
)
_Z85_VALUES = {char: value for value, char in enumerate(_Z85_ALPHABET)}


def z85_encode(data: bytes) -> str:
    """Encode bytes as Z85 text.

    :param data: bytes whose length is a multiple of 4.
    :returns: text of ``len(data) * 5 // 4`` characters.
    :raises ValueError: if the length is not a multiple of 4.
    """
    if len(data) % 4:
        raise ValueError("Z85 input length must be a multiple of 4")
    chars = []
    for offset in range(0, len(data), 4):
        value = int.from_bytes(data[offset : offset + 4], "big")
        group = []
        for _ in range(5):
            value, digit = divmod(value, 85)
            group.append(_Z85_ALPHABET[digit])
        chars.extend(reversed(group))
    return "".join(chars)


def z85_decode(text: str) -> bytes:
    """Decode Z85 text.

    :param text: text whose length is a multiple of 5.
    :returns: ``len(text) * 4 // 5`` bytes.
    :raises ValueError: on a bad length, a character outside the alphabet, or a group
        that does not fit in 32 bits.
    """
    if len(text) % 5:
        raise ValueError("Z85 input length must be a multiple of 5")
    out = bytearray()
    for offset in range(0, len(text), 5):
        value = 0
        for char in text[offset : offset + 5]:
            digit = _Z85_VALUES.get(char)
            if digit is None:
                raise ValueError("character outside the Z85 alphabet")
            value = value * 85 + digit
        if value >= 1 << 32:
            raise ValueError("Z85 group out of range")
        out += value.to_bytes(4, "big")
    return bytes(out)


# -- key text ------------------------------------------------------------------------------


def encode_key(raw: bytes | PublicKey | PrivateKey) -> str:
    """Encode a key in our own text format: standard base64 of the 32 raw bytes.

    :param raw: the key, as 32 bytes or a NaCl key object.
    :returns: 44 characters, no newline.
    """
    return binascii.b2a_base64(bytes(raw), newline=False).decode("ascii")


def _strict_base64(text: str) -> bytes | None:
    try:
        return binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        return None


def _z85_key(text: str) -> bytes | None:
    try:
        return z85_decode(text)
    except ValueError:
        return None


def decode_key(text: str, what: str) -> bytes:
    """Decode one key from any accepted text encoding (see the module docstring).

    :param text: the key text; surrounding whitespace is ignored.
    :param what: where the text came from (an environment variable or a file path); used
        in the error message.
    :returns: the 32 raw key bytes.
    :raises KeyConfigError: naming ``what`` if the text is not a key in any accepted
        encoding. The message does not contain the text.
    """
    text = text.strip()
    raw: bytes | None = None
    if len(text) == 44:
        raw = _strict_base64(text)
    elif len(text) == 64 and _HEX.match(text):
        raw = bytes.fromhex(text)
    elif len(text) == 40:
        raw = _z85_key(text)
    elif len(text) == 56:
        z85 = _strict_base64(text)
        if z85 is not None and len(z85) == 41 and z85.endswith(b"\0"):
            z85 = z85[:-1]
        if z85 is not None and len(z85) == 40 and z85.isascii():
            raw = _z85_key(z85.decode("ascii"))
    if raw is None or len(raw) != KEY_BYTES:
        got = f"got {len(text)} characters" if text else "got nothing"
        raise KeyConfigError(f"{what}: {_EXPECTED}; {got}")
    return raw


# -- key records ---------------------------------------------------------------------------


@attrs.frozen
class ServerKeys:
    """What a server needs: its own secret key and the client keys it accepts.

    :ivar secret: the server's secret key.
    :ivar authorized: public keys of the clients the server accepts.
    """

    secret: PrivateKey = attrs.field(repr=False)
    authorized: tuple[PublicKey, ...] = attrs.field(converter=tuple)

    @property
    def public(self) -> PublicKey:
        """The server's public key (what clients configure as the server key)."""
        return self.secret.public_key


@attrs.frozen
class ClientKeys:
    """What a client needs: its own secret key and the server's public key.

    :ivar secret: the client's secret key.
    :ivar server_public: the public key of the server(s) it talks to.
    """

    secret: PrivateKey = attrs.field(repr=False)
    server_public: PublicKey

    @property
    def public(self) -> PublicKey:
        """The client's public key (what goes into the server's authorized keys)."""
        return self.secret.public_key


@attrs.frozen
class GeneratedKeys:
    """A freshly generated key set and, once written, where it lives.

    :ivar server_secret: the server's new secret key.
    :ivar client_secret: the client's new secret key.
    :ivar directory: the key directory, or ``None`` if the set exists only in memory.
    :ivar paths: the files written, in the order listed in the module docstring.
    """

    server_secret: PrivateKey = attrs.field(repr=False)
    client_secret: PrivateKey = attrs.field(repr=False)
    directory: str | None = None
    paths: tuple[str, ...] = ()

    @property
    def server_keys(self) -> ServerKeys:
        """The server's view of this set: accepts exactly this set's client."""
        return ServerKeys(self.server_secret, (self.client_secret.public_key,))

    @property
    def client_keys(self) -> ClientKeys:
        """The client's view of this set."""
        return ClientKeys(self.client_secret, self.server_secret.public_key)


# -- generating ----------------------------------------------------------------------------


def _generated_files(keys: GeneratedKeys) -> list[tuple[str, str, int]]:
    """``(file name, content, mode)`` for every file of a key set, server files first."""
    server_public = encode_key(keys.server_secret.public_key)
    client_public = encode_key(keys.client_secret.public_key)
    authorized = (
        "# Client public keys this allq server accepts, one per line.\n"
        "# Blank lines and lines starting with # are ignored; text after a key is a comment.\n"
        f"# {CLIENT_PUBLIC_FILE} (from `allq keys generate`):\n"
        f"{client_public}\n"
    )
    return [
        (SERVER_SECRET_FILE, encode_key(keys.server_secret) + "\n", 0o600),
        (AUTHORIZED_KEYS_FILE, authorized, 0o644),
        (CLIENT_SECRET_FILE, encode_key(keys.client_secret) + "\n", 0o600),
        (SERVER_PUBLIC_FILE, server_public + "\n", 0o644),
        (CLIENT_PUBLIC_FILE, client_public + "\n", 0o644),
    ]


def _write_new_file(path: str, content: str, mode: int) -> None:
    # O_EXCL with the final mode: a secret file is never readable by others, not even
    # between creation and a later chmod. fchmod undoes a restrictive umask on .pub files.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, content.encode("ascii"))
    finally:
        os.close(fd)


def generate_keys(directory: str, *, overwrite: bool = False) -> GeneratedKeys:
    """Generate a server key pair and a client key pair and write them to ``directory``.

    Creates the directory (mode 0700) if needed. See the module docstring for the files.

    :param directory: the key directory.
    :param overwrite: replace existing key files instead of refusing.
    :returns: the new key set, with the paths written.
    :raises KeyConfigError: if any of the files exists and ``overwrite`` is false, or
        the directory or a file cannot be written.
    """
    keys = GeneratedKeys(PrivateKey.generate(), PrivateKey.generate())
    files = _generated_files(keys)
    paths = [os.path.join(directory, name) for name, _, _ in files]
    existing = [path for path in paths if os.path.lexists(path)]
    if existing and not overwrite:
        names = ", ".join(os.path.basename(path) for path in existing)
        raise KeyConfigError(
            f"{directory}: refusing to overwrite existing key files ({names}); "
            "use --force to replace them"
        )
    try:
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700)
            os.chmod(directory, 0o700)
        for path in existing:
            os.unlink(path)
        for path, (_, content, mode) in zip(paths, files):
            _write_new_file(path, content, mode)
    except OSError as e:
        raise KeyConfigError(f"{e.filename or directory}: cannot write keys: {e.strerror}")
    return attrs.evolve(keys, directory=directory, paths=tuple(paths))


def suggested_setup_text(directory_hint: str = "./keys") -> str:
    """Text showing a fresh key set and how to use it; printed by a server without keys.

    Generates new keys in memory (nothing is written) and shows them as environment
    variables, together with the commands for the file-based setup.

    :param directory_hint: the key directory to show in the commands.
    :returns: several lines of text, ending in a newline.
    """
    keys = GeneratedKeys(PrivateKey.generate(), PrivateKey.generate())
    server_public = encode_key(keys.server_secret.public_key)
    client_public = encode_key(keys.client_secret.public_key)
    return (
        "Suggested allq key setup.\n"
        "\n"
        "Either write a key set to files and point both daemons at it:\n"
        "\n"
        f"    allq keys generate {directory_hint}\n"
        f"    twistd -n --pidfile= allq-server --keys {directory_hint}\n"
        f"    twistd -n --pidfile= allq-client --keys {directory_hint}\n"
        "\n"
        "or use this freshly generated set in the environment (keep the secret keys secret):\n"
        "\n"
        "    # allq-server\n"
        f"    export {ENV_SECRET}={encode_key(keys.server_secret)}\n"
        f"    export {ENV_PUBLIC}={server_public}\n"
        f"    export {ENV_AUTHORIZED}={client_public}\n"
        "\n"
        "    # allq-client\n"
        f"    export {ENV_SECRET}={encode_key(keys.client_secret)}\n"
        f"    export {ENV_PUBLIC}={client_public}\n"
        f"    export {ENV_SERVER_PUBLIC}={server_public}\n"
    )


# -- loading -------------------------------------------------------------------------------


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise KeyConfigError(f"{path}: no such file")
    except UnicodeDecodeError:
        raise KeyConfigError(f"{path}: not a text file; {_EXPECTED}")
    except OSError as e:
        raise KeyConfigError(f"{path}: cannot read: {e.strerror}")


def _read_secret_key(path: str) -> PrivateKey:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise MissingKeys(f"{path}: no such file (create a key set with `allq keys generate`)")
    except OSError as e:
        raise KeyConfigError(f"{path}: cannot read: {e.strerror}")
    if mode & 0o077:
        raise KeyConfigError(
            f"{path}: secret key file is accessible by group or others "
            f"(mode {mode & 0o777:03o}); run `chmod 600 {path}`"
        )
    return PrivateKey(decode_key(_read_text(path), path))


def _read_public_key(path: str) -> PublicKey:
    return PublicKey(decode_key(_read_text(path), path))


def _unique(keys: list[PublicKey]) -> tuple[PublicKey, ...]:
    seen: dict[bytes, PublicKey] = {}
    for key in keys:
        seen.setdefault(bytes(key), key)
    return tuple(seen.values())


def read_authorized_keys(path: str) -> tuple[PublicKey, ...]:
    """Read an authorized keys file: the client public keys a server accepts.

    One key per line, in any accepted encoding. Blank lines and lines starting with
    ``#`` are ignored, and so is anything after the first whitespace on a key line (a
    comment, as in ssh's ``authorized_keys``). Duplicates are dropped.

    :param path: the file.
    :returns: the keys, in file order (possibly empty).
    :raises KeyConfigError: naming ``path:line`` for a line that is not a key, or naming
        the file if it cannot be read.
    """
    keys = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keys.append(PublicKey(decode_key(line.split(None, 1)[0], f"{path}:{number}")))
    return _unique(keys)


def _parse_key_list(text: str, what: str) -> tuple[PublicKey, ...]:
    entries = [entry for entry in re.split(r"[\s,]+", text) if entry]
    return _unique(
        [
            PublicKey(decode_key(entry, f"{what} (entry {number})"))
            for number, entry in enumerate(entries, start=1)
        ]
    )


def _env(environ: Mapping[str, str], name: str) -> str | None:
    """An environment value, treating empty (``VAR=`` in compose files) as unset."""
    value = environ.get(name, "").strip()
    return value or None


def _env_secret(environ: Mapping[str, str]) -> PrivateKey | None:
    text = _env(environ, ENV_SECRET)
    if text is None:
        return None
    secret = PrivateKey(decode_key(text, ENV_SECRET))
    public_text = _env(environ, ENV_PUBLIC)
    if public_text is not None:
        if decode_key(public_text, ENV_PUBLIC) != bytes(secret.public_key):
            raise KeyConfigError(
                f"{ENV_PUBLIC} is not the public key of {ENV_SECRET}; "
                f"fix it or leave {ENV_PUBLIC} unset"
            )
    return secret


def _refuse_default(public: PublicKey, what: str) -> None:
    if bytes(public) == z85_decode(ALLQUEUE_DEFAULT_SERVER_PUBLIC):
        raise KeyConfigError(
            f"{what}: this is AllQueue's built-in default server key, which everyone knows; "
            "generate a key set with `allq keys generate DIR`"
        )


def load_server_keys(
    keys_dir: str | None,
    authorized_keys_file: str | None,
    environ: Mapping[str, str],
) -> ServerKeys:
    """Find the server's secret key and the client keys it accepts.

    Sources, first match wins:

    1. ``keys_dir``: the secret key from ``DIR/server.key``; authorized keys from
       ``authorized_keys_file`` if given, else ``DIR/authorized_keys`` if it exists, else
       the single key in ``DIR/client.pub``.
    2. ``A_CURVE_SECRETKEY`` (``A_CURVE_PUBLICKEY``, if set, must match it); authorized
       keys from ``authorized_keys_file`` if given, else ``ALLQ_AUTHORIZED_KEYS``.

    :param keys_dir: the ``--keys`` directory, or ``None``.
    :param authorized_keys_file: the ``--authorized-keys`` file, or ``None``.
    :param environ: the environment (``os.environ`` in the daemon).
    :returns: the server's keys, with at least one authorized key.
    :raises MissingKeys: if neither a key directory nor ``A_CURVE_SECRETKEY`` is given,
        or the directory has no ``server.key``.
    :raises KeyConfigError: for malformed keys, a secret key file readable by others, a
        public key that does not match, AllQueue's default server key, or no authorized
        client keys.
    """
    if keys_dir is not None:
        secret = _read_secret_key(os.path.join(keys_dir, SERVER_SECRET_FILE))
        if authorized_keys_file is not None:
            authorized = read_authorized_keys(authorized_keys_file)
        elif os.path.exists(os.path.join(keys_dir, AUTHORIZED_KEYS_FILE)):
            authorized = read_authorized_keys(os.path.join(keys_dir, AUTHORIZED_KEYS_FILE))
        else:
            authorized = (_read_public_key(os.path.join(keys_dir, CLIENT_PUBLIC_FILE)),)
        source = keys_dir
    else:
        env_secret = _env_secret(environ)
        if env_secret is None:
            raise MissingKeys(
                f"no server keys: pass --keys DIR (see `allq keys generate DIR`) "
                f"or set {ENV_SECRET} and {ENV_AUTHORIZED}"
            )
        secret = env_secret
        env_authorized = _env(environ, ENV_AUTHORIZED)
        if authorized_keys_file is not None:
            authorized = read_authorized_keys(authorized_keys_file)
            source = authorized_keys_file
        elif env_authorized is not None:
            authorized = _parse_key_list(env_authorized, ENV_AUTHORIZED)
            source = ENV_AUTHORIZED
        else:
            authorized = ()
            source = f"{ENV_AUTHORIZED} (unset)"
    _refuse_default(secret.public_key, keys_dir or ENV_SECRET)
    if not authorized:
        raise KeyConfigError(
            f"{source}: no authorized client keys; the server would accept nobody. "
            f"Pass --authorized-keys FILE or set {ENV_AUTHORIZED}"
        )
    return ServerKeys(secret, authorized)


def load_client_keys(keys_dir: str | None, environ: Mapping[str, str]) -> ClientKeys:
    """Find the client's secret key and the server's public key.

    Sources, first match wins: ``keys_dir`` (``DIR/client.key`` and ``DIR/server.pub``),
    then ``A_CURVE_SECRETKEY`` with ``A_CURVE_SERVER_PUBLICKEY`` (``A_CURVE_PUBLICKEY``,
    if set, must match the secret key).

    :param keys_dir: the ``--keys`` directory, or ``None``.
    :param environ: the environment (``os.environ`` in the daemon).
    :returns: the client's keys.
    :raises MissingKeys: if neither source is given, or the directory has no
        ``client.key``.
    :raises KeyConfigError: for malformed keys, a secret key file readable by others, a
        public key that does not match, a secret key without the server's key, or
        AllQueue's default server key as the server's key.
    """
    if keys_dir is not None:
        secret = _read_secret_key(os.path.join(keys_dir, CLIENT_SECRET_FILE))
        server_public_file = os.path.join(keys_dir, SERVER_PUBLIC_FILE)
        server_public = _read_public_key(server_public_file)
        _refuse_default(server_public, server_public_file)
        return ClientKeys(secret, server_public)
    env_secret = _env_secret(environ)
    if env_secret is None:
        raise MissingKeys(
            f"no client keys: pass --keys DIR (see `allq keys generate DIR`) "
            f"or set {ENV_SECRET} and {ENV_SERVER_PUBLIC}"
        )
    server_text = _env(environ, ENV_SERVER_PUBLIC)
    if server_text is None:
        raise KeyConfigError(
            f"{ENV_SECRET} is set but {ENV_SERVER_PUBLIC} is not; "
            "the client needs the server's public key"
        )
    server_public = PublicKey(decode_key(server_text, ENV_SERVER_PUBLIC))
    _refuse_default(server_public, ENV_SERVER_PUBLIC)
    return ClientKeys(env_secret, server_public)
