"""Who watches the federation: metrics, job logs and the ``--workers`` relay.

The federation reports what it did to the observers it was given
(:meth:`allq.client.federation.Federation.observe`), after the fact and
synchronously; an observer decides nothing and cannot change an outcome.
:class:`FederationObserver` is the interface, with every method a no-op, so an
observer implements only what it watches:

* :class:`allq.client.metrics.JobCounter` counts jobs, errors and retries;
* :class:`JobLog` (``--log-jobs``) logs one event per job touched, with its ``job_id``;
* :class:`allq.client.workers.AdminRelay` sends admin changes to the other
  client processes.
"""

from collections.abc import Sequence

from twisted.logger import Logger

from allq.client.records import FetchedJob


class FederationObserver:
    """What the federation reports. Subclass and override what you watch."""

    def stored(self, action: str, tube: str, job_id: str, address: str) -> None:
        """A job was put (``action``: ``put`` or ``put_parent``) on a server."""

    def got(self, tube: str, jobs: Sequence[FetchedJob], deleted: bool) -> None:
        """Jobs were handed out by one get (taken for good when ``deleted``)."""

    def acted(self, action: str, job_id: str, address: str) -> None:
        """A job action (``done``, ``delete``, ``release``, ...) succeeded."""

    def counted(self, action: str, tube: str, count: int) -> None:
        """A tube-wide action touched ``count`` jobs (``kick``, ``clear``)."""

    def failed(self, operation: str, code: str, count: int = 1) -> None:
        """``count`` operations (or jobs of a batch) failed with an error ``code``."""

    def retried(self, operation: str, address: str | None) -> None:
        """An operation is tried again after ``address`` (``None``: no server) failed."""

    def admin_changed(self, call: str, args: list) -> None:
        """A federation-wide setting changed through this process
        (``add_server``, ``update_servers``, ``drain_server``)."""


class JobLog(FederationObserver):
    """``--log-jobs``: one log event per job touched, carrying ``job_id`` and
    ``action``, so a job can be followed through client and server logs."""

    _log = Logger()

    def stored(self, action: str, tube: str, job_id: str, address: str) -> None:
        self._log.info("{action} job {job_id} on {server}", action=action, job_id=job_id,
                       tube=tube, server=address)

    def got(self, tube: str, jobs: Sequence[FetchedJob], deleted: bool) -> None:
        for job in jobs:
            self._log.info("got job {job_id}", action="get", job_id=job.job_id, tube=job.tube)

    def acted(self, action: str, job_id: str, address: str) -> None:
        self._log.info("{action} job {job_id} on {server}", action=action, job_id=job_id,
                       server=address)
