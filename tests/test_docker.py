"""The Docker deliverables: static checks always, the image test unless opted out.

* ``scripts/docker-checks.sh`` validates the compose stacks with the real Compose v2
  binary and lints the Dockerfiles with hadolint. No engine needed; always runs.
* ``scripts/image-test.sh`` builds both images offline on a local base, runs the
  ``federated`` stack with host networking and checks it end to end (put/get across
  clients, failover after killing a server, graceful ``docker stop``). It takes minutes and
  needs what ``scripts/docker-engine.sh check`` asks for (Linux, root, and Debian/Ubuntu
  when docker.io, debootstrap or iptables are missing). Where that is lacking the test is
  skipped with the reason; ``ALLQ_SKIP_IMAGE_TEST=1`` skips it on a developer's machine
  too. Both skips are visible, and under ``CI=true`` both are refused: the test fails.

Both scripts bound their own waits; the timeouts here are a last resort.
"""

import os
import signal
import subprocess

import pytest

from tests.servers import REPO_ROOT

pytestmark = pytest.mark.integration

CHECKS_TIMEOUT = 300.0
#: The image test takes 3-6 minutes (the first run on a machine installs and starts a Docker
#: engine); past this something hangs.
IMAGE_TEST_TIMEOUT = 720.0
CLEANUP_TIMEOUT = 600.0
OUTPUT_TAIL = 6000


def run_script(name: str, timeout: float) -> str:
    """Run ``scripts/<name>`` from the repository root; its stdout and stderr together.

    On timeout the script gets SIGTERM: once its current (bounded) command ends, its exit
    trap tears down what it started (the compose stack, the engine). Its process group gets
    SIGKILL if it is still there after :data:`CLEANUP_TIMEOUT`. The test fails either way.

    :returns: the output, once the script exited 0.
    """
    process = subprocess.Popen(
        ["bash", str(REPO_ROOT / "scripts" / name)],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            output, _ = process.communicate(timeout=CLEANUP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
        pytest.fail(f"scripts/{name} ran past {timeout:g} s:\n{output[-OUTPUT_TAIL:]}")
    assert process.returncode == 0, f"scripts/{name} exited {process.returncode}:\n{output[-OUTPUT_TAIL:]}"
    return output


def test_compose_files_and_dockerfiles_pass_the_static_checks():
    """Every compose stack is valid for Compose v2 and both Dockerfiles pass hadolint."""
    output = run_script("docker-checks.sh", CHECKS_TIMEOUT)
    assert "hadolint ok" in output
    assert output.count("compose ok") == 6, output


def compose_config(stack: str, env: dict[str, str], tmp_path, *overlays: str) -> dict:
    """``docker compose config`` of a stack (and its overlays) with these variables, as
    JSON (no engine)."""
    import json

    binary = run_script_output(["docker-checks.sh", "--install"]).strip().splitlines()[-1]
    env_file = tmp_path / "env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in env.items()))
    done = subprocess.run(
        [binary, "--env-file", str(env_file),
         *[arg for name in (stack, *overlays) for arg in ("-f", f"docker/{name}")], "config",
         "--format", "json"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def run_script_output(argv: list[str]) -> str:
    done = subprocess.run(["bash", str(REPO_ROOT / "scripts" / argv[0]), *argv[1:]],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=CHECKS_TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_allqueue_stack_is_the_originals_with_the_key_switch(tmp_path):
    """docker/allqueue.yml: AllQueue's local_test services, ports and variables (server
    on 7788, client JSON lines on 7768 and REST on 8090, on loopback), keys only in
    AllQueue's variables, plus ALLQ_AUTHORIZED_KEYS=*; the client follows the servers by DNS."""
    config = compose_config("allqueue.yml", {
        "SERVER_A_CURVE_SECRETKEY": "server-secret", "A_CURVE_SERVER_PUBLICKEY": "server-public",
        "CLIENT_A_CURVE_SECRETKEY": "client-secret"}, tmp_path)
    server, client = config["services"]["us-server"], config["services"]["us_queue"]
    assert server["environment"] == {
        "SERVER_PORT": "7788", "ALLQ_DEBUG": "true", "A_CURVE_SECRETKEY": "server-secret",
        "A_CURVE_PUBLICKEY": "server-public", "ALLQ_AUTHORIZED_KEYS": "*"}
    assert [(p["host_ip"], p["published"], p["target"]) for p in server["ports"]] == [
        ("127.0.0.1", "7788-7797", 7788)]
    assert client["environment"]["TCP_CLIENT_PORT"] == "7768"
    assert client["environment"]["SERVER_STRING"] == "dns:us-server:7788"
    assert client["environment"]["A_CURVE_SERVER_PUBLICKEY"] == "server-public"
    assert client["environment"]["A_CURVE_SECRETKEY"] == "client-secret"
    assert sorted((p["host_ip"], p["published"], p["target"]) for p in client["ports"]) == [
        ("127.0.0.1", "7768", 7768), ("127.0.0.1", "8090", 8090)]
    assert client["depends_on"]["us-server"]["condition"] == "service_healthy"


def test_host_network_stacks_keep_the_json_lines_api_on_loopback(tmp_path):
    """With host networking the image's CL_LISTEN=0.0.0.0 would publish the unauthenticated
    JSON-lines API on every interface of the host, and two clients would both want 7766:
    the host overlays keep it on 127.0.0.1, one port per client."""
    single = compose_config("single.yml", {}, tmp_path, "single.host.yml")
    assert single["services"]["client"]["environment"]["CL_LISTEN"] == "127.0.0.1"
    federated = compose_config("federated.yml", {"ALLQ_CLIENT1_JSONL_PORT": "17766"},
                               tmp_path, "federated.host.yml")
    endpoints = [federated["services"][name]["environment"]["ALLQ_JSONL"]
                 for name in ("client1", "client2")]
    assert endpoints == ["tcp:17766:interface=127.0.0.1", "tcp:7767:interface=127.0.0.1"]


def test_the_client_image_exposes_the_json_lines_port():
    """Dockerfile.client exposes AllQueue's JSON-lines port (7766) beside REST, and
    listens for it on all of the container's interfaces."""
    text = (REPO_ROOT / "Dockerfile.client").read_text()
    assert "EXPOSE 8090 7766" in text and "ENV CL_LISTEN=0.0.0.0" in text


def engine_unavailable() -> str | None:
    """Why ``scripts/docker-engine.sh`` cannot run here (its ``check``), or ``None``."""
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "docker-engine.sh"), "check"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=30,
    )
    if done.returncode == 0:
        return None
    return (done.stdout + done.stderr).strip() or f"docker-engine.sh check exited {done.returncode}"


def image_test_skip_reason(environ=os.environ, unavailable=engine_unavailable) -> str | None:
    """Why the image test does not run here, or ``None`` when it runs.

    :raises pytest.fail.Exception: under ``CI=true``, where it must run.
    """
    if environ.get("ALLQ_SKIP_IMAGE_TEST") == "1":
        reason = ("ALLQ_SKIP_IMAGE_TEST=1: image test (scripts/image-test.sh) not run; "
                  "unset it to run the test")
    else:
        reason = unavailable()
        if reason is None:
            return None
        reason = (f"image test (scripts/image-test.sh) cannot run here: {reason}. "
                  "`scripts/docker-engine.sh check` says when it can")
    if environ.get("CI") == "true":
        pytest.fail(f"CI=true: the image test must run, but {reason}")
    return reason


def test_the_image_test_is_skipped_with_the_reason_and_refused_under_ci():
    """No engine (or the opt-out): a skip that says why and how; under CI=true a failure."""
    no_root = lambda: "the local Docker engine (dockerd) needs root; run as root"  # noqa: E731
    reason = image_test_skip_reason({}, no_root)
    assert "cannot run here: the local Docker engine (dockerd) needs root" in reason
    assert "scripts/docker-engine.sh check" in reason
    assert "unset it" in image_test_skip_reason({"ALLQ_SKIP_IMAGE_TEST": "1"}, lambda: None)
    assert image_test_skip_reason({}, lambda: None) is None
    assert image_test_skip_reason({"CI": "true"}, lambda: None) is None
    for environ, unavailable in (({"CI": "true"}, no_root),
                                 ({"CI": "true", "ALLQ_SKIP_IMAGE_TEST": "1"}, lambda: None)):
        with pytest.raises(pytest.fail.Exception, match="CI=true: the image test must run"):
            image_test_skip_reason(environ, unavailable)


def fake_tools_environment(tmp_path, tools: dict[str, str]) -> dict[str, str]:
    """An environment whose PATH starts with fake commands (name: shell script body)."""
    fakebin = tmp_path / "fakebin"
    fakebin.mkdir(parents=True)
    for name, body in tools.items():
        (fakebin / name).write_text(f"#!/bin/sh\n{body}\n")
        (fakebin / name).chmod(0o755)
    return {"PATH": f"{fakebin}:/usr/bin:/bin", "HOME": str(tmp_path)}


def engine_check(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO_ROOT / "scripts" / "docker-engine.sh"), "check"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=30)


def test_the_engine_check_says_why_it_cannot_run(tmp_path):
    """`docker-engine.sh check`: exit 3 with the reason (not root; no tools, no apt-get)."""
    env = fake_tools_environment(tmp_path, {"id": "echo 1000", "uname": "echo Linux"})
    done = engine_check(env)
    assert done.returncode == 3, done
    assert "needs root" in done.stdout and "run as root" in done.stdout

    # Root, but none of the tools and no apt-get to install them (PATH has only fakes).
    env = fake_tools_environment(tmp_path / "bare", {"id": "echo 0", "uname": "echo Linux"})
    env["PATH"] = env["PATH"].split(":")[0]
    done = subprocess.run(["/bin/bash", str(REPO_ROOT / "scripts" / "docker-engine.sh"), "check"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 3, done
    assert "missing dockerd docker debootstrap iptables and no apt-get" in done.stdout, done


def test_images_run_the_federated_stack_end_to_end():
    """Both images build offline and the federated stack passes put/get, failover and stop."""
    reason = image_test_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    output = run_script("image-test.sh", IMAGE_TEST_TIMEOUT)
    assert "all checks passed" in output, output[-OUTPUT_TAIL:]
