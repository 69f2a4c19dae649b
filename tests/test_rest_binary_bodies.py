"""REST and binary bodies: ``body_base64`` in, ``body_base64`` + marker out."""

import base64

from rest_case import RestTestCase

BINARY = b"\x00\xff\r\n\xfe"
ENCODED = base64.b64encode(BINARY).decode()


class BinaryBodyTests(RestTestCase):

    def test_a_binary_body_goes_in_as_base64_and_comes_out_marked(self):
        """POST body_base64; GET shows body_base64 and body_encoding, no body."""
        self.ok("POST", "/job", json={"tube": "bin", "body_base64": ENCODED})
        job = self.ok("GET", "/peek?tube=bin")
        self.assertEqual((job["body_base64"], job["body_encoding"]), (ENCODED, "base64"))
        self.assertNotIn("body", job)
        job = self.ok("GET", "/job?tube=bin")
        self.assertEqual(base64.b64decode(job["body_base64"]), BINARY)

    def test_base64_of_utf8_text_reads_as_text(self):
        """A body is text whenever it is UTF-8, however it was sent."""
        self.ok("POST", "/job", json={"tube": "t", "body_base64": base64.b64encode(
            "héllo".encode()).decode()})
        self.assertEqual(self.ok("GET", "/job?tube=t")["body"], "héllo")

    def test_bad_base64_or_both_bodies_are_400(self):
        for body in ({"tube": "t", "body_base64": "@@@"},
                     {"tube": "t", "body_base64": ENCODED, "body": "x"},
                     {"tube": "t", "body_base64": 5}):
            self.assert_error(self.call("POST", "/job", json=body), 400, "bad_request")

    def test_a_binary_parent_and_a_batch(self):
        reply = self.ok("POST", "/parent_job", json={"tube": "p", "body_base64": ENCODED,
                                                     "limit": 1, "timeout": 60})
        self.assertEqual(reply["job"]["body_base64"], ENCODED)
        reply = self.ok("POST", "/multiple_job", json={"jobs": [
            {"tube": "b", "body_base64": ENCODED}, {"tube": "b", "body": "text"}]})
        self.assertEqual(len(reply["job_ids"]), 2)
        jobs = self.ok("GET", "/multiple_job?tube=b&count=2")["jobs"]
        self.assertEqual(sorted(("body" in j) for j in jobs), [False, True])
