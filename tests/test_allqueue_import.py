"""Importing AllQueue's data directories (:mod:`allq.server.allqueue_import`).

The fixtures are written here, file by file, in the layout and JSON AllQueue's
serializers wrote (ALLQ-REFERENCE §10): job hashes with string counters under
``ready/<tube>/`` and ``buried/``, full jobs wrapped with ``time_to_start``,
``start`` or the parent fields under ``delayed/<tube>/``, ``reserved/`` and
``parents/``, and plain numbers under ``throttles/``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from twisted.internet.testing import MemoryReactorClock

from allq.cli import main
from allq.core.job import JobState
from allq.core.queue import Queue, QueueConfig
from allq.server.allqueue_import import (
    AllQueueImportError,
    find_allqueue_files,
    import_allqueue,
)
from allq.server.recovery import DataDirError, lock_directory, recover, restore_queue
from allq.server.tap import Options, makeService

NOW = 1_700_000_000.0


def full_job(job_id, tube, body, **fields):
    """AllQueue's whole Job, as its delayed/reserved/parents files hold it."""
    job = {"id": job_id, "parent_id": None, "body": body, "tube": tube, "reserved": False,
           "noop": False, "ttl": 3600, "expireds": 0, "expired_limit": 3, "priority": 5,
           "releases": 0, "created_time": int(NOW) - 100}
    job.update(fields)
    return job


def job_hash(job_id, tube, body, expireds=0, releases=0):
    """AllQueue's job hash (``JobFactory.to_hash``): strings only."""
    return {"job_id": job_id, "body": body, "tube": tube, "expireds": str(expireds),
            "releases": str(releases)}


def write(root, relative, content):
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def allqueue_directory(root):
    """A directory as an AllQueue server with SERIALIZE=true left it."""
    write(root, "ready/emails/r1", job_hash("r1", "emails", "send #1"))
    write(root, "ready/emails/r2", job_hash("r2", "emails", "send #2", expireds=1, releases=2))
    write(root, "ready/empty-tube/.keep", "")  # removed below: an empty tube directory
    os.unlink(root / "ready/empty-tube/.keep")
    write(root, "delayed/emails/d1", {"time_to_start": int(NOW) + 100,
                                      "job": full_job("d1", "emails", "later", priority=2),
                                      "priority": 2})
    write(root, "delayed/emails/d2", {"time_to_start": int(NOW) - 5,
                                      "job": full_job("d2", "emails", "due"), "priority": 5})
    write(root, "reserved/v1", {"start": int(NOW) - 10, "start_ms": 0,
                                "job": full_job("v1", "thumbs", "was running", expireds=1,
                                                reserved=True, ttl=60)})
    write(root, "buried/b1", job_hash("b1", "emails", "failed", expireds=4))
    write(root, "parents/p1", {"start": int(NOW) - 60,
                               "job": full_job("p1", "invoices", "merge"),
                               "child_count": 1, "timeout": 3600, "limit": -1,
                               "run_on_timeout": True, "started_count": 2})
    write(root, "ready/render/c1", {**full_job("c1", "render", "page 2", parent_id="p1")})
    write(root, "ready/render/orphan", full_job("orphan", "render", "x", parent_id="gone"))
    write(root, "throttles/emails", "5")
    write(root, "throttles/thumbs", "0")
    return root


def restored(directory):
    """What a server starting on ``directory`` would hold."""
    recovered = recover(str(directory), NOW)
    try:
        queue = Queue(QueueConfig(), first_id=1, started=NOW)
        restore_queue(queue, recovered, NOW)
        return queue, recovered
    finally:
        os.close(recovered.lock_fd)


def test_find_counts_the_files_of_each_kind(tmp_path):
    """Every kind is found; an empty directory, or empty AllQueue folders, are not."""
    assert find_allqueue_files(str(tmp_path)) is None
    (tmp_path / "ready" / "idle").mkdir(parents=True)
    assert find_allqueue_files(str(tmp_path)) is None
    found = find_allqueue_files(str(allqueue_directory(tmp_path)))
    assert found.counts == {"parents": 1, "ready": 4, "delayed": 2, "reserved": 1,
                            "buried": 1, "throttles": 2}


def test_import_places_every_job_in_its_state(tmp_path):
    """Ready stay ready, reserved become ready with their counts, delayed keep their
    due time, buried stay buried, parents wait with their children counts and child
    links, throttles become tube throttles; the files move aside with an id map."""
    allqueue_directory(tmp_path)
    report = import_allqueue(str(tmp_path), NOW)
    assert (report.ready, report.delayed, report.buried, report.waiting) == (6, 1, 1, 1)
    assert report.from_reserved == 1 and report.throttles == 1
    assert report.unlinked_children == 1
    assert "imported 9 AllQueue jobs" in report.describe()

    queue, recovered = restored(tmp_path)
    jobs = {job.body: job for job in queue.live_jobs()}
    assert {body: job.state for body, job in jobs.items()} == {
        "send #1": JobState.READY, "send #2": JobState.READY, "later": JobState.DELAYED,
        "due": JobState.READY, "was running": JobState.READY, "failed": JobState.BURIED,
        "merge": JobState.WAITING, "page 2": JobState.READY, "x": JobState.READY}
    assert (jobs["send #2"].expireds, jobs["send #2"].releases) == (1, 2)
    assert jobs["was running"].expireds == 1 and jobs["was running"].ttl == 60
    assert jobs["later"].priority == 2 and jobs["later"].deadline == NOW + 100
    assert jobs["failed"].expireds == 4
    parent = jobs["merge"]
    info = queue.parent_info(parent.id)
    assert (info.limit, info.children_done, info.children_put) == (None, 1, 2)
    assert info.run_on_timeout and parent.deadline == NOW - 60 + 3600
    assert jobs["page 2"].parent_id == parent.id and jobs["x"].parent_id is None
    assert queue.tube("emails").throttle is not None
    assert queue.tube("thumbs") is None or queue.tube("thumbs").throttle is None
    assert all(job.id > NOW * 1_000_000 - 1 for job in jobs.values())

    assert find_allqueue_files(str(tmp_path)) is None
    (moved,) = [p for p in tmp_path.iterdir() if p.name.startswith("allqueue-imported-")]
    assert report.moved_to == str(moved)
    assert (moved / "ready" / "emails" / "r1").exists()
    ids = dict(line.split("\t") for line in (moved / "ids.tsv").read_text().splitlines()[1:])
    assert int(ids["p1"]) == parent.id


def test_a_noop_parent_stays_a_noop(tmp_path):
    """A noop parent imports as a waiting noop parent: when its children are done it
    finishes instead of running."""
    write(tmp_path, "parents/n1", {"start": int(NOW), "job": full_job("n1", "t", "", noop=True),
                                   "child_count": 0, "timeout": 3600, "limit": 1,
                                   "run_on_timeout": False, "started_count": 1})
    write(tmp_path, "ready/t/c1", full_job("c1", "t", "child", parent_id="n1"))
    import_allqueue(str(tmp_path), NOW)
    queue, _ = restored(tmp_path)
    (parent,) = [job for job in queue.live_jobs() if job.state is JobState.WAITING]
    assert queue.parent_info(parent.id).noop
    (child,) = queue.get("t", now=NOW)
    queue.done(child.id, now=NOW)
    assert queue.get("t", now=NOW) == [] and list(queue.live_jobs()) == []


def test_ready_jobs_line_up_in_their_put_order(tmp_path):
    """Ready jobs of one priority are handed out oldest first (created_time)."""
    for number, created in ((1, 30), (2, 10), (3, 20)):
        write(tmp_path, f"ready/t/j{number}",
              full_job(f"j{number}", "t", f"job {number}", created_time=int(NOW) - created))
    import_allqueue(str(tmp_path), NOW)
    queue, _ = restored(tmp_path)
    got = [queue.get("t", now=NOW)[0].body for _ in range(3)]
    assert got == ["job 1", "job 3", "job 2"]


def test_an_import_adds_to_the_jobs_allq_already_holds(tmp_path):
    """Importing into a data directory with allq jobs keeps them; new ids are above
    every id in its journal."""
    from allq.server.journal import FsyncPolicy, Journal
    from twisted.internet.task import Clock

    recovered = recover(str(tmp_path), NOW)
    journal = Journal(str(tmp_path), FsyncPolicy.parse("always"), Clock(),
                      lock_fd=recovered.lock_fd)
    queue = Queue(QueueConfig(), first_id=int(NOW * 1_000_000) + 500, started=NOW,
                  on_change=journal.on_change)
    journal.attach(queue)
    existing = queue.put("emails", "allq's own", now=NOW)
    journal.close()
    write(tmp_path, "ready/emails/r1", job_hash("r1", "emails", "from AllQueue"))
    import_allqueue(str(tmp_path), NOW)
    queue, _ = restored(tmp_path)
    bodies = {job.id: job.body for job in queue.live_jobs()}
    assert bodies[existing.id] == "allq's own"
    (imported,) = [i for i, body in bodies.items() if body == "from AllQueue"]
    assert imported > existing.id


BAD_FILES = {
    "ready/emails/notjson": "{not json",
    "ready/emails/binary": b"\x00\x81\xfe",
    "ready/emails/nobody": json.dumps({"job_id": "x", "tube": "emails", "expireds": "0"}),
    "ready/emails/counts": json.dumps(job_hash("c", "emails", "b") | {"expireds": "many"}),
    "ready/bad tube!/j": json.dumps(job_hash("j", "bad tube!", "b")),
    "delayed/emails/when": json.dumps({"time_to_start": "soon",
                                       "job": full_job("w", "emails", "b")}),
    "ready/t/noop": json.dumps(full_job("n", "t", "b", noop=True)),
    "parents/timeout": json.dumps({"start": 1, "job": full_job("o", "t", "b"),
                                   "child_count": 0, "timeout": 0, "limit": -1,
                                   "run_on_timeout": False, "started_count": 0}),
    "throttles/emails": "fast",
    "buried/list": json.dumps([1, 2]),
}


def test_malformed_files_are_each_named_and_nothing_is_imported(tmp_path):
    """Every bad file is named with its problem; no journal is written and every
    AllQueue file stays where it was."""
    write(tmp_path, "ready/emails/good", job_hash("good", "emails", "fine"))
    for relative, content in BAD_FILES.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(AllQueueImportError) as info:
        import_allqueue(str(tmp_path), NOW)
    message = str(info.value)
    assert f"{len(BAD_FILES)} bad file(s); nothing was imported" in message
    for relative in BAD_FILES:
        assert str(tmp_path / relative) in message, relative
    assert re.search(r"notjson: not JSON", message)
    assert "noop: a noop job outside parents/" in message
    assert "throttles/emails: the throttle must be a whole number" in message
    assert "bad tube!/j: tube" in message
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # no journal, no lock


def test_a_running_server_holds_the_directory(tmp_path):
    """The import takes the data directory's lock: refused while a server has it."""
    write(tmp_path, "ready/emails/r1", job_hash("r1", "emails", "b"))
    fd = lock_directory(str(tmp_path))
    try:
        with pytest.raises(DataDirError, match="in use by another allq-server"):
            import_allqueue(str(tmp_path), NOW)
    finally:
        os.close(fd)
    assert find_allqueue_files(str(tmp_path)) is not None


def test_the_command_imports_and_says_what_it_did(tmp_path, capsys):
    """`allq import DIR` exits 0 and prints the report; a bad file exits 2 naming it;
    nothing to import exits 2."""
    allqueue_directory(tmp_path / "good")
    assert main(["import", str(tmp_path / "good")]) == 0
    assert "imported 9 AllQueue jobs" in capsys.readouterr().out
    write(tmp_path / "bad", "buried/b", "nope")
    assert main(["import", str(tmp_path / "bad")]) == 2
    assert f"{tmp_path / 'bad' / 'buried' / 'b'}: not JSON" in capsys.readouterr().err
    assert main(["import", str(tmp_path / "good")]) == 2
    assert "no AllQueue files" in capsys.readouterr().err


def test_the_command_can_import_into_another_data_directory(tmp_path, capsys):
    """--data-dir: the journal goes there; the AllQueue files are moved aside where they are."""
    allqueue_directory(tmp_path / "old")
    assert main(["import", str(tmp_path / "old"), "--data-dir", str(tmp_path / "new")]) == 0
    queue, _ = restored(tmp_path / "new")
    assert len(queue.live_jobs()) == 9
    assert find_allqueue_files(str(tmp_path / "old")) is None


def parse(argv, environ=None) -> Options:
    options = Options()
    options.environ = environ or {}
    options.parseOptions(argv)
    return options


def test_the_server_refuses_to_start_on_allqueue_files(tmp_path):
    """SERIALIZE=true on an AllQueue directory: exit with what was found and the
    exact command; nothing is written."""
    allqueue_directory(tmp_path)
    config = parse([], {"SERIALIZE": "true", "SERIALIZER_DIR": str(tmp_path),
                        "ALLQ_AUTHORIZED_KEYS": "*",
                        "A_CURVE_SECRETKEY": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="})
    assert config["import-allqueue"] is False
    with pytest.raises(SystemExit) as info:
        makeService(config, reactor=MemoryReactorClock())
    message = str(info.value.code)
    assert f"allq import {tmp_path}" in message and "--import-allqueue" in message
    assert "4 ready" in message and "1 reserved" in message and "2 throttles" in message
    assert not (tmp_path / "lock").exists()


def test_the_import_option_is_read_from_flag_and_environment():
    """--import-allqueue or ALLQ_IMPORT_ALLQUEUE=true turns it on."""
    assert parse(["--import-allqueue"])["import-allqueue"] is True
    assert parse([], {"ALLQ_IMPORT_ALLQUEUE": "true"})["import-allqueue"] is True
    assert parse([], {"ALLQ_IMPORT_ALLQUEUE": "yes"})["import-allqueue"] is False


@pytest.mark.integration
def test_real_server_refuses_then_serves_the_imported_jobs(daemons, tmp_path):
    """twistd allq-server with SERIALIZE=true on AllQueue's files exits naming
    `allq import`; after that command (or with --import-allqueue) the jobs are
    served through a real client."""
    from tests.servers import SERVER_LISTENING, RunningServer, daemon_environment, wait_for_greeting
    from tests.test_client_integration import CLIENT_SERVING, Api

    keys = daemons.generate_keys()
    data = allqueue_directory(tmp_path / "data")
    env = {"SERIALIZE": "true", "SERIALIZER_DIR": str(data)}
    args = ["--keys", str(keys.directory), "--listen", "tcp:0:interface=127.0.0.1"]
    refused = daemons.spawn("allq-server", args, env=env, name="refused")
    assert refused.wait() != 0
    assert f"allq import {data}" in refused.log()

    done = subprocess.run([sys.executable, "-m", "allq.cli", "import", str(data)],
                          env=daemon_environment(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "imported 9 AllQueue jobs" in done.stdout

    daemon = daemons.spawn("allq-server", args, env=env, name="server")
    match = daemon.wait_for_log(SERVER_LISTENING)
    server = RunningServer(daemon, match["host"], int(match["port"]), match["server_id"])
    wait_for_greeting(server)
    client = daemons.spawn(
        "allq-client", ["--keys", str(keys.directory), "--servers", f"127.0.0.1:{server.port}",
                        "--http", "tcp:0:interface=127.0.0.1"], name="client")
    api = Api(int(client.wait_for_log(CLIENT_SERVING)["port"]))
    api.wait_until(lambda health: health["up"] == 1)
    status, jobs = api.call("GET", "/job", tube="thumbs")
    assert status == 200 and jobs["body"] == "was running", jobs
    status, job = api.call("GET", "/job", tube="emails")
    # "later" kept its priority 2 (its due time, NOW + 100 s, is long past).
    assert status == 200 and job["body"] == "later", job


@pytest.mark.integration
def test_real_server_imports_at_start_when_told(daemons, tmp_path):
    """--import-allqueue: the server imports, logs the report and serves the jobs."""
    from tests.servers import SERVER_LISTENING

    keys = daemons.generate_keys()
    data = allqueue_directory(tmp_path / "data")
    daemon = daemons.spawn(
        "allq-server", ["--keys", str(keys.directory), "--listen", "tcp:0:interface=127.0.0.1",
                        "--data-dir", str(data), "--import-allqueue"], name="server")
    daemon.wait_for_log(SERVER_LISTENING)
    assert "imported 9 AllQueue jobs" in daemon.log()
    assert "restored 9 jobs" in daemon.log()
    assert find_allqueue_files(str(data)) is None
