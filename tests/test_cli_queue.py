"""``allq put|get|done|peek|kick|bury|release|touch|stats|tubes|servers|throttle|pause|
unpause|drain|undrain|dump`` against real daemons, and their errors.

Most run ``allq.cli.main`` in the test process (output captured); a few run the
installed ``python -m allq.cli`` as a user would, for the exit status and ALLQ_URL.
"""

import json

import pytest

from allq.cli import main
from allq.worker import Client

from tests.allq_daemons import fresh_tube, run_python
from tests.test_worker_integration import DEAD_URL, tube_counts

pytestmark = pytest.mark.integration


@pytest.fixture
def allq(allq_url, capsys):
    """Run ``allq ARGS --url <the client>``; returns (status, stdout, stderr)."""

    def run(*args, url=allq_url):
        status = main([*args, "--url", url])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run


def ok(result):
    status, out, err = result
    assert status == 0, err
    return out


def test_put_get_done(allq):
    """put prints the id; get shows the job; done finishes it; --json for scripts."""
    tube = fresh_tube()
    job_id = ok(allq("put", tube, "hello", "--ttl", "30", "--priority", "2")).strip()
    shown = ok(allq("get", tube))
    assert shown.startswith(f"{job_id}  tube={tube} priority=2 ttl=30") and "hello" in shown
    assert ok(allq("done", job_id)) == f"done {job_id}\n"
    job_id = json.loads(ok(allq("put", tube, "again", "--json")))["job_id"]
    [job] = json.loads(ok(allq("get", tube, "--json")))
    assert (job["id"], job["body"], job["releases"]) == (job_id, "again", 0)
    assert json.loads(ok(allq("done", job_id, "--json"))) == {"action": "done",
                                                              "job_ids": [job_id]}
    assert json.loads(ok(allq("get", tube, "--json"))) == []


def test_body_from_stdin(allq_url):
    """put TUBE - reads the body from standard input."""
    tube = fresh_tube()
    done = run_python(["-m", "allq.cli", "put", tube, "-"], url=allq_url, stdin="from stdin")
    assert done.returncode == 0, done.stderr
    with Client(allq_url) as client:
        assert client.peek(tube).body == "from stdin"


def test_release_bury_peek_kick_touch(allq):
    """The job actions, and peek --buried showing the error bury recorded."""
    tube = fresh_tube()
    job_id = ok(allq("put", tube, "work")).strip()
    ok(allq("get", tube))
    assert ok(allq("touch", job_id)) == f"touch {job_id}\n"
    assert ok(allq("release", job_id, "--delay", "0")) == f"release {job_id}\n"
    ok(allq("get", tube))
    assert ok(allq("bury", job_id, "--error", "KeyError: 'x'")) == f"bury {job_id}\n"
    peeked = ok(allq("peek", tube, "--buried"))
    assert "last error:\n  KeyError: 'x'" in peeked and "releases=1" in peeked
    status, out, err = allq("peek", tube)
    assert (status, out, err) == (0, "", f"no ready job in {tube}\n")
    assert ok(allq("kick", job_id)) == f"kick {job_id}\n"
    assert json.loads(ok(allq("peek", tube, "--json")))["error"] == "KeyError: 'x'"
    ok(allq("get", tube))
    ok(allq("bury", job_id))
    assert json.loads(ok(allq("kick", "--tube", tube, "--count", "5", "--json"))) == {
        "action": "kick", "job_ids": [job_id]}


def test_stats_tubes_servers(allq):
    """stats is a table of the tubes' counts; tubes lists them; servers their health."""
    tube = fresh_tube("stats")
    ok(allq("put", tube, "a"))
    ok(allq("put", tube, "b"))
    table = ok(allq("stats"))
    row = next(line for line in table.splitlines() if tube in line)
    assert row.split("│")[2].strip() == "2"  # the ready column
    totals = json.loads(ok(allq("tubes", "--json")))
    assert totals[tube]["ready"] == 2
    assert tube in ok(allq("tubes"))
    [server] = json.loads(ok(allq("stats", "--json")))
    assert any(entry["tube"] == tube for entry in server["stats"])
    health = ok(allq("servers"))
    assert "1 of 1 server(s) up" in health and " up " in health


def test_stats_watch_refreshes(allq):
    """--watch redraws the table (here twice, then returns)."""
    tube = fresh_tube("watch")
    ok(allq("put", tube, "a"))
    out = ok(allq("stats", "--watch", "0.05", "--count", "2"))
    assert out.count("allq: 1 server(s)") >= 1 and tube in out


def test_tube_settings(allq, allq_url):
    """throttle, pause/unpause, drain/undrain a tube; drain --server."""
    tube = fresh_tube()
    assert ok(allq("throttle", tube, "50")) == f"throttle {tube}: 50 jobs/s (on 1 server(s))\n"
    assert ok(allq("throttle", tube, "off")).startswith(f"throttle {tube}: off")
    assert ok(allq("pause", tube)) == f"pause {tube} (on 1 server(s))\n"
    ok(allq("put", tube, "x"))
    status, _, err = allq("get", tube)
    assert status == 0 and "no job ready" in err
    ok(allq("unpause", tube))
    assert "x" in ok(allq("get", tube))
    ok(allq("drain", tube))
    status, _, err = allq("put", tube, "refused")
    assert status == 1 and err.startswith("allq: error: draining: ")
    ok(allq("undrain", tube))
    ok(allq("put", tube, "taken"))
    with Client(allq_url) as client:
        [server] = client.health()["servers"]
    reply = json.loads(ok(allq("drain", "--server", server["address"], "--json")))
    assert reply["draining"] is True
    ok(allq("undrain", "--server", server["address"]))


def test_bulk_put_from_file_and_dump(allq, tmp_path):
    """put --from-file reads JSON lines (objects or bodies); dump takes the jobs out as
    lines put --from-file reads back, with a progress bar when asked."""
    tube, copy = fresh_tube("bulk"), fresh_tube("copy")
    lines = [json.dumps({"body": f"job {i}", "ttl": 60}) for i in range(2500)]
    lines += ['"plain body"', "", json.dumps({"tube": copy, "body": "elsewhere"})]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(lines) + "\n")
    status, out, err = allq("put", tube, "--from-file", str(jobs), "--progress")
    assert status == 0, err
    assert out == f"put 2502 jobs from {jobs}\n" and "2502/2502" in err
    dumped = tmp_path / "dump.jsonl"
    status, _, err = allq("dump", tube, "-o", str(dumped), "--progress")
    assert status == 0 and f"took 2501 jobs of {tube} to {dumped}" in err
    assert "2501/2501" in err
    records = [json.loads(line) for line in dumped.read_text().splitlines()]
    assert len(records) == 2501 and records[0] == {"tube": tube, "body": "job 0", "ttl": 60,
                                                   "priority": 5}
    assert ok(allq("tubes", "--json")).count(tube) == 1
    assert json.loads(ok(allq("tubes", "--json")))[tube]["ready"] == 0
    # --keep copies: the jobs are back, ready.
    status, out, err = allq("put", tube, "--from-file", str(dumped), "--no-progress")
    assert status == 0 and out == f"put 2501 jobs from {dumped}\n" and err == ""
    status, out, err = allq("dump", tube, "--keep", "--limit", "10")
    assert status == 0 and len(out.splitlines()) == 10
    assert json.loads(ok(allq("tubes", "--json")))[tube]["ready"] == 2501


def test_bad_lines_and_partial_failures(allq, tmp_path):
    """A line that is not JSON: exit 2 naming it. A job the server refuses: the rest
    are put, exit 1 with the count."""
    tube = fresh_tube()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "ok"}\nnot json\n')
    status, _, err = allq("put", tube, "--from-file", str(bad))
    assert status == 2 and err.startswith(f"allq: error: {bad} line 2: not JSON")
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps({"body": "fine"}) + "\n" + json.dumps({"body": "x" * 2_000_000})
                     + "\n")
    status, out, err = allq("put", tube, "--from-file", str(mixed))
    assert status == 1 and out == f"put 1 jobs from {mixed}\n"
    assert "1 of 2 jobs failed (first: too_large" in err
    status, _, err = allq("put", tube, "--from-file", str(tmp_path / "missing.jsonl"))
    assert status == 1 and "missing.jsonl" in err and err.count("\n") == 1


def test_errors_are_one_line_and_exit_non_zero(allq):
    """Unknown job (404), bad input (400), unreachable client, bad URL, bad arguments."""
    tube = fresh_tube()
    status, _, err = allq("done", "Abc,123")
    assert status == 1 and err.startswith("allq: error: not_found: ") and err.count("\n") == 1
    status, _, err = allq("put", "bad tube", "x")
    assert status == 1 and err.startswith("allq: error: bad_request: tube must be")
    status, _, err = allq("done", "not-an-id")
    assert status == 1 and "job_id must look like" in err
    status, _, err = allq("stats", url=DEAD_URL)
    assert status == 1 and err.startswith("allq: error: client_unreachable: ")
    status, _, err = allq("stats", url="ftp://x")
    assert status == 2 and "http://host:port" in err
    status, _, err = allq("kick")
    assert status == 2 and "kick needs a JOB_ID or --tube" in err
    status, _, err = allq("throttle", tube, "fast")
    assert status == 2 and "TPS must be a number" in err
    assert main(["get"]) == 2  # argparse: TUBE missing
    status, _, err = allq("put", tube)
    assert status == 2 and "put needs a TUBE and a BODY" in err


def test_the_command_reads_allq_url(allq_url):
    """`python -m allq.cli` as installed: ALLQ_URL names the client; exit statuses."""
    tube = fresh_tube()
    done = run_python(["-m", "allq.cli", "put", tube, "hi"], url=allq_url)
    assert done.returncode == 0 and "," in done.stdout, done.stderr
    done = run_python(["-m", "allq.cli", "servers"], url=DEAD_URL)
    assert done.returncode == 1 and done.stderr.startswith("allq: error: client_unreachable")
    with Client(allq_url) as client:
        assert tube_counts(client, tube)["ready"] == 1


def test_stats_and_servers_show_replication():
    """`allq stats` names each server's stream to its backup and the replicas it holds;
    `allq servers` lists the servers served by their backups after a failover."""
    from allq.commands import render

    table = render.stats_table([
        {"server_name": "p1,127.0.0.1:5555", "job_put": 3, "job_get": 1, "stats": [],
         "replication": {"peer": "127.0.0.1:5556", "state": "streaming", "lag_records": 12}},
        {"server_name": "b1,127.0.0.1:5556", "job_put": 0, "job_get": 0, "stats": [],
         "replicas": [{"primary": "p1", "state": "synced"}]}])
    assert "replica 127.0.0.1:5556 STREAMING lag 12" in table.caption
    assert "backup of p1 (synced)" in table.caption
    table = render.servers_table({"up": 1, "total": 2, "servers": [
        {"address": "127.0.0.1:5555", "server_id": "p1", "up": False, "reason": "refused"}],
        "replica_links": [{"server_id": "p1", "served_by": "b1", "address": "127.0.0.1:5556",
                           "epoch": 2, "up": True}]})
    rows = list(zip(*(column._cells for column in table.columns)))
    assert rows[1] == ("127.0.0.1:5556", "p1", "up, served by backup b1",
                       "failed over (epoch 2)")
