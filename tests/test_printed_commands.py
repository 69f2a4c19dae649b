"""The commands allq prints run verbatim: a server and a client from one folder.

``allq keys generate``, a server started without keys and a client started without
keys each print how to start both daemons. A user pastes those lines into two shells in
one folder; here each test runs them as printed (``bash -c``, same folder, the ports
moved by the environment variables the daemons read, so parallel tests do not collide)
and sees the client's ``/health`` report the server up. twistd's default pid file
(``./twistd.pid``) would stop the second daemon with "Another twistd server is running".
"""

import re

import pytest

from tests.servers import REPO_ROOT
from tests.shell import Shell, free_ports, shell_environment

pytestmark = pytest.mark.integration


@pytest.fixture
def shell(tmp_path):
    """Runs commands in one fresh folder, with the daemons' ports free; stops them all."""
    server_port, http_port = free_ports(2)
    shell = Shell(tmp_path / "folder", shell_environment({
        "SERVER_PORT": str(server_port),
        "SERVER_STRING": f"127.0.0.1:{server_port}",
        "HTTP_SERVER_PORT": str(http_port),
    }))
    shell.http_port = http_port
    try:
        yield shell
    finally:
        shell.stop_all()


def indented_block(text: str, heading: str) -> list[str]:
    """The indented lines right after the line starting with ``heading``, dedented,
    with backslash-continued lines joined into one command line each."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading)) + 1
    commands, current = [], ""
    for line in lines[start:]:
        if not line.startswith("    "):
            if not line.strip() and not commands and not current:
                continue  # a blank line between the heading and the block
            break
        current += line.strip() + "\n"
        if not line.endswith("\\"):
            commands.append(current.rstrip("\n"))
            current = ""
    return commands


def start_both(shell: Shell, commands: list[str]) -> None:
    """Start the server command and the client command from the folder; both serve."""
    [server] = [c for c in commands if "allq-server" in c]
    [client] = [c for c in commands if "allq-client" in c]
    shell.start(server, "server")
    shell.start(client, "client")
    health = shell.wait_for_health(shell.http_port, up=1)
    assert health["total"] == 1, health
    assert not (shell.folder / "twistd.pid").exists()


def test_keys_generate_prints_same_host_commands_that_run_from_one_folder(shell):
    """`allq keys generate ./keys`, then both printed same-host commands, in one folder."""
    done = shell.run("allq keys generate ./keys")
    assert done.returncode == 0, done.stderr
    commands = indented_block(done.stdout, "Same host")
    assert commands == ["twistd -n --pidfile= allq-server --keys ./keys",
                        "twistd -n --pidfile= allq-client --keys ./keys"]
    start_both(shell, commands)


def test_keys_generate_prints_environment_commands_that_run_from_one_folder(shell):
    """The printed environment-variable form (keys via $(cat ...)) runs as printed too."""
    done = shell.run("allq keys generate ./keys")
    assert done.returncode == 0, done.stderr
    commands = indented_block(done.stdout, "Or pass the keys in the environment")
    assert len(commands) == 2 and all("twistd -n --pidfile= allq-" in c for c in commands)
    start_both(shell, commands)


def test_a_server_without_keys_prints_commands_that_run_from_one_folder(shell):
    """A server without keys exits 1 and prints a key setup whose commands run verbatim."""
    done = shell.run("twistd -n --pidfile= allq-server")
    assert done.returncode == 1, done.stdout + done.stderr
    printed = done.stdout + done.stderr
    commands = indented_block(printed, "Either write a key set to files")
    assert commands == ["allq keys generate ./keys",
                        "twistd -n --pidfile= allq-server --keys ./keys",
                        "twistd -n --pidfile= allq-client --keys ./keys"], printed
    generated = shell.run(commands[0])
    assert generated.returncode == 0, generated.stderr
    start_both(shell, commands[1:])


def test_a_client_without_keys_prints_commands_that_run_from_one_folder(shell):
    """A client without keys exits 1 and names commands that run verbatim."""
    done = shell.run("twistd -n --pidfile= allq-client")
    assert done.returncode == 1, done.stdout + done.stderr
    printed = done.stdout + done.stderr
    commands = re.findall(r"`([^`]+)`", printed.partition("Make a key set")[2])
    assert commands == ["allq keys generate ./keys",
                        "twistd -n --pidfile= allq-server --keys ./keys",
                        "twistd -n --pidfile= allq-client --keys ./keys"], printed
    generated = shell.run(commands[0])
    assert generated.returncode == 0, generated.stderr
    start_both(shell, commands[1:])


def test_the_readme_keys_commands_run_from_one_folder(shell):
    """README.md's Keys block (generate, server, client) runs verbatim from one folder."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.partition("\n## Keys\n")[2].partition("```sh\n")[2].partition("```")[0]
    commands = [line for line in block.splitlines() if line.strip()]
    assert [c.split()[0] for c in commands] == ["allq", "twistd", "twistd"], block
    generated = shell.run(commands[0])
    assert generated.returncode == 0, generated.stderr
    start_both(shell, commands[1:])
