"""CDLM: Cross-Domain Latent Modulation for K >= 2 domains (docs/method.md, sections 2 and 4).

Read top to bottom, in the order data flows:

    h_k      = E(x_k)                      one shared encoder for every domain
    mu_k, logvar_k = heads(h_k)            logvar optionally capped (model.sigma_max)
    hbar_k   = standardise(h_k)            over the batch, so it can stand in for eps ~ N(0, I)
                                           (or whitened: model.modulation=whiten)
    z_k^(j)  = mu_k + sigma_k * noise      noise from domain j != k, per model.modulation
    xrec     = G_k(z_k^(j))                per-domain decoder (or a shared one + domain code)
    y_hat    = C(z_k^(j)) or C(mu_k)       classifier (model.classify_on); C(mu) at test time
    d_hat_k  = D(GRL(h_k)) or D(GRL(mu_k)) K-way domain discriminator (model.grl_on)

Which partners j each domain k takes is ``model.pairing``. With K = 2 every pairing gives the single
pair (s, t), (t, s), and the model is the two-domain CDLM. Everything a loss needs is computed in
:meth:`CDLM.forward`, one call, so DDP sees every parameter used once per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from cdlm_dist.config import Config
from cdlm_dist.model.grl import grad_reverse
from cdlm_dist.model.networks import build_decoder, build_encoder, mlp
from cdlm_dist.model.sync_norm import batch_moments, distributed_active, sync_batch_norm

STD_EPS = 1e-5
WHITEN_EPS = 1e-3  # added to the covariance's eigenvalues, relative to their mean


def standardise(h: torch.Tensor, sync: bool = False) -> torch.Tensor:
    """(h - mean) / std per dimension over the batch; over all ranks' batches when ``sync``
    (there it is an affine-free synchronised batch norm: one fused pass, one collective)."""
    if sync and distributed_active():
        return sync_batch_norm(h, None, None, STD_EPS)[0]
    mean, var, _ = batch_moments(h, [0], sync)
    return (h - mean) / torch.sqrt(var + STD_EPS)


def standardise_each(hs: list[torch.Tensor], sync: bool = False) -> list[torch.Tensor]:
    """:func:`standardise` of each domain's batch. Across ranks the domains' features, side by
    side, are the channels of one synchronised batch norm: the same statistics per domain, and
    one collective for all domains instead of one each (the batches must be of one size, as
    :meth:`CDLM.forward` requires)."""
    if not (sync and distributed_active()):
        return [standardise(h, sync) for h in hs]
    return list(standardise(torch.cat(hs, 1), sync).split(hs[0].shape[1], 1))


def whiten(h: torch.Tensor, sync: bool = False) -> torch.Tensor:
    """h centred and decorrelated over the batch (ZCA), so its covariance is that of N(0, I)
    noise on the directions the batch spans. The whitening matrix is treated as a constant
    (no gradient through the eigendecomposition, which is unstable for close eigenvalues);
    gradients flow through h. Over all ranks' batches when ``sync``."""
    mean, _, _ = batch_moments(h, [0], sync)
    centred = h - mean
    with torch.no_grad():
        c = centred.detach().float()
        second = c.T @ c
        count = torch.tensor(float(len(c)), device=c.device)
        if sync and distributed_active():
            import torch.distributed as dist

            dist.all_reduce(second)
            dist.all_reduce(count)
        cov = second / count
        evals, evecs = torch.linalg.eigh(cov)
        evals = evals.clamp_min(0) + WHITEN_EPS * evals.clamp_min(0).mean().clamp_min(STD_EPS)
        w = (evecs * evals.rsqrt()) @ evecs.T
    return centred @ w.to(h.dtype)


def participation_ratio(h: torch.Tensor) -> float:
    """Effective rank of h's correlation matrix R: tr(R)^2 / tr(R^2), between 1 and dim(h).

    hbar (h standardised) has this covariance; i.i.d. N(0, I) noise has ratio ~dim(h)."""
    x = h.double()
    x = (x - x.mean(0)) / x.std(0).clamp_min(STD_EPS)
    r = (x.T @ x) / len(x)
    return float(torch.diagonal(r).sum() ** 2 / (r * r).sum())


def partners(k: int, num_domains: int, pairing: str, generator: torch.Generator | None
             ) -> list[int]:
    """Domains whose representation modulates domain k this step (-1 = mean of the others)."""
    others = [j for j in range(num_domains) if j != k]
    if pairing == "all_pairs":
        return others
    if pairing == "random_partner":
        pick = int(torch.randint(len(others), (1,), generator=generator).item())
        return [others[pick]]
    if pairing == "mean_of_others":
        return [others[0]] if len(others) == 1 else [-1]
    raise ValueError(f"unknown pairing {pairing!r}")


@dataclass
class Pair:
    """Outputs for domain k's latent modulated by partner j (j = -1: mean of the others)."""

    k: int
    j: int
    z: torch.Tensor
    rec_logits: torch.Tensor | None = None
    cls_logits: torch.Tensor | None = None
    cycle_h: torch.Tensor | None = None  # E(G_j(z)) for the "cycle" consistency
    translated_cls: torch.Tensor | None = None  # C(mu(E(G_j(mu_k)))) for "semantic"


@dataclass
class ForwardOutput:
    h: list[torch.Tensor]
    mu: list[torch.Tensor]
    logvar: list[torch.Tensor | None]
    pairs: list[Pair]
    domain_logits: list[torch.Tensor] = field(default_factory=list)
    prior_rec_logits: list[torch.Tensor | None] = field(default_factory=list)  # G_k(hbar_k)
    mu_cls_logits: list[torch.Tensor | None] = field(default_factory=list)  # C(mu_k), semantic


class CDLM(nn.Module):
    """The shared encoder, heads, decoders, classifier and discriminator of CDLM."""

    def __init__(self, cfg: Config, num_domains: int, num_classes: int) -> None:
        super().__init__()
        m, d = cfg.model, cfg.data
        self.num_domains = num_domains
        self.num_classes = num_classes
        self.variational = m.variational
        self.modulation = m.modulation
        self.alpha = m.modulation_alpha
        self.modulation_grad = m.modulation_grad
        self.pairing = m.pairing
        self.classify_on = m.classify_on
        self.grl_on = m.grl_on
        self.sigma_max = m.sigma_max
        self.consistency = cfg.loss.consistency if cfg.loss.l_con > 0 else "none"
        self.sync_stats = cfg.train.sync_batchnorm

        self.encoder = build_encoder(m, d)
        self.mu_head = nn.Linear(m.latent_dim, m.latent_dim)
        self.logvar_head = nn.Linear(m.latent_dim, m.latent_dim) if m.variational else None
        if self.logvar_head is not None:
            nn.init.constant_(self.logvar_head.bias, m.logvar_init)
        self.decoder_kind = m.decoder
        if m.decoder == "per_domain":
            self.decoders = nn.ModuleList(build_decoder(m, d) for _ in range(num_domains))
        elif m.decoder == "shared":
            self.decoders = nn.ModuleList([build_decoder(m, d, num_domains)])
        else:
            self.decoders = nn.ModuleList()
        self.classifier = mlp(m.latent_dim, m.hidden_dim, num_classes)
        self.discriminator = (mlp(m.latent_dim, m.discriminator_hidden, num_domains,
                                  m.discriminator_layers, m.discriminator_norm)
                              if m.use_discriminator else None)

    # ---- pieces used at train and test time -------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, mu) of a batch of images."""
        h = self.encoder(x)
        return h, self.mu_head(h)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(h, mu, logvar) of a batch of images; logvar is None for a deterministic model."""
        h, mu = self.encode(x)
        return h, mu, self.log_variance(h) if self.logvar_head is not None else None

    def log_variance(self, h: torch.Tensor) -> torch.Tensor:
        """logvar head, softly capped at 2 log(model.sigma_max) when a cap is set."""
        raw = self.logvar_head(h)
        if self.sigma_max <= 0:
            return raw
        cap = 2.0 * math.log(self.sigma_max)
        return cap - F.softplus(cap - raw)

    def decode(self, z: torch.Tensor, domain: int) -> torch.Tensor:
        """Image logits of latent z rendered in ``domain``'s style."""
        if self.decoder_kind == "shared":
            code = F.one_hot(torch.full((len(z),), domain, device=z.device), self.num_domains)
            return self.decoders[0](z, code.to(z.dtype))
        return self.decoders[domain](z)

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        return self.classifier(z)

    def translate(self, x: torch.Tensor, to_domain: int) -> torch.Tensor:
        """x -> G_to(mu(x)), as images in [0, 1]."""
        return torch.sigmoid(self.decode(self.encode(x)[1], to_domain))

    # ---- the training forward pass ------------------------------------------------------------
    def _noise(self, k: int, j: int, hbar: list[torch.Tensor], noise_gen: torch.Generator | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, shift) so that z = mu + sigma * eps + shift, per model.modulation."""
        other = hbar[j] if j >= 0 else standardise(
            torch.stack([hbar[i] for i in range(len(hbar)) if i != k]).mean(0), self.sync_stats)
        if not self.modulation_grad:
            other = other.detach()
        zero = torch.zeros_like(other)
        if self.modulation in ("swap", "whiten"):  # whiten: hbar is already decorrelated
            return other, zero
        eps = torch.randn(other.shape, generator=noise_gen, device=other.device, dtype=other.dtype)
        if self.modulation == "mix":
            return (1.0 - self.alpha ** 2) ** 0.5 * eps + self.alpha * other, zero
        if self.modulation == "additive":
            return eps + self.alpha * other, zero
        if self.modulation == "shift":
            return eps, self.alpha * other
        return eps, zero  # "none": the plain VAE

    def forward(self, xs: list[torch.Tensor], labelled: list[bool], grl_coeff: float = 1.0,
                pair_gen: torch.Generator | None = None,
                noise_gen: torch.Generator | None = None) -> ForwardOutput:
        """One pass over a list of per-domain batches (all of the same size).

        ``pair_gen`` (CPU) picks random partners and must agree across ranks; ``noise_gen`` (on the
        batch's device) draws eps and may differ per rank. Both seeded per step, so a resumed run
        draws what it would have drawn.
        """
        sizes = [len(x) for x in xs]
        with record_function("encoder"):  # named scopes: benchmarks/step_cost.py splits the cost
            h_all = self.encoder(torch.cat(xs))  # one encoder call: shared BatchNorm statistics
        mu_all = self.mu_head(h_all)
        h, mu = list(h_all.split(sizes)), list(mu_all.split(sizes))
        if self.logvar_head is not None:
            logvar = list(self.log_variance(h_all).split(sizes))
        else:
            logvar = [None] * len(xs)
        out = ForwardOutput(h=h, mu=mu, logvar=logvar, pairs=[])

        if not self.variational:
            hbar = []
        elif self.modulation == "whiten":
            hbar = [whiten(hk, self.sync_stats) for hk in h]
        else:
            hbar = standardise_each(h, self.sync_stats)
        for k in range(len(xs)):
            ks = [k] if not self.variational else partners(k, len(xs), self.pairing, pair_gen)
            for j in ks:
                if self.variational:
                    eps, shift = self._noise(k, j, hbar, noise_gen)
                    z = mu[k] + torch.exp(0.5 * logvar[k]) * eps + shift
                else:
                    z = mu[k]
                pair = Pair(k=k, j=j, z=z)
                if self.decoders:
                    with record_function("decoders"):
                        pair.rec_logits = self.decode(z, k)
                if labelled[k]:
                    pair.cls_logits = self.classify(z if self.classify_on == "z" else mu[k])
                with record_function("consistency"):
                    self._consistency_terms(pair, mu[k], len(xs))
                out.pairs.append(pair)

        if self.discriminator is not None:  # one call on all domains, as the encoder
            seen = h_all if self.grl_on == "h" else mu_all
            out.domain_logits = list(self.discriminator(grad_reverse(seen, grl_coeff)).split(sizes))
        with record_function("consistency"):
            out.prior_rec_logits = [
                self.decode(hbar[k], k) if self.consistency == "recon_vs_prior" else None
                for k in range(len(xs))]
        out.mu_cls_logits = [
            self.classify(mu[k]) if self.consistency == "semantic" else None
            for k in range(len(xs))]
        return out

    def _consistency_terms(self, pair: Pair, mu_k: torch.Tensor, num_domains: int) -> None:
        """Re-encode translations for the "cycle" and "semantic" consistency variants."""
        if self.consistency not in ("cycle", "semantic"):
            return
        target = pair.j if pair.j >= 0 else (pair.k + 1) % num_domains
        if self.consistency == "cycle":
            pair.cycle_h = self.encoder(torch.sigmoid(self.decode(pair.z, target)))
        else:
            _, mu_t = self.encode(torch.sigmoid(self.decode(mu_k, target)))
            pair.translated_cls = self.classify(mu_t)


def unwrap(model: nn.Module) -> CDLM:
    """The CDLM inside a DDP wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def build_model(cfg: Config, num_domains: int, num_classes: int) -> CDLM:
    return CDLM(cfg, num_domains, num_classes)
