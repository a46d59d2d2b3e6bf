"""The CDLM network: the modulation really uses the other domain, every parameter is used
(DDP needs it), and the K-domain model reduces to the two-domain equations of docs/method.md."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cdlm_dist.config import DomainConfig, compose
from cdlm_dist.losses import compute_losses
from cdlm_dist.model import build_model, standardise
from cdlm_dist.model.cdlm import participation_ratio, whiten
from cdlm_dist.training.step import active_domains, beta_at

B, K2 = 8, 2


def _cfg(*overrides):
    return compose(["train=smoke", *overrides])


def _batch(k=2, channels=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.rand(B, channels, 28, 28, generator=g) for _ in range(k)]
    ys = [torch.randint(10, (B,), generator=g) for _ in range(k)]
    return xs, ys


def _latent_grad_wrt_other_domain(cfg) -> torch.Tensor:
    """d(sum z_s)/d(x_t) with BatchNorm in eval mode, so only the modulation couples domains."""
    torch.manual_seed(0)
    model = build_model(cfg, 2, 10).eval()
    xs, _ = _batch()
    xs[1].requires_grad_(True)
    out = model(xs, [True, False], noise_gen=torch.Generator().manual_seed(0))
    z_s = next(p.z for p in out.pairs if p.k == 0)
    z_s.sum().backward()
    return xs[1].grad


def test_swap_latent_is_mu_plus_sigma_times_standardised_other_representation():
    cfg = _cfg()
    model = build_model(cfg, 2, 10).eval()
    xs, _ = _batch()
    out = model(xs, [True, False])
    for p in out.pairs:
        ref = out.mu[p.k] + torch.exp(0.5 * out.logvar[p.k]) * standardise(out.h[p.j])
        assert torch.allclose(p.z, ref, atol=1e-6)


MODULATIONS = [["model.modulation=swap"], ["model.modulation=whiten"],
               ["model.modulation=mix", "model.modulation_alpha=0.5"],
               ["model.modulation=additive", "model.modulation_alpha=0.3"],
               ["model.modulation=shift"]]


@pytest.mark.parametrize("model_name", ["digits", "lenet"])
@pytest.mark.parametrize("modulation", MODULATIONS, ids=lambda o: "-".join(o))
def test_modulated_latent_has_a_gradient_path_to_the_other_domain(modulation, model_name):
    grad = _latent_grad_wrt_other_domain(_cfg(f"model={model_name}", *modulation,
                                              "model.modulation_grad=true"))
    assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize("overrides", [["model.modulation=none", "loss.l_con=0"],
                                       ["model.modulation=mix", "model.modulation_alpha=0.0"]]
                         + [[*m, "model.modulation_grad=false"] for m in MODULATIONS],
                         ids=lambda o: "-".join(o))
def test_no_gradient_path_without_modulation_or_when_detached(overrides):
    grad = _latent_grad_wrt_other_domain(_cfg("model=lenet", *overrides))
    assert grad is None or grad.abs().sum() == 0


def test_mix_noise_has_unit_variance_and_the_chosen_share_of_hbar():
    """eps = sqrt(1 - a^2) n + a hbar: unit variance per dimension, correlation a with hbar."""
    cfg = _cfg("model=lenet", "model.modulation=mix", "model.modulation_alpha=0.6")
    model = build_model(cfg, 2, 10).eval()
    n = 4096
    hbar = [standardise(torch.randn(n, 64)), standardise(torch.randn(n, 64))]
    eps, shift = model._noise(0, 1, hbar, torch.Generator().manual_seed(0))
    assert torch.equal(shift, torch.zeros_like(shift))
    assert eps.var(0).mean().item() == pytest.approx(1.0, abs=0.05)
    corr = ((eps - eps.mean(0)) * hbar[1]).mean(0) / eps.std(0)
    assert corr.mean().item() == pytest.approx(0.6, abs=0.03)


def test_whitened_hbar_has_identity_covariance_where_plain_standardising_does_not():
    g = torch.Generator().manual_seed(0)
    mixing = torch.randn(8, 8, generator=g)
    h = torch.randn(512, 8, generator=g) @ mixing * 3.0 + 5.0  # correlated, shifted, scaled
    cov = lambda x: (x - x.mean(0)).T @ (x - x.mean(0)) / len(x)  # noqa: E731
    assert torch.allclose(cov(whiten(h)), torch.eye(8), atol=1e-2)
    off_diagonal = cov(standardise(h)) - torch.diag(torch.diagonal(cov(standardise(h))))
    assert off_diagonal.abs().max() > 0.2


def test_participation_ratio_counts_the_directions_a_representation_spans():
    g = torch.Generator().manual_seed(0)
    assert participation_ratio(torch.randn(4000, 16, generator=g)) == pytest.approx(16, rel=0.05)
    rank2 = torch.randn(4000, 2, generator=g) @ torch.randn(2, 16, generator=g)
    assert participation_ratio(rank2 + 1e-3 * torch.randn(4000, 16, generator=g)) < 2.5


def test_sigma_cap_bounds_sigma_and_logvar_init_sets_the_starting_sigma():
    cfg = _cfg("model=lenet", "model.sigma_max=0.5", "model.logvar_init=-2.0")
    model = build_model(cfg, 2, 10).eval()
    xs, _ = _batch()
    with torch.no_grad():
        model.logvar_head.weight.zero_()  # logvar = bias alone, before the cap
        _, _, logvar = model.posterior(xs[0])
        assert torch.all(torch.exp(0.5 * logvar) < 0.5)
        model.logvar_head.bias.fill_(10.0)  # far above the cap: sigma saturates at sigma_max
        _, _, logvar = model.posterior(xs[0])
    assert torch.allclose(torch.exp(0.5 * logvar), torch.full_like(logvar, 0.5), atol=1e-3)
    uncapped = build_model(_cfg("model=lenet", "model.logvar_init=-2.0"), 2, 10)
    assert torch.allclose(uncapped.logvar_head.bias, torch.full((64,), -2.0))


def _pieces_grad(cfg, loss_of):
    """Gradients of mu_head and logvar_head after backpropagating loss_of(forward output)."""
    torch.manual_seed(0)
    model = build_model(cfg, 2, 10).train()
    xs, _ = _batch()
    out = model(xs, [True, False], noise_gen=torch.Generator().manual_seed(0))
    loss_of(model, out).backward()
    return model


def test_classifier_on_mu_sees_no_sampling_noise():
    """classify_on=mu: the classification loss has no gradient into the log-variance head."""
    cls = lambda model, out: out.pairs[0].cls_logits.sum()  # noqa: E731
    on_z = _pieces_grad(_cfg("model=lenet"), cls)
    on_mu = _pieces_grad(_cfg("model=lenet", "model.classify_on=mu"), cls)
    assert on_z.logvar_head.weight.grad.abs().sum() > 0
    assert on_mu.logvar_head.weight.grad is None or on_mu.logvar_head.weight.grad.abs().sum() == 0


def test_grl_on_mu_sends_the_adversarial_gradient_through_the_mu_head():
    adv = lambda model, out: sum(d.sum() for d in out.domain_logits)  # noqa: E731
    on_h = _pieces_grad(_cfg("model=lenet"), adv)
    on_mu = _pieces_grad(_cfg("model=lenet", "model.grl_on=mu"), adv)
    assert on_h.mu_head.weight.grad is None
    assert on_mu.mu_head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("overrides", [
    ["method=cdlm"], ["method=cdlm", "loss.consistency=semantic"],
    ["method=cdlm", "loss.consistency=cycle"], ["method=cdlm", "model.decoder=shared"],
    ["method=vae"], ["method=dann"], ["method=source_only"], ["model=lenet"],
    ["model=lenet", "model.classify_on=mu", "model.grl_on=mu", "model.sigma_max=0.5"],
    ["model=lenet", "model.modulation=whiten"], ["model=lenet", "method=dann", "model.discriminator_layers=2", "model.discriminator_norm=true"],
    ["model=lenet", "model.decoder=shared"]])
def test_every_parameter_gets_a_gradient(overrides):
    """DDP without find_unused_parameters fails if any parameter misses the graph."""
    cfg = _cfg(*overrides)
    model = build_model(cfg, 2, 10).train()
    xs, ys = _batch()
    active = active_domains(cfg)
    labelled = [cfg.data.domains[k].labelled for k in active]
    out = model([xs[k] for k in active], labelled, pair_gen=torch.Generator().manual_seed(0))
    total, _ = compute_losses(out, [xs[k] for k in active],
                              [ys[k] if lab else None for k, lab in zip(active, labelled)],
                              cfg.loss, beta=1.0)
    total.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def _reference_two_domain_loss(model, xs, ys_s, cfg, beta):
    """docs/method.md sections 2-3 written out for two domains, independently of compute_losses."""
    x_s, x_t = xs
    h = model.encoder(torch.cat(xs))
    h_s, h_t = h[:B], h[B:]
    mu_s, mu_t = model.mu_head(h_s), model.mu_head(h_t)
    lv_s, lv_t = model.logvar_head(h_s), model.logvar_head(h_t)
    hb_s, hb_t = standardise(h_s), standardise(h_t)
    z_s = mu_s + torch.exp(0.5 * lv_s) * hb_t
    z_t = mu_t + torch.exp(0.5 * lv_t) * hb_s
    n_pix = x_s[0].numel()
    rec = (F.binary_cross_entropy_with_logits(model.decode(z_s, 0), x_s)
           + F.binary_cross_entropy_with_logits(model.decode(z_t, 1), x_t))
    kl = sum(0.5 * (m.pow(2) + lv.exp() - 1 - lv).sum(1).mean() / n_pix
             for m, lv in ((mu_s, lv_s), (mu_t, lv_t)))
    cls = F.cross_entropy(model.classify(z_s), ys_s)
    d_s, d_t = model.discriminator(h_s), model.discriminator(h_t)
    adv = (F.binary_cross_entropy_with_logits(d_s[:, 0] - d_s[:, 1], torch.ones(B))
           + F.binary_cross_entropy_with_logits(d_t[:, 0] - d_t[:, 1], torch.zeros(B)))
    con = sum((torch.sigmoid(model.decode(z, d)) - torch.sigmoid(model.decode(hb, d))).abs().mean()
              for z, hb, d in ((z_s, hb_s, 0), (z_t, hb_t, 1)))
    L = cfg.loss
    return L.l_rec * rec + beta * kl + L.l_cls * cls + L.l_adv * adv + L.l_con * con


@pytest.mark.parametrize("pairing", ["all_pairs", "random_partner", "mean_of_others"])
def test_k_domain_model_reduces_to_two_domain_cdlm(pairing):
    """Same batches, same weights: loss values and every gradient agree (issue: K = 2)."""
    cfg = _cfg(f"model.pairing={pairing}", "loss.l_adv=0.7", "loss.l_con=0.3")
    torch.manual_seed(0)
    model = build_model(cfg, 2, 10).train()
    xs, ys = _batch()
    beta = beta_at(3, cfg)

    out = model(xs, [True, False], grl_coeff=1.0, pair_gen=torch.Generator().manual_seed(0))
    ours, _ = compute_losses(out, xs, [ys[0], None], cfg.loss, beta)
    model.zero_grad()
    ours.backward()
    g_ours = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    ref = _reference_two_domain_loss(model, xs, ys[0], cfg, beta)
    ref.backward()
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        if n.startswith("discriminator"):
            # the reference has no GRL: the critic's own gradient is the same, and the encoder's
            # adversarial part is reversed, so compare the critic only
            assert torch.allclose(g_ours[n], p.grad, atol=1e-6), n


def test_grl_reverses_only_the_adversarial_gradient_into_the_encoder():
    cfg = _cfg("loss.l_rec=0", "loss.beta=0", "loss.l_cls=0", "loss.l_con=0", "loss.l_adv=1")
    torch.manual_seed(0)
    model = build_model(cfg, 2, 10).train()
    xs, ys = _batch()
    out = model(xs, [True, False], grl_coeff=0.5)
    total, _ = compute_losses(out, xs, [ys[0], None], cfg.loss, beta=0.0)
    enc = model.encoder.head[-1].weight
    g_rev = torch.autograd.grad(total, enc, retain_graph=True)[0]
    # Without the GRL the same loss pulls the encoder the other way, twice as hard.
    direct = sum(F.cross_entropy(model.discriminator(hk), torch.full((B,), k))
                 for k, hk in enumerate(out.h))
    g_dir = torch.autograd.grad(direct, enc)[0]
    assert torch.allclose(g_rev, -0.5 * g_dir, atol=1e-6)


def test_three_domain_model_pairs_and_discriminates_k_ways():
    cfg = _cfg()
    cfg.data.domains.append(DomainConfig(name="mnistm_synth", labelled=False))
    model = build_model(cfg, 3, 10).train()
    xs, ys = _batch(3)
    out = model(xs, [True, False, False])
    assert sorted((p.k, p.j) for p in out.pairs) == [(k, j) for k in range(3)
                                                      for j in range(3) if j != k]
    assert all(lg.shape == (B, 3) for lg in out.domain_logits)
