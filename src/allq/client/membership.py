"""Membership and routing: the servers a client knows, and which one holds a job.

:class:`Membership` owns one :class:`ServerLink` per configured server (as its
child services, so they connect while it runs), in configuration order. It
answers the two questions every operation starts with: which servers are up
now, and which server a job id names (``<server_id>,<number>``, parsed by
:class:`allq.vocabulary.JobRef`). It decides nothing about placement or retries.

Beside them it holds the *replica links* :mod:`allq.client.failover` adds: a
link to a backup acting for a failed primary's server id (``serve_as``). They
share their backup's address, so they are kept by the primary's id, apart from
the configured links: :meth:`links` and :meth:`healthy` are the configured
servers (placement, keys, tube settings), ``healthy(replicas=True)`` adds the
replica links (gets, stats, peeks, kicks, clears), and :meth:`holder` answers a
job id with whichever link is up for its server id.
"""

from collections.abc import Callable, Iterable

from twisted.application.service import MultiService
from twisted.logger import Logger

from allq.client.link import ServerLink, normalize_address
from allq.errors import BadRequest, NotFound, Unavailable
from allq.vocabulary import JobRef


class Membership(MultiService):
    """The configured servers.

    :param addresses: ``host:port`` of each server; none only while servers are
        still to be discovered (:mod:`allq.client.discovery`): until then every
        operation is :class:`Unavailable`, as with every server down.
    :param make_link: builds the :class:`ServerLink` (or a test double) for an address.
    """

    _log = Logger()

    def __init__(self, addresses: Iterable[str],
                 make_link: Callable[[str], ServerLink]) -> None:
        super().__init__()
        self._make_link = make_link
        self._links: dict[str, ServerLink] = {}
        #: Replica links by the primary server id they act for.
        self._replicas: dict[str, ServerLink] = {}
        #: Whether a failover service watches these links (set by it): a put of
        #: unknown outcome then waits for a server's backup (:meth:`backed_up`).
        self.failing_over = False
        for address in addresses:
            self.add(address)

    def links(self) -> list[ServerLink]:
        """Every configured server link, in configuration order."""
        return list(self._links.values())

    def healthy(self, replicas: bool = False) -> list[ServerLink]:
        """The links with a live connection now, in configuration order; with
        ``replicas``, the replica links up after them."""
        links = [link for link in self._links.values() if link.up]
        if replicas:
            links += [link for link in self._replicas.values() if link.up]
        return links

    def replica_links(self) -> list[ServerLink]:
        """The replica links, in the order they were added."""
        return list(self._replicas.values())

    def add_replica(self, link: ServerLink) -> ServerLink:
        """Start using a replica link (``link.serving_as`` is the primary's id);
        the one already there for that id, if any, is kept and returned."""
        known = self._replicas.get(link.serving_as)
        if known is not None:
            return known
        self._replicas[link.serving_as] = link
        link.setServiceParent(self)
        self._log.info("serving {server_id} through its backup at {address}",
                       server_id=link.serving_as, address=link.address)
        return link

    def serving(self, server_id: str | None) -> ServerLink | None:
        """The live link acting for ``server_id`` (its own, else its replica link)."""
        for link in self._acting_for(server_id):
            if link.up:
                return link
        return None

    def backed_up(self, link: ServerLink) -> bool:
        """Whether a failover may bring ``link``'s server id back on its backup: the
        welcome named one, and a failover service watches."""
        return self.failing_over and (link.serving_as is not None
                                      or link.backup_address is not None)

    def _acting_for(self, server_id: str | None) -> list[ServerLink]:
        links = [link for link in self._links.values() if link.server_id == server_id]
        replica = self._replicas.get(server_id)
        return links if replica is None else links + [replica]

    def add(self, address: str) -> None:
        """Start using one more server (no-op if already known)."""
        address = normalize_address(address)
        if address in self._links:
            return
        link = self._make_link(address)
        self._links[link.address] = link
        link.setServiceParent(self)
        self._log.info("using server {address}", address=link.address)

    def update(self, addresses: list[str]) -> None:
        """Replace the set of servers: new ones are added, missing ones dropped."""
        if not addresses:
            raise BadRequest("server_urls must name at least one host:port")
        wanted = dict.fromkeys(normalize_address(address) for address in addresses)
        removed = set(self._links) - set(wanted)
        for address in list(self._links):
            if address not in wanted:
                self._links.pop(address).disownServiceParent()
                self._log.info("dropped server {address}", address=address)
        for server_id, link in list(self._replicas.items()):
            if link.address in removed:  # its backup is no longer one of ours
                self._replicas.pop(server_id).disownServiceParent()
        for address in wanted:
            self.add(address)

    def find(self, server: str) -> ServerLink:
        """The link of a server named by its id or its ``host:port``.

        :raises NotFound: no such server in this client.
        """
        for link in self._links.values():
            if server in (link.server_id, link.address):
                return link
        raise NotFound(f"no server {server[:80]!r} in this client")

    def holder(self, job_id: str, what: str = "job") -> ServerLink:
        """The live link to the server a job id names.

        :param what: what the id is called in errors (``job``, ``parent``).
        :raises BadRequest: not a job id.
        :raises Unavailable: that server is down, or not every server has said
            its id yet (the job may be on one that has not).
        :raises NotFound: no server here has that id.
        """
        server_id = JobRef.parse(job_id, f"{what} id").server_id
        links = self._acting_for(server_id)
        for link in links:
            if link.up:
                return link
        if links:
            link = links[-1]  # its replica link, once there is one
            raise Unavailable(f"the server holding {what} {job_id[:90]} is down "
                              f"({link.down_reason or 'down'})")
        if not self._links or any(link.server_id is None for link in self._links.values()):
            raise Unavailable(f"the server holding {what} {job_id[:90]} is not connected")
        raise NotFound(f"{what} {job_id[:90]} names server {server_id[:64]!r}, unknown here")

    def health(self) -> dict:
        """Which servers are up (and why the others are not), for ``GET /health``."""
        servers = []
        for l in self._links.values():
            server = {"address": l.address, "server_id": l.server_id, "up": l.up,
                      "draining": l.draining}
            if not l.up:
                server["reason"] = l.down_reason
            elif l.disk_full:
                server["disk_full"] = True  # read-only: it takes no new jobs
            servers.append(server)
        report = {"servers": servers, "up": sum(s["up"] for s in servers),
                  "total": len(servers)}
        if self._replicas:
            report["replica_links"] = [_replica_health(l) for l in self._replicas.values()]
        return report

    def why_down(self) -> str:
        """Why the servers that are down are down, for an error's detail."""
        return "; ".join(f"{l.address}: {l.down_reason or 'down'}"
                         for l in self._links.values() if not l.up)


def _replica_health(link: ServerLink) -> dict:
    """A replica link in ``/health``: the primary's id, served by its backup."""
    entry = {"server_id": link.serving_as, "served_by": link.welcome.get("server_id"),
             "address": link.address, "epoch": link.epoch, "up": link.up, "draining": True}
    if not link.up:
        entry["reason"] = link.down_reason
    return entry
