"""allq.worker's keyed puts, concurrency limits, events, interests and schedules
against real daemons (one allq-client over one allq-server)."""

import pytest

from allq.errors import BadRequest, NotFound
from allq.worker import Client

from tests.allq_daemons import fresh_tube

pytestmark = pytest.mark.integration


def test_keyed_puts_concurrency_events_and_schedules(allq_url):
    tube = fresh_tube("keys")
    with Client(allq_url) as client:
        first = client.put(tube, "rebuild", unique_key="report-7")
        again = client.put(tube, "rebuild again", unique_key="report-7")
        assert (again, first.duplicate, again.duplicate) == (first, False, True)
        # Coalesced and batched puts: each its own flag.
        futures = [client.put_async(tube, str(n), unique_key=f"k{n % 2}") for n in range(4)]
        flags = [future.result().duplicate for future in futures]
        assert flags.count(True) == 2
        ids = client.put_many([{"body": "x", "unique_key": "report-7"}, "y"], tube=tube)
        assert ids[0] == first and [i.duplicate for i in ids] == [True, False]

        sync = fresh_tube("sync")
        for n in range(3):
            client.put(sync, f"step {n}", concurrency_key="account-42")
        assert len(client.get_many(sync, 10)) == 1
        assert client.concurrency(sync, 2)["limit"] == 2
        assert len(client.get_many(sync, 10)) == 1
        with pytest.raises(BadRequest):
            client.concurrency(sync, 0)

        welcome = fresh_tube("welcome")
        client.set_interest(welcome, {"action": f"^{welcome}$"})
        assert {"tube": welcome, "interests": {"action": f"^{welcome}$"}} in [
            {"tube": entry["tube"], "interests": entry["interests"]}
            for entry in client.interests()]
        reply = client.event({"action": welcome, "userId": 42}, priority=3)
        copy = next(c for c in reply["copies"] if c["tube"] == welcome)
        job = client.get(welcome)
        assert (job.id, job.priority) == (copy["job_id"], 3)
        client.delete_interest(welcome)
        with pytest.raises(NotFound):
            client.event({"action": welcome}, unmatched="error")

        name = fresh_tube("sched")
        stored = client.schedule(name, tube, every=3600, body="sweep")
        assert stored["name"] == name and stored["next_run"] > 0
        assert name in [s["name"] for s in client.schedules()]
        with pytest.raises(BadRequest):
            client.schedule(fresh_tube("sched"), tube, cron="not a cron")
        client.delete_schedule(name)
        assert name not in [s["name"] for s in client.schedules()]
