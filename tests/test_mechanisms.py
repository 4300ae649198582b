"""Clipping bounds one example's influence; the Gaussian noise has the promised std and is
never reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.privacy.mechanisms import (
    clip_rows,
    clipped_sum,
    gaussian_noise,
    noisy_clipped_sum,
)


@pytest.fixture
def site_rows() -> np.ndarray:
    """A site's per-example contributions (test data may be seeded; DP noise never is)."""
    return np.random.default_rng(7).normal(0.0, 1.0, size=(200, 6))


def test_clipped_rows_have_norm_at_most_the_bound(site_rows):
    clipped = clip_rows(site_rows * 5, bound=1.5)
    assert np.all(np.linalg.norm(clipped, axis=1) <= 1.5 * (1 + 1e-12))


def test_rows_within_the_bound_are_unchanged(site_rows):
    small = site_rows / (np.linalg.norm(site_rows, axis=1, keepdims=True) * 2)
    small[0] = 0.0
    assert np.array_equal(clip_rows(small, bound=1.0), small)


def test_one_extreme_row_moves_the_pre_noise_sum_by_at_most_the_bound(site_rows):
    bound = 2.0
    extreme = np.full((1, site_rows.shape[1]), 1e12)
    with_it = clipped_sum(np.vstack([site_rows, extreme]), bound)
    without = clipped_sum(site_rows, bound)
    assert np.linalg.norm(with_it - without) <= bound * (1 + 1e-9)

    replaced = site_rows.copy()
    replaced[3] = -extreme
    moved = np.linalg.norm(clipped_sum(replaced, bound) - without)
    assert moved <= 2 * bound * (1 + 1e-9)  # replace-one = remove one + add one


def test_noise_std_over_many_releases_is_sigma_times_bound(site_rows):
    bound, sigma, releases = 1.5, 1.3, 3000
    exact = clipped_sum(site_rows, bound)
    noise = np.stack([noisy_clipped_sum(site_rows, bound, sigma) - exact for _ in range(releases)])
    # 18,000 draws: the std estimate's own error is about 0.5 %, far inside 5 %.
    assert np.std(noise) == pytest.approx(sigma * bound, rel=0.05)
    assert abs(np.mean(noise)) < 0.05 * sigma * bound


def test_two_releases_differ_even_after_seeding_numpy(site_rows):
    np.random.seed(0)
    first = noisy_clipped_sum(site_rows, 1.0, 1.0)
    np.random.seed(0)
    second = noisy_clipped_sum(site_rows, 1.0, 1.0)
    assert not np.any(first == second)


def test_gaussian_noise_is_not_reproducible():
    assert not np.array_equal(gaussian_noise((50,), 1.0), gaussian_noise((50,), 1.0))


@pytest.mark.parametrize("bound", [0.0, -1.0, float("nan"), float("inf")])
def test_clipping_refuses_an_invalid_bound(site_rows, bound):
    with pytest.raises(ValueError, match="clipping bound"):
        clip_rows(site_rows, bound)


def test_clipping_refuses_non_finite_rows(site_rows):
    site_rows[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        clip_rows(site_rows, 1.0)


def test_noisy_sum_refuses_a_zero_noise_multiplier(site_rows):
    with pytest.raises(ValueError, match="noise_multiplier"):
        noisy_clipped_sum(site_rows, 1.0, 0.0)
