"""REST interest routing: PUT/DELETE /interest, GET /interests and POST /event,
over in-memory servers (:mod:`rest_case`)."""

import json

from rest_case import FeatureTestCase


class InterestTests(FeatureTestCase):
    """Registering interests and publishing events through the REST facade."""

    def setUp(self):
        super().setUp()
        self.federate(2)

    def interest(self, tube, interests):
        return self.ok("PUT", "/interest", json={"tube": tube, "interests": interests})

    def test_interests_are_set_on_every_server_listed_and_deleted(self):
        reply = self.interest("emails", {"email": "^.*evan.*"})
        self.assertEqual(reply, {"action": "interest", "tube": "emails",
                                 "interests": {"email": "^.*evan.*"}, "servers": 2})
        self.interest("all", "*")
        self.assertEqual(self.ok("GET", "/interests")["interests"], [
            {"tube": "all", "interests": "*"},
            {"tube": "emails", "interests": {"email": "^.*evan.*"}}])
        for link in self.links:
            self.assertEqual(len(link.dispatcher.interests), 2)
        self.assertEqual(self.ok("DELETE", "/interest?tube=all")["servers"], 2)
        self.assertEqual([i["tube"] for i in self.ok("GET", "/interests")["interests"]],
                         ["emails"])

    def test_an_event_is_fanned_out_to_each_interested_tube(self):
        self.interest("welcome", {"action": "^userCreated$"})
        self.interest("points", {"action": "^userCreated$", "userId": "."})
        self.interest("audit", "*")
        self.interest("billing", {"invoice": "."})
        reply = self.ok("POST", "/event", json={
            "data": {"action": "userCreated", "userId": 7}, "priority": 3})
        self.assertEqual(reply["matched"], 3)
        self.assertEqual([c["tube"] for c in reply["copies"]], ["audit", "points", "welcome"])
        # All copies live on one server: the one the event was placed on.
        self.assertEqual(len({c["job_id"].split(",")[0] for c in reply["copies"]}), 1)
        for copy in reply["copies"]:
            job = self.ok("GET", f"/job?tube={copy['tube']}")
            self.assertEqual((job["id"], json.loads(job["body"]), job["priority"]),
                             (copy["job_id"], {"action": "userCreated", "userId": 7}, 3))
        self.assertEqual(self.ok("GET", "/job?tube=billing"), {})

    def test_scope_all_needs_every_field(self):
        self.interest("both", {"a": "1", "b": "2"})
        self.assertEqual(self.ok("POST", "/event", json={"data": {"a": 1}, "scope": "all"})
                         ["matched"], 0)
        self.assertEqual(self.ok("POST", "/event", json={"data": {"a": 1, "b": 2},
                                                        "scope": "all"})["matched"], 1)

    def test_an_unmatched_event_is_dropped_or_refused_as_asked(self):
        self.interest("a", {"k": "^x$"})
        self.assertEqual(self.ok("POST", "/event", json={"data": {"k": "y"}}),
                         {"action": "event", "matched": 0, "copies": []})
        self.error(404, "not_found", "POST", "/event",
                   json={"data": {"k": "y"}, "unmatched": "error"})
        unmatched = sum(link.dispatcher.interests.events_unmatched for link in self.links)
        self.assertEqual(unmatched, 2)
        self.assertEqual(sum(len(link.queue) for link in self.links), 0)

    def test_a_retry_with_the_same_key_stores_no_duplicate(self):
        self.interest("a", "*")
        self.interest("b", "*")
        body = {"data": {"n": 1}, "idempotency_key": "event-1"}
        first = self.ok("POST", "/event", json=body)
        # The same server answers the retry with the same copies (the key pins it
        # only when prefixed by the server id, so aim both at one server).
        server = first["copies"][0]["job_id"].split(",")[0]
        again = self.ok("POST", "/event", json={**body, "idempotency_key": f"{server}:event-1"})
        self.assertEqual(again["copies"], first["copies"])
        self.assertEqual(self.ok("POST", "/event", json=body)["copies"], first["copies"])
        self.assertEqual(sum(len(link.queue) for link in self.links), 2)

    def test_a_lost_reply_is_504_and_the_retry_stores_no_duplicate(self):
        """The server stored the copies but its answer never came: 504 with the key;
        the retry with that key answers the same copies, never a second set. (One
        server: with others up, placement fails over as for a put, at least once.)"""
        self.federate(1)
        self.interest("a", "*")
        self.interest("b", "*")
        for link in self.links:
            link.lose_next = 1
        reply = self.call("POST", "/event", json={"data": {"n": 1}})
        self.assertEqual((reply.code, reply.json["error"]), (504, "outcome_unknown"))
        key = reply.json["idempotency_key"]
        [holder] = [link for link in self.links if key.startswith(link.server_id + ":")]
        self.assertEqual(len(holder.queue), 2)
        for link in self.links:
            link.up, link.lose_next = True, 0
        again = self.ok("POST", "/event", json={"data": {"n": 1}, "idempotency_key": key})
        self.assertEqual(again["matched"], 2)
        self.assertEqual({c["job_id"].split(",")[0] for c in again["copies"]},
                         {holder.server_id})
        self.assertEqual(sum(len(link.queue) for link in self.links), 2)

    def test_a_server_that_missed_an_interest_gets_it_when_synced(self):
        self.link(1).up = False
        self.assertEqual(self.interest("late", "*")["servers"], 1)
        self.link(1).up = True
        self.assertEqual(len(self.link(1).dispatcher.interests), 0)
        self.ok("GET", "/interests")  # syncs, as a reconnecting link does
        self.assertEqual([e.record() for e in self.link(1).dispatcher.interests.entries()],
                         [e.record() for e in self.link(0).dispatcher.interests.entries()])

    def test_a_delete_a_down_server_missed_wins_when_synced(self):
        self.interest("t", "*")
        self.link(1).up = False
        self.ok("DELETE", "/interest?tube=t")
        self.link(1).up = True
        self.assertEqual(self.ok("GET", "/interests")["interests"], [])
        self.assertEqual(len(self.link(1).dispatcher.interests), 0)

    def test_bad_input_gets_clear_errors(self):
        cases = [
            ("PUT", "/interest", {"tube": "t", "interests": {"f": "(unclosed"}}, 400),
            ("PUT", "/interest", {"tube": "t", "interests": {"f": r"(a)\1"}}, 400),
            ("PUT", "/interest", {"tube": "t", "interests": "some"}, 400),
            ("PUT", "/interest", {"tube": "t", "interests": ["a"]}, 400),
            ("PUT", "/interest", {"tube": "t", "interests": {"f": 1}}, 400),
            ("PUT", "/interest", {"tube": "t", "interests": {}}, 400),
            ("PUT", "/interest", {"tube": "t",
                                  "interests": {str(i): "x" for i in range(33)}}, 400),
            ("PUT", "/interest", {"tube": "bad tube", "interests": "*"}, 400),
            ("PUT", "/interest", {"interests": "*"}, 400),
            ("PUT", "/interest", {"tube": "t", "interests": "*", "extra": 1}, 400),
            ("POST", "/event", {"data": "text"}, 400),
            ("POST", "/event", {"data": {}, "scope": "some"}, 400),
            ("POST", "/event", {"data": {}, "unmatched": "shout"}, 400),
            ("POST", "/event", {"data": {}, "ttl": "soon"}, 400),
            ("POST", "/event", {"data": {}, "surprise": 1}, 400),
            ("POST", "/event", {"data": {"x": "y" * 2000}}, 413),   # over --max-body? no: job size
        ]
        self.interest("t", "*")
        for method, path, body, status in cases:
            reply = self.call(method, path, json=body)
            self.assert_error(reply, status)
        self.error(400, "bad_request", "DELETE", "/interest")
        self.assertEqual(self.ok("GET", "/interests")["interests"],
                         [{"tube": "t", "interests": "*"}])
        self.assertEqual(sum(len(link.queue) for link in self.links), 0)

    def test_a_body_over_max_body_is_refused(self):
        reply = self.call("POST", "/event", json={"data": {"x": "y" * 5000}})
        self.assert_error(reply, 413)
