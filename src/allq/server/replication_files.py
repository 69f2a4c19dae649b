"""What a replicating primary keeps in its data directory besides the journal.

* ``replication``: JSON ``{"epoch": N | null, "backup": id | null}``, the epoch the
  backup handed out (sent back in every ``replicate``, so a backup that promoted
  this server's replica can fence it);
* ``server-id``: this server's id after it was fenced (``<id>-e<epoch>``), used
  at every start instead of ``--server-id`` or the derived id;
* ``fenced-<epoch>-<unix time>/``: the journal and snapshots a fenced primary set
  aside (kept for forensics, never served).

Small files written once per connection or fencing: written and renamed into
place synchronously (:func:`allq.server.journal.write_durably`; a few hundred
bytes, the reactor waits microseconds).
"""

import json
import os

from allq.server.journal import write_durably
from allq.vocabulary import SERVER_ID

REPLICATION_FILE = "replication"
SERVER_ID_FILE = "server-id"


class ReplicationFileError(Exception):
    """The data directory's replication files cannot be read or are malformed."""


def read_epoch(directory: str) -> int | None:
    """The epoch kept in ``directory`` (``None``: never had one)."""
    path = os.path.join(directory, REPLICATION_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ReplicationFileError(f"cannot read {path}: {e}") from None
    epoch = state.get("epoch") if isinstance(state, dict) else None
    if epoch is not None and (type(epoch) is not int or epoch < 1):
        raise ReplicationFileError(f"{path}: epoch must be a positive integer or null")
    return epoch


def write_epoch(directory: str, epoch: int | None, backup: str | None) -> None:
    """Keep ``epoch`` (and the backup's id that handed it out) in ``directory``."""
    write_durably(directory, REPLICATION_FILE,
                  (json.dumps({"epoch": epoch, "backup": backup}) + "\n").encode("utf-8"))


def read_server_id(directory: str) -> str | None:
    """The id a fenced primary took (``None``: none was written)."""
    path = os.path.join(directory, SERVER_ID_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ReplicationFileError(f"cannot read {path}: {e}") from None
    if not SERVER_ID.fullmatch(text):
        raise ReplicationFileError(f"{path} does not hold a valid server id")
    return text


def fenced_id(server_id: str, epoch: int) -> str:
    """The new identity of a primary fenced at ``epoch``: ``<id>-e<epoch>`` (an
    earlier ``-e<N>`` suffix replaced, and cut to the 64 characters ids may have)."""
    base, sep, number = server_id.rpartition("-e")
    if sep and number.isdigit():
        server_id = base
    suffix = f"-e{epoch}"
    return server_id[:64 - len(suffix)] + suffix


def set_aside(directory: str, epoch: int, now: float, new_id: str) -> str:
    """Fence this data directory: move the journals and snapshots into
    ``fenced-<epoch>-<unix time>/``, write ``new_id`` as the server's identity and
    reset the epoch (the new identity never had one).

    :returns: the folder the files went to.
    """
    folder = os.path.join(directory, f"fenced-{epoch}-{int(now)}")
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(directory):
        if name.startswith(("journal.", "snapshot.")):
            os.replace(os.path.join(directory, name), os.path.join(folder, name))
    write_durably(directory, SERVER_ID_FILE, (new_id + "\n").encode("utf-8"))
    write_epoch(directory, None, None)
    return folder
