"""Which server a keyed put goes to: rendezvous hashing of the job's key over
the servers' ids.

A put with a ``concurrency_key`` (or else a ``unique_key``) must land where the
key's other jobs are, so one server can enforce the key's rule. Every client
computes the same answer from the same server ids, whatever order its servers
are configured in, and adding or removing a server moves only the keys that
server wins (about 1/N of them): rendezvous (highest random weight) hashing,
one short BLAKE2b per server per keyed put.

A job with both keys is routed by its ``concurrency_key``: its uniqueness then
holds among the jobs of that concurrency key (give a unique key always with
the same concurrency key, e.g. both the customer's id).
"""

import hashlib

from allq.client.link import ServerLink
from allq.errors import Draining, Unavailable


def routing_key(params: dict) -> str | None:
    """The key a put is routed by, or ``None`` for a put placed anywhere."""
    return params.get("concurrency_key") or params.get("unique_key")


def score(server_id: str, key: str) -> int:
    """The weight of one server for one key (the highest wins)."""
    digest = hashlib.blake2b(f"{server_id}\0{key}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def key_holder(links: list[ServerLink], key: str) -> ServerLink:
    """The server ``key`` goes to, among every configured server (up or not).

    :raises Unavailable: a server has not said its id yet (it may be the one),
        or the chosen one is down.
    :raises Draining: the chosen server is drained by this client.
    """
    if not links or any(link.server_id is None for link in links):
        raise Unavailable("a keyed put waits until every server has connected once: "
                          "its key chooses the server by the servers' ids")
    link = max(links, key=lambda link: (score(link.server_id, key), link.server_id))
    if not link.up:
        raise Unavailable(f"the server for this job's key ({link.address}) is down "
                          f"({link.down_reason or 'down'}); a keyed job goes nowhere else")
    if link.draining:
        raise Draining(f"the server for this job's key ({link.address}) is draining; "
                       "a keyed job goes nowhere else")
    return link
