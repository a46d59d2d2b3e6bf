"""A-distance and Gaussian KL on synthetic features whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from cdlm_dist.evaluation.metrics import (
    VAR_FLOOR,
    a_distance,
    gaussian_kl,
    symmetric_gaussian_kl,
)

DIM = 16


def _normal(n: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(shift, scale, size=(n, DIM))


def test_a_distance_is_near_zero_for_one_distribution():
    # Unequal sizes: the larger sample is subsampled, so chance stays at err = 0.5.
    assert a_distance(_normal(400, 0), _normal(900, 1), seed=0) < 0.3


def test_a_distance_is_two_for_separated_domains():
    assert a_distance(_normal(300, 0), _normal(300, 1, shift=5.0), seed=0) == pytest.approx(2.0)


def test_a_distance_orders_overlap_and_is_seeded():
    near = a_distance(_normal(400, 0), _normal(400, 1, shift=0.2), seed=3)
    far = a_distance(_normal(400, 0), _normal(400, 1, shift=0.6), seed=3)
    assert 0.0 <= near < far <= 2.0
    assert a_distance(_normal(400, 0), _normal(400, 1, shift=0.2), seed=3) == near


def test_a_distance_rejects_too_few_points():
    with pytest.raises(ValueError, match="at least"):
        a_distance(_normal(2, 0), _normal(50, 1), seed=0)


def _fitted(x: torch.Tensor) -> Independent:
    x = x.double()
    return Independent(Normal(x.mean(0), (x.var(0, unbiased=False) + VAR_FLOOR).sqrt()), 1)


def test_gaussian_kl_matches_torch_closed_form():
    a = torch.from_numpy(_normal(500, 0, shift=0.3, scale=0.5)).float()
    b = torch.from_numpy(_normal(700, 1, shift=-0.2, scale=2.0)).float()
    expected = float(kl_divergence(_fitted(a), _fitted(b)))
    assert gaussian_kl(a, b) == pytest.approx(expected, rel=1e-9)
    assert gaussian_kl(b, a) == pytest.approx(float(kl_divergence(_fitted(b), _fitted(a))),
                                              rel=1e-9)
    assert gaussian_kl(a, b) != pytest.approx(gaussian_kl(b, a))  # it is directional


def test_gaussian_kl_is_zero_for_identical_inputs_and_finite_for_collapsed_dims():
    a = torch.randn(200, DIM, generator=torch.Generator().manual_seed(0))
    assert gaussian_kl(a, a.clone()) == pytest.approx(0.0, abs=1e-12)
    collapsed = a.clone()
    collapsed[:, 0] = 1.0  # zero variance: the floor keeps the KL finite
    assert np.isfinite(gaussian_kl(a, collapsed))


def test_symmetric_gaussian_kl_is_the_mean_of_both_directions():
    a, b = _normal(300, 0), _normal(300, 1, shift=1.0, scale=1.5)
    sym = symmetric_gaussian_kl(a, b)
    assert sym == pytest.approx(0.5 * (gaussian_kl(a, b) + gaussian_kl(b, a)))
    assert sym == pytest.approx(symmetric_gaussian_kl(b, a))
