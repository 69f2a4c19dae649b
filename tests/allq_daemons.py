"""One allq-server and one allq-client for a whole test module (integration tests of
``allq.worker``, its examples and the ``allq`` command line).

Starting real daemons costs a second or two; the tests of one module share them and
keep apart by using tubes of their own (:func:`fresh_tube`).
"""

import itertools
import subprocess
import sys

from tests.servers import REPO_ROOT, Daemons, daemon_environment
from tests.test_client_integration import start_client

_tubes = itertools.count(1)


def running_allq(tmp_path_factory):
    """Yields the REST base URL of a running allq-client over one allq-server, and stops
    both after (the ``allq_url`` fixture of ``conftest.py``, scoped to a module)."""
    with Daemons(tmp_path_factory.mktemp("daemons")) as daemons:
        keys = daemons.generate_keys()
        server = daemons.start_server(keys)
        api = start_client(daemons, keys, [server])
        api.wait_until(lambda health: health["up"] == 1)
        yield api.base


def fresh_tube(name: str = "t") -> str:
    """A tube no other test of this run uses."""
    return f"{name}-{next(_tubes)}"


def run_python(args, *, url: str, timeout: float = 60.0, stdin: str | None = None,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` from the checkout with ``ALLQ_URL`` set; waits (bounded)."""
    return subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, input=stdin, capture_output=True, text=True,
        timeout=timeout, env=daemon_environment({"ALLQ_URL": url, **(env or {})}))


def start_python(args, *, url: str, env: dict | None = None) -> subprocess.Popen:
    """Start ``python ARGS`` from the checkout with ``ALLQ_URL`` set (output in a pipe)."""
    return subprocess.Popen(
        [sys.executable, *args], cwd=REPO_ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
        env=daemon_environment({"ALLQ_URL": url, **(env or {})}))
