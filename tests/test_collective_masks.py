"""The masks of the secure XGBoost collective, without XGBoost: fixed point that sums
exactly, refusals of what it cannot encode, and pairwise masks that cancel only in the
sum of the whole attempt."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.protocol.collective_masks import (
    CollectiveMasks,
    decode_sum,
    encode_sum,
    fixed_point_scale,
)
from pipeline.protocol.secure_sum import RosterError, SiteKeys, verify_roster

SITES = ("ashford", "brook", "carlow", "dunmore")
JOB = "job-7"
FLOAT, DOUBLE, INT32, UINT64 = 1, 2, 6, 11


@pytest.fixture(scope="module")
def keys() -> dict[str, SiteKeys]:
    return {site: SiteKeys.generate(site) for site in SITES}


@pytest.fixture(scope="module")
def roster(keys):
    pinned = {site: k.identity_public_bytes() for site, k in keys.items()}
    return verify_roster([k.signed_public_key(JOB) for k in keys.values()], pinned, JOB)


def test_fixed_point_sums_decode_to_the_float_sum() -> None:
    rng = np.random.default_rng(5)
    parts = [rng.normal(0, 30, 5000) for _ in SITES]
    scale = fixed_point_scale(64 * 1_000_000)
    total = sum(encode_sum(p.tobytes(), DOUBLE, scale) for p in parts)
    decoded = np.frombuffer(decode_sum(total, DOUBLE, scale), np.float64)
    np.testing.assert_allclose(decoded, np.sum(parts, axis=0), rtol=0, atol=len(SITES) / scale)
    # float32 in, float32 out; the values stay where they were.
    small = rng.normal(0, 1, 100).astype(np.float32)
    back = np.frombuffer(decode_sum(encode_sum(small.tobytes(), FLOAT, scale), FLOAT, scale), "f4")
    np.testing.assert_array_equal(back, small)
    # Integers wrap as the aggregator's uint64 sum does, negative ones included.
    ints = np.array([-3, 7, 2**31 - 1], dtype=np.int32)
    twice = encode_sum(ints.tobytes(), INT32, scale) * np.uint64(2)
    assert np.frombuffer(decode_sum(twice, INT32, scale), np.int32).tolist() == (
        (ints.astype(np.int64) * 2).astype(np.int32).tolist()
    )


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_infinities_are_refused(bad: float) -> None:
    values = np.array([1.0, bad, 2.0])
    with pytest.raises(ValueError, match="NaN or infinite"):
        encode_sum(values.tobytes(), DOUBLE, 2**20)


def test_a_value_past_the_scales_range_fails_rather_than_wraps() -> None:
    scale = fixed_point_scale(1000.0)
    encode_sum(np.array([999.0, -999.0]).tobytes(), DOUBLE, scale)  # within: fine
    for value in (2.0e3 * 2**10, -2.0e3 * 2**10):
        with pytest.raises(ValueError, match="past the fixed-point range"):
            encode_sum(np.array([0.0, value]).tobytes(), DOUBLE, scale)
    with pytest.raises(ValueError, match="cannot be masked"):
        encode_sum(bytes(8), 3, scale)  # LONG_DOUBLE


def test_masks_cancel_in_the_attempts_sum_and_nowhere_else(keys, roster) -> None:
    rng = np.random.default_rng(9)
    encoded = {s: rng.integers(0, 2**40, 4096, dtype=np.uint64) for s in SITES}
    masks = {s: CollectiveMasks(keys[s], roster, SITES, attempt="1") for s in SITES}
    masked = {s: masks[s].mask(17, encoded[s]) for s in SITES}
    total = np.zeros(4096, np.uint64)
    for m in masked.values():
        total += m
    np.testing.assert_array_equal(total, sum(encoded.values()))
    for s in SITES:
        assert np.mean(masked[s] == encoded[s]) < 0.01  # no word left as it was
        # Its top bit is a fair coin: a masked buffer is uniform, whatever the values.
        assert abs((masked[s] >> np.uint64(63)).mean() - 0.5) < 0.05
    # Three of the four sites' buffers do not sum to their values: one mask is left.
    partial = masked["ashford"] + masked["brook"] + masked["carlow"]
    assert np.mean(partial == encoded["ashford"] + encoded["brook"] + encoded["carlow"]) < 0.01
    # Another call, or another attempt, is masked afresh.
    assert np.mean(masks["ashford"].mask(18, encoded["ashford"]) == masked["ashford"]) < 0.01
    again = CollectiveMasks(keys["ashford"], roster, SITES, attempt="2")
    assert np.mean(again.mask(17, encoded["ashford"]) == masked["ashford"]) < 0.01
    # The input is not changed in place.
    assert not np.shares_memory(masked["ashford"], encoded["ashford"])


def test_a_collective_of_two_sites_or_a_stranger_is_refused(keys, roster) -> None:
    with pytest.raises(RosterError, match="at least 3 sites"):
        CollectiveMasks(keys["ashford"], roster, ("ashford", "brook"), attempt="1")
    with pytest.raises(RosterError, match="not in the job's verified roster"):
        CollectiveMasks(keys["ashford"], roster, ("ashford", "brook", "elmwood"), attempt="1")
    with pytest.raises(RosterError, match="do not name it once"):
        CollectiveMasks(keys["ashford"], roster, ("brook", "carlow", "dunmore"), attempt="1")
