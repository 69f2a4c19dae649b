"""The shared vocabulary: job references, limits and validators every layer uses."""

import pytest

from allq.errors import BadRequest
from allq.vocabulary import (
    MAX_SECONDS,
    JobRef,
    check_clear_state,
    check_fair_setting,
    check_job_id,
    check_seconds,
    check_shard_key,
    check_tps,
)


def test_job_ref_parses_and_formats_as_inverses():
    ref = JobRef.parse("Kx3c0VtQ1a,1763900000000001")
    assert ref == JobRef("Kx3c0VtQ1a", 1763900000000001)
    assert str(ref) == "Kx3c0VtQ1a,1763900000000001"


@pytest.mark.parametrize("text", [
    None, 5, "", "abc", "abc,", ",12", "a b,1", "a,1,2", "a,-1", "a,1.5",
    "a," + "9" * 21, "x" * 65 + ",1", "a,１",  # a full-width digit is not [0-9]
])
def test_job_ref_rejects_anything_else_naming_the_field(text):
    with pytest.raises(BadRequest, match="parent_id must look like <server_id>,<number>"):
        JobRef.parse(text, "parent_id")


def test_a_server_reads_a_bare_number_as_its_own_job():
    assert JobRef.parse("17", own_server="srv") == JobRef("srv", 17)
    assert JobRef.parse("other,17", own_server="srv") == JobRef("other", 17)
    with pytest.raises(BadRequest):
        JobRef.parse("17")


def test_check_job_id_returns_the_text_as_given():
    assert check_job_id("a_b-c,0") == "a_b-c,0"


@pytest.mark.parametrize("value", [10**309, -10**309, float("inf"), float("nan"), -1, True, "1"])
def test_seconds_refuse_huge_and_non_finite_values_without_overflowing(value):
    with pytest.raises(BadRequest, match="delay"):
        check_seconds("delay", value)


def test_seconds_limits():
    assert check_seconds("ttl", MAX_SECONDS) == MAX_SECONDS
    with pytest.raises(BadRequest, match="greater than 0"):
        check_seconds("ttl", 0, positive=True)


@pytest.mark.parametrize("tps, expected", [(None, None), (0, None), (-3, None), (2, 2.0),
                                           (0.5, 0.5)])
def test_tps_none_or_not_positive_means_no_throttle(tps, expected):
    assert check_tps(tps) == expected


@pytest.mark.parametrize("tps", [10**400, float("inf"), float("nan"), "5", True, [1]])
def test_tps_refuses_what_is_not_a_finite_number(tps):
    with pytest.raises(BadRequest, match="tps"):
        check_tps(tps)


def test_enumerated_settings_name_their_choices():
    assert check_clear_state("buried") == "buried"
    with pytest.raises(BadRequest, match="cache_type must be one of all, ready"):
        check_clear_state("gone")
    assert check_fair_setting("default") == "default"
    with pytest.raises(BadRequest, match="policy must be one of round_robin, weighted, off"):
        check_fair_setting("fifo")


def test_shard_keys():
    assert check_shard_key("customer-42") == "customer-42"
    with pytest.raises(BadRequest, match="shard_key"):
        check_shard_key("has space")
