"""REST tube routes: clear, throttle, pause, drain, fair and max_size."""

from rest_case import ADDRESS, FeatureTestCase, RestTestCase, q


class TubeTests(RestTestCase):
    """DELETE /tube, POST /throttle, POST /parent_job and the later-feature fields."""

    def test_clear_tube(self):
        """Clearing alt_tube drops its ready, reserved and buried jobs, not alt_tube2's."""
        for tube in ("alt_tube", "alt_tube2"):
            self.put(tube)
            self.put(tube)
            self.ok("GET", f"/job?tube={tube}")
        self.put("alt_tube")
        job_id = self.ok("GET", "/job?tube=alt_tube")["id"]
        self.ok("PUT", f"/bury?job_id={q(job_id)}")
        self.assertEqual(self.ok("DELETE", "/tube?tube=alt_tube"),
                         {"action": "clear", "cleared": 3})
        gone = self.tube_stats("alt_tube")
        self.assertEqual((gone["ready"], gone["reserved"], gone["buried"]), (0, 0, 0))
        kept = self.tube_stats("alt_tube2")
        self.assertEqual((kept["ready"], kept["reserved"]), (1, 1))

    def test_clear_one_cache_type(self):
        """cache_type=ready drops only ready jobs."""
        self.put()
        self.put()
        self.ok("GET", "/job?tube=t")
        self.assertEqual(self.ok("DELETE", "/tube?tube=t&cache_type=ready")["cleared"], 1)
        self.assertEqual(self.tube_stats()["reserved"], 1)

    def test_put_with_blank_parent_id_is_a_plain_put(self):
        """parent_id "" or null and shard_key "" or null mean "none", as in AllQueue."""
        self.put(parent_id="", shard_key=None)
        self.put(parent_id=None, shard_key="")
        self.assertEqual([(a, p["parent_id"], p["shard_key"]) for a, p in self.sent()],
                         [("put", None, None), ("put", None, None)])
        self.assertEqual(self.tube_stats()["ready"], 2)

    def test_put_with_non_string_parent_id(self):
        """parent_id must be a string shaped like a job id or a caller-chosen parent id."""
        self.error(400, "bad_request", "POST", "/job", json={"tube": "t", "parent_id": 5})
        self.error(400, "bad_request", "POST", "/job", json={"tube": "t", "parent_id": "x,y"})
        self.error(400, "bad_request", "POST", "/job", json={"tube": "t", "parent_id": "12"})
        self.assertEqual(self.sent(), [])


class ThrottleTests(FeatureTestCase):
    """POST /throttle."""

    def test_throttle_reply_and_stats(self):
        """The reply keeps AllQueue's "value": "true"; stats show throttle_size."""
        self.put()
        self.assertEqual(self.ok("POST", "/throttle", json={"tube": "t", "tps": 5}), {
            "action": "throttle", "value": "true", "tube": "t", "tps": 5, "servers": 1})
        self.assertEqual(self.tube_stats()["throttle_size"], 5)

    def test_throttle_is_split_over_servers(self):
        """tps 1 over 3 servers: each gets 1/3 (AllQueue truncated to 0, removing it)."""
        self.federate(3)
        reply = self.ok("POST", "/throttle", json={"tube": "t", "tps": "1"})
        self.assertEqual((reply["tps"], reply["servers"]), (1, 3))
        sizes = [t["throttle_size"] for t in self.all_tubes("t")]
        self.assertEqual(len(sizes), 3)
        self.assertAlmostEqual(sum(sizes), 1)
        for size in sizes:
            self.assertAlmostEqual(size, 1 / 3)

    def test_throttle_caps_gets(self):
        """tps 2 with 20 ready jobs: one second of tight polling yields about 2."""
        for n in range(20):
            self.put(body=str(n))
        self.ok("POST", "/throttle", json={"tube": "t", "tps": 2})
        got = 0
        for _ in range(10):
            got += len(self.ok("GET", "/multiple_job?tube=t&count=20")["jobs"])
            self.clock.advance(0.1)
        self.assertLessEqual(got, 2 + 2)
        self.assertGreaterEqual(got, 2)

    def test_throttle_removed_by_null_or_zero(self):
        """tps null, 0 or negative removes the throttle (reply tps null)."""
        for tps in (None, 0, -3):
            self.ok("POST", "/throttle", json={"tube": "t", "tps": 4})
            reply = self.ok("POST", "/throttle", json={"tube": "t", "tps": tps})
            self.assertIsNone(reply["tps"])
            self.assertNotIn("throttle_size", self.tube_stats())

    def test_bad_throttle(self):
        """A missing or non-numeric tps, a bad tube or an unknown field answer 400."""
        for body in [{"tube": "t"}, {"tube": "t", "tps": "x"}, {"tube": "t", "tps": True},
                     {"tube": "bad tube", "tps": 1}, {"tps": 1},
                     {"tube": "t", "tps": 1, "burst": 2}]:
            self.error(400, "bad_request", "POST", "/throttle", json=body)
        self.error(400, "bad_request", "POST", "/throttle", data=b'{"tube": "t", "tps": NaN}')
        self.assertEqual(self.sent(), [])

    def test_throttle_with_no_server(self):
        """No server reachable: 503."""
        self.set_up(False)
        self.error(503, "unavailable", "POST", "/throttle", json={"tube": "t", "tps": 1})


class TubeSettingTests(FeatureTestCase):
    """PUT /pause, /unpause, /drain?tube=, /undrain?tube=, /fair, /max_size."""

    def test_pause_and_unpause_every_server(self):
        """pause reaches every server (FIX 13): no job is handed out; unpause resumes."""
        self.federate(3)
        for n in range(3):
            self.put(body=str(n))
        self.assertEqual(self.ok("PUT", "/pause?tube=t"),
                         {"action": "pause", "tube": "t", "servers": 3})
        self.assertEqual([t["paused"] for t in self.all_tubes("t")], [True] * 3)
        self.assertEqual(self.ok("GET", "/multiple_job?tube=t&count=10"), {"jobs": []})
        self.put(body="while paused")  # puts are still taken
        self.assertEqual(self.ok("PUT", "/unpause?tube_name=t"),
                         {"action": "unpause", "tube": "t", "servers": 3})
        self.assertEqual(len(self.ok("GET", "/multiple_job?tube=t&count=10")["jobs"]), 4)

    def test_tube_drain(self):
        """A drained tube refuses puts (503 draining) and still hands out its jobs."""
        job_id = self.put()
        self.assertEqual(self.ok("PUT", "/drain?tube=t"),
                         {"action": "drain", "tube": "t", "servers": 1})
        self.assertTrue(self.tube_stats()["draining"])
        self.error(503, "draining", "POST", "/job", json={"tube": "t", "body": "x"})
        self.put("other")  # other tubes are not affected
        self.assertEqual(self.ok("GET", "/job?tube=t")["id"], job_id)
        self.assertEqual(self.ok("PUT", "/undrain?tube=t"),
                         {"action": "undrain", "tube": "t", "servers": 1})
        self.put()

    def test_drain_with_both_tube_and_server(self):
        """PUT /drain takes tube or server_id, not both."""
        self.error(400, "bad_request", "PUT", f"/drain?tube=t&server_id={ADDRESS}")
        self.error(400, "bad_request", "PUT", "/drain?tube=bad%20tube")

    def test_fair_policy(self):
        """PUT /fair sets the policy everywhere; a fair tube needs shard_key; off undoes it."""
        self.federate(2)
        self.assertEqual(self.ok("PUT", "/fair?tube=orders&policy=weighted"),
                         {"action": "fair", "tube": "orders", "policy": "weighted",
                          "servers": 2})
        self.assertEqual([t["fair"] for t in self.all_tubes("orders")], ["weighted"] * 2)
        self.error(400, "bad_request", "POST", "/job", json={"tube": "orders", "body": "x"})
        self.put("orders", shard_key="k")
        self.ok("PUT", "/fair?tube=fq-x&policy=off")
        self.put("fq-x")
        self.ok("PUT", "/fair?tube=fq-x&policy=default")
        self.assertEqual([t["fair"] for t in self.all_tubes("fq-x")], ["round_robin"] * 2)

    def test_bad_fair(self):
        """A missing or unknown policy, or no tube, answers 400."""
        for path in ["/fair?tube=t", "/fair?tube=t&policy=lottery", "/fair?policy=off"]:
            self.error(400, "bad_request", "PUT", path)
        self.assertEqual(self.sent(), [])

    def test_bounded_tube(self):
        """max_size 2 on one server: two puts, then 507 full with a JSON body."""
        self.assertEqual(self.ok("PUT", "/max_size?tube=t&max_size=2"),
                         {"action": "max_size", "tube": "t", "max_size": 2, "servers": 1})
        self.assertEqual(self.tube_stats()["max_size"], 2)
        self.put()
        self.put()
        self.error(507, "full", "POST", "/job", json={"tube": "t", "body": "x"})
        self.assertEqual(self.tube_stats()["ready"], 2)
        self.assertEqual(self.ok("PUT", "/max_size?tube=t&max_size=")["max_size"], None)
        self.put()

    def test_bounded_tube_is_per_server(self):
        """max_size 2 on three servers: six puts fit (a full server is skipped), the
        seventh answers 507."""
        servers = self.federate(3)
        self.ok("PUT", "/max_size?tube=t&max_size=2")
        self.ok("PUT", "/max_size?tube=t")  # absent: unbounded...
        self.ok("PUT", "/max_size?tube=t&max_size=2")  # ...and bounded again
        servers[0].call("put", tube="t", body="filler")  # put by another client
        for _ in range(5):
            self.put()
        self.assertEqual([len(s.queue) for s in servers], [2, 2, 2])
        self.error(507, "full", "POST", "/job", json={"tube": "t", "body": "x"})

    def test_bad_max_size(self):
        """max_size must be an integer from 1."""
        for value in ["0", "-1", "x", "1.5", str(2**41)]:
            self.error(400, "bad_request", "PUT", f"/max_size?tube=t&max_size={value}")
        self.error(400, "bad_request", "PUT", "/max_size?max_size=3")

    def test_settings_with_no_server(self):
        """No server reachable: 503 for every tube setting."""
        self.set_up(False)
        for path in ["/pause?tube=t", "/unpause?tube=t", "/drain?tube=t", "/undrain?tube=t",
                     "/fair?tube=t&policy=off", "/max_size?tube=t&max_size=1"]:
            self.error(503, "unavailable", "PUT", path)
