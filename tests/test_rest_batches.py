"""REST batches: POST /multiple_job (batch put) and DELETE /multiple_job."""


from allq.client.rest import RestApi
from allq.vocabulary import MAX_COUNT
from allq.errors import Unavailable

from rest_case import MAX_JOB_SIZE, REQUEST_TIMEOUT, RestTestCase


class BatchTests(RestTestCase):
    """POST /multiple_job (batch put) and DELETE /multiple_job (batch delete)."""

    def put_batch(self, jobs, **defaults):
        return self.call("POST", "/multiple_job", json={"jobs": jobs, **defaults})

    def allow_big_bodies(self):
        """Serve with a body limit that lets a batch of over MAX_COUNT entries in."""
        api = RestApi(self.federation, self.clock, max_body=1_000_000, request_timeout=REQUEST_TIMEOUT)
        self.stub = self.serve(api)

    def test_batch_put_answers_every_id_in_order(self):
        reply = self.put_batch([{"tube": "t", "body": f"job {n}"} for n in range(5)])
        self.assertEqual(reply.code, 200, reply.json)
        self.assertEqual(reply.json["action"], "put")
        job_ids = reply.json["job_ids"]
        self.assertEqual(len(set(job_ids)), 5)
        got = self.ok("GET", "/multiple_job?tube=t&count=10")["jobs"]
        self.assertEqual([job["id"] for job in got], job_ids)
        self.assertEqual([job["body"] for job in got], [f"job {n}" for n in range(5)])

    def test_top_level_fields_are_defaults_a_job_may_override(self):
        reply = self.put_batch([{"body": "a"}, {"body": "b", "tube": "other", "priority": 1}],
                               tube="t", priority=7)
        first, second = reply.json["job_ids"]
        self.assertEqual(self.stored(first).tube, "t")
        self.assertEqual(self.stored(first).priority, 7)
        self.assertEqual(self.stored(second).tube, "other")
        self.assertEqual(self.stored(second).priority, 1)

    def test_one_bad_job_rejects_the_batch_before_anything_is_stored(self):
        reply = self.put_batch([{"tube": "t", "body": "fine"}, {"tube": "t", "ttl": -1}])
        self.assert_error(reply, 400, "bad_request")
        self.assertIn("jobs[1]", reply.json["detail"])
        self.assertEqual(self.sent(), [])

    def test_malformed_batch_puts(self):
        self.allow_big_bodies()
        for body, words in [
            ({}, "jobs must be a list"),
            ({"jobs": []}, "jobs must be a list"),
            ({"jobs": "x"}, "jobs must be a list"),
            ({"jobs": [{"tube": "t"}] * (MAX_COUNT + 1)}, "jobs must be a list"),
            ({"jobs": ["x"]}, "jobs[0] must be a JSON object"),
            ({"jobs": [{"tube": "t"}], "body": "shared"}, "unknown field 'body'"),
            ({"jobs": [{"tube": "t"}], "colour": 1}, "unknown field 'colour'"),
            ({"jobs": [{"tube": "t", "colour": 1}]}, "jobs[0]: unknown field"),
            ({"jobs": [{"body": "no tube"}]}, "jobs[0]: "),
        ]:
            reply = self.call("POST", "/multiple_job", json=body)
            self.assert_error(reply, 400, "bad_request")
            self.assertIn(words, reply.json["detail"])
        self.error(400, "bad_request", "POST", "/multiple_job", data=b"[1, 2]")
        self.error(400, "bad_request", "POST", "/multiple_job", data=b"{nope")
        self.error(413, "too_large", "POST", "/multiple_job",
                   json={"jobs": [{"tube": "t", "body": "x" * 1_000_000}]})
        self.assertEqual(self.sent(), [])

    def test_a_job_the_server_refuses_fails_alone(self):
        """A body over the servers' job size limit fails that job (413), not the batch."""
        reply = self.put_batch([{"tube": "t", "body": "ok"},
                                {"tube": "t", "body": "x" * (MAX_JOB_SIZE + 1)}])
        self.assertEqual(reply.code, 413, reply.json)
        self.assertEqual(reply.json["error"], "too_large")
        stored, refused = reply.json["job_ids"]
        self.assertIsNone(refused)
        self.assertEqual(self.stored(stored).body, "ok")

    def test_partly_failed_put_names_what_was_stored(self):
        """A failed job gives the answer its status; the stored ones keep their ids."""
        link = self.link()
        link.fail_next(None)  # the first put goes through, the second fails
        link.fail_next(Unavailable("no server reachable"))
        link.hold = True
        d = self.start("POST", "/multiple_job",
                       json={"jobs": [{"tube": "t", "body": str(n)} for n in range(3)]})
        self.stub.flush()
        # The server answers the frame, then goes away for longer than the retry
        # budget: the second job's retries find no server.
        link.up = False
        link.release_held()
        reply = self.result_of_with_flush(d)
        # The server answered "unavailable" for the second job: it may hold it, so
        # its outcome is unknown (504), with the key that retries it safely.
        self.assertEqual(reply.code, 504, reply.json)
        self.assertEqual(reply.json["error"], "outcome_unknown")
        self.assertEqual(reply.json["action"], "put")
        ids = reply.json["job_ids"]
        self.assertEqual(len(ids), 3)
        self.assertEqual(ids[1], None)
        [error] = reply.json["errors"]
        self.assertEqual(error["index"], 1)
        self.assertEqual(error["error"], "outcome_unknown")
        server_id = ids[0].split(",")[0]
        self.assertTrue(error["idempotency_key"].startswith(server_id + ":"))
        for job_id in ids:
            if job_id is not None:
                self.assertEqual(self.stored(job_id).tube, "t")

    def test_batch_delete(self):
        job_ids = self.put_batch([{"tube": "t", "body": str(n)} for n in range(4)]).json["job_ids"]
        self.ok("GET", "/multiple_job?tube=t&count=2")  # two reserved, two ready
        reply = self.call("DELETE", "/multiple_job", json={"job_ids": job_ids})
        self.assertEqual(reply.code, 200, reply.json)
        self.assertEqual(reply.json, {"action": "delete", "job_ids": job_ids})
        stats = self.tube_stats()
        self.assertEqual((stats["ready"], stats["reserved"]), (0, 0))

    def test_partly_failed_delete_names_what_was_deleted(self):
        [job_id] = self.put_batch([{"tube": "t"}]).json["job_ids"]
        unknown = job_id.split(",")[0] + ",1"
        reply = self.call("DELETE", "/multiple_job", json={"job_ids": [job_id, unknown]})
        self.assertEqual(reply.code, 404, reply.json)
        self.assertEqual(reply.json["job_ids"], [job_id, None])
        self.assertEqual([e["index"] for e in reply.json["errors"]], [1])
        self.assertEqual(self.tube_stats()["ready"], 0)

    def test_malformed_batch_deletes(self):
        self.allow_big_bodies()
        for body, words in [
            ({}, "job_ids must be a list"),
            ({"job_ids": []}, "job_ids must be a list"),
            ({"job_ids": "a,1"}, "job_ids must be a list"),
            ({"job_ids": ["a,1"] * (MAX_COUNT + 1)}, "job_ids must be a list"),
            ({"job_ids": ["a,1", "nope"]}, "job_ids[1] must look like"),
            ({"job_ids": ["a,1", 5]}, "job_ids[1] must look like"),
            ({"job_ids": ["a,1"], "tube": "t"}, "unknown field 'tube'"),
        ]:
            reply = self.call("DELETE", "/multiple_job", json=body)
            self.assert_error(reply, 400, "bad_request")
            self.assertIn(words, reply.json["detail"])
        self.error(400, "bad_request", "DELETE", "/multiple_job")  # no body at all
        self.assertEqual(self.sent(), [])
