"""Shared test fixtures: fail on logged failures, Hypothesis profiles, twistd helpers."""

import gc
import os

import pytest
from hypothesis import settings
from twisted.logger import globalLogPublisher

settings.register_profile("ci", deadline=None, max_examples=60)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def observe_errors():
    """Fail a test when anything logs a Failure or an unhandled Deferred error.

    Plain pytest functions would otherwise pass silently (STYLE.md finding 7).
    """
    errors = []

    def observer(event):
        if event.get("log_failure") is not None or (event.get("isError") and event.get("failure")):
            errors.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        yield errors
        gc.collect(1)  # young generations: where a test's dropped Deferreds are (full gc costs ~0.1 s a test)
    finally:
        globalLogPublisher.removeObserver(observer)
    if errors:
        failure = errors[0].get("log_failure") or errors[0].get("failure")
        pytest.fail(f"{len(errors)} failure(s) logged; first: {failure.getTraceback()}")


@pytest.fixture
def daemons(tmp_path):
    """Starts real daemons for an integration test and stops every one afterwards."""
    from tests.servers import Daemons

    with Daemons(tmp_path) as daemons:
        yield daemons


@pytest.fixture(scope="module")
def allq_url(tmp_path_factory):
    """The REST URL of an allq-client over one allq-server, shared by a test module."""
    from tests.allq_daemons import running_allq

    yield from running_allq(tmp_path_factory)


@pytest.fixture
def keys(daemons):
    """A key set for the test's daemons (``allq keys generate``)."""
    return daemons.generate_keys()
