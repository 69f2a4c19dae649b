"""beanstalkd's integer job ids, mapped to allq job refs, per client process.

beanstalkd clients expect a job id to be an integer; an allq job is named by
``"<server_id>,<number>"`` (:class:`allq.vocabulary.JobRef`), unique over the
federation. This client hands out its own integers, 1, 2, 3, ..., one per job
ref it has shown a beanstalkd connection, and maps them back.

* Bounded: at most ``capacity`` ids are remembered, the least recently used
  forgotten first (a put, a reserve, a peek or any command naming the id counts
  as a use). A deleted job's id is forgotten at once.
* Never reused: the counter only grows, so an id that is gone (deleted, or
  forgotten) answers ``NOT_FOUND``, never another job.
* Per client: another allq-client gives the same job another integer; the same
  job shown twice by this client keeps its integer while remembered.

Pure: no I/O, no clock.
"""

from collections import OrderedDict

#: Ids remembered by default: about 150 bytes each, so ~150 MiB at most.
DEFAULT_CAPACITY = 1_000_000


class JobIds:
    """Integer ids for job refs, least recently used forgotten first.

    :param capacity: the most ids remembered at once.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self._capacity = capacity
        self._refs: OrderedDict[int, str] = OrderedDict()
        self._ids: dict[str, int] = {}
        self._next = 1

    def __len__(self) -> int:
        return len(self._refs)

    def id_for(self, ref: str) -> int:
        """The integer of a job ref: its own while remembered, else a new one."""
        job_id = self._ids.get(ref)
        if job_id is not None:
            self._refs.move_to_end(job_id)
            return job_id
        job_id = self._next
        self._next += 1
        self._refs[job_id] = ref
        self._ids[ref] = job_id
        while len(self._refs) > self._capacity:
            _, old = self._refs.popitem(last=False)
            del self._ids[old]
        return job_id

    def ref_for(self, job_id: int) -> str | None:
        """The job ref of an integer id, or ``None`` when it is unknown or gone."""
        ref = self._refs.get(job_id)
        if ref is not None:
            self._refs.move_to_end(job_id)
        return ref

    def forget(self, job_id: int) -> None:
        """The job is gone: its id is never answered again."""
        ref = self._refs.pop(job_id, None)
        if ref is not None:
            del self._ids[ref]
