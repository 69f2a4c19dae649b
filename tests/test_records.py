"""Tests of :mod:`allq.server.records`, the journal's pure record codec."""

import pytest

from allq.server.records import frame, frame_deleted, generation_of, unframe

START = 1_700_000_000.0


@pytest.mark.parametrize("record", [
    ["j", 7, "t", "body \u00e9 \ud800 \n\"", 0, 1.5, 3, START, "key", None, "ready", None, 0, 0,
     None],
    ["s", 2**63, "waiting", START + 0.1, 1, 2, [3600.0, True, None, 4, 3]],
    ["d", 12],
    ["t", "fq-x", 0.333, True, False, "off", 10],
    ["S", True],
])
def test_frame_round_trips(record):
    """Every record kind comes back from its line exactly, odd characters included."""
    line = frame(record)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert unframe(line) == record


def test_unframe_rejects_torn_and_damaged_lines():
    """A line without its newline, with a flipped bit or a wrong CRC reads as damaged."""
    line = frame(["d", 12345])
    assert unframe(line[:-1]) is None
    assert unframe(line[:-5] + b"\n") is None
    flipped = bytearray(line)
    flipped[12] ^= 0x01
    assert unframe(bytes(flipped)) is None
    assert unframe(b"00000000 [\"d\",1]\n") is None
    assert unframe(b"\n") is None
    assert unframe(b"garbage garbage garbage\n") is None


def test_the_fast_delete_record_is_the_same_bytes():
    """frame_deleted writes exactly what frame(["d", id]) would."""
    for job_id in (0, 1, 1_700_000_000_123_456, 2**63):
        assert frame_deleted(job_id) == frame(["d", job_id])


@pytest.mark.parametrize("name, generation", [
    ("journal.3.log", 3), ("snapshot.12", 12), ("snapshot.7.tmp", 7),
    ("journal.3.log.corrupt-1700000000", None), ("lock", None), ("journal.x.log", None),
    ("snapshot.", None),
])
def test_generation_of_file_names(name, generation):
    """Journal and snapshot names give their generation; anything else (a kept
    .corrupt- copy included) gives None."""
    assert generation_of(name) == generation
