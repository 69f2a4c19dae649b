"""Reloading the authorized client keys while the server runs (revocation).

:class:`AuthorizedKeysWatcher` re-reads the server's keys on ``SIGHUP`` and
whenever the authorized keys file changes (its size, mtime or inode, polled
every ``interval`` seconds on the reactor), gives the server factory an
:class:`Authenticator` for the new set, and so closes every session of a key
that is gone (``ERROR revoked``). A file that does not load (unreadable, a bad
line, no keys left) changes nothing: the old set stays and one line says why.
Only the authorized keys change; a new ``server.key`` needs a restart (said
once in the log).

What it must not do: block (the file is small and read once per change), or
keep anything scheduled after :meth:`stopService`.
"""

import os
import signal
from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from allq.wire.crypto import Authenticator
from allq.keyfiles import KeyConfigError
from allq.wire.keys import ServerKeys

#: Seconds between looks at the authorized keys file.
DEFAULT_POLL_SECONDS = 2.0


def file_fingerprint(path: str | None) -> tuple | None:
    """What tells a changed file from an unchanged one: inode, size, mtime (``None``
    when there is no file)."""
    if path is None:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


class AuthorizedKeysWatcher(Service):
    """Keeps the server factory's authorized keys in step with their file.

    :param keys: the keys the server started with.
    :param load: reads the keys again (:func:`allq.keyfiles` + :mod:`allq.wire.keys`);
        raises :class:`KeyConfigError` when they do not load.
    :param apply: gives the factory a new :class:`Authenticator`; returns how many
        connections it closed (:meth:`ServerFactory.set_authenticator`).
    :param path: the authorized keys file to watch (``None``: keys from the
        environment; only ``SIGHUP`` reloads them).
    :param clock: runs the poll.
    :param interval: seconds between polls.
    :param reactor: with ``callFromThread``, to install a ``SIGHUP`` handler
        (``None``: no signal handler, as in tests).
    """

    _log = Logger()

    def __init__(self, keys: ServerKeys, load: Callable[[], ServerKeys],
                 apply: Callable[[Authenticator], int], path: str | None,
                 clock: IReactorTime, interval: float = DEFAULT_POLL_SECONDS,
                 reactor=None) -> None:
        self.keys = keys
        self._load = load
        self._apply = apply
        self._path = path
        self._clock = clock
        self._interval = interval
        self._reactor = reactor
        self._fingerprint = file_fingerprint(path)
        self._poll: LoopingCall | None = None
        self._previous_handler = None
        self.reloads = 0

    def startService(self) -> None:
        super().startService()
        if self._path is not None:
            self._poll = LoopingCall(self.check)
            self._poll.clock = self._clock
            self._poll.start(self._interval, now=False)
        if self._reactor is not None and hasattr(signal, "SIGHUP"):
            self._previous_handler = signal.signal(signal.SIGHUP, self._on_sighup)

    def stopService(self):
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        self._poll = None
        if self._previous_handler is not None:
            signal.signal(signal.SIGHUP, self._previous_handler)
            self._previous_handler = None
        return super().stopService()

    def _on_sighup(self, signum, frame) -> None:
        # In a signal handler: hand the work to the reactor, touch nothing here.
        self._reactor.callFromThread(self.reload, "SIGHUP")

    def check(self) -> None:
        """Reload if the file changed since the last look."""
        fingerprint = file_fingerprint(self._path)
        if fingerprint != self._fingerprint:
            self._fingerprint = fingerprint
            self.reload("file changed")

    def reload(self, why: str = "reload") -> bool:
        """Read the keys again and apply them; keep the old ones if that fails.

        :returns: whether a new set is in force.
        """
        try:
            keys = self._load()
        except KeyConfigError as e:
            self._log.warn("authorized keys not reloaded ({why}): {error}; keeping the "
                           "{count} keys in force", why=why, error=str(e),
                           count=len(self.keys.authorized))
            return False
        if bytes(keys.secret) != bytes(self.keys.secret):
            self._log.warn("the server's secret key changed; restart the server to use it")
        old = {bytes(key) for key in self.keys.authorized}
        new = {bytes(key) for key in keys.authorized}
        self.keys = ServerKeys(self.keys.secret, keys.authorized, keys.any_client)
        closed = self._apply(Authenticator(self.keys))
        self.reloads += 1
        self._log.info(
            "authorized keys reloaded ({why}): {count} keys, {added} added, {removed} "
            "removed{any}; closed {closed} connections of removed keys",
            why=why, count=len(new), added=len(new - old), removed=len(old - new),
            any="; any client key accepted (--allow-any-client)" if keys.any_client else "",
            closed=closed)
        return True
