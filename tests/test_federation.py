"""Federation: placement, search, routing, retry and failover, driven by a Clock.

Each fake server link is backed by a real queue core and dispatcher, so ids,
validation and errors are the server's own; only the network is simulated.
"""

import pytest
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from allq.client.federation import Federation
from allq.client.link import NotConnected
from allq.core.queue import Queue
from allq.errors import (
    BadRequest,
    ConnectionLost,
    NotFound,
    Timeout,
    Unavailable,
    WrongState,
    error_for_code,
)
from allq.server.dispatch import Dispatcher
from allq.wire.messages import encode_request


class FakeLink(Service):
    """A server link whose server is an in-process queue."""

    def __init__(self, address: str, clock: Clock) -> None:
        self.address = address
        self.server_id = "srv" + address.rsplit(":", 1)[1]
        self.queue = Queue()
        self.dispatcher = Dispatcher(self.queue, clock, lambda: self.server_id)
        self.up = True
        self.draining = False
        self.requests: list[tuple[str, dict]] = []
        self.lose_next = 0  # the next N requests are applied, then the reply is lost
        self.hold: Deferred | None = None  # when set, replies wait for it

    def request(self, action, params):
        if not self.up:
            return fail(NotConnected(f"{self.address} down"))
        self.requests.append((action, params))
        reply = self.dispatcher.handle(encode_request(1, action, params))
        if self.lose_next:
            self.lose_next -= 1
            self.up = False
            return fail(ConnectionLost("lost"))
        if "error" in reply:
            return fail(error_for_code(reply["error"]["code"], reply["error"]["message"]))
        return succeed(reply["result"])


@pytest.fixture
def clock():
    return Clock()


def make(clock, n=3, **kwargs):
    links = {}

    def make_link(address):
        links[address] = FakeLink(address, clock)
        return links[address]

    federation = Federation([f"127.0.0.1:{5555 + i}" for i in range(n)], make_link, clock, **kwargs)
    federation.startService()
    return federation, list(links.values())


def result(d: Deferred):
    """The result of an already-fired Deferred (or raise its failure)."""
    outcome = []
    d.addBoth(outcome.append)
    assert outcome, "Deferred has not fired"
    if hasattr(outcome[0], "raiseException"):
        outcome[0].raiseException()
    return outcome[0]


def run(coroutine):
    return Deferred.fromCoroutine(coroutine)


def test_put_round_robins_over_healthy_servers(clock):
    """Puts spread evenly over the servers that are up."""
    federation, links = make(clock)
    for _ in range(9):
        result(run(federation.put("t", "x")))
    assert [len(l.queue) for l in links] == [3, 3, 3]


def test_put_skips_down_and_draining_servers(clock):
    """A down or draining server gets no new jobs."""
    federation, links = make(clock)
    links[0].up = False
    federation.drain(links[1].server_id)
    for _ in range(4):
        job_id = result(run(federation.put("t", "x")))
        assert job_id.startswith(links[2].server_id + ",")
    assert federation.health()["servers"][1]["draining"] is True


def test_put_with_no_server_fails_after_the_retry_budget(clock):
    """With every server down a put retries with backoff, then fails Unavailable."""
    federation, links = make(clock, retry_budget=2.0)
    for link in links:
        link.up = False
    d = run(federation.put("t", "x"))
    assert not d.called
    clock.advance(1.0)
    links[1].up = True
    clock.pump([0.1] * 20)
    assert result(d).startswith(links[1].server_id)
    for link in links:
        link.up = False
    d = run(federation.put("t", "x"))
    clock.pump([0.1] * 25)
    with pytest.raises(Unavailable):
        result(d)
    assert clock.getDelayedCalls() == []


def test_put_after_ambiguous_loss_retries_same_server_without_duplicate(clock):
    """A put whose reply was lost is retried on the same server with the same key."""
    federation, links = make(clock, n=1)
    link = links[0]
    link.lose_next = 1
    d = run(federation.put("t", "x"))
    assert not d.called and len(link.queue) == 1
    link.up = True
    clock.pump([0.05] * 5)
    job_id = result(d)
    assert len(link.queue) == 1
    keys = {params["idempotency_key"] for action, params in link.requests}
    assert len(keys) == 1 and job_id == f"{link.server_id},{next(iter(link.queue._jobs))}"


def test_put_fails_over_when_the_unsure_server_stays_down(clock):
    """While the server that may hold the job stays down, the put goes elsewhere."""
    federation, links = make(clock, n=2)
    first = links[federation._round_robin ^ 1]  # the server the next put picks
    first.lose_next = 1
    d = run(federation.put("t", "x"))
    clock.pump([0.05] * 5)
    other = links[0] if first is links[1] else links[1]
    assert result(d).startswith(other.server_id)


def test_put_rejects_bad_input_without_retrying(clock):
    """A server-side validation error is reported at once, not retried."""
    federation, links = make(clock)
    with pytest.raises(BadRequest):
        result(run(federation.put("t", "x", priority=-1)))
    with pytest.raises(BadRequest):
        result(run(federation.put("bad tube", "x")))
    assert clock.getDelayedCalls() == []


def test_get_finds_a_job_on_any_server(clock):
    """One get finds the only job wherever it is; [] when every server is empty."""
    federation, links = make(clock)
    links[2].queue.put("t", "only", now=0)
    for _ in range(5):
        [job] = result(run(federation.get("t")))
        assert job["body"] == "only"
        result(run(federation.job_action("release", job["job_id"])))
    assert result(run(federation.get("nothing"))) == []


def test_get_count_collects_across_servers(clock):
    """count=N gathers jobs from several servers until N are found."""
    federation, links = make(clock)
    for link in links:
        link.queue.put("t", link.address, now=0)
    jobs = result(run(federation.get("t", count=10)))
    assert sorted(j["body"] for j in jobs) == sorted(l.address for l in links)


def test_get_when_no_server_answers_is_unavailable(clock):
    """With every server down a get fails with Unavailable after the budget."""
    federation, links = make(clock, retry_budget=1.0)
    for link in links:
        link.up = False
    d = run(federation.get("t"))
    clock.pump([0.1] * 15)
    with pytest.raises(Unavailable):
        result(d)


def test_long_poll_answers_when_a_job_arrives(clock):
    """get with wait answers as soon as a job is ready, and [] after the wait."""
    federation, links = make(clock)
    d = run(federation.get("t", wait=5))
    clock.advance(1)
    assert not d.called
    links[1].queue.put("t", "late", now=clock.seconds())
    clock.pump([0.5] * 2)
    assert [j["body"] for j in result(d)] == ["late"]
    d = run(federation.get("t", wait=2))
    clock.pump([0.25] * 7)
    assert not d.called
    clock.pump([0.25] * 2)
    assert result(d) == []
    assert clock.getDelayedCalls() == []


def test_long_poll_is_woken_by_a_put_through_this_client(clock):
    """A put through the same client wakes the tube's poller at once."""
    federation, links = make(clock)
    d = run(federation.get("t", wait=30))
    clock.pump([0.3] * 10)  # the poll interval has backed off
    result(run(federation.put("t", "now")))
    clock.advance(0)
    assert [j["body"] for j in result(d)] == ["now"]


def test_many_waiters_share_one_poller(clock):
    """1,000 waiting callers cause one get per server per poll, not 1,000."""
    federation, links = make(clock)
    waiting = [run(federation.get("t", wait=10)) for _ in range(1000)]
    for link in links:
        link.requests.clear()
    clock.pump([0.5] * 4)
    gets = sum(1 for l in links for action, _ in l.requests if action == "get")
    assert gets <= 3 * 6
    for i in range(1000):
        links[i % 3].queue.put("t", str(i), now=clock.seconds())
    clock.pump([0.5] * 3)
    bodies = [j["body"] for d in waiting for j in result(d)]
    assert sorted(bodies, key=int) == [str(i) for i in range(1000)]


def test_job_operations_route_by_id(clock):
    """done/touch/bury/kick go to the server the id names."""
    federation, links = make(clock)
    links[1].queue.put("t", "x", now=0)
    [job] = result(run(federation.get("t")))
    assert job["job_id"].startswith(links[1].server_id + ",")
    result(run(federation.job_action("touch", job["job_id"])))
    result(run(federation.job_action("bury", job["job_id"])))
    assert result(run(federation.kick_tube("t", 5))) == [job["job_id"]]
    [job] = result(run(federation.get("t")))
    result(run(federation.job_action("done", job["job_id"])))
    assert len(links[1].queue) == 0
    assert all(action != "done" for l in (links[0], links[2]) for action, _ in l.requests)


def test_job_operation_errors(clock):
    """Unknown server ids, malformed ids, wrong states and down servers are told apart."""
    federation, links = make(clock)
    with pytest.raises(NotFound):
        result(run(federation.job_action("done", "nosuch,1")))
    with pytest.raises(BadRequest):
        result(run(federation.job_action("done", "garbage")))
    job_id = result(run(federation.put("t", "x")))
    with pytest.raises(WrongState):
        result(run(federation.job_action("touch", job_id)))
    owner = next(l for l in links if job_id.startswith(l.server_id + ","))
    owner.up = False
    with pytest.raises(Unavailable):
        result(run(federation.job_action("done", job_id)))
    assert clock.getDelayedCalls() == []


def test_stats_clear_and_peek_fan_out(clock):
    """stats lists each reachable server; clear sums; peek walks servers by offset."""
    federation, links = make(clock)
    for i, link in enumerate(links):
        for j in range(2):
            link.queue.put("t", f"{i}-{j}", now=0)
    links[0].up = False
    stats = result(run(federation.stats()))
    assert sorted(s["address"] for s in stats) == sorted(l.address for l in links[1:])
    ordered = sorted(links[1:], key=lambda l: l.server_id)
    bodies = [result(run(federation.peek("t", offset=k)))["body"] for k in range(4)]
    assert bodies == [f"{links.index(l)}-{j}" for l in ordered for j in range(2)]
    assert result(run(federation.peek("t", offset=4))) is None
    assert result(run(federation.clear("t"))) == 4


def test_membership_changes(clock):
    """add_server, update_servers and drain change the set; bad addresses are refused."""
    federation, links = make(clock, n=1)
    federation.add_server("127.0.0.1:6000")
    federation.add_server("127.0.0.1:6000")
    assert [s["address"] for s in federation.health()["servers"]] == [
        "127.0.0.1:5555", "127.0.0.1:6000"]
    federation.update_servers(["127.0.0.1:6000", "[::1]:7000"])
    assert [s["address"] for s in federation.health()["servers"]] == [
        "127.0.0.1:6000", "[::1]:7000"]
    for bad in (["nope"], [], ["h:0"], ["h:99999"]):
        with pytest.raises(BadRequest):
            federation.update_servers(bad)
    with pytest.raises(NotFound):
        federation.drain("unknown")


def test_stop_cancels_every_pending_timer(clock):
    """Stopping the client answers waiters with [] and leaves no delayed calls."""
    federation, links = make(clock)
    waiting = run(federation.get("t", wait=30))
    for link in links:
        link.up = False
    putting = run(federation.put("t", "x"))
    clock.advance(0.2)
    federation.stopService()
    assert result(waiting) == []
    with pytest.raises(Unavailable):
        result(putting)
    clock.advance(1)
    assert clock.getDelayedCalls() == []
