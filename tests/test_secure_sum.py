"""Secure sum: masked inputs look uniform, the sum is exact with or without a dropout, a
site answers each step of a round once, keys are authenticated."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats

from pipeline.protocol import secure_sum, shamir
from pipeline.protocol.secure_sum import (
    RosterError,
    SecureSumSite,
    SiteKeys,
    VerifiedRoster,
    decode,
    encode,
    max_abs_sum,
    unmask,
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


def sites_of(keys, roster) -> dict[str, SecureSumSite]:
    return {site: SecureSumSite(keys[site], roster) for site in roster.sites}


def run_round(sites, updates, round_=0, *, lost=(), lost_after_input=()):
    """One round as the coordinator runs it: set-up, inputs from every site but `lost`,
    reveals from every survivor but `lost_after_input`. Returns (sum, masked inputs)."""
    setups = {s: site.setup(round_) for s, site in sites.items()}
    keys = {s: setup.key for s, setup in setups.items()}
    masked = {
        s: site.mask(
            round_,
            updates[s],
            keys,
            {peer: setup.shares[s] for peer, setup in setups.items() if peer != s},
        )
        for s, site in sites.items()
        if s not in lost
    }
    survivors, dropped = sorted(masked), sorted(lost)
    answering = [s for s in survivors if s not in lost_after_input]
    confirmations = {s: sites[s].confirm(round_, survivors) for s in answering}
    reveals = {s: sites[s].reveal(round_, survivors, dropped, confirmations) for s in answering}
    roster = next(iter(sites.values())).roster
    return unmask(masked, roster, round_, keys, reveals), masked


def masked_all(updates, keys, roster, round_=0) -> dict[str, np.ndarray]:
    return run_round(sites_of(keys, roster), updates, round_)[1]


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
    total, _ = run_round(sites_of(keys, roster), updates)
    np.testing.assert_allclose(total, sum(updates.values()), rtol=0, atol=1e-6)


def test_masks_differ_between_rounds(updates, keys, roster):
    sites = sites_of(keys, roster)
    first = run_round(sites, updates, 0)[1]["brook"]
    assert np.mean(first == run_round(sites, updates, 1)[1]["brook"]) < 0.001


def test_a_site_dropping_before_its_input_is_recovered_without_a_second_answer(
    updates, keys, roster
):
    sites = sites_of(keys, roster)
    total, masked = run_round(sites, updates, lost=["carlow"])
    expected = sum(updates[s] for s in SITES if s != "carlow")
    np.testing.assert_allclose(total, expected, rtol=0, atol=1e-6)
    assert set(masked) == {"ashford", "brook", "dunmore"}
    # Every site answered each step once; none is asked to mask again.
    with pytest.raises(RosterError, match="already sent its input for round 0"):
        sites["brook"].mask(0, updates["brook"] * 0, {}, {})


def test_a_site_dropping_after_its_input_still_counts(updates, keys, roster):
    total, _ = run_round(sites_of(keys, roster), updates, lost_after_input=["dunmore"])
    np.testing.assert_allclose(total, sum(updates.values()), rtol=0, atol=1e-6)


def test_differencing_a_full_sum_against_a_sum_without_one_site_is_refused(updates, keys, roster):
    """All four sites at round 0, then the coordinator claims carlow dropped: the others
    refuse to reveal carlow's key after revealing its seed, and refuse a second input."""
    sites = sites_of(keys, roster)
    run_round(sites, updates)
    survivors = ["ashford", "brook", "dunmore"]
    with pytest.raises(RosterError, match="already confirmed"):
        sites["ashford"].confirm(0, survivors)
    with pytest.raises(RosterError, match="already revealed round 0"):
        sites["ashford"].reveal(0, survivors, ["carlow"], {})
    with pytest.raises(RosterError, match="already set up round 0"):
        sites["ashford"].setup(0)


def _masked_round(sites, updates):
    setups = {s: site.setup(0) for s, site in sites.items()}
    round_keys = {s: setup.key for s, setup in setups.items()}
    for s, site in sites.items():
        site.mask(0, updates[s], round_keys, {p: u.shares[s] for p, u in setups.items() if p != s})


def test_an_inconsistent_story_gets_no_reveal(updates, keys, roster):
    """Told different survivor lists (all four to two sites, carlow dropped to the other
    two), no list gathers the threshold's signatures, and no site reveals anything."""
    sites = sites_of(keys, roster)
    _masked_round(sites, updates)
    everyone, others = list(SITES), [s for s in SITES if s != "carlow"]
    told = {"ashford": everyone, "carlow": everyone, "brook": others, "dunmore": others}
    signed = {s: sites[s].confirm(0, told[s]) for s in SITES}
    for s in SITES:
        dropped = [] if told[s] == everyone else ["carlow"]
        with pytest.raises(RosterError, match="2 site\\(s\\) confirmed these survivors, 3 must"):
            sites[s].reveal(0, told[s], dropped, signed)
    # A signature on another list, or another site's name on it, counts for nothing.
    with pytest.raises(RosterError, match="confirmed other survivors"):
        sites["brook"].reveal(0, everyone, [], signed)


def test_sites_told_different_rounds_do_not_count_for_each_other(updates, keys, roster):
    """The same survivor list, but brook masked without dunmore: its confirmation does not
    count toward the others' reveal (their round was another one)."""
    sites = sites_of(keys, roster)
    setups = {s: site.setup(0) for s, site in sites.items()}
    round_keys = {s: setup.key for s, setup in setups.items()}
    views = {s: dict(round_keys) for s in SITES}
    views["brook"].pop("dunmore")
    for s, site in sites.items():
        shares = {p: u.shares[s] for p, u in setups.items() if p != s and p in views[s]}
        site.mask(0, updates[s], views[s], shares)
    survivors = ["ashford", "brook", "carlow"]
    signed = {s: sites[s].confirm(0, survivors) for s in survivors}
    with pytest.raises(RosterError, match="2 site\\(s\\) confirmed these survivors, 3 must"):
        sites["ashford"].reveal(0, survivors, ["dunmore"], signed)


def test_the_threshold_outnumbers_a_sites_partners_and_a_survivor_set_without_them():
    for n in range(3, 30):
        t = secure_sum.threshold(n)
        assert 2 * t - 1 > n and t <= n  # a site's partners and survivors overlap
        assert n - t >= (n - 3) // 2  # and some sites may drop out


def test_a_reveal_below_the_sites_minimum_is_refused(updates, keys, roster):
    sites = sites_of(keys, roster)
    setups = {s: site.setup(0) for s, site in sites.items()}
    round_keys = {s: setup.key for s, setup in setups.items()}
    me = sites["ashford"]
    me.mask(
        0,
        updates["ashford"],
        round_keys,
        {p: u.shares["ashford"] for p, u in setups.items() if p != "ashford"},
    )
    with pytest.raises(RosterError, match="at least 3"):
        me.confirm(0, ["ashford", "brook"])
    signed = {"ashford": me.confirm(0, ["ashford", "brook", "carlow"])}
    with pytest.raises(RosterError, match="split the round's sites"):
        me.reveal(0, ["ashford", "brook", "carlow"], [], signed)


def test_shares_relayed_by_the_coordinator_cannot_be_read_or_altered(updates, keys, roster):
    sites = sites_of(keys, roster)
    setups = {s: site.setup(0) for s, site in sites.items()}
    round_keys = {s: setup.key for s, setup in setups.items()}
    shares = {p: u.shares["ashford"] for p, u in setups.items() if p != "ashford"}
    tampered = bytearray(shares["brook"])
    tampered[-1] ^= 1
    with pytest.raises(RosterError, match="shares from site 'brook' do not open"):
        sites["ashford"].mask(
            0, updates["ashford"], round_keys, {**shares, "brook": bytes(tampered)}
        )


def test_a_round_key_signed_by_another_identity_is_refused(updates, keys, roster):
    sites = sites_of(keys, roster)
    setups = {s: site.setup(0) for s, site in sites.items()}
    round_keys = {s: setup.key for s, setup in setups.items()}
    impostor = SiteKeys.generate("brook")  # a coordinator posing as brook
    round_keys["brook"] = impostor.sign(JOB, 0, round_keys["brook"].public_key)
    shares = {p: u.shares["ashford"] for p, u in setups.items() if p != "ashford"}
    with pytest.raises(RosterError, match="'brook'.*does not verify"):
        sites["ashford"].mask(0, updates["ashford"], round_keys, shares)


def test_shamir_rebuilds_from_any_threshold_and_not_from_fewer():
    secret = bytes(range(32))
    shares = shamir.split(secret, 5, 3)
    for subset in itertools.combinations(shares, 3):
        assert shamir.combine(subset, 32) == secret
    with pytest.raises(ValueError):
        shamir.combine(shares[:2], 32)  # two points give a random element, not the secret


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


def test_two_sites_are_refused(keys, pinned):
    pair = [keys[s].signed_public_key(JOB) for s in SITES[:2]]
    with pytest.raises(RosterError, match="at least 3 sites.*learns the other's update"):
        verify_roster(pair, pinned, JOB)


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
