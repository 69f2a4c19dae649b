"""REST schedule routes over the real federation on in-memory servers: placement by
name, list, pause/resume, delete, and bad input."""

from allq.client.schedules import owner

from rest_case import FeatureTestCase


class ScheduleRoutesTests(FeatureTestCase):
    def setUp(self):
        super().setUp()
        self.federate(3)

    def add(self, **fields):
        body = {"name": "nightly", "tube": "t", "body": "go", "every": 60, **fields}
        return self.ok("POST", "/schedule", json=body)["schedule"]

    def test_a_schedule_lives_on_the_server_its_name_picks(self):
        for name in ("a", "b", "c", "d", "e", "f"):
            schedule = self.add(name=name)
            home = owner(name, self.links)
            self.assertEqual(schedule["server_id"], home.server_id)
            for link in self.links:
                names = [s.spec.name for s in link.schedules.schedules.all()]
                self.assertEqual(name in names, link is home)

    def test_list_shows_every_schedule_with_its_next_firing(self):
        start = self.clock.seconds()
        self.add(name="b", cron="0 9 * * *", every=None, timezone="Europe/Paris")
        self.add(name="a", priority=3, ttl=30)
        listed = self.ok("GET", "/schedules")["schedules"]
        self.assertEqual([s["name"] for s in listed], ["a", "b"])
        self.assertEqual(listed[0]["next_run"], start + 60)
        self.assertEqual((listed[0]["priority"], listed[0]["ttl"]), (3, 30))
        self.assertEqual(listed[1]["timezone"], "Europe/Paris")
        self.assertTrue(listed[1]["next_run_local"].endswith(("+01:00", "+02:00")))

    def test_a_firing_puts_one_job_that_a_get_finds(self):
        schedule = self.add(every=1)
        home = next(l for l in self.links if l.server_id == schedule["server_id"])
        self.clock.advance(1)
        for link in self.links:
            link.fire_schedules()
        job = self.ok("GET", "/job?tube=t")
        self.assertEqual(job["body"], "go")
        self.assertTrue(job["id"].startswith(home.server_id + ","))
        self.assertEqual(self.ok("GET", "/job?tube=t"), {})

    def test_pause_resume_and_delete(self):
        self.add()
        paused = self.ok("PUT", "/schedule/pause?name=nightly")
        self.assertEqual(paused["action"], "pause_schedule")
        self.assertIs(paused["schedule"]["paused"], True)
        self.assertIsNone(paused["schedule"]["next_run"])
        resumed = self.ok("PUT", "/schedule/resume?name=nightly")["schedule"]
        self.assertIs(resumed["paused"], False)
        removed = self.ok("DELETE", "/schedule?name=nightly")
        self.assertEqual(removed["name"], "nightly")
        self.assertEqual(self.ok("GET", "/schedules"), {"schedules": []})

    def test_adding_again_replaces_and_leaves_one_copy(self):
        self.add()
        self.add(every=120)
        [listed] = self.ok("GET", "/schedules")["schedules"]
        self.assertEqual(listed["every"], 120)

    def test_a_schedule_left_on_another_server_is_removed_when_added_again(self):
        stray = next(l for l in self.links if l is not owner("nightly", self.links))
        stray.call("schedule_add", name="nightly", tube="t", body="", every=60)
        self.add()
        self.assertEqual(stray.schedules.schedules.all(), [])
        self.assertEqual(len(self.ok("GET", "/schedules")["schedules"]), 1)

    def test_its_server_down_is_503_and_nothing_is_placed_elsewhere(self):
        owner("nightly", self.links).up = False
        self.error(503, "unavailable", "POST", "/schedule",
                   json={"name": "nightly", "tube": "t", "every": 60})
        self.assertEqual(self.ok("GET", "/schedules"), {"schedules": []})

    def test_unknown_names(self):
        for method, path in (("PUT", "/schedule/pause"), ("PUT", "/schedule/resume"),
                             ("DELETE", "/schedule")):
            self.error(404, "not_found", method, path + "?name=nope")
        self.links[0].up = False  # it may be there
        self.error(503, "unavailable", "DELETE", "/schedule?name=nope")

    def test_bad_input_is_400_with_the_reason(self):
        cases = [
            ({"cron": "61 * * * *"}, "bad cron"),
            ({"cron": "0 9 * * *", "timezone": "Atlantis/Capital"}, "unknown timezone"),
            ({"every": 0}, "every must be"),
            ({"every": -1}, "every must be"),
            ({"every": 10**12}, "every must be"),
            ({"every": "60"}, "every must be"),
            ({"cron": "* * * * *", "every": 60}, "exactly one"),
            ({}, "exactly one"),
            ({"every": 60, "missed": "all"}, "missed must be"),
            ({"every": 60, "name": "with space"}, "name must be"),
            ({"every": 60, "tube": None}, "tube must be"),
            ({"every": 60, "color": "red"}, "unknown field"),
            ({"every": 60, "body": "x", "body_base64": "eA=="}, "not both"),
        ]
        for fields, words in cases:
            body = {"name": "n", "tube": "t", **fields}
            body = {k: v for k, v in body.items() if v is not None}
            error = self.error(400, "bad_request", "POST", "/schedule", json=body)
            self.assertIn(words, error["detail"], (fields, error))
        self.error(400, "bad_request", "PUT", "/schedule/pause")
        self.error(400, "bad_request", "PUT", "/schedule/pause?name=a%20b")
        self.assertEqual(self.ok("GET", "/schedules"), {"schedules": []})
