"""Option helpers shared by both daemons' ``tap`` modules.

Every option can come from a flag or from an environment variable (the original
AllQueue's name where it had one); flags win. Values are checked here so a bad
one stops start-up with a message that names the option.
"""

from collections.abc import Mapping

from twisted.python import usage


def resolve(options: usage.Options, name: str, environ: Mapping[str, str], *env_names: str):
    """The flag's value, else the first set environment variable, else ``None``."""
    value = options[name]
    if value is not None:
        return value
    for env_name in env_names:
        if environ.get(env_name):
            return environ[env_name]
    return None


def positive_int(name: str, value: str | int, *, minimum: int = 1) -> int:
    """Parse an integer option.

    :raises usage.UsageError: naming the option, when it is not an integer >= ``minimum``.
    """
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise usage.UsageError(f"--{name} must be an integer, got {str(value)[:40]!r}") from None
    if number < minimum:
        raise usage.UsageError(f"--{name} must be at least {minimum}, got {number}")
    return number


def positive_float(name: str, value: str | float) -> float:
    """Parse a positive number of seconds.

    :raises usage.UsageError: naming the option.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise usage.UsageError(f"--{name} must be a number, got {str(value)[:40]!r}") from None
    if not number > 0 or number == float("inf"):
        raise usage.UsageError(f"--{name} must be greater than 0, got {value}")
    return number
