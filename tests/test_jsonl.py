"""The JSON-lines front-end (AllQueue's local API) in memory: framing, order,
bad input, backpressure and idle timeouts over a ``StringTransport``, and every
action's AllQueue reply shape over a real federation of in-memory servers.
Time is a ``task.Clock``; nothing sleeps."""

import json

import pytest

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from allq.client.jsonl import JsonLinesApi, JsonLinesFactory, JsonLinesProtocol
from allq.client.workers import AdminRelay
from allq.core.queue import QueueConfig

from memory_servers import local_addresses, start_federation

MAX_LINE = 4096
IDLE = 30.0


def line(action, **params) -> bytes:
    return json.dumps({"action": action, "params": params}).encode() + b"\n"


class FramingTests(SynchronousTestCase):
    """The line protocol over a scripted answer function."""

    def setUp(self):
        self.clock = Clock()
        self.calls: list[tuple[str, dict, Deferred]] = []
        self.protocol = self.connect()

    def answer(self, action, params):
        d = Deferred(lambda d: self.cancelled.append(action))
        self.calls.append((action, params, d))
        return d

    def connect(self, max_pending=8):
        """A new connection (the previous one, if any, closed first)."""
        if getattr(self, "protocol", None) is not None:
            self.protocol.connectionLost(None)
        self.cancelled: list[str] = []
        protocol = JsonLinesProtocol(self.answer, self.clock, max_line=MAX_LINE,
                                     idle_timeout=IDLE, max_pending=max_pending)
        self.transport = StringTransport()
        protocol.makeConnection(self.transport)
        return protocol

    def replies(self) -> list:
        data = self.transport.value()
        self.transport.clear()
        return [json.loads(text) for text in data.decode().splitlines()]

    def tearDown(self):
        if not self.transport.disconnecting:
            self.protocol.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_replies_in_request_order_when_answers_come_out_of_order(self):
        """Pipelined requests are answered in the order sent, whatever order the
        federation answers them in."""
        self.protocol.dataReceived(line("a") + line("b") + line("c"))
        self.assertEqual([c[0] for c in self.calls], ["a", "b", "c"])
        self.calls[2][2].callback({"n": 3})
        self.calls[1][2].callback({"n": 2})
        self.assertEqual(self.replies(), [])
        self.calls[0][2].callback({"n": 1})
        self.assertEqual(self.replies(), [{"n": 1}, {"n": 2}, {"n": 3}])

    def test_lines_split_across_reads_and_crlf(self):
        """A line may arrive in pieces; \\r\\n endings and blank lines are taken."""
        data = line("x", tube="t").replace(b"\n", b"\r\n")
        self.protocol.dataReceived(b"\n  \r\n" + data[:5])
        self.protocol.dataReceived(data[5:] + b"\n\n")
        self.assertEqual([(c[0], c[1]) for c in self.calls], [("x", {"tube": "t"})])
        self.calls[0][2].callback({})

    def test_bad_lines_get_error_replies_and_the_connection_goes_on(self):
        """Not JSON, not an object, no action, params not an object, binary
        garbage: each gets a bad_request reply in its place; later lines work."""
        bad = [b"not json", b"[1,2]", b'{"params": {}}', b'{"action": "put", "params": 5}',
               b"\xff\xfe\x00\x01garbage", b'{"action": "x", "params": {"n": NaN}}']
        self.protocol.dataReceived(b"\n".join(bad) + b"\n")
        self.protocol.dataReceived(line("ok"))
        self.calls[0][2].callback({"fine": True})
        replies = self.replies()
        self.assertEqual(len(replies), len(bad) + 1)
        for reply in replies[:-1]:
            self.assertEqual(reply["response"]["code"], "bad_request", reply)
            self.assertIn("error", reply["response"])
        self.assertEqual(replies[-1], {"fine": True})
        self.assertFalse(self.transport.disconnecting)

    def test_deeply_nested_json_is_a_bad_request(self):
        """JSON nested past the parser's depth is refused, not a crash."""
        self.protocol.dataReceived(b"[" * 3000 + b"\n")
        [reply] = self.replies()
        self.assertEqual(reply["response"]["code"], "bad_request")

    def test_a_line_over_the_limit_is_refused_and_the_connection_closed(self):
        """A complete line over the size limit: too_large, then close (after the
        replies before it)."""
        self.protocol.dataReceived(line("first"))
        self.protocol.dataReceived(b"x" * (MAX_LINE + 1) + b"\n" + line("never"))
        self.assertEqual([c[0] for c in self.calls], ["first"])
        self.assertFalse(self.transport.disconnecting)
        self.calls[0][2].callback({"n": 1})
        first, refused = self.replies()
        self.assertEqual(first, {"n": 1})
        self.assertEqual(refused["response"]["code"], "too_large")
        self.assertTrue(self.transport.disconnecting)

    def test_a_client_that_never_sends_a_newline_is_bounded(self):
        """Bytes without a newline are buffered only up to the size limit."""
        for _ in range(MAX_LINE // 1000 + 2):
            self.protocol.dataReceived(b"y" * 1000)
        [refused] = self.replies()
        self.assertEqual(refused["response"]["code"], "too_large")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(len(self.protocol._buffer), 0)
        self.protocol.dataReceived(b"z" * 10_000)  # ignored now
        self.assertEqual(len(self.protocol._buffer), 0)

    def test_idle_connection_is_closed(self):
        """A connection that sends nothing is closed after the idle timeout."""
        self.clock.advance(IDLE - 1)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnecting)

    def test_a_pending_request_is_not_idle(self):
        """A request waiting on the federation (a long poll) keeps the connection;
        the idle time counts again from its reply."""
        self.protocol.dataReceived(line("get", tube="t", wait=60))
        self.clock.advance(IDLE * 3)
        self.assertFalse(self.transport.disconnecting)
        self.calls[0][2].callback({"job": {}})
        self.clock.advance(IDLE - 1)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnecting)

    def test_backpressure_pauses_reading_and_resumes(self):
        """Past max_pending requests in progress the transport is paused; the
        buffered requests start as replies go out, and reading resumes."""
        self.protocol = self.connect(max_pending=2)
        self.protocol.dataReceived(b"".join(line("r", i=i) for i in range(5)))
        self.assertEqual(len(self.calls), 2)
        self.assertEqual(self.transport.producerState, "paused")
        for index in range(5):
            self.calls[index][2].callback({"i": index})
        self.assertEqual(self.replies(), [{"i": i} for i in range(5)])
        self.assertEqual(self.transport.producerState, "producing")

    def test_half_close_answers_then_closes(self):
        """A client that writes, then half-closes (echo | socat, nc -q) still gets
        every reply, a last line without a newline included; then the connection closes."""
        self.protocol.dataReceived(line("a") + line("b")[:-1])
        self.protocol.readConnectionLost()
        self.assertEqual([c[0] for c in self.calls], ["a", "b"])
        self.calls[0][2].callback({"n": 1})
        self.assertFalse(self.transport.disconnecting)
        self.calls[1][2].callback({"n": 2})
        self.assertEqual(self.replies(), [{"n": 1}, {"n": 2}])
        self.assertTrue(self.transport.disconnecting)

    def test_connection_lost_cancels_pending_calls(self):
        """A client that goes away cancels what it was waiting for; nothing is written."""
        self.protocol.dataReceived(line("a"))
        self.protocol.connectionLost(None)
        self.assertEqual(self.cancelled, ["a"])
        self.assertEqual(self.transport.value(), b"")
        self.transport.disconnecting = True  # for tearDown


class ApiCase(SynchronousTestCase):
    """A real federation of two in-memory servers behind one JSON-lines connection."""

    def setUp(self):
        self.clock = Clock()
        self.federation, self.links = start_federation(
            self.clock, local_addresses(2, 7711), config=QueueConfig(max_job_size=1024),
            retry_budget=1.0)
        self.addCleanup(self.federation.stopService)
        self.api = JsonLinesApi(self.federation, self.clock, request_timeout=30)
        self.factory = JsonLinesFactory(self.api, self.clock, max_line=MAX_LINE,
                                        idle_timeout=IDLE)
        self.protocol = self.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    @pytest.fixture(autouse=True)
    def _logged(self, observe_errors):
        """The conftest's list of logged failures (to accept expected ones)."""
        self.logged = observe_errors

    def tearDown(self):
        self.protocol.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def ask(self, action, **params):
        self.protocol.dataReceived(line(action, **params))
        for _ in range(100):
            if self.transport.value().endswith(b"\n"):
                break
            self.clock.advance(0.1)
        data = self.transport.value()
        self.transport.clear()
        [reply] = data.decode().splitlines()
        return json.loads(reply)


class ApiTests(ApiCase):
    """Every action through a real federation of in-memory servers, in AllQueue's shapes."""

    def test_put_get_done_in_allqueue_shapes(self):
        """put, get and done answer as AllQueue did (counters as strings)."""
        put = self.ask("put", tube="t", body="hi", ttl="60", priority="5", delay=0)
        job_id = put["job"]["job_id"]
        self.assertEqual(put, {"response": {"action": "put", "job_id": job_id},
                               "job": {"job_id": job_id}})
        got = self.ask("get", tube="t")
        job = {"job_id": job_id, "body": "hi", "tube": "t", "expireds": "0", "releases": "0"}
        self.assertEqual(got, {"response": {"action": "get", "job": job}, "job": job})
        self.assertEqual(self.ask("done", job_id=job_id),
                         {"response": {"action": "done", "job_id": job_id}})
        self.assertEqual(self.ask("get", tube="t"),
                         {"response": {"action": "get", "job": {}}, "job": {}})

    def test_get_counts_and_multiple(self):
        """count 1 (or none) is the single shape; any other count the list shape."""
        ids = [self.ask("put", tube="m", body=str(i))["job"]["job_id"] for i in range(3)]
        many = self.ask("get_multiple_jobs", tube="m", count="2")
        self.assertEqual(len(many["jobs"]), 2)
        self.assertEqual(many["response"]["jobs"], many["jobs"])
        self.assertEqual(self.ask("get", tube="m", count=0)["jobs"], [])
        last = self.ask("get", tube="m", count=1, delete="true")
        self.assertIn(last["job"]["job_id"], ids)
        self.assertEqual(self.ask("get", tube="m", count=5), {"response": {"action": "get",
                         "jobs": []}, "jobs": []})

    def test_job_actions(self):
        """touch, release (delay), bury, kick (by id and by tube), delete."""
        job_id = self.ask("put", tube="k", body="b")["job"]["job_id"]
        self.ask("get", tube="k")
        self.assertEqual(self.ask("touch", job_id=job_id)["response"],
                         {"action": "touch", "job_id": job_id})
        self.assertEqual(self.ask("release", job_id=job_id, delay="0")["response"]["action"],
                         "release")
        self.ask("get", tube="k")
        self.assertEqual(self.ask("bury", job_id=job_id)["response"],
                         {"action": "bury", "job_id": job_id})
        peek = self.ask("peek", tube="k", buried="true")
        self.assertEqual(peek["job"]["job_id"], job_id)
        self.assertEqual(peek["response"]["action"], "get")
        self.assertEqual(self.ask("kick", tube="k")["response"],
                         {"action": "kick", "job_id": job_id, "job_ids": [job_id]})
        self.assertEqual(self.ask("kick", tube="k")["response"], {"action": "kick", "job_ids": []})
        self.assertEqual(self.ask("peek", tube="k")["job"]["job_id"], job_id)
        self.assertEqual(self.ask("delete", job_id=job_id, tube="k")["response"],
                         {"action": "delete", "job_id": job_id})
        missing = self.ask("done", job_id=job_id)["response"]
        self.assertEqual((missing["action"], missing["job_id"], missing["code"]),
                         ("done", job_id, "not_found"))
        self.assertIn("error", missing)

    def test_tube_settings_and_clear(self):
        """throttle, pause/unpause, fair, max_size, drain/undrain of a tube, clear."""
        throttle = self.ask("throttle", tube="s", tps="10")["response"]
        self.assertEqual((throttle["action"], throttle["value"], throttle["servers"]),
                         ("throttle", "10", 2))
        self.assertEqual(self.ask("throttle", tube="s", tps=None)["response"]["value"], "false")
        for action in ("pause", "unpause"):
            self.assertEqual(self.ask(action, tube="s")["response"],
                             {"action": action, "tube": "s", "servers": 2})
        self.assertEqual(self.ask("fair", tube="s", policy="round_robin")["response"]["policy"],
                         "round_robin")
        self.assertEqual(self.ask("max_size", tube="s", max_size="5")["response"]["max_size"], 5)
        self.assertEqual(self.ask("drain", tube="s")["response"]["action"], "drain")
        self.assertEqual(self.ask("put", tube="s", body="x")["response"]["code"], "draining")
        self.ask("undrain", tube="s")
        self.ask("fair", tube="s", policy="off")
        self.assertEqual(self.ask("put", tube="s", body="x")["response"]["action"], "put")
        self.assertEqual(self.ask("clear", tube="s", cache_type="all")["response"],
                         {"action": "clear", "cleared": 1})

    def test_parents(self):
        """set_parent_job answers AllQueue's set_parent shape; set_children_started starts it."""
        parent = self.ask("set_parent_job", tube="p", body="after", limit="", delay=0,
                          timeout="3600", run_on_timeout="false")
        parent_id = parent["job"]["job_id"]
        self.assertEqual(parent["response"]["action"], "set_parent")
        self.assertEqual(parent["job"], {"job_id": parent_id, "body": "after", "tube": "p",
                                         "expireds": "0", "releases": "0"})
        child = self.ask("put", tube="c", body="child", parent_id=parent_id)["job"]["job_id"]
        self.assertEqual(self.ask("set_children_started", job_id=parent_id)["response"],
                         {"action": "set_children_started", "job_id": parent_id})
        self.assertEqual(self.ask("get", tube="p")["job"], {})
        self.ask("get", tube="c")
        self.ask("done", job_id=child)
        self.assertEqual(self.ask("get", tube="p")["job"]["job_id"], parent_id)

    def test_batches(self):
        """put_multiple_jobs and delete_multiple_jobs (allq extras)."""
        put = self.ask("put_multiple_jobs", tube="b", jobs=[{"body": "1"}, {"body": "2"}])
        ids = put["response"]["job_ids"]
        self.assertEqual((put["response"]["action"], len(ids)), ("put", 2))
        self.ask("get", tube="b", count=2)
        gone = self.ask("delete_multiple_jobs", job_ids=ids + [ids[0]])["response"]
        self.assertEqual(gone["job_ids"], ids + [None])
        self.assertEqual(gone["errors"][0]["index"], 2)
        self.assertEqual(gone["errors"][0]["code"], "not_found")

    def test_stats_and_ping(self):
        """stats is a map of server to tube to string counters, plus global; ping
        lists each healthy server as "true"."""
        self.ask("put", tube="st", body="x")
        stats = self.ask("stats")
        keys = {f"{link.server_id},{link.address}" for link in self.links}
        self.assertEqual(set(stats), keys)
        tubes = [server["st"] for server in stats.values() if "st" in server]
        self.assertEqual([t["ready"] for t in tubes], ["1"])
        self.assertEqual(set(tubes[0]), {"ready", "delayed", "reserved", "buried", "parents",
                                         "avg", "tps"})
        for server in stats.values():
            self.assertEqual(set(server["global"]), {"action_count", "job_get", "job_put"})
            self.assertTrue(all(isinstance(v, str) for v in server["global"].values()))
        self.links[1].up = False
        self.assertEqual(self.ask("ping"), {self.links[0].server_id: "true"})

    def test_admin(self):
        """add_server, update_servers and drain of a server, in AllQueue's replies."""
        self.assertEqual(self.ask("add_server", server_url="127.0.0.1:7799"),
                         {"server_url": "127.0.0.1:7799"})
        self.assertEqual(len(self.federation.links()), 3)
        self.assertEqual(self.ask("update_servers", servers="127.0.0.1:7711,127.0.0.1:7712"), {})
        self.assertEqual(len(self.federation.links()), 2)
        drained = self.ask("drain", server_id="127.0.0.1:7711")
        self.assertEqual((drained["server_id"], drained["draining"]), ("127.0.0.1:7711", True))
        self.assertTrue(self.links[0].draining)
        self.ask("undrain", server_id="127.0.0.1:7711")
        self.assertFalse(self.links[0].draining)
        unknown = self.ask("drain", server_id="nowhere:1")["response"]
        self.assertEqual(unknown["code"], "not_found")

    def test_admin_changes_reach_the_workers(self):
        """With --workers the JSON-lines API lives in the primary: its admin actions
        reach the worker processes through the AdminRelay observing the federation."""
        relayed = []
        AdminRelay(self.federation, relayed.append)
        self.ask("add_server", server_url="127.0.0.1:7799")
        self.ask("update_servers", servers="127.0.0.1:7711,127.0.0.1:7712")
        self.ask("drain", server_id="127.0.0.1:7711")
        self.assertEqual([(m["call"], m["args"]) for m in relayed], [
            ("add_server", ["127.0.0.1:7799"]),
            ("update_servers", [["127.0.0.1:7711", "127.0.0.1:7712"]]),
            ("drain_server", ["127.0.0.1:7711", True])])

    def test_a_bug_is_a_logged_internal_error_reply(self):
        """An unexpected exception in an action answers internal_error (logged once)
        and the connection serves on."""
        def broken(params):
            raise ZeroDivisionError("bug")

        self.api._actions["ping"] = broken
        reply = self.ask("ping")["response"]
        self.assertEqual((reply["action"], reply["code"]), ("ping", "internal_error"))
        self.assertNotIn("bug", reply["error"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        failures = [e.get("log_failure") for e in self.logged]
        self.assertTrue(failures and all(f.check(ZeroDivisionError) for f in failures))
        self.logged.clear()
        self.assertEqual(self.ask("put", tube="t", body="x")["response"]["action"], "put")

    def test_a_hung_federation_call_answers_timeout_in_order(self):
        """A call the federation never answers ends as a timeout reply after
        request_timeout; the replies after it wait their turn, then follow."""
        self.links[0].hang = self.links[1].hang = True
        self.protocol.dataReceived(line("stats"))
        self.links[0].hang = self.links[1].hang = False
        self.protocol.dataReceived(line("ping"))
        self.assertEqual(self.transport.value(), b"")
        self.clock.advance(31)
        first, second = (json.loads(text) for text in self.transport.value().splitlines())
        self.assertEqual(first["response"]["code"], "timeout")
        self.assertEqual(set(second), {link.server_id for link in self.links})

    def test_bad_params_name_the_field(self):
        """Wrong types and unknown actions are error replies with allq's code."""
        cases = [
            (("put", {"tube": 5, "body": "x"}), "bad_request", "tube"),
            (("put", {"tube": "t", "body": "x", "ttl": "soon"}), "bad_request", "ttl"),
            (("get", {"tube": "t", "count": "many"}), "bad_request", "count"),
            (("get", {}), "bad_request", "tube"),
            (("done", {"job_id": "nonsense"}), "bad_request", "job_id"),
            (("throttle", {"tube": "t"}), "bad_request", "tps"),
            (("update_servers", {"servers": 7}), "bad_request", "servers"),
            (("frobnicate", {}), "unknown_action", "frobnicate"),
        ]
        for (action, params), code, named in cases:
            reply = self.ask(action, **params)["response"]
            self.assertEqual((reply["action"], reply["code"]), (action, code), reply)
            self.assertIn(named, reply["error"])


class WorkflowTests(ApiCase):
    """AllQueue's workflows over JSON lines: noop joins and caller-chosen parent ids."""

    def test_noop_join_with_caller_chosen_ids(self):
        """A parent TOP and a noop join named by the caller: children name the join
        by its id, set_children_started too; the join never runs and TOP does."""
        top = self.ask("set_parent_job", tube="top", body="report", limit=1, id="top-1")
        top_id = top["job"]["job_id"]
        join = self.ask("set_parent_job", tube="join", body="", noop="true", id="join-1",
                        parent_id="top-1", limit=None)
        self.assertEqual(join["response"]["action"], "set_parent")
        kids = [self.ask("put", tube="w", body=str(n), parent_id="join-1")["job"]["job_id"]
                for n in range(2)]
        self.assertEqual(len({kid.split(",")[0] for kid in kids + [top_id]}), 1)
        self.assertEqual(self.ask("set_children_started", job_id="join-1")["response"]["job_id"],
                         join["job"]["job_id"])
        for _ in kids:
            got = self.ask("get", tube="w")
            self.ask("done", job_id=got["job"]["job_id"])
        self.assertEqual(self.ask("get", tube="join")["job"], {})
        self.assertEqual(self.ask("get", tube="top")["job"]["job_id"], top_id)
        again = self.ask("set_children_started", job_id="join-1")["response"]
        self.assertEqual(again["code"], "not_found")


class InterestRoutingTests(ApiCase):
    """Interest routing over JSON lines: the REST routes' actions and shapes."""

    def test_register_publish_list_and_delete(self):
        reply = self.ask("interest", tube="mail", interests={"email": "@example[.]com$"})
        self.assertEqual(reply["response"], {"action": "interest", "tube": "mail",
                                             "interests": {"email": "@example[.]com$"},
                                             "servers": 2})
        self.ask("interest", tube="audit", interests="*")
        event = self.ask("event", data={"email": "ann@example.com"}, idempotency_key="e-1")
        self.assertEqual(event["response"]["matched"], 2)
        self.assertEqual([c["tube"] for c in event["response"]["copies"]], ["audit", "mail"])
        self.assertEqual(self.ask("event", data={"email": "ann@example.com"},
                                  idempotency_key="e-1")["response"]["copies"],
                         event["response"]["copies"])
        job = self.ask("get", tube="mail", delete=True)
        self.assertEqual(json.loads(job["job"]["body"]), {"email": "ann@example.com"})
        self.assertEqual(self.ask("interests")["response"]["interests"], [
            {"tube": "audit", "interests": "*"},
            {"tube": "mail", "interests": {"email": "@example[.]com$"}}])
        self.ask("delete_interest", tube="audit")
        self.ask("delete_interest", tube="mail")
        self.assertEqual(self.ask("event", data={"email": "x"})["response"],
                         {"action": "event", "matched": 0, "copies": []})
        refused = self.ask("event", data={"email": "x"}, unmatched="error")["response"]
        self.assertEqual((refused["action"], refused["code"]), ("event", "not_found"))

    def test_bad_input_is_an_error_reply(self):
        for action, params in [("interest", {"tube": "t", "interests": {"f": "(a)\\1"}}),
                               ("interest", {"tube": "t", "interests": 3}),
                               ("delete_interest", {}),
                               ("event", {"data": "text"}),
                               ("event", {"data": {}, "scope": "every"})]:
            reply = self.ask(action, **params)["response"]
            self.assertEqual(reply["code"], "bad_request", (action, params, reply))
