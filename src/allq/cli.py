"""The ``allq`` command line tool: operator chores that are not a daemon.

Responsibility: parse ``allq ...`` arguments, call the library, print results and
instructions. Currently::

    allq keys generate DIR [--force]   write a server and a client key pair to DIR
    allq keys suggest                  print a fresh key set as environment variables
    allq import DIR [--data-dir D]     import an AllQueue data directory into allq's journal
    allq put|get|done|peek|stats|...   the queue, through an allq-client
                                       (:mod:`allq.commands.queue`)

What this module must not do: no queue logic, no reactor, no network (the queue
commands' modules in :mod:`allq.commands` call the allq-client). It never prints a
secret key except in ``keys suggest``, whose whole purpose is to show one. Errors are one
line on stderr and exit status 2 (a queue command's failed call: 1).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from typing import TextIO

import attrs

from allq.commands import queue as queue_commands
from allq.keyfiles import (
    AUTHORIZED_KEYS_FILE,
    CLIENT_PUBLIC_FILE,
    CLIENT_SECRET_FILE,
    ENV_AUTHORIZED,
    ENV_SECRET,
    ENV_SERVER_PUBLIC,
    SERVER_PUBLIC_FILE,
    SERVER_SECRET_FILE,
    KeyConfigError,
    write_key_files,
)
from allq.wire.keys import GeneratedKeys, key_set_files, new_key_set, suggested_setup_text

EXIT_OK = 0
EXIT_ERROR = 2
#: How the printed commands start a daemon: in the foreground, and with no pid file, so a
#: server and a client started from one folder do not both claim ./twistd.pid (twistd's
#: default, which makes the second one exit "Another twistd server is running").
TWISTD = "twistd -n --pidfile="
#: Modules that add subcommands (``add_commands(subparsers)``), after ``keys``.
COMMAND_FAMILIES = (queue_commands,)


def _generate_instructions(directory: str, paths: Sequence[str]) -> str:
    """What ``keys generate`` prints: the files and how to hand them to the daemons."""
    files = "\n".join(f"    {path}" for path in paths)
    quoted = shlex.quote(directory)

    def cat(name: str) -> str:
        return f'"$(cat {shlex.quote(os.path.join(directory, name))})"'

    return (
        f"Wrote a new allq key set to {directory}:\n"
        f"{files}\n"
        "\n"
        "Same host (or a shared directory):\n"
        f"    {TWISTD} allq-server --keys {quoted}\n"
        f"    {TWISTD} allq-client --keys {quoted}\n"
        "\n"
        "Separate hosts: copy only what each side needs, keeping the .key files mode 600.\n"
        f"    server: {SERVER_SECRET_FILE} and {AUTHORIZED_KEYS_FILE}"
        f"   ({TWISTD} allq-server --keys DIR)\n"
        f"    client: {CLIENT_SECRET_FILE} and {SERVER_PUBLIC_FILE}"
        f"       ({TWISTD} allq-client --keys DIR)\n"
        f"    To accept more clients, add their {CLIENT_PUBLIC_FILE} lines to the server's "
        f"{AUTHORIZED_KEYS_FILE}.\n"
        "\n"
        "Or pass the keys in the environment instead of --keys:\n"
        f"    {ENV_SECRET}={cat(SERVER_SECRET_FILE)} \\\n"
        f"    {ENV_AUTHORIZED}={cat(CLIENT_PUBLIC_FILE)} \\\n"
        f"        {TWISTD} allq-server\n"
        f"    {ENV_SECRET}={cat(CLIENT_SECRET_FILE)} \\\n"
        f"    {ENV_SERVER_PUBLIC}={cat(SERVER_PUBLIC_FILE)} \\\n"
        f"        {TWISTD} allq-client\n"
    )


def generate_keys(directory: str, *, overwrite: bool = False) -> GeneratedKeys:
    """Make a server key pair and a client key pair and write them to ``directory``
    (see :mod:`allq.keyfiles` for the files).

    :param overwrite: replace existing key files instead of refusing.
    :returns: the new key set, with the paths written.
    :raises KeyConfigError: a file exists (without ``overwrite``), or cannot be written.
    """
    keys = new_key_set()
    paths = write_key_files(directory, key_set_files(keys), overwrite=overwrite)
    return attrs.evolve(keys, directory=directory, paths=paths)


def _keys_generate(args: argparse.Namespace, out: TextIO) -> int:
    generated = generate_keys(args.directory, overwrite=args.force)
    out.write(_generate_instructions(args.directory, generated.paths))
    return EXIT_OK


def _keys_suggest(args: argparse.Namespace, out: TextIO) -> int:
    out.write(suggested_setup_text())
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for ``allq``; each leaf command sets ``run(args, out) -> int``."""
    parser = argparse.ArgumentParser(prog="allq", description="allq operator tools")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    keys = commands.add_parser("keys", help="create and show encryption keys")
    keys_commands = keys.add_subparsers(title="keys commands", required=True, metavar="ACTION")

    generate = keys_commands.add_parser(
        "generate", help="write a server key pair and a client key pair to DIR"
    )
    generate.add_argument("directory", metavar="DIR", help="key directory (created 0700)")
    generate.add_argument(
        "--force", action="store_true", help="replace existing key files in DIR"
    )
    generate.set_defaults(run=_keys_generate)

    suggest = keys_commands.add_parser(
        "suggest", help="print a freshly generated key set as environment variables"
    )
    suggest.set_defaults(run=_keys_suggest)

    # Command families of their own modules (allq.commands): each adds its commands.
    for family in COMMAND_FAMILIES:
        family.add_commands(commands)

    # The importer is the server's (it writes the journal); it adds its own command.
    from allq.server.allqueue_import import add_import_command

    add_import_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``allq`` with the given arguments (default: ``sys.argv[1:]``).

    :returns: the exit status: 0 on success, 2 on a usage or key error.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        # argparse has already printed usage or help; report its status instead of exiting.
        return e.code if isinstance(e.code, int) else EXIT_ERROR
    try:
        return args.run(args, sys.stdout)
    except KeyConfigError as e:
        sys.stderr.write(f"allq: error: {e}\n")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
