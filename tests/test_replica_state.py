"""Tests of :mod:`allq.server.replica_state`: applying a primary's stream."""

import pytest

from allq.core.job import JobState
from allq.server.replica_state import MalformedStream, ReplicaState

from tests.replicas import T0, lines, put, state


def test_snapshot_with_interleaved_live_records_gives_the_primary_state():
    """Snapshot records and live records applied in arrival order give the final state."""
    replica = ReplicaState()
    replica.apply_lines(lines(put(1), put(2)))  # a first snapshot chunk
    replica.apply_lines(lines(state(1, JobState.BURIED), ["e", 1, "boom"], put(5)))  # live
    replica.apply_lines(lines(put(3), ["t", "t", 2.0, False, False, None, None]))  # chunk
    replica.apply_lines(lines(["d", 2], ["k", "key", 5, T0 + 60]))  # live
    recovered = replica.recovered
    assert sorted(recovered.jobs) == [1, 3, 5]
    assert recovered.jobs[1][10] == "buried"
    assert recovered.errors == {1: "boom"}
    assert recovered.tubes["t"][2] == 2.0
    assert recovered.keys["key"][2] == 5
    assert recovered.max_id == 5
    assert (replica.jobs, replica.records) == (3, 9)


def test_records_of_jobs_not_seen_yet_are_orphans():
    """A record naming a job the replica does not hold is ignored and counted;
    the job's snapshot record, arriving later, carries its state."""
    replica = ReplicaState()
    replica.apply_lines(lines(state(7, JobState.BURIED), ["e", 7, "x"], ["r", 7, T0 + 5]))
    assert replica.jobs == 0
    assert replica.orphans == 3
    replica.apply_lines(lines(put(7, state=JobState.BURIED)))
    assert replica.recovered.jobs[7][10] == "buried"
    assert replica.recovered.errors == {}


def test_an_r_record_marks_the_job_reserved_until_its_deadline():
    """["r", id, deadline] makes the job's record reserved with that deadline."""
    replica = ReplicaState()
    replica.apply_lines(lines(put(1), ["r", 1, T0 + 30]))
    assert replica.recovered.jobs[1][10:12] == ["reserved", T0 + 30]
    replica.apply_lines(lines(["r", 1, T0 + 60]))  # a touch
    assert replica.recovered.jobs[1][10:12] == ["reserved", T0 + 60]


def test_a_later_record_of_the_job_clears_its_reservation():
    """A release (an s record) or a done (a d record) replaces the reservation."""
    replica = ReplicaState()
    replica.apply_lines(lines(put(1), put(2), ["r", 1, T0 + 30], ["r", 2, T0 + 30]))
    replica.apply_lines(lines(state(1, JobState.READY, releases=1), ["d", 2]))
    assert replica.recovered.jobs[1][10:12] == ["ready", None]
    assert 2 not in replica.recovered.jobs


def test_a_damaged_line_is_refused():
    """A CRC mismatch raises MalformedStream; the lines before it stay applied."""
    replica = ReplicaState()
    good = lines(put(1))
    bad = lines(put(2)).replace('"b"', '"c"')
    with pytest.raises(MalformedStream, match="line 2 is damaged"):
        replica.apply_lines(good + bad)
    assert sorted(replica.recovered.jobs) == [1]


@pytest.mark.parametrize("text, message", [
    (lines(["x", 1]), "no known record"),
    (lines(["journal", 1, 1]), "no known record"),
    (lines(["r", "1", 5]), "an r record is"),
    (lines(put(1))[:-1], "must end with a newline"),
    ("0000 é\n", "not ASCII"),
])
def test_malformed_lines_are_refused(text, message):
    """Unknown records, bad r records, torn and non-ASCII lines are refused clearly."""
    with pytest.raises(MalformedStream, match=message):
        ReplicaState().apply_lines(text)


def test_no_lines_apply_nothing():
    """An empty replica_records (a heartbeat's worth) changes nothing."""
    replica = ReplicaState()
    assert replica.apply_lines("") == 0
    assert replica.records == 0
