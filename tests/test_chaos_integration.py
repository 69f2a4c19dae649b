"""A short chaos run (issue 10, "kept fixed"): three persistent servers behind one
client; a producer puts through REST while the servers are killed with SIGKILL and
started again on the same data directory and port, one at a time. Every put the
client acknowledged is handed out afterwards: nothing acknowledged is lost.

The suite runs a few kills; the long run is the same test with more
(``ALLQ_CHAOS_KILLS=30 scripts/test.sh tests/test_chaos_integration.py``, a few
minutes), whose figures are in the README's reliability section.
"""

import os
import random
import signal
import threading
import time

import pytest

from test_client_integration import LOCALHOST, start_client, wait_for

pytestmark = pytest.mark.integration

KILLS = int(os.environ.get("ALLQ_CHAOS_KILLS", "3"))
PUTS_PER_KILL = 60


def restart(daemons, keys, server, data):
    """Start a server again on its data directory and port (same id)."""
    return daemons.start_server(keys, ["--data-dir", str(data), "--fsync", "always",
                                       "--listen", f"tcp:{server.port}:interface={LOCALHOST}"])


def test_sigkills_during_puts_lose_no_acknowledged_job(daemons, keys, tmp_path):
    rng = random.Random(7)
    datas = [tmp_path / f"data{i}" for i in range(3)]
    servers = [daemons.start_server(keys, ["--data-dir", str(data), "--fsync", "always"])
               for data in datas]
    api = start_client(daemons, keys, servers, "--retry-budget", "10", "--request-timeout", "2")
    api.wait_until(lambda h: h["up"] == 3)

    acked: set[str] = set()
    unsure = 0
    stop = threading.Event()

    def produce():
        nonlocal unsure
        n = 0
        while not stop.is_set():
            body = f"job-{n}"
            n += 1
            status, reply = api.call("POST", "/job", {"tube": "chaos", "body": body},
                                     timeout=30)
            if status == 200:
                acked.add(body)
            else:  # refused or unknown: not acknowledged, so it may or may not be there
                assert status in (503, 504), reply
                unsure += 1

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        for kill in range(KILLS):
            target = len(acked) + PUTS_PER_KILL
            wait_for(lambda: len(acked), lambda n: n >= target,
                     what=f"{PUTS_PER_KILL} more acknowledged puts", timeout=60)
            index = rng.randrange(3)
            servers[index].daemon.process.send_signal(signal.SIGKILL)
            servers[index].daemon.process.wait(30)
            servers[index] = restart(daemons, keys, servers[index], datas[index])
            api.wait_until(lambda h: h["up"] == 3, timeout=30)
        target = len(acked) + PUTS_PER_KILL
        wait_for(lambda: len(acked), lambda n: n >= target, what="puts after the last kill",
                 timeout=60)
    finally:
        stop.set()
        producer.join(60)

    got: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, reply = api.call("GET", "/multiple_job", tube="chaos", count=1000,
                                 delete="true")
        assert status == 200, reply
        if not reply["jobs"]:
            break
        got += [job["body"] for job in reply["jobs"]]
    missing = acked - set(got)
    print(f"chaos: {KILLS} kills, {len(acked)} puts acknowledged, {unsure} answered 503/504, "
          f"{len(got)} jobs handed out, {len(missing)} acknowledged jobs missing")
    assert not missing, f"{len(missing)} acknowledged jobs lost, e.g. {sorted(missing)[:5]}"
    assert len(acked) >= (KILLS + 1) * PUTS_PER_KILL
