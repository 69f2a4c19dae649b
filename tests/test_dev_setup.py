"""The developer set-up: scripts/bootstrap.sh, the run and test commands, the plugins.

* The editable ``.venv`` that ``scripts/bootstrap.sh`` makes exposes both twistd plugins
  (they live in ``src/twisted/plugins``, on the venv's path): ``.venv/bin/twistd`` lists
  them from any folder with no ``PYTHONPATH``.
* The run command installs only what running needs; the test command adds the test and
  bench extras (and chromium); CI runs the README's test command.
"""

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.servers import REPO_ROOT

VENV = REPO_ROOT / ".venv"
SCRIPTS = REPO_ROOT / "scripts"


def clean_environment(home: Path) -> dict[str, str]:
    """A login-like environment: no PYTHONPATH, no virtualenv, nothing of allq's."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}


def test_the_dev_venv_twistd_lists_both_plugins_from_any_folder(tmp_path):
    """.venv/bin/twistd --help, run from an empty folder with a clean env, lists both taps."""
    twistd = VENV / "bin" / "twistd"
    if not twistd.exists():
        reason = f"no {twistd}: run scripts/bootstrap.sh (or scripts/test.sh) to make it"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {reason}")
        pytest.skip(reason)
    done = subprocess.run([str(twistd), "--help"], cwd=tmp_path, env=clean_environment(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    taps = {line.split()[0] for line in done.stdout.splitlines() if line.startswith("    allq-")}
    assert taps == {"allq-server", "allq-client"}, done.stdout
    # ... and they are this checkout's: the editable install points at its src/.
    where = subprocess.run(
        [str(VENV / "bin" / "python"), "-c",
         "import allq, twisted.plugins.allq_server as p; print(allq.__file__); print(p.__file__)"],
        cwd=tmp_path, env=clean_environment(tmp_path), capture_output=True, text=True, timeout=60)
    assert where.stdout.split() == [str(REPO_ROOT / "src" / "allq" / "__init__.py"),
                                    str(REPO_ROOT / "src" / "twisted" / "plugins" / "allq_server.py")]


def test_the_plugins_are_one_line_dropins_beside_allq_in_src():
    """Both dropins are in src/twisted/plugins, with no __init__.py above them."""
    plugins = REPO_ROOT / "src" / "twisted" / "plugins"
    assert sorted(p.name for p in plugins.glob("*.py")) == ["allq_client.py", "allq_server.py"]
    assert not (plugins / "__init__.py").exists()
    assert not (REPO_ROOT / "src" / "twisted" / "__init__.py").exists()
    assert not (REPO_ROOT / "twisted").exists()


def fake_checkout(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of scripts/ beside a fake .venv whose python and pip record their arguments,
    and a fake apt-get (first on the scripts' PATH, see :func:`fake_environment`) that
    records and fails: a test never installs anything for real."""
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    for name in ("bootstrap.sh", "run-local.sh", "test.sh"):
        (checkout / "scripts" / name).write_bytes((SCRIPTS / name).read_bytes())
    record = tmp_path / "calls"
    (checkout / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / "fakebin").mkdir()
    for path in (checkout / ".venv" / "bin" / "python", checkout / ".venv" / "bin" / "pip",
                 tmp_path / "fakebin" / "apt-get"):
        fails = "exit 1" if path.name == "apt-get" else "exit 0"
        path.write_text(f'#!/bin/sh\necho "{path.name} $*" >> "{record}"\n{fails}\n')
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return checkout, record


def fake_environment(tmp_path: Path, chromium: str) -> dict[str, str]:
    """:func:`clean_environment` with the fake apt-get first and ``ALLQ_CHROMIUM`` set."""
    env = clean_environment(tmp_path)
    env["PATH"] = f"{tmp_path / 'fakebin'}:{env['PATH']}"
    env["ALLQ_CHROMIUM"] = chromium
    return env


@pytest.mark.parametrize("arguments, install", [
    ([], "pip install --quiet -e ."),
    (["--test"], "pip install --quiet -e .[test,bench]"),
])
def test_bootstrap_installs_the_test_tools_only_for_the_test_command(tmp_path, arguments, install):
    """bootstrap.sh installs allq alone; with --test also the test and bench extras."""
    checkout, record = fake_checkout(tmp_path)
    env = fake_environment(tmp_path, chromium="/bin/sh")  # chromium "present"
    done = subprocess.run(["bash", "scripts/bootstrap.sh", *arguments], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert record.read_text().splitlines() == [install]


def test_bootstrap_for_benchmarks_installs_the_bench_extra_and_redis(tmp_path):
    """--bench installs the bench extra (no test tools, no chromium) and, where
    redis-server is missing, asks apt-get for it (here the fake one, which fails:
    the bootstrap still succeeds and says the Dramatiq peer will be skipped)."""
    checkout, record = fake_checkout(tmp_path)
    env = fake_environment(tmp_path, chromium=str(tmp_path / "no-chromium"))
    done = subprocess.run(["bash", "scripts/bootstrap.sh", "--bench"], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "chromium" not in done.stderr, done.stderr
    calls = record.read_text().splitlines()
    assert calls[-1] == "pip install --quiet -e .[bench]"
    if shutil.which("redis-server", path=env["PATH"]) is None:
        assert "redis-server" in done.stderr
        if os.geteuid() == 0:
            assert any(line.startswith("apt-get ") for line in calls)


def test_bootstrap_without_test_never_installs_chromium(tmp_path):
    """The run command's bootstrap does not look for chromium (nor apt-get it); the test
    command's does, where it is missing."""
    checkout, record = fake_checkout(tmp_path)
    env = fake_environment(tmp_path, chromium=str(tmp_path / "no-chromium"))
    done = subprocess.run(["bash", "scripts/bootstrap.sh"], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "chromium" not in done.stderr, done.stderr
    assert record.read_text().splitlines() == ["pip install --quiet -e ."]
    done = subprocess.run(["bash", "scripts/bootstrap.sh", "--test"], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "chromium" in done.stderr, done.stderr
    if os.geteuid() == 0:  # as root, bootstrap asks apt-get (here the fake one) for it
        assert any(line.startswith("apt-get ") for line in record.read_text().splitlines())


def test_the_run_command_bootstraps_for_running_and_ci_runs_the_test_command():
    """run-local.sh calls bootstrap.sh bare, test.sh with --test, .ci/run calls test.sh."""
    def commands(path: Path) -> list[str]:
        return [line.strip() for line in path.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]

    assert "scripts/bootstrap.sh" in commands(SCRIPTS / "run-local.sh")
    assert "scripts/bootstrap.sh --test" in commands(SCRIPTS / "test.sh")
    assert "exec scripts/test.sh -q" in commands(REPO_ROOT / ".ci" / "run")
    readme = (REPO_ROOT / "README.md").read_text()
    assert "```sh\nscripts/test.sh\n```" in readme
    assert "```sh\nscripts/run-local.sh\n```" in readme
