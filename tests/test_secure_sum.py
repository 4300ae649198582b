"""Secure sum: masked updates look uniform, the full sum is exact, keys are authenticated."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats

from pipeline.protocol.secure_sum import (
    RosterError,
    SiteKeys,
    VerifiedRoster,
    decode,
    encode,
    mask_update,
    max_abs_sum,
    unmask_sum,
    verify_roster,
)

SITES = ("ashford", "brook", "carlow", "dunmore")
JOB = "job-42"
SIGNIFICANCE = 1e-4  # family-wise, Bonferroni-split across the checks of one test


@pytest.fixture
def keys() -> dict[str, SiteKeys]:
    return {site: SiteKeys.generate(site) for site in SITES}


@pytest.fixture
def pinned(keys) -> dict[str, bytes]:
    """What every site's config pins: the others' Ed25519 identity public keys."""
    return {site: k.identity_public_bytes() for site, k in keys.items()}


@pytest.fixture
def roster(keys, pinned) -> VerifiedRoster:
    return verify_roster([k.signed_public_key(JOB) for k in keys.values()], pinned, JOB)


@pytest.fixture(scope="module")
def updates() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {site: rng.normal(0.0, 50.0, size=20_000) for site in SITES}


def masked_all(updates, keys, roster, round=0, attempt=0) -> dict[str, np.ndarray]:
    return {
        site: mask_update(updates[site], keys[site], roster, JOB, round, attempt)
        for site in roster.sites
    }


def uniform_p_values(values: np.ndarray) -> tuple[float, float]:
    """KS test of values / 2^64 against U(0, 1), and chi-square over the top 8 bits."""
    unit = values.astype(np.float64) / 2.0**64
    ks = stats.kstest(unit, "uniform").pvalue
    counts = np.bincount((values >> np.uint64(56)).astype(np.int64), minlength=256)
    chi = stats.chisquare(counts).pvalue
    return ks, chi


def test_the_uniformity_check_rejects_an_unmasked_update(updates):
    ks, chi = uniform_p_values(encode(updates["ashford"]))
    assert ks < 1e-12 and chi < 1e-12


def test_one_sites_masked_update_looks_uniform(updates, keys, roster):
    masked = masked_all(updates, keys, roster)
    threshold = SIGNIFICANCE / (2 * len(SITES))
    for site in SITES:
        ks, chi = uniform_p_values(masked[site])
        assert ks > threshold and chi > threshold, site


def test_the_sum_over_any_strict_subset_of_sites_looks_uniform(updates, keys, roster):
    masked = masked_all(updates, keys, roster)
    subsets = [
        c for n in range(2, len(SITES)) for c in itertools.combinations(SITES, n)
    ]  # singletons are covered above
    threshold = SIGNIFICANCE / (2 * len(subsets))
    for subset in subsets:
        partial = np.zeros(len(updates[SITES[0]]), dtype=np.uint64)
        for site in subset:
            partial += masked[site]
        ks, chi = uniform_p_values(partial)
        assert ks > threshold and chi > threshold, subset


def test_the_full_sum_equals_the_true_sum(updates, keys, roster):
    total = unmask_sum(masked_all(updates, keys, roster), roster)
    np.testing.assert_allclose(total, sum(updates.values()), rtol=0, atol=1e-6)


def test_masks_differ_between_rounds_and_attempts(updates, keys, roster):
    vector, site = updates["brook"], "brook"
    first = mask_update(vector, keys[site], roster, JOB, round=0, attempt=0)
    for other in (
        mask_update(vector, keys[site], roster, JOB, round=1, attempt=0),
        mask_update(vector, keys[site], roster, JOB, round=0, attempt=1),
    ):
        assert np.mean(first == other) < 0.001


def test_a_site_masks_once_per_round_and_attempt(updates, keys, roster):
    mask_update(updates["brook"], keys["brook"], roster, JOB, round=2, attempt=0)
    with pytest.raises(RosterError, match="already masked.*round 2, attempt 0"):
        mask_update(updates["brook"] * 0, keys["brook"], roster, JOB, round=2, attempt=0)


def test_a_dropped_site_is_named_and_the_restart_without_it_sums_correctly(updates, keys, roster):
    masked = masked_all(updates, keys, roster)
    del masked["carlow"]
    with pytest.raises(RosterError, match="carlow"):
        unmask_sum(masked, roster)

    survivors = roster.without(["carlow"])
    again = masked_all(updates, keys, survivors, round=0, attempt=1)
    expected = sum(updates[s] for s in survivors.sites)
    np.testing.assert_allclose(unmask_sum(again, survivors), expected, rtol=0, atol=1e-6)


def test_a_tampered_public_key_is_detected_and_named(keys, pinned):
    entries = [k.signed_public_key(JOB) for k in keys.values()]
    flipped = bytearray(entries[1].public_key)
    flipped[0] ^= 0x01
    entries[1] = replace(entries[1], public_key=bytes(flipped))
    with pytest.raises(RosterError, match="'brook'.*tampered"):
        verify_roster(entries, pinned, JOB)


def test_a_substituted_key_signed_by_another_identity_is_detected(keys, pinned):
    impostor = SiteKeys.generate("carlow")  # e.g. a coordinator posing as carlow
    entries = [k.signed_public_key(JOB) for s, k in keys.items() if s != "carlow"]
    entries.append(impostor.signed_public_key(JOB))
    with pytest.raises(RosterError, match="'carlow'"):
        verify_roster(entries, pinned, JOB)


def test_a_key_signed_for_another_job_is_not_accepted(keys, pinned):
    entries = [k.signed_public_key(JOB) for s, k in keys.items() if s != "ashford"]
    entries.append(keys["ashford"].signed_public_key("job-41"))
    with pytest.raises(RosterError, match="'ashford'"):
        verify_roster(entries, pinned, JOB)


def test_an_unpinned_site_is_refused(keys, pinned):
    stranger = SiteKeys.generate("elmwood")
    entries = [k.signed_public_key(JOB) for k in keys.values()] + [stranger.signed_public_key(JOB)]
    with pytest.raises(RosterError, match="'elmwood'.*no pinned"):
        verify_roster(entries, pinned, JOB)


def test_two_sites_are_refused(keys, pinned, roster):
    pair = [keys[s].signed_public_key(JOB) for s in SITES[:2]]
    with pytest.raises(ValueError, match="at least 3 sites.*learns the other's update"):
        verify_roster(pair, pinned, JOB)
    with pytest.raises(ValueError, match="at least 3 sites"):
        roster.without(SITES[:2])


def test_masking_refuses_a_roster_verified_for_another_job(updates, keys, roster):
    with pytest.raises(RosterError, match="verified for job"):
        mask_update(updates["ashford"], keys["ashford"], roster, "job-43", 0)


def test_fixed_point_round_trip_keeps_sign_and_precision():
    values = np.array([-3.25, 0.0, 1e-7, 123456.789, -max_abs_sum() / 4])
    np.testing.assert_allclose(decode(encode(values)), values, rtol=0, atol=2.0**-24)


def test_encoding_refuses_values_outside_the_fixed_point_range():
    with pytest.raises(ValueError, match="fixed-point range"):
        encode(np.array([max_abs_sum()]))
    with pytest.raises(ValueError, match="NaN"):
        encode(np.array([np.nan]))


def test_site_keys_repr_shows_no_key_material(keys):
    assert "Key" not in repr(keys["ashford"]).replace("SiteKeys", "")
