"""The server's keys: found by :mod:`allq.keyfiles`, decoded by :mod:`allq.wire.keys`."""

from collections.abc import Mapping

from allq.keyfiles import find_server_keys
from allq.wire.keys import ServerKeys, server_keys


def load_server_keys(keys_dir: str | None, authorized_keys_file: str | None,
                     environ: Mapping[str, str], *,
                     allow_any_client: bool = False) -> ServerKeys:
    """The server's secret key and the client keys it accepts, from ``--keys`` (or
    ``--authorized-keys``) or the environment (:func:`allq.keyfiles.find_server_keys`).

    :param allow_any_client: ``--allow-any-client``: accept any client key.
    :raises MissingKeys: no keys were given.
    :raises KeyConfigError: a key is malformed, unsafely stored, inconsistent, or
        none is authorized.
    """
    return server_keys(find_server_keys(keys_dir, authorized_keys_file, environ,
                                        allow_any_client=allow_any_client))
