"""Client-side fencing: the epochs this client saw a backup promoted at.

When a backup takes a primary's jobs over (:mod:`allq.client.failover`), the
primary's server id gets a new epoch. A link whose welcome then shows that
server id with a lower epoch (or none) is a stale primary that was not fenced
yet (docs/replication.md): the link never uses it, and says why. Shared by
every :class:`allq.client.link.ServerLink` of one client and its failover.
"""

from collections.abc import Mapping

import attrs


@attrs.frozen
class Promotion:
    """A backup serves ``server_id``'s jobs since ``epoch``."""

    server_id: str
    backup: str
    epoch: int


@attrs.define
class Fences:
    """The highest promotion seen per primary server id."""

    _promoted: dict[str, Promotion] = attrs.field(factory=dict)

    def promoted(self, promotion: Promotion) -> bool:
        """Remember a promotion; whether it raised what was known of that id."""
        known = self._promoted.get(promotion.server_id)
        if known is not None and known.epoch >= promotion.epoch:
            return False
        self._promoted[promotion.server_id] = promotion
        return True

    def epoch(self, server_id: str) -> int | None:
        """The epoch ``server_id`` was last seen promoted at, if ever."""
        known = self._promoted.get(server_id)
        return None if known is None else known.epoch

    def why_fenced(self, welcome: Mapping) -> str | None:
        """Why a server that sent ``welcome`` must not be used (``None``: it may)."""
        known = self._promoted.get(welcome.get("server_id"))
        if known is None:
            return None
        epoch = welcome.get("epoch")
        if type(epoch) is int and epoch >= known.epoch:
            return None
        return f"fenced: taken over by {known.backup} at epoch {known.epoch}"
