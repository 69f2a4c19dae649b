"""The beanstalkd front-end (:mod:`allq.client.beanstalk`) over in-memory servers.

Each connection is a ``StringTransport``; time is a ``Clock``; behind the
protocol is the real federation over real queues (``memory_servers``).
"""

import pytest
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from allq.client.beanstalk import (
    PARTIAL_COMMAND_TIMEOUT,
    BeanstalkConnections,
    BeanstalkFactory,
)
from allq.client.beanstalk_ids import JobIds
from allq.core.queue import QueueConfig

from memory_servers import local_addresses, start_federation


class Harness:
    def __init__(self, servers: int = 1, max_job_size: int = 100) -> None:
        self.clock = Clock()
        self.federation, self.links = start_federation(
            self.clock, local_addresses(servers), config=QueueConfig(), retry_budget=1.0)
        self.factory = BeanstalkFactory(self.federation, self.clock, max_job_size)

    def connect(self):
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def send(self, conn, data: bytes) -> bytes:
        """Send bytes on a connection, let the servers answer, return what came back."""
        protocol, transport = conn
        transport.clear()
        protocol.dataReceived(data)
        self.clock.advance(0)
        return transport.value()


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    harness.federation.stopService()
    assert harness.clock.getDelayedCalls() == []


def test_put_reserve_delete(h):
    """put answers INSERTED with an integer id; reserve hands the body back; delete."""
    conn = h.connect()
    assert h.send(conn, b"put 5 0 10 5\r\nhello\r\n") == b"INSERTED 1\r\n"
    assert h.send(conn, b"reserve\r\n") == b"RESERVED 1 5\r\nhello\r\n"
    assert h.send(conn, b"delete 1\r\n") == b"DELETED\r\n"
    assert h.send(conn, b"delete 1\r\n") == b"NOT_FOUND\r\n"
    conn[0].connectionLost()


def test_binary_body_with_crlf_inside(h):
    """Any byte goes in and comes out unchanged."""
    conn = h.connect()
    body = b"\x00\xff\r\n\r\nx"
    assert h.send(conn, b"put 0 0 10 %d\r\n%s\r\n" % (len(body), body)) == b"INSERTED 1\r\n"
    assert h.send(conn, b"reserve-with-timeout 0\r\n") == b"RESERVED 1 %d\r\n%s\r\n" % (
        len(body), body)
    conn[0].connectionLost()


def test_only_the_reserving_connection_acts_and_close_releases(h):
    """Others get NOT_FOUND; closing the holder makes the job ready at once."""
    a, b = h.connect(), h.connect()
    h.send(a, b"put 0 0 10 1\r\nx\r\n")
    assert h.send(a, b"reserve\r\n").startswith(b"RESERVED 1 1")
    for command in (b"delete 1", b"release 1 0 0", b"bury 1 0", b"touch 1"):
        assert h.send(b, command + b"\r\n") == b"NOT_FOUND\r\n"
    assert h.send(b, b"reserve-with-timeout 0\r\n") == b"TIMED_OUT\r\n"
    a[0].connectionLost()
    h.clock.advance(0)
    assert h.send(b, b"reserve-with-timeout 0\r\n").startswith(b"RESERVED 1 1")
    b[0].connectionLost()


def test_reserve_waits_over_every_watched_tube_by_priority(h):
    """Across watched tubes the most urgent job comes first; a put wakes a waiter."""
    conn = h.connect()
    h.send(conn, b"use a\r\nput 9 0 10 1\r\na\r\nuse b\r\nput 1 0 10 1\r\nb\r\n")
    assert h.send(conn, b"watch a\r\nwatch b\r\n") == b"WATCHING 2\r\nWATCHING 3\r\n"
    assert h.send(conn, b"reserve\r\n").endswith(b"\r\nb\r\n")
    assert h.send(conn, b"reserve\r\n").endswith(b"\r\na\r\n")
    waiting = h.send(conn, b"reserve-with-timeout 5\r\n")
    assert waiting == b""
    producer = h.connect()
    h.send(producer, b"use b\r\nput 0 0 10 1\r\nc\r\n")
    h.clock.advance(0.1)
    assert conn[1].value().endswith(b"RESERVED 3 1\r\nc\r\n")
    h.clock.advance(10)
    conn[0].connectionLost()
    producer[0].connectionLost()


def test_reserve_with_timeout_times_out(h):
    conn = h.connect()
    assert h.send(conn, b"reserve-with-timeout 2\r\n") == b""
    h.clock.pump([0.5] * 5)
    assert conn[1].value() == b"TIMED_OUT\r\n"
    conn[0].connectionLost()


def test_deadline_soon(h):
    """A reserve within a second of one of this connection's ttls says DEADLINE_SOON."""
    conn = h.connect()
    h.send(conn, b"put 0 0 2 1\r\nx\r\n")
    h.send(conn, b"reserve\r\n")
    assert h.send(conn, b"reserve-with-timeout 10\r\n") == b""
    h.clock.pump([0.25] * 5)
    assert conn[1].value() == b"DEADLINE_SOON\r\n"
    assert h.send(conn, b"touch 1\r\n") == b"TOUCHED\r\n"
    conn[0].connectionLost()
    h.clock.advance(5)


def test_stats_job_counts_and_kick_job_of_a_delayed_job(h):
    conn = h.connect()
    h.send(conn, b"put 3 30 10 1\r\nx\r\n")
    stats = h.send(conn, b"stats-job 1\r\n")
    assert b"state: delayed\n" in stats and b"delay: 30\n" in stats
    assert b"time-left: 30\n" in stats and b"file: 0\n" in stats
    assert h.send(conn, b"peek-delayed\r\n") == b"FOUND 1 1\r\nx\r\n"
    assert h.send(conn, b"kick-job 1\r\n") == b"KICKED\r\n"
    h.send(conn, b"reserve\r\n")
    h.send(conn, b"release 1 0 0\r\n")
    h.send(conn, b"reserve\r\n")
    h.send(conn, b"bury 1 0\r\n")
    stats = h.send(conn, b"stats-job 1\r\n")
    for line in (b"reserves: 2", b"releases: 1", b"buries: 1", b"kicks: 1", b"state: buried"):
        assert line + b"\n" in stats
    assert h.send(conn, b"kick 5\r\n") == b"KICKED 1\r\n"
    conn[0].connectionLost()


def test_pause_tube_ends_by_itself(h):
    conn = h.connect()
    h.send(conn, b"put 0 0 10 1\r\nx\r\n")
    assert h.send(conn, b"pause-tube default 3\r\n") == b"PAUSED\r\n"
    assert h.send(conn, b"pause-tube nosuch 3\r\n") == b"NOT_FOUND\r\n"
    assert h.send(conn, b"reserve-with-timeout 0\r\n") == b"TIMED_OUT\r\n"
    h.clock.advance(3)
    assert h.send(conn, b"reserve-with-timeout 0\r\n").startswith(b"RESERVED")
    conn[0].connectionLost()


def test_lists_and_tubes(h):
    conn = h.connect()
    assert h.send(conn, b"list-tube-used\r\n") == b"USING default\r\n"
    assert h.send(conn, b"list-tubes-watched\r\n") == b"OK 14\r\n---\n- default\n\r\n"
    assert h.send(conn, b"ignore default\r\n") == b"NOT_IGNORED\r\n"
    assert h.send(conn, b"use bad;name\r\n") == b"BAD_FORMAT\r\n"
    conn[0].connectionLost()


# -- robustness -----------------------------------------------------------------------


@pytest.mark.parametrize("data, reply", [
    (b"frobnicate\r\n", b"UNKNOWN_COMMAND\r\n"),
    (b"put 1 2\r\n", b"BAD_FORMAT\r\n"),
    (b"put -1 0 1 1\r\n", b"BAD_FORMAT\r\n"),
    (b"put 4294967296 0 1 1\r\n", b"BAD_FORMAT\r\n"),
    (b"delete abc\r\n", b"BAD_FORMAT\r\n"),
    (b"delete 99\r\n", b"NOT_FOUND\r\n"),
    (b"peek 99999999999999999999999\r\n", b"BAD_FORMAT\r\n"),
    (b"put 0 0 1 3\r\nabcXY", b"EXPECTED_CRLF\r\n"),
    (b"put 0 0 1 101\r\n" + b"x" * 101 + b"\r\n", b"JOB_TOO_BIG\r\n"),
    (b"use " + b"t" * 400 + b"\r\n", b"BAD_FORMAT\r\n"),
    (b"reserve extra\r\n", b"BAD_FORMAT\r\n"),
])
def test_bad_input_gets_its_error_and_the_connection_goes_on(h, data, reply):
    conn = h.connect()
    assert h.send(conn, data + b"list-tube-used\r\n") == reply + b"USING default\r\n"
    assert conn[1].connected
    conn[0].connectionLost()


def test_a_line_without_crlf_waits_then_a_stall_closes_the_connection(h):
    """Half a command is kept (bounded), and after a long stall the connection closes;
    another connection is served meanwhile."""
    stalled, other = h.connect(), h.connect()
    assert h.send(stalled, b"put 0 0 1 50\r\nhalf") == b""
    assert h.send(other, b"list-tube-used\r\n") == b"USING default\r\n"
    h.clock.advance(PARTIAL_COMMAND_TIMEOUT)
    assert stalled[1].disconnecting
    stalled[0].connectionLost()
    other[0].connectionLost()


def test_ten_thousand_pipelined_commands_in_one_write(h):
    """Every command answered in order; reading pauses while the backlog is large."""
    conn = h.connect()
    data = b"put 0 0 10 1\r\nx\r\n" * 10_000
    conn[1].clear()
    h.links[0].hold = True  # the server answers when told: the backlog builds up
    conn[0].dataReceived(data)
    assert conn[1].producerState == "paused"
    other = h.connect()
    assert h.send(other, b"list-tube-used\r\n") == b"USING default\r\n"
    for _ in range(10_001):
        h.links[0].release_held()
        h.clock.advance(0)
    replies = conn[1].value().split(b"\r\n")[:-1]
    assert replies == [b"INSERTED %d" % i for i in range(1, 10_001)]
    assert conn[1].producerState == "producing"
    assert len(conn[0]._buffer) == 0
    conn[0].connectionLost()


def test_unread_replies_stop_commands_and_reading_until_the_client_reads(h):
    """A full transport buffer pauses the connection: no command runs meanwhile."""
    conn = h.connect()
    protocol, transport = conn
    protocol.pauseProducing()  # what the transport does when its buffer is full
    assert h.send(conn, b"list-tube-used\r\n") == b""
    assert transport.producerState == "paused"
    protocol.resumeProducing()
    assert transport.value() == b"USING default\r\n"
    assert transport.producerState == "producing"
    protocol.connectionLost()


def test_stats_tube_and_pause_of_default_before_any_job(h):
    """The default tube always exists, as in beanstalkd."""
    conn = h.connect()
    assert h.send(conn, b"stats-tube default\r\n").startswith(b"OK ")
    assert h.send(conn, b"stats-tube other\r\n") == b"NOT_FOUND\r\n"
    conn[0].connectionLost()


def test_stopping_closes_connections_and_releases_their_jobs(h):
    conn = h.connect()
    h.send(conn, b"put 0 0 10 1\r\nx\r\n")
    h.send(conn, b"reserve\r\n")
    BeanstalkConnections(h.factory).stopService()
    assert conn[1].disconnecting
    assert h.links[0].call("stats")["tubes"][0]["ready"] == 1


def test_job_ids_are_bounded_and_never_reused():
    """The least recently used id is forgotten first; a forgotten id stays unknown."""
    ids = JobIds(capacity=2)
    a, b = ids.id_for("s,1"), ids.id_for("s,2")
    assert ids.id_for("s,1") == a
    c = ids.id_for("s,3")  # forgets b, the least recently used
    assert ids.ref_for(b) is None and len(ids) == 2
    assert ids.id_for("s,2") not in (a, b, c)
    ids.forget(a)
    assert ids.ref_for(a) is None


# -- refusals from the servers, in beanstalkd's words ---------------------------------------


def test_a_draining_federation_answers_draining(h):
    conn = h.connect()
    h.links[0].call("drain")
    assert h.send(conn, b"put 0 0 10 1\r\nx\r\n") == b"DRAINING\r\n"
    conn[0].connectionLost()


def test_a_full_server_answers_out_of_memory():
    h = Harness()
    h.links[0].queue.config = QueueConfig(max_jobs=1)
    conn = h.connect()
    assert h.send(conn, b"put 0 0 10 1\r\nx\r\n") == b"INSERTED 1\r\n"
    assert h.send(conn, b"put 0 0 10 1\r\ny\r\n") == b"OUT_OF_MEMORY\r\n"
    conn[0].connectionLost()
    h.federation.stopService()


def test_no_reachable_server_is_an_internal_error(h):
    conn = h.connect()
    h.links[0].up = False
    h.send(conn, b"put 0 0 10 1\r\nx\r\n")
    h.clock.pump([0.1] * 30)
    assert conn[1].value() == b"INTERNAL_ERROR\r\n"
    assert h.send(conn, b"list-tube-used\r\n") == b"USING default\r\n"
    conn[0].connectionLost()


# -- options --------------------------------------------------------------------------------


def test_the_beanstalk_options_and_their_environment():
    from allq.client.tap import Options

    def parse(args, environ):
        options = Options()
        options.environ = environ
        options.parseOptions(args)
        return options

    assert parse([], {})["beanstalk"] is None
    assert parse([], {})["beanstalk-max-job-size"] == 65535
    options = parse([], {"ALLQ_BEANSTALK": "unix:/tmp/b.sock",
                         "ALLQ_BEANSTALK_MAX_JOB_SIZE": "1000"})
    assert (options["beanstalk"], options["beanstalk-max-job-size"]) == ("unix:/tmp/b.sock", 1000)
    assert parse(["--beanstalk", "tcp:11300"], {"ALLQ_BEANSTALK": "x"})["beanstalk"] == "tcp:11300"
    from twisted.python import usage
    with pytest.raises(usage.UsageError, match="beanstalk-max-job-size"):
        parse(["--beanstalk-max-job-size", "big"], {})


def test_two_servers_peek_ready_shows_the_most_urgent_and_ids_stay_distinct():
    """Jobs spread over two servers get distinct integer ids; peek-ready looks at both."""
    h = Harness(servers=2)
    conn = h.connect()
    assert h.send(conn, b"put 9 0 10 1\r\na\r\n") == b"INSERTED 1\r\n"
    assert h.send(conn, b"put 1 0 10 1\r\nb\r\n") == b"INSERTED 2\r\n"
    assert {len(link.queue) for link in h.links} == {1}
    assert h.send(conn, b"peek-ready\r\n") == b"FOUND 2 1\r\nb\r\n"
    assert h.send(conn, b"stats-tube default\r\n").count(b"current-jobs-ready: 2\n") == 1
    for _ in range(2):
        assert h.send(conn, b"reserve-with-timeout 0\r\n").startswith(b"RESERVED")
    conn[0].connectionLost()
    h.clock.advance(0)
    assert sum(t["ready"] for link in h.links for t in link.call("stats")["tubes"]) == 2
    h.federation.stopService()


# -- Federation.get_any, which the front-end's reserve uses ---------------------------------


def test_cancelling_a_waiting_get_any_gives_up_the_wait(h):
    d = h.federation.get_any(["a", "b"], wait=30)
    h.clock.advance(0.1)
    d.cancel()
    failures = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(CancelledError)
    h.links[0].call("put", tube="a", body="later")
    h.clock.pump([0.5] * 4)
    assert h.links[0].call("stats")["tubes"][0]["ready"] == 1  # nobody took it


def test_cancelling_get_any_while_a_server_answers_gives_the_jobs_back(h):
    h.links[0].call("put", tube="a", body="x")
    h.links[0].hold = True
    d = h.federation.get_any(["a", "b"], wait=30)
    d.cancel()
    d.addErrback(lambda f: f.trap(CancelledError))
    h.links[0].hold = False
    h.links[0].release_held()
    h.clock.advance(0)
    tube = h.links[0].call("stats")["tubes"][0]
    assert (tube["ready"], tube["reserved"]) == (1, 0)
