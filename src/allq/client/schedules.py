"""Where a recurring schedule lives: one server, chosen by the schedule's name.

A schedule must fire once per firing however many clients there are, so it lives
on exactly one server, which fires it from its own clock
(:mod:`allq.server.schedules`). Every client picks that server the same way:
rendezvous hashing of the name over the server ids (the server whose
``sha256(server_id + "\\n" + name)`` is highest). Adding or removing a server moves
only the schedules that rank it first, and every client computes the same owner
from the same servers.

* Creating (or replacing) needs every server's id (a server never connected since
  this client started has none yet) and the owner up; otherwise it is
  :class:`Unavailable` (503): placing it on another server would fire it twice once
  the owner is back. After the owner stored it, the name is removed from the other
  reachable servers, so a schedule created before the set of servers changed does
  not go on firing where it used to live.
* While its server is down a schedule does not fire; when the server is back it
  applies the schedule's missed-firing policy (``once`` or ``skip``,
  :mod:`allq.core.schedules`).
* Listing, pausing, resuming and removing ask every reachable server (a schedule
  stays where it was created even if the servers changed since).
"""

import hashlib

from twisted.internet.defer import DeferredList

from allq.client.link import ServerLink
from allq.client.membership import Membership
from allq.errors import NotFound, Unavailable


def owner(name: str, links: list[ServerLink]) -> ServerLink:
    """The server a schedule named ``name`` lives on (every link has a server id)."""
    def rank(link: ServerLink) -> bytes:
        return hashlib.sha256(f"{link.server_id}\n{name}".encode()).digest()

    return max(links, key=rank)


class ScheduleRouter:
    """The federation's schedule operations.

    :param servers: the client's servers.
    """

    def __init__(self, servers: Membership) -> None:
        self._servers = servers

    def _owner(self, name: str) -> ServerLink:
        links = self._servers.links()
        if not links:
            raise Unavailable("no server is configured")
        unknown = [link.address for link in links if link.server_id is None]
        if unknown:
            raise Unavailable(
                f"cannot place schedule {name!r}: servers {', '.join(unknown)} have not "
                "connected yet, and any of them may be its server")
        link = owner(name, links)
        if not link.up:
            raise Unavailable(
                f"schedule {name!r} lives on server {link.server_id} ({link.address}), "
                f"which is down ({link.down_reason or 'down'})")
        return link

    async def add(self, params: dict) -> dict:
        """Create or replace a schedule on its server; its description, with the
        server's id and address."""
        name = params["name"]
        link = self._owner(name)
        result = await link.request("schedule_add", params)
        others = [other for other in self._servers.healthy() if other is not link]
        if others:
            await DeferredList([other.request("schedule_remove", {"name": name})
                                for other in others], consumeErrors=True)
        return _placed(result["schedule"], link)

    async def list(self) -> list[dict]:
        """Every schedule of every reachable server, by name.

        :raises Unavailable: no server is reachable.
        """
        answers = await self._ask("schedule_list", {})
        schedules = [_placed(schedule, link)
                     for link, result in answers for schedule in result["schedules"]]
        return sorted(schedules, key=lambda schedule: (schedule["name"], schedule["server_id"]))

    async def act(self, action: str, name: str) -> dict:
        """Pause, resume or remove a schedule (``action``: ``schedule_pause``,
        ``schedule_resume``, ``schedule_remove``) wherever it is.

        :raises NotFound: no reachable server has it (all of them up).
        :raises Unavailable: none that answered has it, and some server is down.
        """
        answers = await self._ask(action, {"name": name}, not_found_ok=True)
        for link, result in answers:
            if result is not None:
                return _placed(result.get("schedule", result), link)
        down = self._servers.why_down()
        if down:
            raise Unavailable(f"no reachable server has schedule {name!r}; it may be on "
                              f"one that is down ({down})")
        raise NotFound(f"no schedule named {name!r}")

    async def _ask(self, action: str, params: dict, not_found_ok: bool = False) -> list:
        links = self._servers.healthy()
        if not links:
            raise Unavailable(f"no server reachable ({self._servers.why_down()})")
        outcomes = await DeferredList([link.request(action, params) for link in links],
                                      consumeErrors=True)
        answers = []
        for link, (ok, value) in zip(links, outcomes):
            if ok:
                answers.append((link, value))
            elif not_found_ok and value.check(NotFound):
                answers.append((link, None))
            elif not value.check(Unavailable):
                value.raiseException()
        if not answers:
            raise Unavailable("no server answered")
        return answers


def _placed(schedule: dict, link: ServerLink) -> dict:
    return {**schedule, "server_id": link.server_id, "server": link.address}
