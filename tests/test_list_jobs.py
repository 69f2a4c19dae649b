"""Listing a tube's jobs by state: the core's ``list_jobs``, the ``list_jobs`` wire
action and ``GET /jobs`` over REST (one server and a federation of three)."""

import pytest

from allq.errors import BadRequest
from allq.vocabulary import MAX_LIST_LIMIT

from dispatchers import SERVER_ID, Harness
from queues import T0, fill, fill_every_state, make_queue, reserve_one
from rest_case import FeatureTestCase, RestTestCase, q


# -- the core -----------------------------------------------------------------------


def test_each_state_lists_its_own_jobs():
    """Each state lists exactly the tube's jobs in it, with the state's count."""
    queue = make_queue()
    jobs = fill_every_state(queue, "t")
    fill_every_state(queue, "other")
    for state, job in jobs.items():
        assert queue.list_jobs("t", state) == ([job], 1)


def test_ready_jobs_in_get_order_with_paging():
    """Ready jobs come in the order gets take them; offset and limit cut the page."""
    queue = make_queue()
    jobs = [queue.put("t", str(n), now=T0, priority=9 - n) for n in range(5)]
    in_order = jobs[::-1]
    assert queue.list_jobs("t", "ready") == (in_order, 5)
    assert queue.list_jobs("t", "ready", offset=1, limit=2) == (in_order[1:3], 5)
    assert queue.list_jobs("t", "ready", offset=5) == ([], 5)
    assert queue.list_jobs("nope", "ready") == ([], 0)


def test_buried_oldest_first_and_delayed_soonest_first():
    queue = make_queue()
    first, second = fill(queue, 2)
    for job in (second, first):
        assert reserve_one(queue) is not None
    queue.bury(second.id, now=T0)
    queue.bury(first.id, now=T0)
    assert queue.list_jobs("t", "buried")[0] == [second, first]
    late = queue.put("t", "late", now=T0, delay=50)
    soon = queue.put("t", "soon", now=T0, delay=5)
    assert queue.list_jobs("t", "delayed") == ([soon, late], 2)
    assert queue.list_jobs("t", "delayed", offset=1) == ([late], 2)


def test_held_jobs_of_a_concurrency_key_are_listed_after_the_line():
    """A held job (its key at its limit) is ready: it is listed, after the line."""
    queue = make_queue()
    a = queue.put("t", "a", now=T0, concurrency_key="k")
    b = queue.put("t", "b", now=T0, concurrency_key="k")
    c = queue.put("t", "c", now=T0, concurrency_key="k")
    plain = queue.put("t", "plain", now=T0)
    listed, total = queue.list_jobs("t", "ready")
    assert total == 4
    assert sorted(job.id for job in listed) == sorted(job.id for job in (a, b, c, plain))
    assert listed[-1] in (b, c)


@pytest.mark.parametrize("kwargs", [{"state": "waiting"}, {"state": "all"},
                                    {"limit": 0}, {"limit": MAX_LIST_LIMIT + 1},
                                    {"offset": -1}, {"limit": True}])
def test_bad_arguments(kwargs):
    queue = make_queue()
    args = {"state": "ready", **kwargs}
    with pytest.raises(BadRequest):
        queue.list_jobs("t", args.pop("state"), **args)


# -- the wire action ----------------------------------------------------------------


def test_dispatch_lists_jobs_with_error_and_total():
    h = Harness()
    h.put("one")
    job_id = h.put("two")
    h.ok("get", tube="t")
    h.ok("bury", job_id=h.ok("get", tube="t")["jobs"][0]["job_id"], error="boom")
    reply = h.ok("list_jobs", tube="t", state="buried")
    assert reply["total"] == 1
    [job] = reply["jobs"]
    assert job["job_id"] == job_id and job["error"] == "boom" and job["body"] == "two"
    assert job_id.startswith(SERVER_ID + ",")
    assert h.ok("list_jobs", tube="t", state="ready") == {"jobs": [], "total": 0}


def test_dispatch_bad_state_and_limit():
    h = Harness()
    assert h.error("list_jobs", tube="t", state="nope")["code"] == "bad_request"
    assert h.error("list_jobs", tube="t", state="ready",
                   limit=MAX_LIST_LIMIT + 1)["code"] == "bad_request"
    assert h.error("list_jobs", tube="t")["code"] == "bad_request"


# -- REST ---------------------------------------------------------------------------


class ListJobsTests(RestTestCase):
    """GET /jobs on one server."""

    def test_buried_page_with_error_and_server(self):
        for body in ("a", "b", "c"):
            self.put(body=body)
        for _ in range(3):
            job_id = self.ok("GET", "/job?tube=t")["id"]
            self.ok("PUT", f"/bury?job_id={q(job_id)}", json={"error": "failed " + job_id})
        page = self.ok("GET", "/jobs?tube=t&state=buried&offset=1&limit=1")
        self.assertEqual((page["tube"], page["state"], page["offset"], page["limit"],
                          page["total"]), ("t", "buried", 1, 1, 3))
        [job] = page["jobs"]
        self.assertEqual(job["body"], "b")
        self.assertEqual(job["server"], self.link().server_id)
        self.assertEqual(job["error"], "failed " + job["id"])
        self.assertLessEqual({"priority", "ttl", "expireds", "releases"}, set(job))

    def test_binary_body_is_base64(self):
        self.ok("POST", "/job", json={"tube": "t", "body_base64": "//8="})
        [job] = self.ok("GET", "/jobs?tube=t&state=ready")["jobs"]
        self.assertEqual((job["body_base64"], job["body_encoding"]), ("//8=", "base64"))

    def test_bad_input(self):
        for query in ("state=ready", "tube=t", "tube=t&state=waiting",
                      f"tube=t&state=ready&limit={MAX_LIST_LIMIT + 1}",
                      "tube=t&state=ready&limit=0", "tube=t&state=ready&offset=-1",
                      "tube=t&state=ready&limit=x", "tube=-bad&state=ready"):
            self.error(400, "bad_request", "GET", "/jobs?" + query)
        self.assertEqual(self.sent(), [])

    def test_no_server_is_503(self):
        self.set_up(False)
        self.error(503, None, "GET", "/jobs?tube=t&state=ready")


class FederatedListJobsTests(FeatureTestCase):
    """GET /jobs over three servers: their lists one after another, in id order."""

    def test_pages_walk_the_servers_in_id_order(self):
        links = self.federate(3)
        for link in links:
            for n in range(2):
                link.queue.put("t", f"{link.server_id}-{n}", now=self.clock.seconds())
        order = [f"{link.server_id}-{n}" for link in sorted(links, key=lambda l: l.server_id)
                 for n in range(2)]
        walked = []
        for offset in range(0, 6, 4):
            page = self.ok("GET", f"/jobs?tube=t&state=ready&offset={offset}&limit=4")
            self.assertEqual(page["total"], 6)
            walked += [(job["body"], job["server"]) for job in page["jobs"]]
        self.assertEqual([body for body, _ in walked], order)
        self.assertTrue(all(body.startswith(server + "-") for body, server in walked))
