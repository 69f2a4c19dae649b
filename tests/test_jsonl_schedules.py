"""Recurring schedules over the JSON-lines front-end (in memory, task.Clock)."""

from test_jsonl import ApiCase


class ScheduleActionTests(ApiCase):
    def test_add_list_pause_resume_delete(self):
        added = self.ask("add_schedule", name="s", tube="t", every=60, body="b")
        schedule = added["response"]["schedule"]
        self.assertEqual((added["response"]["action"], schedule["every"]), ("add_schedule", 60))
        self.assertIn(schedule["server_id"], [link.server_id for link in self.links])
        [listed] = self.ask("list_schedules")["response"]["schedules"]
        self.assertEqual(listed["name"], "s")
        paused = self.ask("pause_schedule", name="s")["response"]
        self.assertIs(paused["schedule"]["paused"], True)
        resumed = self.ask("resume_schedule", name="s")["response"]
        self.assertIs(resumed["schedule"]["paused"], False)
        deleted = self.ask("delete_schedule", name="s")["response"]
        self.assertEqual((deleted["action"], deleted["schedule"]["removed"]),
                         ("delete_schedule", True))
        self.assertEqual(self.ask("list_schedules")["response"]["schedules"], [])

    def test_bad_input_and_unknown_names_are_error_replies(self):
        cases = [
            ("add_schedule", {"name": "s", "tube": "t", "cron": "0 0 31 2 *"}, "bad_request"),
            ("add_schedule", {"name": "s", "tube": "t", "cron": "0 9 * * *",
                              "timezone": "No/Where"}, "bad_request"),
            ("add_schedule", {"name": "s", "tube": "t", "every": 0}, "bad_request"),
            ("pause_schedule", {}, "bad_request"),
            ("resume_schedule", {"name": "nope"}, "not_found"),
            ("delete_schedule", {"name": "nope"}, "not_found"),
        ]
        for action, params, code in cases:
            reply = self.ask(action, **params)["response"]
            self.assertEqual((reply["action"], reply["code"]), (action, code), reply)
