"""A bury's recorded error: the job's last error, through the core, the journal and REST.

``allq.worker`` buries a job whose handler kept failing with the exception it raised;
the error is kept on the server beside the job (never in a slot every job pays for)
and shown wherever the job is: peek, get, the dashboard's peek panel.
"""

import pytest

from allq.core.queue import Queue
from allq.errors import BadRequest, WrongState
from allq.vocabulary import MAX_ERROR_LENGTH

from rest_case import RestTestCase, q
from tests.test_journal import Server, canonical, drain_compaction

NOW = 1000.0


def reserved(queue: Queue, tube="t", body="x"):
    job = queue.put(tube, body, now=NOW)
    [got] = queue.get(tube, now=NOW)
    assert got is job
    return job


# -- the core ----------------------------------------------------------------------------


def test_bury_records_the_error_until_the_job_is_gone():
    """The error stays through a kick (it is the *last* error) and goes with the job."""
    queue = Queue()
    job = reserved(queue)
    queue.bury(job.id, now=NOW, error="ValueError: bad input")
    assert queue.last_error(job.id) == "ValueError: bad input"
    queue.kick(job.id, now=NOW)
    assert queue.last_error(job.id) == "ValueError: bad input"
    queue.get("t", now=NOW)
    queue.done(job.id, now=NOW)
    assert queue.last_error(job.id) is None
    assert queue._last_errors == {}


def test_a_bury_without_error_keeps_the_last_one():
    """A later bury without an error does not erase the one recorded before."""
    queue = Queue()
    job = reserved(queue)
    queue.bury(job.id, now=NOW, error="first")
    queue.kick(job.id, now=NOW)
    queue.get("t", now=NOW)
    queue.bury(job.id, now=NOW)
    assert queue.last_error(job.id) == "first"


@pytest.mark.parametrize("error", ["", "x" * (MAX_ERROR_LENGTH + 1), 42, b"bytes"])
def test_a_bad_error_is_refused_and_changes_nothing(error):
    """An empty, overlong or non-text error is a BadRequest; the job stays reserved."""
    queue = Queue()
    job = reserved(queue)
    with pytest.raises(BadRequest, match="error must be a string"):
        queue.bury(job.id, now=NOW, error=error)
    assert job.state.value == "reserved"
    assert queue.last_error(job.id) is None


def test_an_error_on_a_job_not_reserved_is_not_kept():
    """A bury refused for the job's state records nothing."""
    queue = Queue()
    job = queue.put("t", "x", now=NOW)
    with pytest.raises(WrongState):
        queue.bury(job.id, now=NOW, error="boom")
    assert queue.last_error(job.id) is None


def test_clear_forgets_errors():
    """Clearing buried jobs drops their errors too."""
    queue = Queue()
    job = reserved(queue)
    queue.bury(job.id, now=NOW, error="boom")
    assert queue.clear("t", state="buried") == 1
    assert queue._last_errors == {}


# -- the journal --------------------------------------------------------------------------


def _errors(queue: Queue) -> dict:
    return {job.id: queue.last_error(job.id) for job in queue.live_jobs()}


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path / "data")
    yield s
    s.journal.close()


def test_errors_survive_a_restart_and_a_crash(server, tmp_path):
    """An error recorded by a bury comes back with its buried job; a deleted job's does not."""
    q_, now = server.queue, server.now
    kept = reserved(q_, body="kept")
    q_.bury(kept.id, now=now, error="Traceback: boom")
    gone = reserved(q_, body="gone")
    q_.bury(gone.id, now=now, error="also boom")
    q_.delete(gone.id, now=now)
    plain = reserved(q_, body="plain")
    q_.bury(plain.id, now=now)
    crashed = server.crash_copy(tmp_path / "crash")
    assert _errors(crashed.queue) == {kept.id: "Traceback: boom", plain.id: None}
    crashed.journal.close()
    restarted = server.restart()
    assert _errors(restarted.queue) == {kept.id: "Traceback: boom", plain.id: None}
    restarted.journal.close()


def test_errors_survive_a_compaction(server):
    """The snapshot writes each job's error after its record."""
    q_, now = server.queue, server.now
    job = reserved(q_)
    q_.bury(job.id, now=now, error="é unicode ✓")
    assert drain_compaction(server.clock, server.journal.compact()) is True
    expected = canonical(q_, now)
    restarted = server.restart()
    assert canonical(restarted.queue, now) == expected
    assert restarted.queue.last_error(job.id) == "é unicode ✓"
    restarted.journal.close()


# -- REST -----------------------------------------------------------------------------------


class BuryErrorRestTests(RestTestCase):
    """PUT /bury with an error; peek and get show it."""

    def reserved(self):
        job_id = self.put("t", "work")
        self.assertEqual(self.ok("GET", "/job?tube=t")["id"], job_id)
        return job_id

    def test_error_in_a_json_body_is_shown_by_peek(self):
        """The JSON body form (a traceback is too long for a URL)."""
        job_id = self.reserved()
        self.assertEqual(
            self.ok("PUT", f"/bury?job_id={q(job_id)}", json={"error": "Traceback\n  boom"}),
            {"action": "bury", "job_id": job_id})
        peeked = self.ok("GET", "/peek?tube=t&buried=true")
        self.assertEqual(peeked["error"], "Traceback\n  boom")
        self.ok("PUT", f"/kick?job_id={q(job_id)}")
        self.assertEqual(self.ok("GET", "/job?tube=t")["error"], "Traceback\n  boom")

    def test_error_as_a_query_parameter(self):
        """The query form, for curl."""
        job_id = self.reserved()
        self.ok("PUT", f"/bury?job_id={q(job_id)}&error=timeout")
        self.assertEqual(self.ok("GET", "/peek?tube=t&buried=true")["error"], "timeout")

    def test_jobs_without_error_have_no_error_field(self):
        """AllQueue's job shape is unchanged for jobs that never failed."""
        job_id = self.reserved()
        self.ok("PUT", f"/bury?job_id={q(job_id)}")
        self.assertNotIn("error", self.ok("GET", "/peek?tube=t&buried=true"))

    def test_bad_errors_answer_400_and_leave_the_job_reserved(self):
        """Too long, empty, not a string, an unknown field: 400, nothing buried."""
        job_id = self.reserved()
        path = f"/bury?job_id={q(job_id)}"
        self.error(400, "bad_request", "PUT", path, json={"error": "x" * (MAX_ERROR_LENGTH + 1)})
        self.error(400, "bad_request", "PUT", path, json={"error": ""})
        self.error(400, "bad_request", "PUT", path, json={"error": 5})
        self.error(400, "bad_request", "PUT", path, json={"reason": "x"})
        self.error(400, "bad_request", "PUT", path + "&error=")
        self.error(415, None, "PUT", path, data=b"error", headers={"content-type": "text/plain"})
        self.assertEqual(self.ok("GET", "/peek?tube=t&buried=true"), {})
        self.assertEqual(self.stored(job_id).state.value, "reserved")
