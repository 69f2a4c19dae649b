"""allq.client.failover over in-memory servers (tests/memory_servers.py), on a Clock:
when a backup is promoted, how it is found, what the replica link serves, two
clients at once, client-side fencing, and a put of unknown outcome."""

import pytest
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from allq.client.failover import FIRST_RETRY, parse_failover_after
from allq.errors import NotFound
from tests.memory_servers import start_federation

AFTER = 5.0
PRIMARY, BACKUP = "127.0.0.1:7711", "127.0.0.1:7712"


def cluster(clock, servers=None, *, named=True, after=AFTER, **kwargs):
    """A federation over a primary and its backup; its links (primary, backup)."""
    servers = {} if servers is None else servers
    federation, made = start_federation(clock, [PRIMARY, BACKUP], servers=servers,
                                        failover_after=after, **kwargs)
    primary, backup = made
    if not primary.server.replicas and primary.server.server_id not in backup.server.replicas:
        backup.server.back_up(primary.server, named=named)
    return federation, made, servers


def kill(primary, backup):
    """The primary dies: no client reaches it, its backup no longer hears it."""
    primary.up = False
    backup.server.replicas[primary.server_id].primary_alive = False


def promotes(link):
    return [p for action, p in link.server.replication_requests if action == "promote"]


def advance(clock, seconds, step=0.25):
    for _ in range(round(seconds / step)):
        clock.advance(step)


def test_no_promotion_before_failover_after_then_exactly_one():
    clock = Clock()
    federation, (primary, backup), _ = cluster(clock)
    kill(primary, backup)
    advance(clock, AFTER - 0.25)
    assert promotes(backup) == []
    assert federation.failovers() == []
    advance(clock, 1.0)
    assert promotes(backup) == [{"server_id": primary.server_id}]
    advance(clock, 30)
    assert len(promotes(backup)) == 1  # the replica link is there: nothing more to do
    [failover] = federation.failovers()
    assert failover == {"server_id": primary.server_id, "backup": backup.server_id,
                        "epoch": 2, "at": failover["at"]}
    assert AFTER <= failover["at"] <= AFTER + 1
    federation.stopService()
    assert clock.getDelayedCalls() == []


def test_a_server_that_comes_back_in_time_is_not_failed_over():
    clock = Clock()
    federation, (primary, backup), _ = cluster(clock)
    kill(primary, backup)
    advance(clock, AFTER - 1)
    primary.up = True
    advance(clock, 3)
    primary.up = False
    advance(clock, AFTER - 1)  # down again, but not for long enough yet
    assert promotes(backup) == []
    federation.stopService()


def test_refusals_are_retried_with_backoff_and_logged_once_per_reason():
    clock = Clock()
    federation, (primary, backup), _ = cluster(clock)
    primary.up = False  # the client lost it, the backup still hears it
    replica = backup.server.replicas[primary.server_id]
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        advance(clock, AFTER + 0.25)
        assert len(promotes(backup)) == 1
        # Retries after 1, 2, 4 s (FIRST_RETRY doubled), not on every look.
        advance(clock, FIRST_RETRY)
        assert len(promotes(backup)) == 2
        advance(clock, 2 * FIRST_RETRY)
        assert len(promotes(backup)) == 3
        advance(clock, 2 * FIRST_RETRY)
        assert len(promotes(backup)) == 3
        replica.state = "syncing"
        advance(clock, 2 * FIRST_RETRY)
        assert len(promotes(backup)) == 4
        replica.state, replica.primary_alive = "synced", False
        advance(clock, 8 * FIRST_RETRY)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert len(promotes(backup)) == 5
    assert replica.state == "promoted" and replica.epoch == 2
    said = [e["code"] for e in events if "not failed over yet" in e.get("log_format", "")]
    assert said == ["primary_alive", "replica_incomplete"]
    assert not [e for e in events if e.get("log_failure") or e.get("isError")]
    federation.stopService()


def test_the_backup_is_found_from_replicas_when_the_welcome_names_none():
    clock = Clock()
    federation, (primary, backup), _ = cluster(clock, named=False)
    assert primary.backup_address is None
    kill(primary, backup)
    advance(clock, AFTER + 1)
    # One "replicas" when the backup's link came up (nothing promoted to adopt), one
    # to find the down server's backup, then the promotion.
    assert [a for a, _ in backup.server.replication_requests] == [
        "replicas", "replicas", "promote"]
    assert federation.failovers()[0]["backup"] == backup.server_id
    federation.stopService()


def test_a_server_never_reached_is_matched_by_its_address():
    clock = Clock()
    federation, (primary, backup), _ = cluster(clock, named=False)
    kill(primary, backup)
    primary.server_id = None  # this client never heard its welcome
    advance(clock, AFTER + 1)
    assert promotes(backup) == [{"server_id": primary.server.server_id}]
    federation.stopService()


def test_no_backup_anywhere_is_retried_quietly():
    clock = Clock()
    federation, (primary, backup), _ = cluster(clock, named=False)
    backup.server.replicas.clear()
    primary.up = False
    advance(clock, AFTER + 10)
    asked = [a for a, _ in backup.server.replication_requests]
    assert asked and set(asked) == {"replicas"} and len(asked) <= 5  # backoff: 1, 2, 4 s
    assert federation.failovers() == []
    federation.stopService()


def test_an_unreachable_backup_is_promoted_by_a_short_lived_connection_later():
    clock = Clock()
    federation, (primary, backup), _ = cluster(clock)
    kill(primary, backup)
    backup.up = False  # this client has no link to the backup either
    backup.server.reachable = False
    advance(clock, AFTER + 1)
    assert promotes(backup) == []
    backup.server.reachable = True
    advance(clock, 4)
    assert promotes(backup) == [{"server_id": primary.server_id}]
    assert federation.failovers()[0]["epoch"] == 2
    federation.stopService()


def test_the_replica_link_serves_the_primarys_jobs_and_takes_no_new_ones():
    clock = Clock()
    federation, (primary, backup), _ = cluster(clock)
    first = primary.call("put", tube="t", body="a")["job_id"]
    second = primary.call("put", tube="t", body="b")["job_id"]
    kill(primary, backup)
    advance(clock, AFTER + 1)
    [replica] = federation.health()["replica_links"]
    assert replica == {"server_id": primary.server_id, "served_by": backup.server_id,
                       "address": BACKUP, "epoch": 2, "up": True, "draining": True}
    jobs = federation.get("t", count=2).result
    assert sorted(job.job_id for job in jobs) == sorted([first, second])
    assert federation.job_action("done", first).result == first
    assert federation.job_action("release", second).result == second
    job = federation.peek_job(second).result
    assert job.job_id == second
    d = ensureDeferred(federation.stats())
    assert {s.server_id for s in d.result} == {primary.server_id, backup.server_id}
    put = federation.put("t", "new").result
    assert put.startswith(backup.server_id + ",")  # not on the draining replica
    federation.stopService()


def test_two_clients_promoting_at_once_get_one_epoch():
    clock = Clock()
    one, (p1, b1), servers = cluster(clock)
    two, (p2, b2), _ = cluster(clock, servers)
    job = p1.call("put", tube="t", body="x")["job_id"]
    kill(p1, b1)
    p2.up = False
    advance(clock, AFTER + 1)
    replica = b1.server.replicas[p1.server_id]
    assert replica.promotions == 1 and replica.epoch == 2
    assert len(promotes(b1)) == 2  # one per client: the second changed nothing
    assert [f["epoch"] for f in one.failovers()] == [2]
    assert [f["epoch"] for f in two.failovers()] == [2]
    assert two.job_action("delete", job).result == job
    one.stopService()
    two.stopService()


def test_a_client_started_after_a_failover_adopts_the_promoted_replica():
    clock = Clock()
    one, (primary, backup), servers = cluster(clock)
    job = primary.call("put", tube="t", body="x")["job_id"]
    kill(primary, backup)
    advance(clock, AFTER + 1)
    # The primary is back as a fresh server under a new id before client two starts.
    old_id = primary.server_id
    fresh = type(primary.server)(PRIMARY, clock)
    fresh.server_id = f"{old_id}-e2"
    servers[PRIMARY] = fresh
    two, (p2, b2), _ = cluster(clock, servers)
    assert p2.server_id == fresh.server_id
    advance(clock, 1)
    [replica] = two.health()["replica_links"]
    assert (replica["server_id"], replica["epoch"], replica["up"]) == (old_id, 2, True)
    assert two.job_action("delete", job).result == job
    assert len(promotes(b2)) == 1  # client one's: client two promoted nothing
    assert two.failovers() == []
    one.stopService()
    two.stopService()


def test_a_returning_primary_with_the_old_epoch_is_fenced():
    clock = Clock()
    federation, (primary, backup), _ = cluster(clock)
    job = primary.call("put", tube="t", body="x")["job_id"]
    kill(primary, backup)
    advance(clock, AFTER + 1)
    primary.up = True  # back, still saying epoch 1
    assert not primary.up
    assert primary.down_reason == f"fenced: taken over by {backup.server_id} at epoch 2"
    [entry] = [s for s in federation.health()["servers"] if s["address"] == PRIMARY]
    assert entry["up"] is False and entry["reason"].startswith("fenced")
    # Its job id reaches the replica, never the fenced primary.
    before = len(primary.requests)
    assert federation.job_action("delete", job).result == job
    assert len(primary.requests) == before
    federation.stopService()


def test_a_primary_back_under_a_new_id_is_an_ordinary_server():
    clock = Clock()
    federation, (primary, backup), _ = cluster(clock)
    old = primary.call("put", tube="t", body="x")["job_id"]
    old_id = primary.server_id
    kill(primary, backup)
    advance(clock, AFTER + 1)
    # The server restarts as a fresh server "<id>-e2" (docs/replication.md).
    fresh = type(primary.server)(PRIMARY, clock)
    fresh.server_id = f"{old_id}-e2"
    primary.server, primary.server_id = fresh, fresh.server_id
    primary.up = True
    assert primary.up
    new = federation.put("t", "y", concurrency_key="k").result  # keyed: by server ids
    assert new.split(",")[0] in (fresh.server_id, backup.server_id)
    assert federation.job_action("delete", old).result == old  # on the replica
    assert federation._servers.holder(f"{fresh.server_id},1") is primary
    with pytest.raises(NotFound):
        federation._servers.holder("unknown,1")
    federation.stopService()


def test_an_unknown_put_is_retried_on_the_replica_link_with_its_key():
    clock = Clock()
    federation, (primary, backup), _ = cluster(clock, retry_budget=30.0)
    kill(primary, backup)
    primary.up = True  # the client still reaches it once: the reply is lost
    primary.lose_next = 1
    while True:  # the next put goes to the primary (round robin)
        d = federation.put("t", "once")
        if primary.requests:
            break
        d.result
    on_backup = len([r for r in backup.requests if r[0] == "put"])
    advance(clock, AFTER + 2)
    job_id = d.result
    assert job_id.startswith(primary.server_id + ",")
    [(_, put)] = [r for r in primary.requests if r[0] == "put"]
    replica_link = federation._servers.replica_links()[0]
    assert [r[1]["idempotency_key"] for r in replica_link.requests if r[0] == "put"] == [
        put["idempotency_key"]]
    # Stored once: the backup's own queue has only the puts before, the replicated one one.
    assert [t["ready"] for t in backup.call("stats")["tubes"]] == [on_backup]
    assert [t["ready"] for t in primary.call("stats")["tubes"]] == [1]
    federation.stopService()


def test_without_failover_an_unknown_put_moves_on():
    clock = Clock()
    federation, (primary, backup), _ = cluster(clock, after=None, retry_budget=30.0)
    primary.lose_next = 1
    while True:
        d = federation.put("t", "once")
        if primary.requests:
            break
        d.result
    advance(clock, 2)
    assert d.result.startswith(backup.server_id + ",")  # at-least-once, as before
    federation.stopService()


@pytest.mark.parametrize("text, seconds", [("5", 5.0), ("0.5", 0.5), ("off", None),
                                           (" OFF ", None)])
def test_failover_after_parses(text, seconds):
    assert parse_failover_after(text) == seconds


@pytest.mark.parametrize("text", ["0", "-1", "abc", "", "nan", "inf", "100000"])
def test_failover_after_refuses_nonsense(text):
    with pytest.raises(ValueError, match="--failover-after"):
        parse_failover_after(text)


REPLICATION = {"role": "primary", "mode": "available", "peer": BACKUP, "peer_id": "b",
               "state": "streaming", "epoch": 1, "lag_records": 3, "lag_seconds": 0.25,
               "last_sync": 100.0, "records_sent": 1234, "resyncs": 0, "alone_changes": 0}


def test_stats_health_and_metrics_show_replication_and_failovers():
    from prometheus_client.parser import text_string_to_metric_families

    from allq.client.metrics import ClientMetrics
    from allq.client.rest_replies import rest_stats

    clock = Clock()
    federation, (primary, backup), _ = cluster(clock)
    primary.server.dispatcher.stats_sections["replication"] = lambda: dict(REPLICATION)
    backup.server.dispatcher.stats_sections["replicas"] = (
        lambda: [r.entry() for r in backup.server.replicas.values()])
    metrics = ClientMetrics(clock, health=federation.health, process=False)
    metrics.update_stats(ensureDeferred(federation.stats()).result)
    shown = {s["server_name"]: s for s in map(rest_stats, metrics_servers(federation))}
    assert shown[f"{primary.server_id},{PRIMARY}"]["replication"] == REPLICATION
    [entry] = shown[f"{backup.server_id},{BACKUP}"]["replicas"]
    assert (entry["primary"], entry["state"]) == (primary.server_id, "synced")
    assert "replication" not in shown[f"{backup.server_id},{BACKUP}"]

    def samples():
        text = metrics.exposition()[0].decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    before = samples()
    assert before[("allq_failovers_total", ())] == 0
    server = (("server", primary.server_id),)
    assert before[("allq_replication_lag_records", server)] == 3
    assert before[("allq_replication_lag_seconds", server)] == 0.25
    assert before[("allq_replication_state", (*server, ("state", "streaming")))] == 1
    assert before[("allq_replication_state", (*server, ("state", "alone")))] == 0
    assert federation.health()["failovers"] == []
    kill(primary, backup)
    advance(clock, AFTER + 1)
    health = federation.health()
    assert health["failovers"] == [{"server_id": primary.server_id,
                                    "backup": backup.server_id, "epoch": 2,
                                    "at": health["failovers"][0]["at"]}]
    assert samples()[("allq_failovers_total", ())] == 1
    # The replica link's stats come under the primary's id at the backup's address.
    names = {s["server_name"] for s in map(rest_stats, metrics_servers(federation))}
    assert f"{primary.server_id},{BACKUP}" in names
    federation.stopService()


def metrics_servers(federation):
    return ensureDeferred(federation.stats()).result


def test_a_replica_link_goes_with_its_backup_only():
    clock = Clock()
    federation, (primary, backup), _ = cluster(clock)
    kill(primary, backup)
    advance(clock, AFTER + 1)
    federation.update_servers([PRIMARY, BACKUP, "127.0.0.1:7713"])
    federation.update_servers([BACKUP])  # the dead primary's address is dropped: kept
    assert [l.serving_as for l in federation._servers.replica_links()] == [primary.server_id]
    federation.update_servers(["127.0.0.1:7713"])
    assert federation._servers.replica_links() == []
    assert "replica_links" not in federation.health()
    federation.stopService()


def test_a_malformed_promote_reply_is_not_now():
    clock = Clock()
    federation, (primary, backup), _ = cluster(clock)
    kill(primary, backup)
    backup.server._promote = lambda server_id: ["not", "a", "dict"]
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        advance(clock, AFTER + 3.25)
    finally:
        globalLogPublisher.removeObserver(events.append)
    said = [e["code"] for e in events if "not failed over yet" in e.get("log_format", "")]
    assert said == ["protocol_error"]
    assert len(promotes(backup)) == 3  # at 5 s, then after 1 s and 2 s of backoff
    assert federation.failovers() == [] and federation.health().get("replica_links") is None
    federation.stopService()
