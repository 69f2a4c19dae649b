"""The runnable examples in examples/, against real daemons, as a new user runs them."""

import re
import signal

import pytest

from allq.worker import Client

from tests.allq_daemons import fresh_tube, run_python, start_python
from tests.test_client_integration import wait_for
from tests.test_worker_integration import tube_counts

pytestmark = pytest.mark.integration


def test_producer_puts_every_job(allq_url):
    """examples/producer.py puts as many jobs as asked, one id each."""
    tube = fresh_tube("emails")
    done = run_python(["examples/producer.py", "200"], url=allq_url, env={"ALLQ_TUBE": tube})
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"put 200 jobs on {tube}" in done.stdout
    with Client(allq_url) as client:
        assert tube_counts(client, tube)["ready"] == 200


@pytest.mark.parametrize("example", ["examples/sync_worker.py", "examples/twisted_worker.py"])
def test_worker_example_does_the_jobs_buries_a_bad_one_and_stops_on_sigterm(allq_url, example):
    """The worker examples send every email, bury the empty one after three tries
    (with its error recorded), and exit 0 on SIGTERM with nothing left reserved."""
    tube = fresh_tube("emails")
    with Client(allq_url) as client:
        client.put_many([f"mail {i}" for i in range(50)] + [" "], tube=tube)
        process = start_python([example], url=allq_url,
                               env={"ALLQ_TUBE": tube, "ALLQ_BACKOFF": "0.1"})
        try:
            buried = wait_for(lambda: client.peek(tube, buried=True), bool,
                              what="the empty email buried", timeout=30)
            wait_for(lambda: tube_counts(client, tube),
                     lambda c: c["ready"] == c["reserved"] == 0, what="every job finished")
            process.send_signal(signal.SIGTERM)
            output, _ = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert process.returncode == 0, output
        assert "ValueError: empty email body" in buried.error
        # Handler threads print side by side: lines may interleave, the numbers do not.
        assert {int(n) for n in re.findall(r"sent: mail (\d+)", output)} == set(range(50))
        assert "worker stopped: 50 done" in output
