"""The files a backup keeps of its replicas, under ``<data-dir>/replicas/<primary id>/``.

``epoch`` (the replica's epoch, as text), ``promoted`` (the unix time it was
promoted) and, once promoted, a data directory of its own whose first
snapshot :func:`write_snapshot` writes from the replica's state (the journal
and recovery of :mod:`allq.server.journal` and :mod:`allq.server.recovery` go
on from there). Blocking I/O, called rarely (see :mod:`allq.server.replica_host`).
"""

from __future__ import annotations

import os

from allq.server.journal import write_durably
from allq.server.records import FORMAT_VERSION, frame, generation_of, snapshot_name
from allq.server.recovery import DataDirError, Recovered

REPLICAS_DIR = "replicas"
EPOCH_FILE = "epoch"
PROMOTED_FILE = "promoted"


def write_file(directory: str, name: str, text: str) -> None:
    """Write a small file atomically and durably, creating ``directory`` if needed."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    write_durably(directory, name, text.encode("ascii"))


def read_number(directory: str, name: str, kind):
    """The number a small file holds (``None``: no such file).

    :raises DataDirError: it cannot be read, or holds no number.
    """
    path = os.path.join(directory, name)
    try:
        with open(path, encoding="ascii") as f:
            return kind(f.read().strip())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise DataDirError(f"cannot read {path}: {e}") from None


def write_snapshot(directory: str, recovered: Recovered, now: float) -> int:
    """Write ``recovered`` as snapshot 1 of ``directory`` (a promoted replica's own
    data directory); its size in bytes."""
    lines = [frame(["snapshot", FORMAT_VERSION, 1, recovered.max_id + 1, now])]
    count = 0
    for job_id, record in recovered.jobs.items():
        lines.append(frame(record))
        count += 1
        keys = recovered.job_keys.get(job_id)
        if keys is not None:
            lines.append(frame(["u", job_id, *keys]))
            count += 1
        error = recovered.errors.get(job_id)
        if error is not None:
            lines.append(frame(["e", job_id, error]))
            count += 1
    others = [*recovered.tubes.values(),
              *(["c", tube, limit] for tube, limit in recovered.concurrency.items()),
              ["S", bool(recovered.draining)], *recovered.keys.values(),
              *recovered.schedules.values(),
              *(["i", *record] for records in recovered.interests.values()
                for record in records)]
    lines += [frame(record) for record in others]
    count += len(others)
    lines.append(frame(["end", count]))
    data = b"".join(lines)
    for name in os.listdir(directory):
        # What an earlier promotion that never finished (a crash) left behind.
        if generation_of(name) is not None:
            os.unlink(os.path.join(directory, name))
    write_durably(directory, snapshot_name(1), data)
    return len(data)
