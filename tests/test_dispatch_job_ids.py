"""Tests of job ids through :class:`allq.server.dispatch.Dispatcher`.

``"<server_id>,<number>"`` or a bare number; another server's id, an unknown
number and malformed ids. Harness: :mod:`dispatchers`.
"""

import pytest

from dispatchers import SERVER_ID, Harness


@pytest.fixture
def h() -> Harness:
    return Harness()


# -- job ids ----------------------------------------------------------------------


def test_a_bare_job_number_is_accepted(h):
    """A job id without the server prefix names a job of this server."""
    job_id = h.put()
    h.reserve()
    number = job_id.split(",")[1]
    assert h.ok("done", job_id=number) == {"job_id": job_id}


def test_another_servers_job_id_is_not_found(h):
    """A job id with another server's prefix gets not_found, even if the number exists."""
    number = h.put().split(",")[1]
    error = h.error("delete", job_id=f"other,{number}")
    assert error["code"] == "not_found"
    assert len(h.queue) == 1


def test_an_unknown_job_number_is_not_found(h):
    """A well-formed id of a job that does not exist gets not_found."""
    assert h.error("kick", job_id=f"{SERVER_ID},999999")["code"] == "not_found"


@pytest.mark.parametrize("job_id", ["", "abc", "srv1,", ",5", "srv1,5,6", "srv 1,5", "5.0", "-5"])
def test_a_malformed_job_id_is_a_bad_request(h, job_id):
    """A job id that is not ``[<server_id>,]<number>`` gets bad_request naming job_id."""
    error = h.error("done", job_id=job_id)
    assert error["code"] == "bad_request"
    assert "job_id" in error["message"]
