"""Membership and routing: the servers a client knows, and which one holds a job.

:class:`Membership` owns one :class:`ServerLink` per configured server (as its
child services, so they connect while it runs), in configuration order. It
answers the two questions every operation starts with: which servers are up
now, and which server a job id names (``<server_id>,<number>``, parsed by
:class:`allq.vocabulary.JobRef`). It decides nothing about placement or retries.
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
        for address in addresses:
            self.add(address)

    def links(self) -> list[ServerLink]:
        """Every configured server link, in configuration order."""
        return list(self._links.values())

    def healthy(self) -> list[ServerLink]:
        """The links with a live connection now, in configuration order."""
        return [link for link in self._links.values() if link.up]

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
        for address in list(self._links):
            if address not in wanted:
                self._links.pop(address).disownServiceParent()
                self._log.info("dropped server {address}", address=address)
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
        for link in self._links.values():
            if link.server_id == server_id:
                if not link.up:
                    raise Unavailable(f"the server holding {what} {job_id[:90]} is down "
                                      f"({link.down_reason or 'down'})")
                return link
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
        return {"servers": servers, "up": sum(s["up"] for s in servers), "total": len(servers)}

    def why_down(self) -> str:
        """Why the servers that are down are down, for an error's detail."""
        return "; ".join(f"{l.address}: {l.down_reason or 'down'}"
                         for l in self._links.values() if not l.up)
