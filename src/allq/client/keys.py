"""The client's keys: found by :mod:`allq.keyfiles`, decoded by :mod:`allq.wire.keys`."""

from collections.abc import Mapping

from allq.keyfiles import find_client_keys
from allq.wire.keys import ClientKeys, client_keys


def load_client_keys(keys_dir: str | None, environ: Mapping[str, str]) -> ClientKeys:
    """The client's secret key and the server's public key, from ``--keys`` or the
    environment (:func:`allq.keyfiles.find_client_keys`).

    :raises MissingKeys: no keys were given.
    :raises KeyConfigError: a key is malformed, unsafely stored or inconsistent.
    """
    return client_keys(find_client_keys(keys_dir, environ))
