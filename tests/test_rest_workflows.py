"""REST parent jobs: POST /parent_job, children with parent_id, set_children_started."""

from rest_case import FeatureTestCase, q


class WorkflowTests(FeatureTestCase):
    """POST /parent_job, PUT /set_children_started and puts with parent_id."""

    def parent(self, **fields):
        """Put a parent job; its id."""
        reply = self.ok("POST", "/parent_job", json={"tube": "flow", "body": "p", **fields})
        return reply["job_id"]

    def test_parent_job_reply_and_defaults(self):
        """POST /parent_job answers {"action": "set_parent", "job_id", "job"}; timeout
        defaults to 3600 and run_on_timeout to false."""
        reply = self.ok("POST", "/parent_job", json={"tube": "flow", "body": "p", "limit": 2})
        job_id = reply["job_id"]
        self.assertEqual(reply, {"action": "set_parent", "job_id": job_id, "job": {
            "job_id": job_id, "tube": "flow", "body": "p", "expireds": 0, "releases": 0}})
        action, params = self.sent()[-1]
        self.assertEqual(action, "put_parent")
        self.assertEqual(params["timeout"], 3600)
        self.assertIs(params["run_on_timeout"], False)
        stats = self.tube_stats("flow")
        self.assertEqual((stats["parents"], stats["ready"]), (1, 0))

    def test_parent_runs_after_its_children(self):
        """A parent with limit 2 becomes gettable once both children are done."""
        parent = self.parent(limit=2, timeout=60, run_on_timeout="false", priority=1)
        children = [self.put("work", f"c{n}", parent_id=parent) for n in range(2)]
        for _ in children:
            job = self.ok("GET", "/job?tube=work")
            self.assertEqual(self.ok("GET", "/job?tube=flow"), {})
            self.ok("DELETE", f"/job?job_id={q(job['id'])}")
        self.assertEqual(self.ok("GET", "/job?tube=flow")["id"], parent)

    def test_set_children_started(self):
        """Without a limit the parent waits for set_children_started, then for the rest."""
        parent = self.parent()
        self.put("work", "c1", parent_id=parent)
        job = self.ok("GET", "/job?tube=work")
        self.ok("DELETE", f"/job?job_id={q(job['id'])}")
        self.put("work", "c2", parent_id=parent)
        self.assertEqual(self.ok("PUT", f"/set_children_started?job_id={q(parent)}"),
                         {"action": "set_children_started", "job_id": parent})
        self.assertEqual(self.ok("GET", "/job?tube=flow"), {})
        job = self.ok("GET", "/job?tube=work")
        self.ok("DELETE", f"/job?job_id={q(job['id'])}")
        self.assertEqual(self.ok("GET", "/job?tube=flow")["id"], parent)

    def test_set_children_started_errors(self):
        """Unknown job 404, not a waiting parent 409, malformed id 400."""
        server_id = self.link().server_id
        self.error(404, "not_found", "PUT", f"/set_children_started?job_id={server_id},999")
        self.error(409, "wrong_state", "PUT", f"/set_children_started?job_id={q(self.put())}")
        self.error(400, "bad_request", "PUT", "/set_children_started?job_id=no,pe")
        self.error(404, "not_found", "PUT", "/set_children_started?job_id=no-such-flow")

    def test_child_of_a_missing_parent_is_404_and_stores_nothing(self):
        """A child naming a missing parent answers 404 and nothing is enqueued (FIX 9)."""
        server_id = self.link().server_id
        self.error(404, "not_found", "POST", "/job",
                   json={"tube": "work", "body": "c", "parent_id": f"{server_id},999"})
        self.error(404, "not_found", "POST", "/job",
                   json={"tube": "work", "body": "c", "parent_id": "elsewhere,1"})
        self.assertEqual(len(self.link().queue), 0)

    def test_child_of_a_started_parent_is_409(self):
        """A child of a parent that no longer waits answers 409."""
        parent = self.parent(limit=0)
        self.error(409, "wrong_state", "POST", "/job",
                   json={"tube": "work", "body": "c", "parent_id": parent})

    def test_children_and_nested_parents_go_to_the_parents_server(self):
        """On three servers, children and a nested parent land on the parent's server."""
        self.federate(3)
        parents = [self.parent(limit=3) for _ in range(3)]
        self.assertEqual(len({self.holder(p).address for p in parents}), 3)  # round robin
        for parent in parents:
            home = self.holder(parent)
            for n in range(2):
                self.assertIs(self.holder(self.put("work", f"c{n}", parent_id=parent)), home)
            nested = self.parent(parent_id=parent, limit=0)
            self.assertIs(self.holder(nested), home)

    def test_child_of_a_parent_on_a_down_server_is_503(self):
        """The parent's server is down: 503, and no other server takes the child."""
        servers = self.federate(2)
        parent = self.parent(limit=1)
        self.holder(parent).up = False
        self.error(503, "unavailable", "POST", "/job",
                   json={"tube": "work", "body": "c", "parent_id": parent})
        self.assertEqual(sum(len(s.queue) for s in servers), 1)

    def test_bad_parent_jobs(self):
        """Bad parent bodies answer 400 (a bad caller-chosen id too)."""
        good = {"tube": "t", "body": "p", "ttl": 10, "delay": 0, "priority": 5, "limit": 2,
                "timeout": 3600, "run_on_timeout": True, "noop": "false", "shard_key": None,
                "id": None}
        self.parent(**good)
        for fields in [{"limit": "many"}, {"limit": -1}, {"run_on_timeout": "maybe"},
                       {"body": 1}, {"timeout": 0}, {"timeout": "x"}, {"delay": 5},
                       {"run_at": 5}, {"parent_id": "x,y"}, {"colour": "red"},
                       {"noop": "maybe"}, {"id": "7"}, {"id": "a,1"}, {"id": 7}]:
            self.error(400, "bad_request", "POST", "/parent_job", json={**good, **fields})
        self.error(404, "not_found", "POST", "/parent_job",
                   json={**good, "parent_id": "elsewhere,1"})

    def test_noop_parent_is_a_join_point(self):
        """Case 79 over REST: a noop parent (limit 2, child of TOP) never appears in
        ready; once its 2 children are done TOP (limit 1) becomes ready."""
        top = self.parent(limit=1)
        join = self.ok("POST", "/parent_job", json={"tube": "join", "body": "j", "limit": 2,
                                                     "parent_id": top, "noop": True})["job_id"]
        self.assertEqual(self.sent()[-1][1]["noop"], True)
        for n in range(2):
            self.put("work", f"c{n}", parent_id=join)
        for _ in range(2):
            job = self.ok("GET", "/job?tube=work")
            self.assertEqual(self.ok("GET", "/job?tube=flow"), {})
            self.ok("DELETE", f"/job?job_id={q(job['id'])}")
        self.assertEqual(self.ok("GET", "/job?tube=join"), {})
        self.assertEqual(self.tube_stats("join")["parents"], 0)
        self.assertEqual(self.ok("GET", "/job?tube=flow")["id"], top)

    def test_caller_chosen_id_routes_children_across_servers(self):
        """On three servers, a parent put with its own id is found by it: children
        naming it land on its server, set_children_started takes it, and the id
        is unique among waiting parents (409)."""
        self.federate(3)
        for _ in range(2):  # move the round robin along
            self.parent(limit=9)
        reply = self.ok("POST", "/parent_job", json={"tube": "flow", "body": "p",
                                                      "id": "order-42"})
        parent = reply["job_id"]
        self.assertRegex(parent, "^[^,]+,[0-9]+$")  # the server's id is the answer's
        home = self.holder(parent)
        kids = [self.put("work", f"c{n}", parent_id="order-42") for n in range(3)]
        self.assertEqual({self.holder(kid).address for kid in kids}, {home.address})
        self.error(409, "wrong_state", "POST", "/parent_job",
                   json={"tube": "flow", "body": "again", "id": "order-42"})
        self.assertEqual(self.ok("PUT", "/set_children_started?job_id=order-42"),
                         {"action": "set_children_started", "job_id": parent})
        for _ in kids:
            job = self.ok("GET", "/job?tube=work")
            self.ok("DELETE", f"/job?job_id={q(job['id'])}")
        self.assertEqual(self.ok("GET", "/job?tube=flow&count=1")["id"], parent)
        # The id is free again once the parent no longer waits.
        self.error(404, "not_found", "POST", "/job",
                   json={"tube": "work", "body": "late", "parent_id": "order-42"})
        self.ok("POST", "/parent_job", json={"tube": "flow", "body": "p", "id": "order-42"})

    def test_caller_chosen_id_with_a_server_down(self):
        """Not found on the answering servers while one is down: 503, not 404 (the
        parent may be there)."""
        self.federate(2)
        self.ok("POST", "/parent_job", json={"tube": "flow", "body": "p", "id": "f1"})
        self.links[0].up = self.links[1].up = True
        holder = next(link for link in self.links if link.queue.parent_by_alias("f1"))
        holder.up = False
        self.error(503, "unavailable", "POST", "/job",
                   json={"tube": "work", "body": "c", "parent_id": "f1"})
