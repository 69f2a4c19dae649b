"""REST admin routes: stats, health, servers and their drain, and the OpenAPI document."""

import json
import os

from allq.vocabulary import JOB_ID

from rest_case import (
    ADDRESS,
    MAX_BODY,
    FeatureTestCase,
    RestTestCase,
    documented_operations,
    q,
    served_operations,
)


class AdminTests(RestTestCase):
    """GET /stats, GET /health, PUT /update_servers, PUT /drain, POST /add_server."""

    def test_stats_shape(self):
        """/stats lists servers as "<id>,<host>:<port>" with int counters and 2-decimal floats."""
        self.put()
        self.ok("GET", "/job?tube=t")
        [server] = self.ok("GET", "/stats")
        self.assertEqual(server["server_name"], f"{self.link().server_id},{ADDRESS}")
        self.assertEqual(set(server), {"server_name", "action_count", "job_put", "job_get",
                                       "draining", "disk_full", "events", "events_unmatched",
                                       "schedule_failures", "stats"})
        self.assertIs(server["disk_full"], False)
        self.assertGreater(server["action_count"], 1)
        self.assertEqual((server["job_put"], server["job_get"]), (1, 1))
        self.assertIs(server["draining"], False)
        self.assertEqual(server["stats"], [{"tube": "t", "ready": 0, "reserved": 1,
                                            "delayed": 0, "buried": 0, "parents": 0,
                                            "avg": 0.0, "tps": 0.0, "paused": False,
                                            "draining": False, "fair": None,
                                            "max_size": None, "concurrency": 1}])

    def test_stats_rounds_figures(self):
        """avg and tps are rounded to 2 decimals."""
        for _ in range(3):
            self.put()
        for seconds in (1, 1, 2):
            job_id = self.ok("GET", "/job?tube=t")["id"]
            self.clock.advance(seconds)
            self.ok("DELETE", f"/job?job_id={q(job_id)}")
        stats = self.tube_stats()
        self.assertEqual(stats["avg"], round(stats["avg"], 2))
        self.assertGreater(stats["avg"], 0)

    def test_stats_of_two_servers(self):
        """/stats has one entry per reachable server."""
        self.ok("POST", "/add_server", json={"server_url": "127.0.0.1:7712"})
        names = [s["server_name"] for s in self.ok("GET", "/stats")]
        self.assertEqual([n.split(",")[1] for n in names], [ADDRESS, "127.0.0.1:7712"])

    def test_health_up(self):
        """/health answers 200 with the federation's report when a server is up, and
        the pid of the process that answered."""
        self.assertEqual(self.ok("GET", "/health"), {
            "servers": [{"address": ADDRESS, "server_id": self.link().server_id,
                         "up": True, "draining": False}],
            "up": 1, "total": 1, "pid": os.getpid()})

    def test_health_down(self):
        """/health answers 503 with the same body when no server is up."""
        self.set_up(False)
        reply = self.call("GET", "/health")
        self.assertEqual(reply.code, 503)
        self.assertEqual(reply.content_type, [b"application/json"])
        self.assertEqual((reply.json["up"], reply.json["servers"][0]["up"]), (0, False))

    def test_update_servers(self):
        """PUT /update_servers replaces the set of servers and answers {}."""
        self.assertEqual(
            self.ok("PUT", "/update_servers?server_urls=127.0.0.1:7712,%20127.0.0.1:7713"), {})
        self.assertEqual([s["address"] for s in self.federation.health()["servers"]],
                         ["127.0.0.1:7712", "127.0.0.1:7713"])

    def test_update_servers_rejects_bad_lists(self):
        """Missing, empty or malformed server_urls answer 400 and change nothing."""
        self.error(400, "bad_request", "PUT", "/update_servers")
        self.error(400, "bad_request", "PUT", "/update_servers?server_urls=")
        self.error(400, "bad_request", "PUT", "/update_servers?server_urls=nohost")
        self.error(400, "bad_request", "PUT", "/update_servers?server_urls=h:1,h:99999")
        self.assertEqual([link.address for link in self.federation.links()], [ADDRESS])

    def test_drain_by_id_and_address(self):
        """PUT /drain accepts a server id or host:port; the server itself drains too."""
        server_id = self.link().server_id
        self.assertEqual(self.ok("PUT", f"/drain?server_id={server_id}"),
                         {"action": "drain", "server_id": server_id, "draining": True,
                          "notified": True})
        self.assertEqual(self.ok("PUT", f"/drain?server_id={ADDRESS}")["server_id"], ADDRESS)
        self.assertTrue(self.link().draining)
        self.assertTrue(self.link().queue.draining)
        self.assertTrue(self.ok("GET", "/stats")[0]["draining"])

    def test_drain_unknown_server(self):
        """Draining an unknown server answers 404; no server_id (nor tube) answers 400."""
        self.error(404, "not_found", "PUT", "/drain?server_id=nope")
        self.error(404, "not_found", "PUT", "/undrain?server_id=nope")
        self.error(400, "bad_request", "PUT", "/drain")
        self.error(400, "bad_request", "PUT", "/drain?server_id=")
        self.error(400, "bad_request", "PUT", "/undrain")

    def test_add_server_by_body_and_query(self):
        """POST /add_server takes {"server_url"} or ?server_url= and answers {"server_url"}."""
        self.assertEqual(self.ok("POST", "/add_server", json={"server_url": "10.0.0.1:7711"}),
                         {"server_url": "10.0.0.1:7711"})
        self.assertEqual(self.ok("POST", "/add_server?server_url=10.0.0.2:7711"),
                         {"server_url": "10.0.0.2:7711"})
        self.assertEqual(len(self.federation.links()), 3)

    def test_add_server_rejects_bad_input(self):
        """A malformed address, a missing one or a non-string one answers 400."""
        self.error(400, "bad_request", "POST", "/add_server", json={"server_url": "nope"})
        self.error(400, "bad_request", "POST", "/add_server")
        self.error(400, "bad_request", "POST", "/add_server", json={"server_url": 7711})
        self.error(400, "bad_request", "POST", "/add_server", json={"url": "h:1"})


class ServerDrainTests(FeatureTestCase):
    """PUT /drain?server_id= and /undrain?server_id= over several servers."""

    def test_puts_avoid_a_drained_server(self):
        """After draining one of three servers every put goes to the other two; its jobs
        can still be got; undrain brings it back."""
        servers = self.federate(3)
        held = [self.put(body=str(n)) for n in range(3)]
        drained = self.holder(held[0])
        reply = self.ok("PUT", f"/drain?server_id={drained.server_id}")
        self.assertEqual(reply["notified"], True)
        self.assertTrue(drained.queue.draining)
        for _ in range(6):
            self.assertIsNot(self.holder(self.put()), drained)
        got = [self.ok("GET", "/job?tube=t&delete=true")["id"] for _ in range(9)]
        self.assertIn(held[0], got)
        self.assertEqual(self.ok("PUT", f"/undrain?server_id={drained.address}"), {
            "action": "undrain", "server_id": drained.address, "draining": False,
            "notified": True})
        self.assertEqual(len({self.holder(self.put()).address for _ in range(3)}), 3)
        self.assertEqual(len(servers), 3)

    def test_every_server_draining_is_503(self):
        """When every server is draining a put answers 503 draining with a JSON body."""
        servers = self.federate(2)
        servers[0].call("drain")  # drained by another client
        self.ok("PUT", f"/drain?server_id={servers[1].address}")
        self.error(503, "draining", "POST", "/job", json={"tube": "t", "body": "x"})
        self.error(503, "draining", "POST", "/parent_job", json={"tube": "t", "body": "x"})

    def test_draining_a_down_server(self):
        """A down server is drained here at once and is told later (notified false)."""
        servers = self.federate(2)
        servers[0].up = False
        reply = self.ok("PUT", f"/drain?server_id={servers[0].address}")
        self.assertEqual((reply["draining"], reply["notified"]), (True, False))
        self.assertTrue(servers[0].draining)


class OpenApiTests(RestTestCase):
    """GET /openapi.json describes exactly what is served."""

    def document(self):
        """The served document."""
        return self.ok("GET", "/openapi.json")

    def test_routes_and_document_agree(self):
        """Every Klein route+method is documented and every documented one is served."""
        document = self.document()
        self.assertEqual(documented_operations(document), served_operations())
        self.assertEqual(len(served_operations()), 37)  # 26; 5 schedule, 4 interest, 1 concurrency, 1 jobs route

    def test_document_header(self):
        """It is an OpenAPI 3.1 document with unique operation ids."""
        document = self.document()
        self.assertEqual(document["openapi"], "3.1.0")
        ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
        self.assertEqual(len(ids), len(set(ids)))

    def test_every_ref_resolves(self):
        """Every $ref points at a component that exists."""
        document = self.document()

        def walk(node):
            if isinstance(node, dict):
                if "$ref" in node:
                    target = document
                    for part in node["$ref"].removeprefix("#/").split("/"):
                        self.assertIn(part, target, node["$ref"])
                        target = target[part]
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(document)

    def test_error_responses_are_documented(self):
        """Every operation documents 500; those taking input document 400."""
        document = self.document()
        for path, item in document["paths"].items():
            for method, op in item.items():
                self.assertIn("500", op["responses"], (path, method))
                if op["parameters"] or "requestBody" in op:
                    self.assertIn("400", op["responses"], (path, method))

    def test_documented_limits_are_the_enforced_ones(self):
        """The document states this facade's max_body and the job id pattern it checks."""
        document = self.document()
        self.assertIn(str(MAX_BODY), document["paths"]["/job"]["post"]["summary"])
        pattern = document["components"]["parameters"]["job_id"]["schema"]["pattern"]
        self.assertEqual(pattern, f"^{JOB_ID.pattern}$")

    def test_parameters_per_path(self):
        """The documented query parameters of GET /job and PUT /kick are the accepted ones."""
        document = self.document()
        params = document["components"]["parameters"]

        def names(path, method):
            refs = document["paths"][path][method]["parameters"]
            return {params[r["$ref"].rsplit("/", 1)[1]]["name"] for r in refs}

        self.assertEqual(names("/job", "get"), {"tube", "tube_name", "delete", "wait"})
        self.assertEqual(names("/kick", "put"), {"job_id", "tube", "tube_name", "count"})
        self.assertEqual(names("/release", "put"), {"job_id", "delay"})
        self.assertEqual(names("/drain", "put"), {"tube", "tube_name", "server_id"})
        self.assertEqual(names("/undrain", "put"), {"tube", "tube_name", "server_id"})
        self.assertEqual(names("/fair", "put"), {"tube", "tube_name", "policy"})
        self.assertEqual(names("/max_size", "put"), {"tube", "tube_name", "max_size"})
        self.assertEqual(names("/pause", "put"), {"tube", "tube_name"})

    def test_new_fields_and_errors_are_documented(self):
        """NewJob documents run_at, parent_id and shard_key; puts document 404 and 507."""
        document = self.document()
        fields = document["components"]["schemas"]["NewJob"]["properties"]
        self.assertLessEqual({"run_at", "parent_id", "shard_key", "expired_limit"}, set(fields))
        self.assertNotIn("not_supported", json.dumps(fields))
        for path in ("/job", "/parent_job"):
            self.assertLessEqual({"404", "503", "507"},
                                 set(document["paths"][path]["post"]["responses"]))
