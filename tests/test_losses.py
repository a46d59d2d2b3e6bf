"""Each loss term against an independent computation, so a wrong formula fails."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from cdlm_dist import losses
from cdlm_dist.model.grl import grad_reverse, grl_coefficient


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(5, 7), torch.randn(5, 7)
    ours = losses.kl_standard_normal(mu, logvar)
    ref = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(1)
    assert torch.allclose(ours, ref, atol=1e-5)
    assert torch.all(losses.kl_standard_normal(torch.zeros(3, 4), torch.zeros(3, 4)) == 0)


@pytest.mark.parametrize("coeff", [0.0, 0.3, 1.0])
def test_grl_is_identity_forward_and_reverses_scaled_gradient(coeff):
    x = torch.randn(4, 3, requires_grad=True)
    y = grad_reverse(x, coeff)
    assert torch.equal(y, x)
    (y * torch.arange(3.0)).sum().backward()
    assert torch.allclose(x.grad, -coeff * torch.arange(3.0).expand(4, 3))


def test_grl_schedule_warms_up_from_zero_to_max():
    values = [grl_coefficient(p / 10) for p in range(11)]
    assert values[0] == 0.0
    assert all(a < b for a, b in zip(values, values[1:]))
    assert math.isclose(values[-1], 2 / (1 + math.exp(-10)) - 1)
    assert grl_coefficient(1.0, max_value=0.5) == pytest.approx(0.5 * values[-1])


def test_reconstruction_is_per_pixel_bernoulli_nll():
    x = torch.rand(2, 1, 4, 4)
    logits = torch.randn(2, 1, 4, 4)
    p = torch.sigmoid(logits)
    ref = -(x * torch.log(p) + (1 - x) * torch.log(1 - p)).mean()
    assert torch.allclose(losses.reconstruction(logits, x), ref, atol=1e-5)


def test_recon_vs_prior_is_zero_only_when_decodings_agree():
    a = torch.randn(3, 1, 5, 5)
    assert losses.recon_vs_prior(a, a) == 0
    b = a + 1.0
    ref = (torch.sigmoid(a) - torch.sigmoid(b)).abs().mean()
    assert torch.allclose(losses.recon_vs_prior(a, b), ref)


def test_cycle_is_mse():
    h, back = torch.randn(4, 6), torch.randn(4, 6)
    assert torch.allclose(losses.cycle(back, h), ((back - h) ** 2).mean())


def test_semantic_uses_labels_or_only_confident_pseudo_labels():
    logits_t = torch.randn(4, 10)
    y = torch.tensor([1, 2, 3, 4])
    assert torch.allclose(losses.semantic(logits_t, y, torch.zeros(4, 10), 0.9),
                          F.cross_entropy(logits_t, y))
    own = torch.zeros(4, 10)
    own[0, 7] = 20.0  # only row 0 is confident, predicted class 7
    got = losses.semantic(logits_t, None, own, threshold=0.9)
    assert torch.allclose(got, F.cross_entropy(logits_t[:1], torch.tensor([7])))
    assert losses.semantic(logits_t, None, torch.zeros(4, 10), threshold=0.9) == 0


def test_two_way_domain_loss_equals_dann_binary_cross_entropy():
    torch.manual_seed(1)
    ls, lt = torch.randn(6, 2), torch.randn(6, 2)
    ours = losses.domain_adversarial([ls, lt])
    d_s, d_t = ls[:, 0] - ls[:, 1], lt[:, 0] - lt[:, 1]  # logit of "source"
    ref = (F.binary_cross_entropy_with_logits(d_s, torch.ones(6))
           + F.binary_cross_entropy_with_logits(d_t, torch.zeros(6)))
    assert torch.allclose(ours, ref, atol=1e-6)


def test_domain_loss_scale_does_not_grow_with_k():
    vals = [losses.domain_adversarial([torch.zeros(8, k)] * k) for k in (2, 3, 5)]
    # Uninformative logits: 2 * log K, i.e. the per-domain CE times the two-domain scale.
    for k, v in zip((2, 3, 5), vals):
        assert torch.allclose(v, torch.tensor(2 * math.log(k)))
        assert v.item() == pytest.approx(losses.adversarial_chance(k))


def test_mean_reduction_halves_the_two_domain_loss_and_its_chance_level():
    logits = [torch.randn(5, 2), torch.randn(7, 2)]
    summed = losses.domain_adversarial(logits, "sum")
    assert losses.domain_adversarial(logits, "mean").item() == pytest.approx(summed.item() / 2)
    assert losses.adversarial_chance(2, "mean") == pytest.approx(math.log(2))
