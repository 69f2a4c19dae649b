"""Tests of what the queue core refuses (:mod:`allq.core.queue`).

Unknown job ids, actions on jobs in the wrong state, and every ill-typed or
out-of-range argument.
"""

import math

import pytest

from allq.core.job import JobState
from allq.core.queue import MIB
from allq.errors import BadRequest, NotFound, TooLarge, WrongState
from allq.vocabulary import MAX_COUNT

from queues import T0, counts, job_in_state, make_queue, zero_counts


# -- unknown ids and wrong states -----------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda q: q.done(99, now=T0),
        lambda q: q.delete(99, now=T0),
        lambda q: q.release(99, now=T0),
        lambda q: q.bury(99, now=T0),
        lambda q: q.touch(99, now=T0),
        lambda q: q.kick(99, now=T0),
        lambda q: q.job(99),
    ],
    ids=["done", "delete", "release", "bury", "touch", "kick", "job"],
)
def test_unknown_job_id_is_not_found(call):
    """Every operation on an unknown job id raises NotFound naming the id."""
    q = make_queue()
    q.put("t", "x", now=T0)
    with pytest.raises(NotFound, match="job 99 not found"):
        call(q)


@pytest.mark.parametrize("action", ["done", "touch", "release", "bury"])
@pytest.mark.parametrize("state", ["ready", "delayed", "buried"])
def test_reserved_only_operations_on_other_states(action, state):
    """done/touch/release/bury of a job that is not reserved raises WrongState."""
    q = make_queue()
    job = job_in_state(q, state)
    with pytest.raises(WrongState, match=f"cannot {action} job {job.id}: it is {state}"):
        getattr(q, action)(job.id, now=T0)
    assert job.state is JobState[state.upper()]
    assert counts(q) == zero_counts(**{state: 1})


# -- input validation ---------------------------------------------------------


BAD_TUBES = ["", "a" * 201, "-leading-dash", "with space", "tab\there", "new\nline",
             "ünïcode", None, 5, b"bytes"]


@pytest.mark.parametrize("tube", BAD_TUBES)
def test_bad_tube_names_are_rejected(tube):
    """Tube names must be 1-200 safe characters, not starting with '-'."""
    q = make_queue()
    calls = [
        lambda: q.put(tube, "x", now=T0),
        lambda: q.get(tube, now=T0),
        lambda: q.peek(tube),
        lambda: q.clear(tube),
        lambda: q.kick_tube(tube, now=T0),
    ]
    for call in calls:
        with pytest.raises(BadRequest, match="tube must be 1-200 characters"):
            call()
    assert len(q) == 0


@pytest.mark.parametrize("tube", ["a", "a" * 200, "x-y", "A_b.c:d@e$f!g#h=i+j/k-", "0"])
def test_good_tube_names_are_accepted(tube):
    """Names of letters, digits and _.:@$!#=+/- up to 200 characters are valid."""
    q = make_queue()
    job = q.put(tube, "x", now=T0)
    assert q.peek(tube) is job


@pytest.mark.parametrize("body", [bytearray(b"x"), None, 5, ["x"]])
def test_non_string_body_is_rejected(body):
    """A job body must be a str (text) or bytes (a binary body)."""
    with pytest.raises(BadRequest, match="body must be a string"):
        make_queue().put("t", body, now=T0)


def test_body_size_limit_ascii():
    """A body of exactly max_job_size bytes is accepted; one more byte is TooLarge."""
    q = make_queue(max_job_size=100)
    q.put("t", "a" * 100, now=T0)
    with pytest.raises(TooLarge, match="maximum job size of 100 bytes"):
        q.put("t", "a" * 101, now=T0)


@pytest.mark.parametrize(
    ("fits", "too_large"),
    [
        ("é" * 5, "é" * 5 + "a"),  # 2-byte characters: 10 bytes, then 11
        ("€" * 3 + "a", "€" * 3 + "é"),  # 3-byte characters: 10 bytes, then 11
        ("😀" * 2 + "ab", "😀" * 2 + "abc"),  # 4-byte characters: 10 bytes, then 11
    ],
)
def test_body_size_limit_counts_utf8_bytes(fits, too_large):
    """The size limit counts UTF-8 bytes, not characters, right at the limit."""
    q = make_queue(max_job_size=10)
    assert len(fits.encode()) == 10
    q.put("t", fits, now=T0)
    with pytest.raises(TooLarge):
        q.put("t", too_large, now=T0)


def test_body_size_limit_default_one_mib_multibyte():
    """With the default 1 MiB limit, 2-byte characters fit exactly up to 1 MiB."""
    q = make_queue()
    q.put("t", "é" * (MIB // 2), now=T0)
    with pytest.raises(TooLarge):
        q.put("t", "é" * (MIB // 2) + "a", now=T0)


def test_too_large_is_a_bad_request():
    """TooLarge is a kind of BadRequest, with its own code."""
    assert issubclass(TooLarge, BadRequest)
    assert (TooLarge.code, TooLarge.http_status) == ("too_large", 413)


@pytest.mark.parametrize("priority", [True, False, 1.0, -1, 2**32, "1"])
def test_bad_priority_is_rejected(priority):
    """Priorities must be ints from 0 to 2**32-1 (bools and floats are not ints here)."""
    q = make_queue()
    with pytest.raises(BadRequest, match="priority must be"):
        q.put("t", "x", now=T0, priority=priority)


@pytest.mark.parametrize("ttl", [0, 0.0, -1, math.nan, math.inf, -math.inf, "10", True, 1e12])
def test_bad_ttl_is_rejected(ttl):
    """A ttl must be a finite number of seconds greater than 0 and at most ten years."""
    with pytest.raises(BadRequest, match="ttl must be"):
        make_queue().put("t", "x", now=T0, ttl=ttl)


@pytest.mark.parametrize("delay", [-1, -0.5, math.nan, math.inf, "5", True])
def test_bad_delay_is_rejected(delay):
    """A put or release delay must be a finite number of seconds, 0 or more."""
    q = make_queue()
    with pytest.raises(BadRequest, match="delay must be"):
        q.put("t", "x", now=T0, delay=delay)
    job = job_in_state(q, "reserved")
    with pytest.raises(BadRequest, match="delay must be"):
        q.release(job.id, now=T0, delay=delay)
    assert job.state is JobState.RESERVED


@pytest.mark.parametrize("count", [0, -1, MAX_COUNT + 1, True, 1.0, "2"])
def test_bad_get_count_is_rejected(count):
    """get's count must be an int from 1 to 1000."""
    q = make_queue()
    q.put("t", "x", now=T0)
    with pytest.raises(BadRequest, match="count must be"):
        q.get("t", now=T0, count=count)
    assert counts(q) == zero_counts(ready=1)


@pytest.mark.parametrize("count", [0, True, "1"])
def test_bad_kick_tube_count_is_rejected(count):
    """kick_tube's count must be a positive int."""
    with pytest.raises(BadRequest, match="count must be"):
        make_queue().kick_tube("t", now=T0, count=count)


@pytest.mark.parametrize("limit", [0, -1, True, 1.5])
def test_bad_expired_limit_is_rejected(limit):
    """A job's expired_limit must be a positive int."""
    with pytest.raises(BadRequest, match="expired_limit must be"):
        make_queue().put("t", "x", now=T0, expired_limit=limit)
