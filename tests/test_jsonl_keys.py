"""Unique jobs and concurrency keys through the JSON-lines front-end (in memory)."""

from test_jsonl import ApiCase


class KeyedJsonLinesTests(ApiCase):

    def test_a_put_with_a_live_unique_key_answers_the_first_job_as_a_duplicate(self):
        first = self.ask("put", tube="t", body="a", unique_key="r-1")
        job_id = first["job"]["job_id"]
        self.assertEqual(first, {"response": {"action": "put", "job_id": job_id},
                                 "job": {"job_id": job_id}})
        again = self.ask("put", tube="t", body="b", unique_key="r-1")
        self.assertEqual(again, {"response": {"action": "put", "job_id": job_id,
                                              "duplicate": True},
                                 "job": {"job_id": job_id}})
        batch = self.ask("put_multiple_jobs", tube="t",
                         jobs=[{"body": "c", "unique_key": "r-1"}, {"body": "d"}])
        self.assertEqual(batch["response"]["duplicates"], [0])
        self.assertEqual(batch["response"]["job_ids"][0], job_id)

    def test_concurrency_limit_and_keyed_gets(self):
        for n in range(3):
            self.ask("put", tube="t", body=f"a{n}", concurrency_key="acct")
        self.assertEqual(len(self.ask("get", tube="t", count=5)["jobs"]), 1)
        reply = self.ask("concurrency", tube="t", limit="3")
        self.assertEqual(reply, {"response": {"action": "concurrency", "tube": "t",
                                              "limit": 3, "servers": 2}})
        self.assertEqual(len(self.ask("get", tube="t", count=5)["jobs"]), 2)

    def test_bad_keys_and_limits_are_bad_requests(self):
        for action, params in [("put", {"tube": "t", "body": "x", "unique_key": 3}),
                               ("put", {"tube": "t", "body": "x", "concurrency_key": "k" * 201}),
                               ("concurrency", {"tube": "t", "limit": 0}),
                               ("concurrency", {"tube": "t", "limit": "many"})]:
            reply = self.ask(action, **params)["response"]
            self.assertEqual(reply["code"], "bad_request", reply)
