"""Where each daemon finds its keys: key files, key directories and the environment.

The I/O half of key handling, as text: this module reads key files (refusing a
secret readable by others), key directories and environment variables, and
writes new key sets, but it never decodes a key. It hands back
:class:`KeyText` values that remember where each came from, and
:mod:`allq.wire.keys` turns them into NaCl keys (and says what is wrong with
one, naming that source). Standard library only; it runs at start-up, and when
a server reloads its authorized keys.

Files of a key directory (``DIR``, mode 0700)::

    server.key       server secret key      0600   the server needs this ...
    authorized_keys  client keys to accept  0644   ... and this
    client.key       client secret key      0600   a client needs this ...
    server.pub       server public key      0644   ... and this
    client.pub       client public key      0644   (goes into authorized_keys)

Environment (the original AllQueue names, plus one of ours): ``A_CURVE_SECRETKEY``
(own secret key, either side), ``A_CURVE_PUBLICKEY`` (own public key, optional,
checked against the secret), ``A_CURVE_SERVER_PUBLICKEY`` (client only),
``ALLQ_AUTHORIZED_KEYS`` (server only: client public keys separated by commas or
whitespace, or ``*``: any client, see below).

Any client: AllQueue's servers accepted every client that knew the server's public
key (no client list existed). allq accepts only listed keys unless one explicit
switch says otherwise: ``ALLQ_AUTHORIZED_KEYS=*`` or the server's
``--allow-any-client``; :attr:`FoundServerKeys.any_client` carries it.
"""

import os
import re
from collections.abc import Mapping, Sequence

import attrs

SERVER_SECRET_FILE = "server.key"
SERVER_PUBLIC_FILE = "server.pub"
CLIENT_SECRET_FILE = "client.key"
CLIENT_PUBLIC_FILE = "client.pub"
AUTHORIZED_KEYS_FILE = "authorized_keys"

ENV_SECRET = "A_CURVE_SECRETKEY"
ENV_PUBLIC = "A_CURVE_PUBLICKEY"
ENV_SERVER_PUBLIC = "A_CURVE_SERVER_PUBLICKEY"
ENV_AUTHORIZED = "ALLQ_AUTHORIZED_KEYS"
#: ``ALLQ_AUTHORIZED_KEYS=*``: accept any client key (AllQueue's behaviour).
ANY_CLIENT = "*"
#: How the refusal of a server without client keys names the switch.
ANY_CLIENT_SWITCH = f"{ENV_AUTHORIZED}={ANY_CLIENT} or --allow-any-client"


class KeyConfigError(Exception):
    """Key configuration is missing or wrong; the message says which source and why,
    and never contains key text."""


class MissingKeys(KeyConfigError):
    """No keys where they were looked for: no key directory and no environment keys, or
    a key directory without the secret key file."""


@attrs.frozen
class KeyText:
    """One key as written somewhere, and where (a path, ``path:line``, or a variable)."""

    text: str = attrs.field(repr=False)
    source: str


@attrs.frozen
class FoundServerKeys:
    """A server's key text: its secret, the public key said to match it (from the
    environment; ``None``: not given), and the client keys it accepts.

    :ivar authorized_source: where the authorized keys came from, for an error
        when there are none.
    :ivar any_client: accept any client key that completes the handshake (the
        explicit switch; ``authorized`` may then be empty).
    """

    secret: KeyText
    public: KeyText | None
    authorized: tuple[KeyText, ...]
    authorized_source: str
    any_client: bool = False


@attrs.frozen
class FoundClientKeys:
    """A client's key text: its secret, its public key (environment only), and the
    server's public key."""

    secret: KeyText
    public: KeyText | None
    server_public: KeyText


# -- reading -----------------------------------------------------------------------------


def read_text(path: str) -> str:
    """A key file's text.

    :raises KeyConfigError: it cannot be read, or is not text.
    """
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise KeyConfigError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise KeyConfigError(f"{path}: not a text file; expected a key") from None
    except OSError as e:
        raise KeyConfigError(f"{path}: cannot read: {e.strerror}") from None


def read_secret(path: str) -> KeyText:
    """A secret key file, which nobody but its owner may read.

    :raises MissingKeys: there is no such file.
    :raises KeyConfigError: it is readable by group or others, or cannot be read.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise MissingKeys(
            f"{path}: no such file (create a key set with `allq keys generate`)") from None
    except OSError as e:
        raise KeyConfigError(f"{path}: cannot read: {e.strerror}") from None
    if mode & 0o077:
        raise KeyConfigError(
            f"{path}: secret key file is accessible by group or others "
            f"(mode {mode & 0o777:03o}); run `chmod 600 {path}`"
        )
    return KeyText(read_text(path), path)


def read_public(path: str) -> KeyText:
    return KeyText(read_text(path), path)


def read_key_list(path: str) -> tuple[KeyText, ...]:
    """An authorized keys file: one key per line. Blank lines and lines starting with
    ``#`` are skipped, and so is anything after the first whitespace on a key line (a
    comment, as in ssh's ``authorized_keys``). Each key's source is ``path:line``."""
    keys = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            keys.append(KeyText(line.split(None, 1)[0], f"{path}:{number}"))
    return tuple(keys)


def env_key(environ: Mapping[str, str], name: str) -> KeyText | None:
    """An environment key, treating empty (``VAR=`` in compose files) as unset."""
    value = environ.get(name, "").strip()
    return KeyText(value, name) if value else None


def env_key_list(environ: Mapping[str, str], name: str) -> tuple[KeyText, ...] | None:
    """Keys separated by commas or whitespace in one variable (``None``: unset)."""
    value = env_key(environ, name)
    if value is None:
        return None
    entries = [entry for entry in re.split(r"[\s,]+", value.text) if entry]
    return tuple(KeyText(entry, f"{name} (entry {number})")
                 for number, entry in enumerate(entries, start=1))


def find_server_keys(keys_dir: str | None, authorized_keys_file: str | None,
                     environ: Mapping[str, str], *,
                     allow_any_client: bool = False) -> FoundServerKeys:
    """Find a server's key text. First match wins:

    1. ``keys_dir``: the secret from ``DIR/server.key``; authorized keys from
       ``authorized_keys_file`` if given, else ``DIR/authorized_keys`` if it exists,
       else the single key in ``DIR/client.pub``.
    2. ``A_CURVE_SECRETKEY`` (with ``A_CURVE_PUBLICKEY``, if set); authorized keys
       from ``authorized_keys_file`` if given, else ``ALLQ_AUTHORIZED_KEYS``.

    Any client is accepted when ``allow_any_client`` (``--allow-any-client``) or
    ``ALLQ_AUTHORIZED_KEYS`` is exactly ``*``, whichever source the secret came
    from; keys listed as well are then simply among the accepted ones, and a key
    directory needs neither ``authorized_keys`` nor ``client.pub``.

    :raises MissingKeys: neither a key directory nor ``A_CURVE_SECRETKEY``, or the
        directory has no ``server.key``.
    :raises KeyConfigError: a file cannot be read, a secret is readable by others,
        or ``*`` is mixed with keys in ``ALLQ_AUTHORIZED_KEYS``.
    """
    listed = env_key_list(environ, ENV_AUTHORIZED)
    env_any = listed is not None and ANY_CLIENT in [key.text for key in listed]
    if env_any and len(listed) > 1:
        raise KeyConfigError(
            f"{ENV_AUTHORIZED}: '{ANY_CLIENT}' (any client) must stand alone, "
            "not beside client keys")
    any_client = allow_any_client or env_any
    if env_any:
        listed = ()
    if keys_dir is not None:
        secret = read_secret(os.path.join(keys_dir, SERVER_SECRET_FILE))
        listing = os.path.join(keys_dir, AUTHORIZED_KEYS_FILE)
        client_public = os.path.join(keys_dir, CLIENT_PUBLIC_FILE)
        if authorized_keys_file is not None:
            authorized = read_key_list(authorized_keys_file)
        elif os.path.exists(listing):
            authorized = read_key_list(listing)
        elif any_client and not os.path.exists(client_public):
            authorized = ()
        else:
            authorized = (read_public(client_public),)
        return FoundServerKeys(secret, None, authorized, keys_dir, any_client)
    secret = env_key(environ, ENV_SECRET)
    if secret is None:
        raise MissingKeys(
            f"no server keys: pass --keys DIR (see `allq keys generate DIR`) "
            f"or set {ENV_SECRET} and {ENV_AUTHORIZED}"
        )
    public = env_key(environ, ENV_PUBLIC)
    if authorized_keys_file is not None:
        return FoundServerKeys(secret, public, read_key_list(authorized_keys_file),
                               authorized_keys_file, any_client)
    if listed is None:
        return FoundServerKeys(secret, public, (), f"{ENV_AUTHORIZED} (unset)", any_client)
    return FoundServerKeys(secret, public, listed, ENV_AUTHORIZED, any_client)


def find_client_keys(keys_dir: str | None, environ: Mapping[str, str]) -> FoundClientKeys:
    """Find a client's key text: ``keys_dir`` (``DIR/client.key``, ``DIR/server.pub``),
    else ``A_CURVE_SECRETKEY`` with ``A_CURVE_SERVER_PUBLICKEY`` (and
    ``A_CURVE_PUBLICKEY``, if set).

    :raises MissingKeys: neither source, or the directory has no ``client.key``.
    :raises KeyConfigError: a file cannot be read, a secret is readable by others, or
        a secret key is given without the server's key.
    """
    if keys_dir is not None:
        return FoundClientKeys(read_secret(os.path.join(keys_dir, CLIENT_SECRET_FILE)), None,
                               read_public(os.path.join(keys_dir, SERVER_PUBLIC_FILE)))
    secret = env_key(environ, ENV_SECRET)
    if secret is None:
        raise MissingKeys(
            f"no client keys: pass --keys DIR (see `allq keys generate DIR`) "
            f"or set {ENV_SECRET} and {ENV_SERVER_PUBLIC}"
        )
    server_public = env_key(environ, ENV_SERVER_PUBLIC)
    if server_public is None:
        raise KeyConfigError(
            f"{ENV_SECRET} is set but {ENV_SERVER_PUBLIC} is not; "
            "the client needs the server's public key"
        )
    return FoundClientKeys(secret, env_key(environ, ENV_PUBLIC), server_public)


# -- writing -----------------------------------------------------------------------------


def write_key_files(directory: str, files: Sequence[tuple[str, str, int]], *,
                    overwrite: bool = False) -> tuple[str, ...]:
    """Write a key set: ``(file name, content, mode)`` each, into ``directory``
    (created with mode 0700 if needed).

    :param overwrite: replace existing key files instead of refusing.
    :returns: the paths written.
    :raises KeyConfigError: a file exists and ``overwrite`` is false, or something
        cannot be written.
    """
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
        raise KeyConfigError(
            f"{e.filename or directory}: cannot write keys: {e.strerror}") from None
    return tuple(paths)


def _write_new_file(path: str, content: str, mode: int) -> None:
    # O_EXCL with the final mode: a secret file is never readable by others, not even
    # between creation and a later chmod. fchmod undoes a restrictive umask on .pub files.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, content.encode("ascii"))
    finally:
        os.close(fd)
