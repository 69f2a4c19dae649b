"""Tests of idempotency keys through :class:`allq.server.dispatch.Dispatcher`.

A repeated key returns the first job (put and put_parent), also once the
server drains. Harness: :mod:`dispatchers`.
"""

import pytest

from dispatchers import Harness, counts


@pytest.fixture
def h() -> Harness:
    return Harness()


# -- idempotency ------------------------------------------------------------------


def test_a_repeated_idempotency_key_returns_the_first_job(h):
    """The same idempotency_key twice gives the same job id and stores one job."""
    first = h.put("a", idempotency_key="k1")
    again = h.put("a", idempotency_key="k1")
    other = h.put("a", idempotency_key="k2")
    assert again == first
    assert other != first
    assert len(h.queue) == 2


# -- put_parent and set_children_started ------------------------------------------------


def test_repeated_put_parent_idempotency_key_returns_the_first_parent(h):
    """A put_parent retried with the same idempotency_key stores one parent and replies its id."""
    first = h.put_parent(limit=1, idempotency_key="k-1")
    again = h.put_parent(limit=1, idempotency_key="k-1")
    assert again == first
    assert h.counts() == counts(parents=1)
    assert len(h.queue) == 1
    other = h.put_parent(limit=1, idempotency_key="k-2")
    assert other != first


def test_idempotent_retry_succeeds_after_drain_started(h):
    """A retry of a put that was stored before the server began draining still gets its id."""
    first = h.put(idempotency_key="k")
    parent = h.put_parent(idempotency_key="kp")
    h.ok("drain")
    assert h.put(idempotency_key="k") == first
    assert h.put_parent(idempotency_key="kp") == parent
    assert h.error("put", tube="t", body="x", idempotency_key="new")["code"] == "draining"
    assert len(h.queue) == 2
