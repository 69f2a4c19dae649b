"""Metrics (allq.client.metrics, allq.server.metrics, allq.stats_metrics) and the
client's site (allq.client.site, allq.client.dashboard), through StubTreq against
the real federation over in-memory servers, on a ``task.Clock``."""

import json

import attrs
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq

from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest
from werkzeug.routing import Map, Rule

from allq.client.dashboard import Dashboard
from allq.client.metrics import DEFAULT_STATS_INTERVAL, ClientMetrics, JobCounter, StatsRefresher
from allq.client.metrics_http import RouteNames, TimedResource
from allq.client.rest import RestApi
from allq.client.site import build_site
from allq.core.queue import Queue, QueueConfig
from allq.server.metrics import ServerMetrics, metrics_site
from allq.stats_metrics import stats_families

from memory_servers import FLUSH_STEP, result_with_flush, start_federation

ADDRESS = "127.0.0.1:7711"
REQUEST_TIMEOUT = 5.0
BASE = "http://localhost"


@attrs.frozen
class Reply:
    """One HTTP response with its raw body."""

    code: int
    headers: object
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.getRawHeaders(name)
        return None if values is None else values[0]


def samples(text: str) -> dict:
    """Every sample of an exposition, ``{(name, frozenset(labels)): value}``; parsing
    it with prometheus_client's own parser is part of the check."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: dict, name: str, **labels) -> float | None:
    return found.get((name, frozenset(labels.items())))


class SiteTestCase(SynchronousTestCase):
    """A one-server federation, counted by the metrics, behind the facade and the full site."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.federation, [self.link] = start_federation(
            self.clock, [ADDRESS], config=QueueConfig(), retry_budget=1.0)
        self.addCleanup(self.federation.stopService)
        self.metrics = ClientMetrics(self.clock, health=self.federation.health, process=False)
        self.federation.observe(JobCounter(self.metrics))
        self.api = RestApi(self.federation, self.clock, request_timeout=REQUEST_TIMEOUT)
        self.site = build_site(self.api.resource(), self.metrics, Dashboard())
        self.stub = StubTreq(self.site.resource)

    def tearDown(self):
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def call(self, method, path, limit=10_000, **kwargs) -> Reply:
        """Send a request; alternate flushing and advancing the clock until it answers."""
        d = self.stub.request(method, BASE + path, **kwargs)
        d.addCallback(lambda r: r.content().addCallback(
            lambda body: Reply(r.code, r.headers, body)))
        return result_with_flush(self, self.stub, self.clock, d, limit=limit)

    def json(self, method, path, **kwargs):
        reply = self.call(method, path, **kwargs)
        self.assertEqual(reply.code, 200, reply.body)
        return json.loads(reply.body)

    def scrape(self) -> dict:
        reply = self.call("GET", "/metrics")
        self.assertEqual(reply.code, 200)
        return samples(reply.body.decode("utf-8"))


class ExpositionTests(SiteTestCase):
    def test_metrics_is_prometheus_text_that_parses(self):
        """GET /metrics answers Prometheus text that prometheus_client's parser reads."""
        reply = self.call("GET", "/metrics")
        self.assertEqual(reply.code, 200)
        self.assertTrue(reply.header(b"content-type").startswith(b"text/plain; version=0.0.4"))
        names = {f.name for f in text_string_to_metric_families(reply.body.decode())}
        for name in ("allq_client_jobs", "allq_client_request_duration_seconds",
                     "allq_client_server_up", "allq_tube_jobs", "allq_server_jobs_put",
                     "allq_client_stats_age_seconds", "allq_client_build_info"):
            self.assertIn(name, names)

    def test_openmetrics_on_request(self):
        """An OpenMetrics Accept header gets the OpenMetrics format."""
        reply = self.call("GET", "/metrics",
                          headers={"accept": "application/openmetrics-text; version=1.0.0"})
        self.assertTrue(reply.header(b"content-type").startswith(b"application/openmetrics-text"))
        self.assertTrue(reply.body.endswith(b"# EOF\n"))

    def test_metrics_refuses_other_methods(self):
        """POST /metrics is a JSON 405, like the API's."""
        reply = self.call("POST", "/metrics")
        self.assertEqual(reply.code, 405)
        self.assertEqual(json.loads(reply.body)["error"], "method_not_allowed")

    def test_server_up_gauge_follows_health(self):
        """allq_client_server_up is 1 while a server is up and 0 once it is down."""
        server_id = self.link.server_id
        self.assertEqual(value(self.scrape(), "allq_client_server_up",
                               address=ADDRESS, server=server_id), 1)
        self.link.up = False
        self.assertEqual(value(self.scrape(), "allq_client_server_up",
                               address=ADDRESS, server=server_id), 0)


class JobCounterTests(SiteTestCase):
    def put(self, tube="emails", body="x"):
        return self.json("POST", "/job", json={"tube": tube, "body": body})["job_id"]

    def test_puts_gets_and_deletes_are_counted_by_tube(self):
        """Counters move after puts, gets and deletes, labelled with the tube."""
        self.put()
        self.put()
        job = self.json("GET", "/job?tube=emails")
        self.json("DELETE", f"/job?job_id={job['id']}")
        found = self.scrape()
        self.assertEqual(value(found, "allq_client_jobs_total", tube="emails", action="put"), 2)
        self.assertEqual(value(found, "allq_client_jobs_total", tube="emails", action="get"), 1)
        self.assertEqual(
            value(found, "allq_client_jobs_total", tube="emails", action="delete"), 1)

    def test_batches_count_each_job(self):
        """A batch put counts each job stored; a batch delete each job deleted, and
        each job that failed as an error of its operation."""
        reply = self.call("POST", "/multiple_job", json={
            "tube": "emails", "jobs": [{"body": "a"}, {"body": "b"}, {"tube": "sms"}]})
        job_ids = json.loads(reply.body)["job_ids"]
        server_id = self.link.server_id
        reply = self.call("DELETE", "/multiple_job",
                          json={"job_ids": job_ids + [f"{server_id},12345"]})
        self.assertEqual(reply.code, 404)
        found = self.scrape()
        self.assertEqual(value(found, "allq_client_jobs_total", tube="emails", action="put"), 2)
        self.assertEqual(value(found, "allq_client_jobs_total", tube="sms", action="put"), 1)
        self.assertEqual(
            value(found, "allq_client_jobs_total", tube="emails", action="delete"), 2)
        self.assertEqual(value(found, "allq_client_jobs_total", tube="sms", action="delete"), 1)
        self.assertEqual(value(found, "allq_client_operation_errors_total",
                               operation="delete", error="not_found"), 1)

    def test_bury_and_kick_by_tube(self):
        """A bury of a job handed out here carries its tube; a tube kick counts each job."""
        self.put()
        job = self.json("GET", "/job?tube=emails")
        self.json("PUT", f"/bury?job_id={job['id']}")
        kicked = self.json("PUT", "/kick?tube=emails&count=5")
        self.assertEqual(len(kicked["job_ids"]), 1)
        found = self.scrape()
        self.assertEqual(value(found, "allq_client_jobs_total", tube="emails", action="bury"), 1)
        self.assertEqual(value(found, "allq_client_jobs_total", tube="emails", action="kick"), 1)

    def test_get_with_delete_counts_a_delete(self):
        """GET /job?delete=true counts one get and one delete."""
        self.put()
        self.json("GET", "/job?tube=emails&delete=true")
        found = self.scrape()
        self.assertEqual(value(found, "allq_client_jobs_total", tube="emails", action="get"), 1)
        self.assertEqual(
            value(found, "allq_client_jobs_total", tube="emails", action="delete"), 1)

    def test_action_on_a_job_not_seen_here_has_an_empty_tube(self):
        """A job action on an id this client never handled is counted with tube=""."""
        federation, _ = start_federation(self.clock, [ADDRESS])
        self.addCleanup(federation.stopService)
        federation.observe(JobCounter(self.metrics, remembered=1))
        api = RestApi(federation, self.clock, request_timeout=REQUEST_TIMEOUT)
        self.stub = StubTreq(build_site(api.resource(), self.metrics, None).resource)
        first = self.put("a")
        self.put("b")  # pushes the first id out of a memory of one
        self.json("DELETE", f"/job?job_id={first}")
        self.assertEqual(
            value(self.scrape(), "allq_client_jobs_total", tube="", action="delete"), 1)

    def test_errors_are_counted_by_operation_and_code(self):
        """A failed job action counts under allq_client_operation_errors_total."""
        server_id = self.link.server_id
        reply = self.call("DELETE", f"/job?job_id={server_id},12345")
        self.assertEqual(reply.code, 404)
        self.assertEqual(value(self.scrape(), "allq_client_operation_errors_total",
                               operation="delete", error="not_found"), 1)

    def test_clear_counts_the_jobs_cleared(self):
        """DELETE /tube counts the cleared jobs."""
        self.put()
        self.put()
        self.json("DELETE", "/tube?tube=emails")
        self.assertEqual(
            value(self.scrape(), "allq_client_jobs_total", tube="emails", action="clear"), 2)


class RetryTests(SiteTestCase):
    def test_retries_are_counted_by_operation_and_server(self):
        """The federation reports its retries; JobCounter counts them by operation and
        the server that failed (empty: a backoff round with no server reachable)."""
        self.link.up = False
        reply = self.call("POST", "/job", json={"tube": "t", "body": "x"})
        self.assertEqual(reply.code, 503)
        found = self.scrape()
        self.assertGreaterEqual(
            value(found, "allq_client_retries_total", operation="put", server=""), 1)
        self.link.up = True
        self.link.lose_next = 1  # stored, then the reply is lost: retried on that server
        self.link_back_after_loss()
        self.assertEqual(self.call("POST", "/job", json={"tube": "t", "body": "y"}).code, 200)
        self.assertEqual(value(self.scrape(), "allq_client_retries_total",
                               operation="put", server=ADDRESS), 1)

    def link_back_after_loss(self):
        """A lost reply takes the link down; bring it back on the next clock step."""
        link, clock = self.link, self.clock
        original = link.request

        def request(action, params):
            d = original(action, params)
            if not link.up:
                clock.callLater(FLUSH_STEP, setattr, link, "up", True)
            return d

        link.request = request

    def test_a_counter_reports_what_it_is_told(self):
        """JobCounter is a plain observer: what the federation reports is counted."""
        metrics = ClientMetrics(Clock(), process=False)
        counter = JobCounter(metrics)
        counter.retried("put", "127.0.0.1:7711")
        counter.retried("get", None)
        counter.failed("delete", "not_found")
        found = samples(metrics.exposition()[0].decode())
        self.assertEqual(value(found, "allq_client_retries_total",
                               operation="put", server="127.0.0.1:7711"), 1)
        self.assertEqual(value(found, "allq_client_retries_total", operation="get", server=""), 1)
        self.assertEqual(value(found, "allq_client_operation_errors_total",
                               operation="delete", error="not_found"), 1)


class LatencyTests(SiteTestCase):
    def test_requests_are_observed_by_method_route_and_status(self):
        """Each request lands in the histogram under its route template and status class."""
        self.json("POST", "/job", json={"tube": "t", "body": "x"})
        self.json("POST", "/job", json={"tube": "t", "body": "y"})
        self.assertEqual(self.call("GET", "/no/such/thing").code, 404)
        found = self.scrape()
        self.assertEqual(value(found, "allq_client_request_duration_seconds_count",
                               method="POST", route="/job", status="2xx"), 2)
        self.assertEqual(value(found, "allq_client_request_duration_seconds_count",
                               method="GET", route="other", status="4xx"), 1)

    def test_latency_is_measured_until_the_response_ends(self):
        """A call that hangs until the 504 is observed with the time it took."""
        self.link.hang = True
        self.assertEqual(self.call("GET", "/stats").code, 504)
        found = self.scrape()
        labels = dict(method="GET", route="/stats", status="5xx")
        total = value(found, "allq_client_request_duration_seconds_sum", **labels)
        self.assertAlmostEqual(total, REQUEST_TIMEOUT, delta=FLUSH_STEP * 2)
        self.assertEqual(value(found, "allq_client_request_duration_seconds_bucket",
                               le="2.5", **labels), 0)
        self.assertEqual(value(found, "allq_client_request_duration_seconds_bucket",
                               le="10.0", **labels), 1)

    def test_a_request_whose_caller_goes_away_is_aborted(self):
        """The connection closing before the response ends is observed as aborted."""
        clock = Clock()
        metrics = ClientMetrics(clock, process=False)

        class Slow(Resource):
            isLeaf = True

            def render(self, request):
                return NOT_DONE_YET

        timed = TimedResource(Slow(), metrics, RouteNames.of(["/slow"]), clock)
        request = DummyRequest([b"slow"])
        request.path = b"/slow"
        self.assertEqual(timed.render(request), NOT_DONE_YET)
        clock.advance(3)
        request.processingFailed(Failure(ConnectionLost()))
        found = samples(metrics.exposition()[0].decode())
        self.assertEqual(value(found, "allq_client_request_duration_seconds_sum",
                               method="GET", route="/slow", status="aborted"), 3)


class RouteNameTests(SynchronousTestCase):
    def test_rest_routes_are_their_own_names(self):
        """Paths of the REST app name themselves; anything else is "other"."""
        routes = RouteNames(RestApi.app.url_map)
        self.assertEqual(routes.name("GET", b"/job"), "/job")
        self.assertEqual(routes.name("PUT", b"/kick"), "/kick")
        self.assertEqual(routes.name("GET", b"/job/"), "/job")  # served as /job
        self.assertEqual(routes.name("GET", b"/secret-\xff"), "other")

    def test_rules_with_arguments_name_their_template(self):
        """A rule with a converter names the template, not the concrete path."""
        routes = RouteNames(Map([Rule("/jobs/<job_id>", endpoint="job"),
                                 Rule("/stats", endpoint="stats")]))
        self.assertEqual(routes.name("GET", b"/jobs/a,1"), "/jobs/<job_id>")
        self.assertEqual(routes.name("GET", b"/stats"), "/stats")
        self.assertEqual(routes.name("GET", b"/nope"), "other")


class SnapshotTests(SiteTestCase):
    def start_refresher(self, **kwargs) -> StatsRefresher:
        refresher = StatsRefresher(self.federation, self.metrics, self.clock, **kwargs)
        refresher.startService()
        self.addCleanup(lambda: refresher.running and refresher.stopService())
        return refresher

    def test_queue_depths_come_from_the_refreshed_snapshot(self):
        """After a put, the next refresh shows the tube's ready count in /metrics."""
        server_id = self.link.server_id
        self.start_refresher()
        self.json("POST", "/job", json={"tube": "emails", "body": "x"})
        labels = dict(server=server_id, tube="emails")
        self.assertIsNone(value(self.scrape(), "allq_tube_jobs", state="ready", **labels))
        self.clock.advance(DEFAULT_STATS_INTERVAL)
        found = self.scrape()
        self.assertEqual(value(found, "allq_tube_jobs", state="ready", **labels), 1)
        self.assertEqual(value(found, "allq_tube_jobs", state="buried", **labels), 0)
        self.assertEqual(value(found, "allq_server_jobs_put_total", server=server_id), 1)
        self.assertLess(value(found, "allq_client_stats_age_seconds"), DEFAULT_STATS_INTERVAL)

    def test_a_failed_refresh_drops_the_depths_and_is_counted(self):
        """When no server answers, depths disappear and the failure is counted, not logged
        as an error."""
        self.start_refresher()
        self.json("POST", "/job", json={"tube": "emails", "body": "x"})
        self.clock.advance(DEFAULT_STATS_INTERVAL)
        self.link.up = False
        self.clock.advance(DEFAULT_STATS_INTERVAL)
        found = self.scrape()
        self.assertFalse([k for k in found if k[0] == "allq_tube_jobs"])
        self.assertEqual(value(found, "allq_client_stats_refresh_failures_total"), 1)

    def test_stopping_leaves_no_timer_and_cancels_a_hung_fetch(self):
        """stopService cancels the fetch in flight; no delayed call is left behind."""
        self.link.hang = True
        refresher = self.start_refresher(timeout=60)
        stopped = refresher.stopService()
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(value(self.scrape(), "allq_client_stats_refresh_failures_total"), 0)

    def test_a_slow_fetch_times_out_and_the_next_one_runs(self):
        """A fetch slower than the timeout is given up; the loop goes on."""
        self.link.hang = True
        self.start_refresher(interval=5, timeout=2)
        self.clock.advance(2)
        self.assertEqual(
            value(self.scrape(), "allq_client_stats_refresh_failures_total"), 1)
        self.link.hang = False
        self.clock.advance(3)
        self.assertIsNotNone(value(self.scrape(), "allq_client_stats_age_seconds"))


class SiteTests(SiteTestCase):
    def test_the_dashboard_is_served_at_the_root(self):
        """GET / is the dashboard page, with a CSP that forbids framing and inline script."""
        reply = self.call("GET", "/")
        self.assertEqual(reply.code, 200)
        self.assertEqual(reply.header(b"content-type"), b"text/html; charset=utf-8")
        self.assertIn(b"static/dashboard.js", reply.body)
        csp = reply.header(b"content-security-policy")
        self.assertIn(b"frame-ancestors 'none'", csp)
        self.assertIn(b"script-src 'self'", csp)

    def test_static_files_are_served_and_nothing_else(self):
        """/static/<file> serves the shipped files; unknown names and traversal are 404."""
        reply = self.call("GET", "/static/dashboard.js")
        self.assertEqual(reply.code, 200)
        self.assertEqual(reply.header(b"content-type"), b"text/javascript; charset=utf-8")
        self.assertEqual(self.call("GET", "/static/dashboard.css").code, 200)
        for path in ("/static/nope.js", "/static/..%2Fdashboard.py", "/static/",
                     "/static/a/b"):
            reply = self.call("GET", path)
            self.assertEqual(reply.code, 404, path)
            self.assertEqual(json.loads(reply.body)["error"], "not_found")

    def test_an_unchanged_file_is_not_sent_again(self):
        """If-None-Match with the ETag answers 304."""
        etag = self.call("GET", "/static/dashboard.css").header(b"etag")
        reply = self.call("GET", "/static/dashboard.css", headers={"if-none-match": etag})
        self.assertEqual(reply.code, 304)

    def test_the_dashboard_only_reads(self):
        """POST / is a JSON 405."""
        reply = self.call("POST", "/")
        self.assertEqual(reply.code, 405)

    def test_every_other_path_goes_to_the_rest_api(self):
        """REST routes and the API's own JSON 404 work behind the site root."""
        self.assertEqual(self.json("GET", "/health")["up"], 1)
        reply = self.call("GET", "/no/such/route")
        self.assertEqual(reply.code, 404)
        self.assertEqual(json.loads(reply.body)["error"], "not_found")

    def test_without_metrics_or_dashboard_everything_is_the_api(self):
        """build_site with neither leaves / and /metrics to the REST API (404 there)."""
        self.stub = StubTreq(build_site(self.api.resource(), None, None).resource)
        self.assertEqual(self.call("GET", "/metrics").code, 404)
        self.assertEqual(self.call("GET", "/").code, 404)


class StatsFamiliesTests(SynchronousTestCase):
    def test_optional_counters_are_exported_when_a_server_sends_them(self):
        """expired_total and buried_total per tube become allq_tube_expired/buried_total."""
        stats = {"server_id": "s1", "global": {"action_count": 3, "job_put": 2, "job_get": 1},
                 "tubes": [{"tube": "t", "ready": 1, "reserved": 0, "delayed": 0,
                            "buried": 1, "parents": 0, "tps": 0.5, "avg": 0.1,
                            "expired_total": 4, "buried_total": 1}]}
        families = {f.name: f for f in stats_families([stats])}
        expired = families["allq_tube_expired"].samples
        self.assertEqual([(s.name, s.labels, s.value) for s in expired],
                         [("allq_tube_expired_total", {"server": "s1", "tube": "t"}, 4.0)])
        self.assertEqual(families["allq_tube_buried"].samples[0].value, 1.0)

    def test_older_servers_have_no_expiry_series(self):
        """Without those fields, the families exist but carry no samples."""
        stats = {"server_id": "s1", "global": {"action_count": 0, "job_put": 0, "job_get": 0},
                 "tubes": [{"tube": "t", "ready": 0, "reserved": 0, "delayed": 0,
                            "buried": 0, "parents": 0, "tps": 0, "avg": 0}]}
        families = {f.name: f for f in stats_families([stats])}
        self.assertEqual(families["allq_tube_expired"].samples, [])


class ServerMetricsTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.queue = Queue(QueueConfig(), started=self.clock.seconds())
        self.metrics = ServerMetrics(self.queue, self.clock, lambda: "s1", process=False)
        self.stub = StubTreq(metrics_site(self.metrics).resource)

    def get(self, path, method="GET"):
        d = self.stub.request(method, BASE + path)
        d.addCallback(lambda r: r.content().addCallback(
            lambda body: Reply(r.code, r.headers, body)))
        self.stub.flush()
        return self.successResultOf(d)

    def test_queue_figures_are_exported_with_the_server_id(self):
        """A server's /metrics has its tubes' depths and counters, labelled server=s1."""
        self.queue.put("t", "a", now=self.clock.seconds())
        self.queue.put("t", "b", now=self.clock.seconds())
        (job,) = self.queue.get("t", now=self.clock.seconds())
        self.queue.bury(job.id, now=self.clock.seconds())
        reply = self.get("/metrics")
        self.assertEqual(reply.code, 200)
        found = samples(reply.body.decode())
        self.assertEqual(value(found, "allq_tube_jobs", server="s1", tube="t", state="ready"), 1)
        self.assertEqual(value(found, "allq_tube_jobs", server="s1", tube="t", state="buried"), 1)
        self.assertEqual(value(found, "allq_server_jobs_put_total", server="s1"), 2)
        self.assertEqual(value(found, "allq_server_jobs", server="s1"), 2)
        self.assertEqual(value(found, "allq_server_build_info",
                               server="s1", version=__import__("allq").__version__), 1)

    def test_only_metrics_is_served(self):
        """Other paths are 404 and other methods 405."""
        self.assertEqual(self.get("/job").code, 404)
        self.assertEqual(self.get("/metrics", method="POST").code, 405)
