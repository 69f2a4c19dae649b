"""Shared base of the REST facade tests (``test_rest_*.py``).

:class:`RestTestCase` serves :class:`allq.client.rest.RestApi` through StubTreq
over a real :class:`allq.client.federation.Federation` whose server links are
:class:`memory_servers.MemoryLink` objects: real queues and dispatchers in
memory, with switches for a network that fails. Every test case runs twice:
over twisted.web alone, and over the client's httptools protocol
(:mod:`allq.client.fast_http`) in front of the same site (a twin class named
``...OverHttptools``, made in the test's module). Assertions about what the
facade asked of the federation are made on the wire requests the servers
received (:meth:`RestTestCase.sent`). Time is a ``task.Clock``; nothing sleeps.
"""

import json
import sys
from urllib.parse import quote

import attrs
import pytest
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from allq.client.fast_http import FastHTTPFactory
from allq.client.rest import RestApi
from allq.core.queue import QueueConfig

from memory_servers import FLUSH_STEP, local_addresses, result_with_flush, start_federation

MAX_BODY = 4096
MAX_JOB_SIZE = 1024
REQUEST_TIMEOUT = 30.0
#: Seconds a put or get retries with no server reachable before its 503 (default 5).
RETRY_BUDGET = 1.0
ADDRESS = "127.0.0.1:7711"


@attrs.frozen
class Reply:
    """One HTTP response, its body decoded as JSON."""

    code: int
    content_type: list
    headers: object
    json: object


def serve(api: RestApi, http_parser: str, resource=None) -> StubTreq:
    """A StubTreq for ``api`` (or ``resource``, ``api``'s by default) read by
    twisted.web (``"twisted"``) or by the httptools protocol in front of the same
    Site (``"httptools"``)."""
    stub = StubTreq(api.resource() if resource is None else resource)
    if http_parser == "httptools":
        agent = stub._agent  # treq.testing.RequestTraversalAgent: serves this factory
        agent._serverFactory = FastHTTPFactory(agent._serverFactory, api.fast_routes())
    return stub


class RestTestCase(SynchronousTestCase):
    """Shared setup: a clock, a real federation over one in-memory server, the
    facade under StubTreq."""

    #: Which protocol reads the requests (see :func:`serve`).
    http_parser = "twisted"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # A test module's case also runs over the httptools protocol: its twin.
        if "http_parser" in cls.__dict__ or not cls.__module__.startswith("test_"):
            return
        name = cls.__name__ + "OverHttptools"
        twin = type(cls)(name, (cls,), {"http_parser": "httptools",
                                        "__module__": cls.__module__, "__qualname__": name})
        setattr(sys.modules[cls.__module__], name, twin)

    def setUp(self):
        self.clock = Clock()
        self.federation = None
        self.federate(1)
        self.addCleanup(lambda: self.federation.stopService())

    def federate(self, count):
        """Serve over a new federation of ``count`` in-memory servers (7711, 7712, ...)
        instead of the current one; the links, in order."""
        if self.federation is not None:
            self.federation.stopService()
        self.federation, self.links = start_federation(
            self.clock, local_addresses(count, 7711),
            config=QueueConfig(max_job_size=MAX_JOB_SIZE), retry_budget=RETRY_BUDGET)
        self.api = RestApi(
            self.federation, self.clock, max_body=MAX_BODY, request_timeout=REQUEST_TIMEOUT)
        self.stub = self.serve(self.api)
        return list(self.links)

    def serve(self, api, resource=None):
        """A StubTreq for ``api`` over this case's HTTP path (:func:`serve`)."""
        return serve(api, self.http_parser, resource)

    @pytest.fixture(autouse=True)
    def _logged(self, observe_errors):
        """Gives tests the conftest's list of logged failures (to accept expected ones)."""
        self.logged = observe_errors

    def tearDown(self):
        # Every request above has ended: nothing may stay scheduled (STYLE rule 20),
        # not even a federation retry or long-poll timer.
        self.assertEqual(self.clock.getDelayedCalls(), [])

    # -- helpers -----------------------------------------------------------------

    def start(self, method, path, **kwargs):
        """Send a request; a Deferred firing with a :class:`Reply` (needs flushing)."""
        d = self.stub.request(method, "http://allq.test" + path, **kwargs)

        def read(response):
            def decode(body):
                return Reply(response.code, response.headers.getRawHeaders(b"content-type"),
                             response.headers, json.loads(body) if body else None)
            return response.content().addCallback(decode)

        return d.addCallback(read)

    def result_of_with_flush(self, d, step=FLUSH_STEP, limit=10_000):
        """Alternate ``stub.flush()`` and ``clock.advance(step)`` until ``d`` fires."""
        return result_with_flush(self, self.stub, self.clock, d, step, limit)

    def call(self, method, path, **kwargs):
        """Send a request and wait (on the clock) for its :class:`Reply`."""
        return self.result_of_with_flush(self.start(method, path, **kwargs))

    def ok(self, method, path, **kwargs):
        """Send a request that must succeed; its JSON body."""
        reply = self.call(method, path, **kwargs)
        self.assertEqual(reply.code, 200, reply.json)
        self.assertEqual(reply.content_type, [b"application/json"])
        return reply.json

    def assert_error(self, reply, status, code=None):
        """``reply`` is a JSON error with that status (and error code)."""
        self.assertEqual(reply.code, status, reply.json)
        self.assertEqual(reply.content_type, [b"application/json"])
        self.assertEqual(set(reply.json), {"error", "detail"})
        self.assertIsInstance(reply.json["detail"], str)
        if code is not None:
            self.assertEqual(reply.json["error"], code, reply.json)

    def error(self, status, code, method, path, **kwargs):
        """Send a request that must fail with ``status`` and error ``code``."""
        reply = self.call(method, path, **kwargs)
        self.assert_error(reply, status, code)
        return reply.json

    def put(self, tube="t", body="hello", **fields):
        """Put a job over REST; its id."""
        return self.ok("POST", "/job", json={"tube": tube, "body": body, **fields})["job_id"]

    def tube_stats(self, tube="t"):
        """The REST stats entry of ``tube`` on the only server."""
        [server] = self.ok("GET", "/stats")
        return {t["tube"]: t for t in server["stats"]}[tube]

    def stored(self, job_id):
        """The core's job record for a REST job id (single-server tests)."""
        return self.link().queue.job(int(job_id.split(",")[1]))

    # -- the in-memory servers ---------------------------------------------------

    def link(self, index=0):
        """The ``index``-th server link the federation made."""
        return self.links[index]

    def sent(self):
        """``(action, params)`` of every wire request any server received, link by link."""
        return [request for link in self.links for request in link.requests]

    def set_up(self, up):
        """Every server link up (or down: no server reachable)."""
        for link in self.links:
            link.up = up

    def hang(self):
        """Every server link takes requests and never answers them."""
        for link in self.links:
            link.hang = True


def q(job_id):
    """Percent-encode a job id for a query string."""
    return quote(job_id, safe="")


class FeatureTestCase(RestTestCase):
    """Helpers for tests that want several servers."""

    def holder(self, job_id):
        """The server link whose id prefixes ``job_id``."""
        return next(s for s in self.links if job_id.startswith(s.server_id + ","))

    def all_tubes(self, tube):
        """``tube``'s REST stats entry on every server that has it."""
        return [t for server in self.ok("GET", "/stats") for t in server["stats"]
                if t["tube"] == tube]


def served_operations():
    """(path, method) of every route registered on the Klein app."""
    return {
        (rule.rule, method.lower())
        for rule in RestApi.app.url_map.iter_rules()
        for method in rule.methods
    }


def documented_operations(document):
    """(path, method) of every operation in an OpenAPI document."""
    methods = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
    return {
        (path, method)
        for path, item in document["paths"].items()
        for method in item
        if method in methods
    }
