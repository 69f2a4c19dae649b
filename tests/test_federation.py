"""Federation: placement, search, routing, retry and failover, driven by a Clock.

Each server link is a :class:`memory_servers.MemoryLink`, backed by a real queue
core and dispatcher, so ids, validation and errors are the server's own; only
the network is simulated.
"""

import pytest
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock

from allq.errors import (
    BadRequest,
    ConnectionLost,
    Draining,
    NotFound,
    QueueFull,
    Unavailable,
    WrongState,
)

from allq.client import federation as federation_module
from allq.client.link import NotConnected
from allq.client.observers import FederationObserver
from memory_servers import local_addresses, start_federation


class Recorder(FederationObserver):
    """An observer that keeps the retries it is told of."""

    def __init__(self):
        self.retries = []

    def retried(self, operation, address):
        self.retries.append((operation, address))


@pytest.fixture
def clock():
    return Clock()


def make(clock, n=3, **kwargs):
    """A started federation over ``n`` in-memory servers (ports 5555, 5556, ...)."""
    return start_federation(clock, local_addresses(n, 5555), **kwargs)


def result(d: Deferred):
    """The result of an already-fired Deferred (or raise its failure)."""
    outcome = []
    d.addBoth(outcome.append)
    assert outcome, "Deferred has not fired"
    if hasattr(outcome[0], "raiseException"):
        outcome[0].raiseException()
    return outcome[0]


def run(call):
    """A federation call (a coroutine, or a Deferred on the hot paths) as a Deferred."""
    return call if isinstance(call, Deferred) else Deferred.fromCoroutine(call)


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
    assert result(run(federation.drain_server(links[1].server_id))) is True
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
    first = links[federation._placement._round_robin ^ 1]  # the server the next put picks
    first.lose_next = 1
    d = run(federation.put("t", "x"))
    clock.pump([0.05] * 5)
    other = links[0] if first is links[1] else links[1]
    assert result(d).startswith(other.server_id)


def test_put_not_sent_goes_to_the_next_server_at_once(clock):
    """A put whose first server turned out not connected (nothing sent) goes to the
    next candidate in the same round: no backoff, no retry reported."""
    federation, links = make(clock, n=2)
    observer = Recorder()
    federation.observe(observer)
    first = links[(federation._placement._round_robin + 1) % 2]  # the next put's first pick
    other = links[0] if first is links[1] else links[1]
    first.fail_next(NotConnected("not connected"))
    assert owner(links, result(run(federation.put("t", "x")))) is other
    assert observer.retries == [] and clock.getDelayedCalls() == []


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
        assert job.body == "only"
        result(run(federation.job_action("release", job.job_id)))
    assert result(run(federation.get("nothing"))) == []


def test_get_count_collects_across_servers(clock):
    """count=N gathers jobs from several servers until N are found."""
    federation, links = make(clock)
    for link in links:
        link.queue.put("t", link.address, now=0)
    jobs = result(run(federation.get("t", count=10)))
    assert sorted(j.body for j in jobs) == sorted(l.address for l in links)


def test_get_when_no_server_answers_is_unavailable(clock):
    """With every server down a get fails with Unavailable after the budget."""
    federation, links = make(clock, retry_budget=1.0)
    for link in links:
        link.up = False
    d = run(federation.get("t"))
    clock.pump([0.1] * 15)
    with pytest.raises(Unavailable):
        result(d)


def test_get_goes_on_past_servers_that_fail(clock, monkeypatch):
    """The first server asked fails, then the next one: the same call finds the job
    on the third, without a backoff. (The random order is fixed here: the
    configured one.)"""
    monkeypatch.setattr(federation_module.random, "randrange", lambda n: 0)
    monkeypatch.setattr(federation_module.random, "shuffle", lambda links: None)
    federation, links = make(clock)
    observer = Recorder()
    federation.observe(observer)
    links[2].queue.put("t", "here", now=0)
    links[0].fail_next(ConnectionLost("lost"))
    links[1].fail_next(ConnectionLost("lost"))
    [job] = result(run(federation.get("t")))
    assert job.body == "here"
    assert sorted(observer.retries) == [("get", links[0].address), ("get", links[1].address)]
    assert clock.getDelayedCalls() == []


def test_cancelling_a_get_or_put_cancels_its_server_request(clock):
    """A caller giving up (the REST bound) cancels the request waiting on the server."""
    federation, links = make(clock, n=1)
    links[0].hang = True
    for d in (run(federation.get("t")), run(federation.put("t", "x"))):
        assert not d.called
        d.cancel()
        with pytest.raises(CancelledError):
            result(d)
    assert links[0].hung == []


def test_long_poll_answers_when_a_job_arrives(clock):
    """get with wait answers as soon as a job is ready, and [] after the wait."""
    federation, links = make(clock)
    d = run(federation.get("t", wait=5))
    clock.advance(1)
    assert not d.called
    links[1].queue.put("t", "late", now=clock.seconds())
    clock.pump([0.5] * 2)
    assert [j.body for j in result(d)] == ["late"]
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
    assert [j.body for j in result(d)] == ["now"]


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
    bodies = [j.body for d in waiting for j in result(d)]
    assert sorted(bodies, key=int) == [str(i) for i in range(1000)]


def test_job_operations_route_by_id(clock):
    """done/touch/bury/kick go to the server the id names."""
    federation, links = make(clock)
    links[1].queue.put("t", "x", now=0)
    [job] = result(run(federation.get("t")))
    assert job.job_id.startswith(links[1].server_id + ",")
    result(run(federation.job_action("touch", job.job_id)))
    result(run(federation.job_action("bury", job.job_id)))
    assert result(run(federation.kick_tube("t", 5))) == [job.job_id]
    [job] = result(run(federation.get("t")))
    result(run(federation.job_action("done", job.job_id)))
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
    assert sorted(s.address for s in stats) == sorted(l.address for l in links[1:])
    ordered = sorted(links[1:], key=lambda l: l.server_id)
    bodies = [result(run(federation.peek("t", offset=k))).body for k in range(4)]
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
        result(run(federation.drain_server("unknown")))


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


# -- tube settings, refusals, workflows ---------------------------------------------


def owner(links, job_id):
    """The in-memory server link holding a job id."""
    return next(l for l in links if job_id.startswith(l.server_id + ","))


def test_throttle_is_split_over_the_healthy_servers(clock):
    """tps 1 over 3 servers gives each 1/3 (no truncation to 0); the shares sum to tps;
    a down server gets none and the others share it all; None removes the cap."""
    federation, links = make(clock)
    assert result(run(federation.throttle("t", 1))) == 3
    rates = [l.queue.tube("t").throttle.rate for l in links]
    assert rates == [pytest.approx(1 / 3)] * 3
    assert sum(rates) == pytest.approx(1)
    links[2].up = False
    assert result(run(federation.throttle("t", 5))) == 2
    assert [l.queue.tube("t").throttle.rate for l in links[:2]] == [2.5, 2.5]
    links[2].up = True
    assert result(run(federation.throttle("t", None))) == 3
    assert all(l.queue.tube("t").throttle is None for l in links)
    with pytest.raises(BadRequest):
        result(run(federation.throttle("t", float("nan"))))


def test_throttled_federation_hands_out_at_most_tps(clock):
    """With tps 3 over 3 servers, 10 seconds of tight polling yield about 30 jobs, not 300."""
    federation, links = make(clock)
    for link in links:
        for n in range(100):
            link.queue.put("t", str(n), now=0)
    result(run(federation.throttle("t", 3)))
    got = 0
    for _ in range(100):
        got += len(result(run(federation.get("t", count=10))))
        clock.advance(0.1)
    assert 3 * 10 <= got <= 3 * 10 + 3  # the buckets start full: one job each


def test_pause_is_broadcast(clock):
    """pause reaches every healthy server (AllQueue: one random server); unpause too."""
    federation, links = make(clock)
    for link in links:
        link.queue.put("t", "x", now=0)
    assert result(run(federation.pause("t"))) == 3
    assert all(l.queue.tube("t").paused for l in links)
    assert result(run(federation.get("t", count=10))) == []
    assert result(run(federation.pause("t", False))) == 3
    assert len(result(run(federation.get("t", count=10)))) == 3


def test_tube_settings_are_broadcast(clock):
    """drain_tube, fair and max_size reach every healthy server; bad values are refused."""
    federation, links = make(clock)
    links[0].up = False
    assert result(run(federation.drain_tube("t"))) == 2
    assert [l.queue.tube("t") and l.queue.tube("t").draining for l in links[1:]] == [True] * 2
    assert result(run(federation.max_size("t", 7))) == 2
    assert [l.queue.tube("t").max_size for l in links[1:]] == [7, 7]
    assert result(run(federation.fair("fq-x", "off"))) == 2
    assert [l.queue.tube("fq-x").fair_policy for l in links[1:]] == [None, None]
    with pytest.raises(BadRequest):
        result(run(federation.fair("t", "lottery")))
    for link in links:
        link.up = False
    with pytest.raises(Unavailable):
        result(run(federation.pause("t")))


def test_put_skips_draining_and_full_servers(clock):
    """A server answering draining or full did not store the job: the next one gets it."""
    federation, links = make(clock)
    links[0].queue.set_tube_draining("t", True)
    links[1].queue.set_max_size("t", 1)
    links[1].queue.put("t", "filler", now=0)
    for _ in range(6):
        assert owner(links, result(run(federation.put("t", "x")))) is links[2]
    assert (len(links[0].queue), len(links[1].queue), len(links[2].queue)) == (0, 1, 6)
    assert clock.getDelayedCalls() == []


def test_put_refused_by_every_server(clock):
    """When every reachable server refuses: all draining → Draining; any full → QueueFull;
    answered at once, without waiting for the retry budget."""
    federation, links = make(clock)
    for link in links:
        link.queue.set_tube_draining("t", True)
    with pytest.raises(Draining):
        result(run(federation.put("t", "x")))
    links[2].queue.set_tube_draining("t", False)
    links[2].queue.set_max_size("t", 1)
    result(run(federation.put("t", "x")))
    with pytest.raises(QueueFull):
        result(run(federation.put("t", "x")))
    links[0].up = False
    with pytest.raises(QueueFull):
        result(run(federation.put("t", "x")))
    assert sum(len(l.queue) for l in links) == 1
    assert clock.getDelayedCalls() == []


def test_put_when_this_client_drains_every_server(clock):
    """With every reachable server drained by this client a put answers Draining at once."""
    federation, links = make(clock, n=2)
    for link in links:
        result(run(federation.drain_server(link.address)))
    with pytest.raises(Draining):
        result(run(federation.put("t", "x")))
    assert clock.getDelayedCalls() == []


def test_server_drain_tells_the_server(clock):
    """drain_server stops this client's puts there and drains the server itself;
    undrain_server undoes both; a down server is not told (False)."""
    federation, links = make(clock)
    links[0].queue.put("t", "held", now=0)
    assert result(run(federation.drain_server(links[0].server_id))) is True
    assert links[0].draining and links[0].queue.draining
    for _ in range(3):
        assert owner(links, result(run(federation.put("t", "x")))) is not links[0]
    with pytest.raises(Draining):  # what another client's put meets there
        result(links[0].request("put", {"tube": "t", "body": "x"}))
    held = result(links[0].request("get", {"tube": "t"}))["jobs"]
    assert [j["body"] for j in held] == ["held"]  # a drained server still hands out
    assert result(run(federation.drain_server(links[0].address, False))) is True
    assert not links[0].draining and not links[0].queue.draining
    links[1].up = False
    assert result(run(federation.drain_server(links[1].server_id))) is False
    assert links[1].draining


def test_children_go_to_their_parents_server(clock):
    """A parent is placed round robin; its children all go to its server, and the
    parent becomes ready when both are done."""
    federation, links = make(clock)
    parent = result(run(federation.put_parent("flow", "p", limit=2)))
    home = owner(links, parent)
    children = [result(run(federation.put("work", f"c{n}", parent_id=parent)))
                for n in range(2)]
    assert all(owner(links, c) is home for c in children)
    assert result(run(federation.get("flow", count=10))) == []
    for _ in children:
        [job] = result(run(federation.get("work")))
        result(run(federation.job_action("done", job.job_id)))
    [job] = result(run(federation.get("flow")))
    assert job.job_id == parent


def test_nested_parent_and_set_children_started(clock):
    """A parent with parent_id goes to that parent's server; set_children_started
    routes by id."""
    federation, links = make(clock)
    outer = result(run(federation.put_parent("flow", "outer")))
    inner = result(run(federation.put_parent("flow", "inner", parent_id=outer, limit=0)))
    assert owner(links, inner) is owner(links, outer)
    assert result(run(federation.job_action("set_children_started", outer))) == outer


def test_child_of_a_missing_or_unreachable_parent(clock):
    """A missing parent is NotFound and nothing is stored; a parent on a down server
    answers Unavailable at once, with no failover."""
    federation, links = make(clock)
    with pytest.raises(NotFound):
        result(run(federation.put("work", "c", parent_id=f"{links[0].server_id},999")))
    with pytest.raises(NotFound):
        result(run(federation.put("work", "c", parent_id="nosuchserver,1")))
    parent = result(run(federation.put_parent("flow", "p", limit=1)))
    home = owner(links, parent)
    home.up = False
    with pytest.raises(Unavailable):
        result(run(federation.put("work", "c", parent_id=parent)))
    assert sum(len(l.queue) for l in links) == 1  # only the parent
    assert clock.getDelayedCalls() == []


def test_child_put_with_lost_reply_retries_on_the_parents_server(clock):
    """A child put whose reply was lost is retried on the parent's server only, once
    it is back, with the same idempotency key (no duplicate)."""
    federation, links = make(clock)
    parent = result(run(federation.put_parent("flow", "p", limit=1)))
    home = owner(links, parent)
    home.lose_next = 1
    d = run(federation.put("work", "c", parent_id=parent))
    assert not d.called
    clock.advance(0.1)
    home.up = True
    clock.pump([0.1] * 5)
    child = result(d)
    assert owner(links, child) is home and len(home.queue) == 2
    others = [l for l in links if l is not home]
    assert all(len(l.queue) == 0 for l in others)


def test_run_at_and_shard_key_reach_the_server(clock):
    """run_at delays a job until that unix time; a fair tube needs a shard_key."""
    clock.advance(1000)
    federation, links = make(clock, n=1)
    result(run(federation.put("t", "later", run_at=1010)))
    assert result(run(federation.get("t"))) == []
    clock.advance(10)
    links[0].queue.expire(clock.seconds())
    assert [j.body for j in result(run(federation.get("t")))] == ["later"]
    with pytest.raises(BadRequest):
        result(run(federation.put("fq-t", "x")))
    result(run(federation.put("fq-t", "x", shard_key="a")))


class StubConnection:
    """Just enough of a ServerConnection for ServerLink's prepareConnection hook."""

    def __init__(self, server_id: str) -> None:
        self.server_id = server_id
        self.welcome = {"server_id": server_id}
        self.closed = False
        self.ready = succeed(self)
        self.lost = Deferred()
        self.requests: list[tuple[str, dict]] = []

    def request(self, action, params):
        self.requests.append((action, params))
        return succeed({"draining": action == "drain"})

    def close(self):
        self.closed = True


def test_link_tells_a_wanted_drain_on_every_connection():
    """A drain asked while the server was down is sent when it connects, and again on
    each reconnect (a restarted server may have lost it); an acknowledged undrain is
    not repeated."""
    from nacl.public import PrivateKey
    from twisted.internet.testing import MemoryReactorClock

    from allq.client.link import ServerLink
    from allq.wire.keys import ClientKeys

    link = ServerLink("127.0.0.1:5555", ClientKeys(PrivateKey.generate(),
                                                   PrivateKey.generate().public_key),
                      MemoryReactorClock(), request_timeout=1)
    assert result(link.tell_draining(True)) is False  # not connected: told later
    first = StubConnection("srv")
    result(link._handshake(first))
    assert link.up and first.requests == [("drain", {})]
    first.closed = True
    second = StubConnection("srv")
    result(link._handshake(second))
    assert second.requests == [("drain", {})]
    assert result(link.tell_draining(False)) is True
    assert second.requests[-1] == ("undrain", {})
    second.closed = True
    third = StubConnection("srv")
    result(link._handshake(third))
    assert third.requests == []


# -- batches -----------------------------------------------------------------------


def jobs(n, tube="t", **fields):
    return [{"tube": tube, "body": f"job {i}", **fields} for i in range(n)]


def test_put_many_sends_one_frame_per_server_in_contiguous_slices(clock):
    federation, links = make(clock)
    outcomes = result(run(federation.put_many(jobs(10))))
    assert len(set(outcomes)) == 10
    owners = [owner(links, job_id) for job_id in outcomes]
    # contiguous: each server's jobs form one run, and every server got one frame
    runs = [owners[0]] + [b for a, b in zip(owners, owners[1:]) if a is not b]
    assert len(runs) == 3 and set(runs) == set(links)
    assert sorted(len(l.queue) for l in links) == [3, 3, 4]
    assert [l.frames for l in links] == [1, 1, 1]
    got = result(run(federation.get("t", count=10)))
    assert sorted(job.body for job in got) == sorted(f"job {i}" for i in range(10))


def test_put_many_after_a_lost_frame_retries_each_job_without_duplicates(clock):
    """The frame's reply was lost: each job is retried on that server with its key."""
    federation, links = make(clock, n=1)
    link = links[0]
    link.lose_next = 1
    d = run(federation.put_many(jobs(5)))
    assert not d.called and len(link.queue) == 5
    link.up = True
    clock.pump([0.05] * 10)
    outcomes = result(d)
    assert len(set(outcomes)) == 5 and len(link.queue) == 5
    assert clock.getDelayedCalls() == []


def test_put_many_moves_refused_jobs_to_other_servers(clock):
    federation, links = make(clock)
    links[0].queue.set_tube_draining("t", True)
    links[1].queue.set_max_size("t", 1)
    outcomes = result(run(federation.put_many(jobs(9))))
    assert all(isinstance(o, str) for o in outcomes)
    assert len(links[0].queue) == 0 and len(links[1].queue) == 1
    assert len(links[2].queue) == 8


def test_put_many_reports_each_jobs_own_error(clock):
    """A job every server refuses fails alone; a job the server rejects fails alone."""
    federation, links = make(clock, n=1)
    links[0].queue.set_max_size("t", 2)
    outcomes = result(run(federation.put_many(jobs(3) + jobs(1, tube="u", ttl=-1))))
    assert [type(o) for o in outcomes[:2]] == [str, str]
    assert isinstance(outcomes[2], QueueFull)
    assert isinstance(outcomes[3], BadRequest)
    assert len(links[0].queue) == 2


def test_put_many_children_go_to_their_parents_server(clock):
    federation, links = make(clock)
    parent = result(run(federation.put_parent("flow", "p", limit=3)))
    outcomes = result(run(federation.put_many(jobs(3, tube="work", parent_id=parent))))
    assert all(owner(links, o) is owner(links, parent) for o in outcomes)


def test_put_many_with_no_server_fails_each_job_after_the_retry_budget(clock):
    federation, links = make(clock, retry_budget=1.0)
    for link in links:
        link.up = False
    d = run(federation.put_many(jobs(2)))
    clock.pump([0.1] * 15)
    assert [type(o) for o in result(d)] == [Unavailable, Unavailable]
    assert clock.getDelayedCalls() == []


def test_put_many_checks_tubes_first(clock):
    federation, links = make(clock)
    with pytest.raises(BadRequest):
        result(run(federation.put_many(jobs(2) + jobs(1, tube="bad tube!"))))
    assert sum(len(l.queue) for l in links) == 0


def test_job_action_many_groups_by_server(clock):
    federation, links = make(clock)
    job_ids = result(run(federation.put_many(jobs(6))))
    frames = [l.frames for l in links]
    result(run(federation.get("t", count=6)))
    down = links[2]
    on_down = [j for j in job_ids if owner(links, j) is down]
    down.up = False
    unknown_server = "nosuch,1"
    unknown_job = links[0].server_id + ",999999"
    ask = job_ids + [unknown_server, unknown_job]
    outcomes = result(run(federation.job_action_many("delete", ask)))
    for job_id, outcome in zip(ask, outcomes):
        if job_id in on_down:
            assert isinstance(outcome, Unavailable)
        elif job_id in (unknown_server, unknown_job):
            assert isinstance(outcome, NotFound)
        else:
            assert outcome == job_id
    assert [l.frames - f for l, f in zip(links, frames)] == [1, 1, 0]
    assert len(links[0].queue) == len(links[1].queue) == 0


def test_job_action_many_lost_frame_is_unavailable_for_its_jobs(clock):
    federation, links = make(clock, n=1)
    job_ids = result(run(federation.put_many(jobs(2))))
    links[0].lose_next = 1
    outcomes = result(run(federation.job_action_many("delete", job_ids)))
    assert [type(o) for o in outcomes] == [ConnectionLost, ConnectionLost]


def test_a_server_whose_disk_is_full_is_skipped_for_puts(clock):
    """disk_full means the server stored nothing (it is read-only): the put moves on,
    and answers disk_full only when every reachable server said so."""
    from allq.errors import DiskFull

    federation, links = make(clock, n=2)
    for _ in range(8):
        links[0].fail_next(DiskFull("the data directory is full"))
    for _ in range(4):
        assert owner(links, result(run(federation.put("t", "x")))) is links[1]
    links[1].fail_next(DiskFull("the data directory is full"))  # links[0] still refuses
    with pytest.raises(DiskFull, match="every reachable server's disk is full"):
        result(run(federation.put("t", "x")))


def test_a_strict_primary_without_its_backup_is_skipped_for_puts(clock):
    """replica_unavailable is a definite refusal (nothing stored), not a lost
    connection: the put moves on at once, and answers replica_unavailable only when
    every reachable server refused so."""
    from allq.errors import ReplicaUnavailable

    federation, links = make(clock, n=2)
    for _ in range(8):
        links[0].fail_next(ReplicaUnavailable("its backup is unreachable"))
    for _ in range(4):
        assert owner(links, result(run(federation.put("t", "x")))) is links[1]
    links[1].fail_next(ReplicaUnavailable("its backup is unreachable"))
    with pytest.raises(ReplicaUnavailable, match="every reachable server refused"):
        result(run(federation.put("t", "x")))


def test_health_shows_a_full_disk_from_the_last_stats(clock):
    federation, links = make(clock, n=2)
    links[1].dispatcher = type(links[1].dispatcher)(
        links[1].queue, clock, lambda: links[1].server_id, disk_full=lambda: True)
    result(run(federation.stats()))
    servers = federation.health()["servers"]
    assert [s.get("disk_full", False) for s in servers] == [False, True]
