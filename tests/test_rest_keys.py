"""REST unique jobs and concurrency keys over in-memory servers: duplicates, the
routing of keyed puts to one server, its outage and drain, bad input."""

from allq.client.keyed import score

from rest_case import FeatureTestCase, q


class UniqueJobTests(FeatureTestCase):

    def test_a_put_with_a_live_unique_key_answers_the_first_job_as_a_duplicate(self):
        first = self.ok("POST", "/job", json={"tube": "t", "body": "a", "unique_key": "r-1"})
        self.assertEqual(first, {"action": "put", "job_id": first["job_id"]})
        again = self.ok("POST", "/job", json={"tube": "t", "body": "b", "unique_key": "r-1"})
        self.assertEqual(again, {"action": "put", "job_id": first["job_id"], "duplicate": True})
        self.assertEqual(self.tube_stats()["ready"], 1)
        job = self.ok("GET", "/job?tube=t")
        self.ok("DELETE", f"/job?job_id={q(job['id'])}")
        third = self.ok("POST", "/job", json={"tube": "t", "body": "c", "unique_key": "r-1"})
        self.assertNotIn("duplicate", third)

    def test_keyed_puts_go_to_the_server_the_key_chooses(self):
        links = self.federate(3)
        for n in range(12):
            key = f"customer-{n}"
            winner = max(links, key=lambda link: score(link.server_id, key))
            for body in ("a", "b"):
                job_id = self.put(body=body, unique_key=key)
                self.assertTrue(job_id.startswith(winner.server_id + ","), (key, job_id))
            job_id = self.put(body="c", concurrency_key=key)
            self.assertTrue(job_id.startswith(winner.server_id + ","))
        self.assertEqual(sum(len(link.queue) for link in links), 24)

    def test_a_batch_marks_its_duplicates_by_index(self):
        self.federate(2)
        reply = self.ok("POST", "/multiple_job", json={"tube": "t", "jobs": [
            {"body": "a", "unique_key": "k1"}, {"body": "b"},
            {"body": "c", "unique_key": "k1"}, {"body": "d", "unique_key": "k2"}]})
        ids = reply["job_ids"]
        self.assertEqual(reply["duplicates"], [2])
        self.assertEqual(ids[0], ids[2])
        self.assertEqual(len(set(ids)), 3)

    def test_while_the_keys_server_is_down_a_keyed_put_is_refused_not_placed_elsewhere(self):
        links = self.federate(2)
        key = "report-9"
        winner = max(links, key=lambda link: score(link.server_id, key))
        first = self.put(unique_key=key)
        winner.up = False
        self.error(503, "unavailable", "POST", "/job",
                   json={"tube": "t", "body": "x", "unique_key": key})
        self.error(503, "unavailable", "POST", "/job",
                   json={"tube": "t", "body": "x", "concurrency_key": key})
        self.put(body="plain")  # a plain put still goes to the other server
        winner.up = True
        again = self.ok("POST", "/job", json={"tube": "t", "body": "y", "unique_key": key})
        self.assertEqual(again["job_id"], first)
        self.assertTrue(again["duplicate"])

    def test_while_the_keys_server_drains_a_keyed_put_is_refused(self):
        links = self.federate(2)
        key = "report-3"
        winner = max(links, key=lambda link: score(link.server_id, key))
        self.ok("PUT", f"/drain?server_id={q(winner.server_id)}")
        self.error(503, "draining", "POST", "/job",
                   json={"tube": "t", "body": "x", "unique_key": key})
        self.ok("PUT", f"/undrain?server_id={q(winner.server_id)}")
        self.put(unique_key=key)

    def test_bad_keys_are_400_and_store_nothing(self):
        for fields, message in [
            ({"unique_key": 5}, "unique_key must be a string"),
            ({"unique_key": "k" * 201}, "unique_key must be a string of 1-200"),
            ({"concurrency_key": ""}, "concurrency_key must be a string"),
            ({"concurrency_key": "a\tb"}, "without control characters"),
            ({"unique_key": "k", "parent_id": "srv,1"}, "a child job goes to its parent"),
        ]:
            reply = self.error(400, "bad_request", "POST", "/job",
                               json={"tube": "t", "body": "x", **fields})
            self.assertIn(message, reply["detail"])
        reply = self.error(400, "bad_request", "POST", "/parent_job",
                           json={"tube": "t", "body": "x", "unique_key": "k"})
        self.assertIn("unique_key", reply["detail"])
        self.assertEqual(self.sent(), [])


class ConcurrencyTests(FeatureTestCase):

    def test_one_job_of_a_key_at_a_time_then_a_limit_of_two_on_every_server(self):
        links = self.federate(2)
        for n in range(3):
            self.put(body=f"a{n}", concurrency_key="acct-1")
        self.put(body="b0", concurrency_key="acct-2")
        got = self.ok("GET", "/multiple_job?tube=t&count=10")["jobs"]
        self.assertEqual(sorted(job["body"] for job in got), ["a0", "b0"])
        self.assertEqual(self.ok("GET", "/multiple_job?tube=t&count=10")["jobs"], [])
        reply = self.ok("PUT", "/concurrency?tube=t&limit=2")
        self.assertEqual(reply, {"action": "concurrency", "tube": "t", "limit": 2, "servers": 2})
        self.assertEqual([link.queue.concurrency("t") for link in links], [2, 2])
        self.assertEqual([{t["tube"]: t for t in server["stats"]}["t"]["concurrency"]
                          for server in self.ok("GET", "/stats")], [2, 2])
        (more,) = self.ok("GET", "/multiple_job?tube=t&count=10")["jobs"]
        self.assertEqual(more["body"], "a1")
        a0 = next(job for job in got if job["body"] == "a0")
        self.ok("DELETE", f"/job?job_id={q(a0['id'])}")
        (last,) = self.ok("GET", "/multiple_job?tube=t&count=10")["jobs"]
        self.assertEqual(last["body"], "a2")

    def test_bad_limits_are_400(self):
        for query in ("limit=0", "limit=10001", "limit=two", "limit=1.5"):
            self.error(400, "bad_request", "PUT", f"/concurrency?tube=t&{query}")
        self.error(400, "bad_request", "PUT", "/concurrency?limit=2")
