"""Key material for allq: key text encodings, key records, key sets.

Responsibility: turn key text (found by :mod:`allq.keyfiles` in files and
environment variables) into NaCl key objects, and make fresh key sets and the
files that hold them. Every key is a Curve25519 key of 32 raw bytes. No I/O: the
files are read and written by :mod:`allq.keyfiles`.

Accepted key text (:func:`decode_key`), told apart by length after stripping whitespace:

* 44 characters: standard base64 of the 32 bytes. This is our own format; it is what
  :func:`key_set_files` and :func:`encode_key` write.
* 64 characters: hexadecimal.
* 40 characters: Z85, the CurveZMQ text form (ZMQ RFC 32).
* 56 characters: AllQueue's environment format, standard base64 of the 40-character Z85
  text, optionally followed by a NUL byte (AllQueue's patched ``curve_keypair`` writes 41
  bytes). See ALLQ-REFERENCE §7.2.

Error messages never contain key text: they name the source (an environment variable or
a file path) and say what was expected.
"""

from __future__ import annotations

import binascii
import re

import attrs
from nacl.public import PrivateKey, PublicKey

from allq.keyfiles import (
    AUTHORIZED_KEYS_FILE,
    CLIENT_PUBLIC_FILE,
    CLIENT_SECRET_FILE,
    ANY_CLIENT_SWITCH,
    ENV_AUTHORIZED,
    ENV_PUBLIC,
    ENV_SECRET,
    ENV_SERVER_PUBLIC,
    SERVER_PUBLIC_FILE,
    SERVER_SECRET_FILE,
    FoundClientKeys,
    FoundServerKeys,
    KeyConfigError,
    KeyText,
)

KEY_BYTES = 32


_EXPECTED = (
    "expected a 32-byte key as 44-character base64 (what `allq keys generate` writes), "
    "64 hex digits, 40-character Z85, or AllQueue's base64-encoded Z85"
)
_HEX = re.compile(r"\A[0-9a-fA-F]{64}\Z")

#: The public key of AllQueue's built-in default server key pair. Its secret key ships with
#: AllQueue, so it protects nothing; both loaders refuse it (ALLQ-REFERENCE §7.2, §15).
ALLQUEUE_DEFAULT_SERVER_PUBLIC = "W}@/*{s8T8&/j%H5>>/m+O?MdJO]$Vbo2FC0pAS@"


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
    :ivar any_client: accept any client key besides those (AllQueue's behaviour,
        only by the explicit switch).
    """

    secret: PrivateKey = attrs.field(repr=False)
    authorized: tuple[PublicKey, ...] = attrs.field(converter=tuple)
    any_client: bool = False

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
        f"# {SERVER_PUBLIC_FILE}: servers of this key set may replicate to each other\n"
        f"{server_public}\n"
    )
    return [
        (SERVER_SECRET_FILE, encode_key(keys.server_secret) + "\n", 0o600),
        (AUTHORIZED_KEYS_FILE, authorized, 0o644),
        (CLIENT_SECRET_FILE, encode_key(keys.client_secret) + "\n", 0o600),
        (SERVER_PUBLIC_FILE, server_public + "\n", 0o644),
        (CLIENT_PUBLIC_FILE, client_public + "\n", 0o644),
    ]


def new_key_set() -> GeneratedKeys:
    """A fresh server key pair and client key pair, in memory."""
    return GeneratedKeys(PrivateKey.generate(), PrivateKey.generate())


def key_set_files(keys: GeneratedKeys) -> list[tuple[str, str, int]]:
    """The files of a key set: ``(file name, content, mode)``, server files first
    (:func:`allq.keyfiles.write_key_files` writes them)."""
    return _generated_files(keys)


def suggested_setup_text(directory_hint: str = "./keys") -> str:
    """Text showing a fresh key set and how to use it; printed by a server without keys.

    Generates new keys in memory (nothing is written) and shows them as environment
    variables, together with the commands for the file-based setup.

    :param directory_hint: the key directory to show in the commands.
    :returns: several lines of text, ending in a newline.
    """
    keys = new_key_set()
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
        # The server's own key too: servers of one key set may replicate to each other.
        f"    export {ENV_AUTHORIZED}={client_public},{server_public}\n"
        "\n"
        "    # allq-client\n"
        f"    export {ENV_SECRET}={encode_key(keys.client_secret)}\n"
        f"    export {ENV_PUBLIC}={client_public}\n"
        f"    export {ENV_SERVER_PUBLIC}={server_public}\n"
    )


# -- decoding what was found ------------------------------------------------------------


def _key(found: KeyText) -> bytes:
    return decode_key(found.text, found.source)


def _unique(keys: list[PublicKey]) -> tuple[PublicKey, ...]:
    seen: dict[bytes, PublicKey] = {}
    for key in keys:
        seen.setdefault(bytes(key), key)
    return tuple(seen.values())


def public_keys(found: tuple[KeyText, ...]) -> tuple[PublicKey, ...]:
    """Decode a list of public keys (an authorized keys file or variable); duplicates
    are dropped, the order kept.

    :raises KeyConfigError: naming the source (``path:line``, ``VAR (entry N)``) of a
        key that does not decode.
    """
    return _unique([PublicKey(_key(key)) for key in found])


def _secret(secret: KeyText, public: KeyText | None) -> PrivateKey:
    key = PrivateKey(_key(secret))
    if public is not None and _key(public) != bytes(key.public_key):
        raise KeyConfigError(
            f"{public.source} is not the public key of {secret.source}; "
            f"fix it or leave {public.source} unset"
        )
    return key


def _refuse_default(public: PublicKey, what: str) -> None:
    if bytes(public) == z85_decode(ALLQUEUE_DEFAULT_SERVER_PUBLIC):
        raise KeyConfigError(
            f"{what}: this is AllQueue's built-in default server key, which everyone knows; "
            "generate a key set with `allq keys generate DIR`"
        )


def server_keys(found: FoundServerKeys) -> ServerKeys:
    """A server's keys from their text (:func:`allq.keyfiles.find_server_keys`).

    :raises KeyConfigError: a malformed key, a public key that does not match the
        secret, AllQueue's default server key, or no authorized client keys (and
        not the any-client switch).
    """
    secret = _secret(found.secret, found.public)
    authorized = public_keys(found.authorized)
    _refuse_default(secret.public_key, found.secret.source)
    if not authorized and not found.any_client:
        raise KeyConfigError(
            f"{found.authorized_source}: no authorized client keys; the server would "
            f"accept nobody. Pass --authorized-keys FILE or set {ENV_AUTHORIZED} to the "
            f"client public keys. To accept any client that holds the server's public "
            f"key, as AllQueue did, set {ANY_CLIENT_SWITCH}"
        )
    return ServerKeys(secret, authorized, found.any_client)


def client_keys(found: FoundClientKeys) -> ClientKeys:
    """A client's keys from their text (:func:`allq.keyfiles.find_client_keys`).

    :raises KeyConfigError: a malformed key, a public key that does not match the
        secret, or AllQueue's default server key as the server's key.
    """
    secret = _secret(found.secret, found.public)
    server_public = PublicKey(_key(found.server_public))
    _refuse_default(server_public, found.server_public.source)
    return ClientKeys(secret, server_public)
