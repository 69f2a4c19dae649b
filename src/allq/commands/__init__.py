"""Subcommands of the ``allq`` command line, one module per family.

Each module has ``add_commands(subparsers)``, which adds its commands to the
``allq`` parser; every leaf sets ``run(args, out) -> int`` (the exit status).
:mod:`allq.cli` builds the parser and lists the families.
"""
