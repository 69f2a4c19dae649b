"""Stateful test of the queue core against a tiny reference model.

Hypothesis runs random sequences of put/get/done/delete/release/bury/kick/touch
and time steps against both :class:`allq.core.queue.Queue` and a model made of
plain dicts and sorted lists. After every step the two must agree on each
tube's counts, on the order jobs would be served in (ready) and kicked in
(buried), on every job's state and deadline, and on the next deadline; every
job is in exactly one place, none is lost and none is handed out twice.
"""

import attrs
from hypothesis import errors as hypothesis_errors
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from allq.core.queue import Event, Queue
from allq.vocabulary import MAX_PRIORITY
from allq.errors import NotFound, WrongState

# tests/conftest.py registers the "ci" profile; register it here only when this
# module runs without that conftest, so the shared profile is never overridden.
try:
    settings.get_profile("ci")
except hypothesis_errors.InvalidArgument:
    settings.register_profile("ci", deadline=None)
    settings.load_profile("ci")

TUBES = ("a", "b")
PRIORITIES = (0, 1, 2, MAX_PRIORITY)
# Multiples of 0.5 keep every deadline exact in binary floating point, so ties
# between deadlines (and touches that repeat a deadline) really happen.
DELAYS = (0, 0, 0.5, 1, 2.5)
TTLS = (1, 2, 4)
TIME_STEPS = (0, 0.5, 1, 2, 5)
LIMITS = (None, 1, 2)
DEFAULT_LIMIT = 3

picks = st.integers(min_value=0, max_value=1_000)
put_arguments = st.fixed_dictionaries(
    {
        "tube": st.sampled_from(TUBES),
        "priority": st.sampled_from(PRIORITIES),
        "delay": st.sampled_from(DELAYS),
        "ttl": st.sampled_from(TTLS),
        "limit": st.sampled_from(LIMITS),
    }
)


@attrs.define
class ModelJob:
    """What the model knows of one job."""

    id: int
    tube: str
    priority: int
    ttl: float
    expired_limit: int
    state: str
    deadline: float | None = None
    #: When the job last became ready (ready) or was buried (buried): FIFO order.
    order: int = 0
    expireds: int = 0
    releases: int = 0


class QueueMachine(RuleBasedStateMachine):
    """Random operation sequences: the queue must behave like the model."""

    def __init__(self) -> None:
        super().__init__()
        self.queue = Queue(started=0.0)
        self.now = 0.0
        self.jobs: dict[int, ModelJob] = {}
        self.gone: set[int] = set()
        self.sequence = 0

    # -- model helpers ---------------------------------------------------------

    def _next_order(self) -> int:
        self.sequence += 1
        return self.sequence

    def _with_state(self, *states: str, tube: str | None = None) -> list[ModelJob]:
        return sorted(
            (j for j in self.jobs.values()
             if j.state in states and (tube is None or j.tube == tube)),
            key=lambda j: j.id,
        )

    def _ready_line(self, tube: str) -> list[int]:
        ready = self._with_state("ready", tube=tube)
        return [j.id for j in sorted(ready, key=lambda j: (j.priority, j.order))]

    def _buried_line(self, tube: str) -> list[int]:
        buried = self._with_state("buried", tube=tube)
        return [j.id for j in sorted(buried, key=lambda j: j.order)]

    def _make_ready(self, job: ModelJob) -> None:
        job.state, job.deadline, job.order = "ready", None, self._next_order()

    def _bury(self, job: ModelJob) -> None:
        job.state, job.deadline, job.order = "buried", None, self._next_order()

    def _forget(self, job_id: int) -> None:
        del self.jobs[job_id]
        self.gone.add(job_id)

    @staticmethod
    def _pick(candidates: list[ModelJob], pick: int) -> ModelJob:
        return candidates[pick % len(candidates)]

    # -- rules -----------------------------------------------------------------

    # Without a starting batch most generated steps act on an empty queue, and as
    # Hypothesis switches random rules off per run ("swarm testing"), a run without
    # ``get`` would never reserve anything: start with some jobs already reserved.
    @initialize(
        batch=st.lists(put_arguments, min_size=1, max_size=8),
        reserve=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    )
    def start(self, batch, reserve):
        """Start with a few jobs, some of them reserved."""
        for arguments in batch:
            self._put(**arguments)
        for tube, count in zip(TUBES, reserve):
            if count:
                self.get(tube, count, delete=False)

    @rule(arguments=put_arguments)
    def put_one(self, arguments):
        """Put a job, ready or delayed."""
        self._put(**arguments)

    def _put(self, tube, priority, delay, ttl, limit):
        job = self.queue.put(
            tube, "body", now=self.now, priority=priority, ttl=ttl, delay=delay,
            expired_limit=limit,
        )
        assert job.id not in self.jobs and job.id not in self.gone
        model = ModelJob(job.id, tube, priority, ttl, limit or DEFAULT_LIMIT, "ready")
        if delay > 0:
            model.state, model.deadline = "delayed", self.now + delay
        else:
            model.order = self._next_order()
        self.jobs[job.id] = model

    @rule(
        tube=st.sampled_from(TUBES),
        count=st.integers(1, 3),
        delete=st.sampled_from([False, False, False, True]),
    )
    def get(self, tube, count, delete):
        """Take up to ``count`` jobs: the best ready ones, in order."""
        expected = self._ready_line(tube)[:count]
        got = self.queue.get(tube, now=self.now, count=count, delete=delete)
        assert [job.id for job in got] == expected
        for job_id in expected:
            if delete:
                self._forget(job_id)
            else:
                model = self.jobs[job_id]
                model.state, model.deadline = "reserved", self.now + model.ttl

    @precondition(lambda self: self._with_state("reserved"))
    @rule(pick=picks)
    def done(self, pick):
        """Finish a reserved job."""
        job = self._pick(self._with_state("reserved"), pick)
        self.queue.done(job.id, now=self.now)
        self._forget(job.id)

    @precondition(lambda self: self.jobs)
    @rule(pick=picks)
    def delete(self, pick):
        """Delete a job in any state."""
        job = self._pick(self._with_state("ready", "delayed", "reserved", "buried"), pick)
        self.queue.delete(job.id, now=self.now)
        self._forget(job.id)

    @precondition(lambda self: self.gone)
    @rule(pick=picks)
    def delete_gone(self, pick):
        """A job that is gone stays gone: NotFound."""
        job_id = sorted(self.gone)[pick % len(self.gone)]
        try:
            self.queue.delete(job_id, now=self.now)
        except NotFound:
            pass
        else:
            raise AssertionError(f"job {job_id} came back")

    @precondition(lambda self: self._with_state("reserved"))
    @rule(pick=picks, delay=st.sampled_from(DELAYS))
    def release(self, pick, delay):
        """Release a reserved job, maybe with a delay; too many releases bury it."""
        job = self._pick(self._with_state("reserved"), pick)
        self.queue.release(job.id, now=self.now, delay=delay)
        job.releases += 1
        if job.releases > 2 * job.expired_limit:
            self._bury(job)
        elif delay > 0:
            job.state, job.deadline = "delayed", self.now + delay
        else:
            self._make_ready(job)

    @precondition(lambda self: self._with_state("reserved"))
    @rule(pick=picks)
    def bury(self, pick):
        """Bury a reserved job."""
        job = self._pick(self._with_state("reserved"), pick)
        self.queue.bury(job.id, now=self.now)
        self._bury(job)

    @precondition(lambda self: self._with_state("reserved"))
    @rule(pick=picks)
    def touch(self, pick):
        """Touch a reserved job: its ttl restarts now."""
        job = self._pick(self._with_state("reserved"), pick)
        self.queue.touch(job.id, now=self.now)
        job.deadline = self.now + job.ttl

    @precondition(lambda self: self._with_state("buried", "delayed"))
    @rule(pick=picks)
    def kick(self, pick):
        """Kick a buried or delayed job to ready (a buried one starts afresh)."""
        job = self._pick(self._with_state("buried", "delayed"), pick)
        self.queue.kick(job.id, now=self.now)
        if job.state == "buried":
            job.expireds = job.releases = 0
        self._make_ready(job)

    @rule(tube=st.sampled_from(TUBES), count=st.integers(1, 3))
    def kick_tube(self, tube, count):
        """Kick up to ``count`` buried jobs of a tube, oldest buried first."""
        expected = self._buried_line(tube)[:count]
        kicked = self.queue.kick_tube(tube, now=self.now, count=count)
        assert [job.id for job in kicked] == expected
        for job_id in expected:
            job = self.jobs[job_id]
            job.expireds = job.releases = 0
            self._make_ready(job)

    @precondition(lambda self: self._with_state("ready", "delayed", "buried"))
    @rule(pick=picks, action=st.sampled_from(["done", "release", "bury", "touch"]))
    def reserved_only_action_on_unreserved_job(self, pick, action):
        """done/release/bury/touch of a job that is not reserved fail and change nothing."""
        job = self._pick(self._with_state("ready", "delayed", "buried"), pick)
        try:
            getattr(self.queue, action)(job.id, now=self.now)
        except WrongState:
            pass
        else:
            raise AssertionError(f"{action} of a {job.state} job succeeded")

    @rule(step=st.sampled_from(TIME_STEPS))
    def advance(self, step):
        """Let time pass and sweep deadlines: delayed jobs mature, ttls expire."""
        self.now += step
        due = sorted(
            (j for j in self.jobs.values() if j.deadline is not None and j.deadline <= self.now),
            key=lambda j: (j.deadline, j.id),
        )
        expected = []
        for job in due:
            if job.state == "delayed":
                self._make_ready(job)
                expected.append(Event("matured", job.id, job.tube))
                continue
            job.expireds += 1
            if job.expireds >= job.expired_limit:
                self._bury(job)
                expected.append(Event("buried", job.id, job.tube))
            else:
                self._make_ready(job)
                expected.append(Event("expired", job.id, job.tube))
        assert self.queue.expire(self.now) == expected

    # -- invariants --------------------------------------------------------------

    @invariant()
    def counts_agree(self):
        """Every tube's counts match the model."""
        for stats in self.queue.tube_stats(self.now):
            expected = {
                state: len(self._with_state(state, tube=stats.tube))
                for state in ("ready", "reserved", "delayed", "buried")
            }
            actual = {
                "ready": stats.ready,
                "reserved": stats.reserved,
                "delayed": stats.delayed,
                "buried": stats.buried,
            }
            assert actual == expected, stats.tube

    @invariant()
    def lines_agree(self):
        """The ready line (serving order) and buried line (kick order) match the model."""
        for tube in TUBES:
            for buried, expected in ((False, self._ready_line(tube)),
                                     (True, self._buried_line(tube))):
                line = []
                while (job := self.queue.peek(tube, buried=buried, offset=len(line))) is not None:
                    line.append(job.id)
                assert line == expected, (tube, buried)

    @invariant()
    def no_job_lost_or_duplicated(self):
        """The queue holds exactly the model's jobs, each in the model's state."""
        assert len(self.queue) == len(self.jobs)
        for job_id, model in self.jobs.items():
            job = self.queue.job(job_id)
            assert (job.state.value, job.deadline, job.priority, job.expireds, job.releases) == (
                model.state, model.deadline, model.priority, model.expireds, model.releases
            )

    @invariant()
    def next_deadline_agrees(self):
        """next_deadline is the earliest deadline of the model's delayed and reserved jobs."""
        deadlines = [j.deadline for j in self.jobs.values() if j.deadline is not None]
        assert self.queue.next_deadline() == (min(deadlines) if deadlines else None)


TestQueueModel = QueueMachine.TestCase
TestQueueModel.settings = settings(max_examples=150, stateful_step_count=50, deadline=None)
