"""CDLM's loss terms (docs/method.md section 3) as small functions, and their weighted sum.

Units [ours]: the reconstruction and KL terms are the per-image ELBO divided by the number of
pixels (so beta = 1 is the ELBO's own balance at any image size); classification and domain
terms are mean cross-entropies. Normalisation across K domains [ours]: per-domain terms are
averaged over that domain's partners, then summed over domains and scaled by 2 / K, so that
K = 2 gives exactly ``sum_d`` of section 3 and the scale does not grow with K.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cdlm_dist.config import LossConfig
from cdlm_dist.model.cdlm import ForwardOutput

REFERENCE_DOMAINS = 2  # the two-domain CDLM whose scale every K keeps


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over dimensions, per row."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


def reconstruction(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Bernoulli negative log-likelihood of images in [0, 1], per pixel, averaged over the batch."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="mean")


def recon_vs_prior(rec_logits: torch.Tensor, prior_logits: torch.Tensor) -> torch.Tensor:
    """|G(z) - G(hbar)|_1: the decoded modulated latent agrees with the representation's sample."""
    return (torch.sigmoid(rec_logits) - torch.sigmoid(prior_logits)).abs().mean()


def cycle(h_back: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """E(G_j(z_k)) stays close to h_k (mean squared error over dimensions)."""
    return F.mse_loss(h_back, h)


def semantic(translated_logits: torch.Tensor, labels: torch.Tensor | None,
             own_logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """Classifier agrees between an image and its translation: source labels, or confident
    pseudo-labels (max probability >= threshold) of the untranslated image for unlabelled data."""
    if labels is None:
        prob, labels = own_logits.detach().softmax(1).max(1)
        mask = prob >= threshold
        per_row = F.cross_entropy(translated_logits, labels, reduction="none")
        return (per_row * mask).sum() / mask.sum().clamp_min(1)
    return F.cross_entropy(translated_logits, labels)


def domain_adversarial(domain_logits: list[torch.Tensor], reduction: str = "sum") -> torch.Tensor:
    """K-way cross-entropy of the discriminator, per domain mean, then summed over domains and
    scaled by 2 / K ("sum") or averaged over domains ("mean", the common DANN form).

    With K = 2, "sum" equals BCE(D(h_s), 1) + BCE(D(h_t), 0) with D's logit = l_0 - l_1, and
    "mean" is half of that.
    """
    terms = [F.cross_entropy(lg, torch.full((len(lg),), k, device=lg.device, dtype=torch.long))
             for k, lg in enumerate(domain_logits)]
    scale = REFERENCE_DOMAINS if reduction == "sum" else 1
    return torch.stack(terms).sum() * (scale / len(domain_logits))


def adversarial_chance(num_domains: int, reduction: str = "sum") -> float:
    """Value of :func:`domain_adversarial` when D predicts every domain with probability 1/K.

    A balanced min-max game keeps the logged domain loss near this value; far above it the
    encoder is flipping the discriminator, far below it the discriminator wins (see
    :func:`cdlm_dist.experiment.adversarial_gap`).
    """
    return (REFERENCE_DOMAINS if reduction == "sum" else 1) * math.log(num_domains)


def _per_domain(values: list[tuple[int, torch.Tensor]], num_domains: int) -> torch.Tensor:
    """Average each domain's values over its partners, sum over domains, scale by 2 / K."""
    total = values[0][1].new_zeros(())
    for k in range(num_domains):
        mine = [v for d, v in values if d == k]
        if mine:
            total = total + torch.stack(mine).mean()
    return total * (REFERENCE_DOMAINS / num_domains)


def compute_losses(out: ForwardOutput, xs: list[torch.Tensor], ys: list[torch.Tensor | None],
                   cfg: LossConfig, beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted total loss and each (unweighted) term, from one forward pass.

    ``ys[k]`` is None for an unlabelled domain. Every computed output enters the total (weight 0
    included) so DDP sees every parameter that took part in the forward pass.
    """
    K = len(xs)
    terms: dict[str, torch.Tensor] = {}
    n_pixels = xs[0][0].numel()

    per_labelled: dict[int, list[torch.Tensor]] = {}
    for p in out.pairs:
        if p.cls_logits is not None:
            per_labelled.setdefault(p.k, []).append(F.cross_entropy(p.cls_logits, ys[p.k]))
    terms["cls"] = torch.stack([torch.stack(v).mean() for v in per_labelled.values()]).mean()
    total = cfg.l_cls * terms["cls"]

    if out.pairs[0].rec_logits is not None:
        rec = [(p.k, reconstruction(p.rec_logits, xs[p.k])) for p in out.pairs]
        terms["rec"] = _per_domain(rec, K)
        total = total + cfg.l_rec * terms["rec"]
    if out.logvar[0] is not None:
        kl = [(k, kl_standard_normal(out.mu[k], out.logvar[k]).mean() / n_pixels) for k in range(K)]
        terms["kl"] = _per_domain(kl, K)
        total = total + beta * terms["kl"]
    if out.domain_logits:
        terms["adv"] = domain_adversarial(out.domain_logits, cfg.adv_reduction)
        total = total + cfg.l_adv * terms["adv"]

    con: list[tuple[int, torch.Tensor]] = []
    if any(r is not None for r in out.prior_rec_logits):
        con = [(p.k, recon_vs_prior(p.rec_logits, out.prior_rec_logits[p.k])) for p in out.pairs]
    elif out.pairs[0].cycle_h is not None:
        con = [(p.k, cycle(p.cycle_h, out.h[p.k])) for p in out.pairs]
    elif out.pairs[0].translated_cls is not None:
        con = [(p.k, semantic(p.translated_cls, ys[p.k], out.mu_cls_logits[p.k],
                              cfg.pseudo_label_threshold)) for p in out.pairs]
    if con:
        terms["con"] = _per_domain(con, K)
        total = total + cfg.l_con * terms["con"]
    terms["total"] = total
    return total, terms


__all__ = ["adversarial_chance", "compute_losses", "cycle", "domain_adversarial", "kl_standard_normal",
           "recon_vs_prior", "reconstruction", "semantic"]
