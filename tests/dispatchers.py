"""A harness for the dispatcher's tests (``test_dispatch_*.py``).

A real :class:`~allq.core.queue.Queue` and a :class:`task.Clock`; requests are
plain decoded-JSON values, exactly what the protocol hands the dispatcher.
"""

from twisted.internet.task import Clock

from allq.core.queue import Queue, QueueConfig
from allq.server.dispatch import Dispatcher

SERVER_ID = "srv1"
T0 = 1000.0


class Harness:
    """A dispatcher over a fresh queue, plus helpers that build requests."""

    def __init__(self, config: QueueConfig = QueueConfig()) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.queue = Queue(config, started=T0)
        self.dispatcher = Dispatcher(self.queue, self.clock, lambda: SERVER_ID)
        self._next_id = 0

    def request(self, action: str, **params: object) -> dict:
        self._next_id += 1
        return {"id": self._next_id, "action": action, "params": params}

    def reply(self, action: str, **params: object) -> dict:
        request = self.request(action, **params)
        reply = self.dispatcher.handle(request)
        assert reply["id"] == request["id"]
        return reply

    def ok(self, action: str, **params: object) -> dict:
        reply = self.reply(action, **params)
        assert "error" not in reply, reply
        return reply["result"]

    def error(self, action: str, **params: object) -> dict:
        reply = self.reply(action, **params)
        assert "result" not in reply, reply
        return reply["error"]

    def put(self, body: str = "x", tube: str = "t", **params: object) -> str:
        return self.ok("put", tube=tube, body=body, **params)["job_id"]

    def put_parent(self, body: str = "p", tube: str = "t", **params: object) -> str:
        return self.ok("put_parent", tube=tube, body=body, **params)["job_id"]

    def get(self, tube: str = "t", **params: object) -> list[dict]:
        return self.ok("get", tube=tube, **params)["jobs"]

    def reserve(self, tube: str = "t") -> str:
        (job,) = self.get(tube)
        return job["job_id"]

    def tube_stats(self, tube: str = "t") -> dict:
        (stats,) = [s for s in self.ok("stats")["tubes"] if s["tube"] == tube]
        return stats

    def counts(self, tube: str = "t") -> dict:
        stats = self.tube_stats(tube)
        return {k: stats[k] for k in ("ready", "reserved", "delayed", "buried", "parents")}


def counts(**nonzero: int) -> dict:
    """The job counts of a tube, zero unless given."""
    return {"ready": 0, "reserved": 0, "delayed": 0, "buried": 0, "parents": 0, **nonzero}


def number(job_id: str) -> int:
    """The job number of one of this server's job ids."""
    server_id, _, n = job_id.partition(",")
    assert server_id == SERVER_ID
    return int(n)
