"""Tests of the job record (:mod:`allq.core.job`) and what the queue stores per job.

A job's size is per queued job at a million jobs (``bench/memory.py``): the fixed
put options are shared, and a job keeps its tube's own name rather than the
request's copy.
"""

import sys

from allq.core.job import Job, JobOptions, JobState

from queues import T0, make_queue


def test_a_job_is_ten_slots_and_no_dict():
    job = make_queue().put("t", "x", now=T0)
    assert not hasattr(job, "__dict__")
    assert len(Job.__slots__) == 10
    assert sys.getsizeof(job) <= 112


def test_jobs_put_alike_share_their_options():
    q = make_queue()
    a = q.put("a", "x", now=T0, priority=3)
    b = q.put("b", "y", now=T0 + 1, priority=3)
    c = q.put("a", "z", now=T0, priority=4)
    assert a.options is b.options
    assert c.options is not a.options
    assert (c.priority, c.ttl, c.expired_limit, c.shard_key, c.parent_id) == (
        4, a.ttl, a.expired_limit, None, None)


def test_options_keep_the_type_they_were_given():
    """A ttl of 60 and one of 60.0 are not shared: each job gives back what it got."""
    q = make_queue()
    assert type(q.put("t", "x", now=T0, ttl=60).ttl) is int
    assert type(q.put("t", "y", now=T0, ttl=60.0).ttl) is float


def test_a_child_and_a_fair_job_read_their_options_back():
    q = make_queue()
    parent = q.put_parent("t", "p", now=T0)
    child = q.put("fq-t", "c", now=T0, shard_key="k", parent_id=parent.id)
    assert (child.shard_key, child.parent_id) == ("k", parent.id)
    assert isinstance(child.options, JobOptions)


def test_the_journals_keyword_arguments_build_a_job():
    """Recovery builds a Job from every stored field by keyword."""
    job = Job(id=9, tube="t", body="b", priority=2, ttl=60.0, expired_limit=4, created=T0,
              state=JobState.RESERVED, deadline=T0 + 60, reserved_at=T0, expireds=1,
              releases=2, shard_key="k", parent_id=3)
    assert (job.id, job.tube, job.body, job.priority, job.ttl, job.expired_limit, job.created,
            job.state, job.deadline, job.reserved_at, job.expireds, job.releases,
            job.shard_key, job.parent_id) == (
        9, "t", "b", 2, 60.0, 4, T0, JobState.RESERVED, T0 + 60, T0, 1, 2, "k", 3)


def test_jobs_keep_their_tubes_own_name():
    """Each request decodes a new str for the tube name; jobs hold the tube's."""
    q = make_queue()
    first = q.put("tube".encode().decode(), "x", now=T0)
    second = q.put("tube".encode().decode(), "y", now=T0)
    restored = q.restore(Job(id=99, tube="tube".encode().decode(), body="z", priority=1,
                             ttl=60, expired_limit=3, created=T0), now=T0)
    assert first.tube is second.tube is restored.tube is q.tube("tube").name
