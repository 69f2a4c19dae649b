"""A fake backup for the primary's replication tests (the real one is
``allq.server.replica_host``): an allq server whose dispatcher acknowledges the
stream (``replicate``, ``replica_records``, ``replica_synced``) and keeps what
arrived. In-process (:func:`start_backup`) or as its own process::

    python tests/replica_fake.py KEYS_DIR OUT_FILE PORT [FENCE_AT]

prints ``listening on PORT`` and appends every line received to OUT_FILE (``-``:
keep nothing, as ``bench/replication.py`` runs it until a real backup exists; the
integration test's primary is a real ``twistd`` process that blocks nothing of
ours); PORT 0 picks a free one. With FENCE_AT it answers every ``replicate`` with ``fenced`` at that epoch.
"""

import os
import sys

from twisted.internet import reactor as global_reactor

from allq.core.queue import Queue, QueueConfig
from allq.errors import Fenced
from allq.server.dispatch import Dispatcher
from allq.server.keys import load_server_keys
from allq.server.protocol import ServerFactory
from allq.wire.crypto import Authenticator
from allq.wire.messages import max_line_length


class RecordingBackup(Dispatcher):
    """Acknowledges the stream and keeps what arrived.

    :param fence_at: answer ``replicate`` with ``fenced`` at this epoch.
    :param on_line: called with each line received.
    """

    def __init__(self, *args, fence_at=None, on_line=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.streams = []
        self.lines = []
        self.synced = []
        self.fence_at = fence_at
        self._on_line = on_line

    def _do_replicate(self, now, *, primary, epoch, address):
        if self.fence_at is not None:
            raise Fenced(f"primary {primary} was promoted here at epoch {self.fence_at}")
        self.streams.append((primary, epoch))
        self.lines = []
        return {"backup": "backup-1", "epoch": epoch or 1}

    def _do_replica_records(self, now, *, seq, lines):
        for line in lines.splitlines(True):
            self.lines.append(line)
            if self._on_line is not None:
                self._on_line(line)
        return {"seq": seq}

    def _do_replica_synced(self, now, *, seq, records):
        self.synced.append(records)
        return {"seq": seq}


def start_backup(keys_dir, reactor=global_reactor, port=0, **kwargs):
    """A :class:`RecordingBackup` listening on 127.0.0.1, any free port."""
    keys = load_server_keys(keys_dir, None, {})
    backup = RecordingBackup(Queue(QueueConfig(), started=reactor.seconds()), reactor,
                             lambda: "backup-1", **kwargs)
    factory = ServerFactory(Authenticator(keys), backup, reactor, lambda: "backup-1",
                            1024 * 1024, max_line_length(1024 * 1024))
    return backup, reactor.listenTCP(port, factory, interface="127.0.0.1")


def main(keys_dir: str, out: str, port: str, fence_at: str | None = None) -> None:
    with open(os.devnull if out == "-" else out, "a", encoding="utf-8") as f:
        def on_line(line):
            if out != "-":
                f.write(line)
                f.flush()

        _, port = start_backup(keys_dir, port=int(port), fence_at=None if fence_at is None else int(fence_at),
                               on_line=on_line)
        print(f"listening on {port.getHost().port}", flush=True)
        global_reactor.run()


if __name__ == "__main__":
    main(*sys.argv[1:])
