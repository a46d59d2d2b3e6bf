"""CDLM: Cross-Domain Latent Modulation for K >= 2 domains (CDLM.md sections 2 and 4).

Read top to bottom, in the order data flows:

    h_k      = E(x_k)                      one shared encoder for every domain
    mu_k, logvar_k = heads(h_k)
    hbar_k   = standardise(h_k)            over the batch, so it can stand in for eps ~ N(0, I)
    z_k^(j)  = mu_k + sigma_k * noise      noise from domain j != k, per model.modulation
    xrec     = G_k(z_k^(j))                per-domain decoder (or a shared one + domain code)
    y_hat    = C(z_k^(j))                  classifier on the latent (C(mu) at test time)
    d_hat_k  = D(GRL(h_k))                 K-way domain discriminator behind the GRL

Which partners j each domain k takes is ``model.pairing``. With K = 2 every pairing gives the single
pair (s, t), (t, s), and the model is the two-domain CDLM. Everything a loss needs is computed in
:meth:`CDLM.forward`, one call, so DDP sees every parameter used once per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from cdlm_dist.config import Config
from cdlm_dist.model.grl import grad_reverse
from cdlm_dist.model.networks import ConvDecoder, DigitsEncoder, ResNet50Encoder, mlp
from cdlm_dist.model.sync_norm import batch_moments

STD_EPS = 1e-5


def standardise(h: torch.Tensor, sync: bool = False) -> torch.Tensor:
    """(h - mean) / std per dimension over the batch; over all ranks' batches when ``sync``."""
    mean, var, _ = batch_moments(h, [0], sync)
    return (h - mean) / torch.sqrt(var + STD_EPS)


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
        self.consistency = cfg.loss.consistency if cfg.loss.l_con > 0 else "none"
        self.sync_stats = cfg.train.sync_batchnorm

        if m.encoder == "digits":
            self.encoder = DigitsEncoder(d.channels, d.image_size, m.hidden_dim, m.latent_dim)
        else:
            self.encoder = ResNet50Encoder(m.latent_dim, m.hidden_dim, m.pretrained)
        self.mu_head = nn.Linear(m.latent_dim, m.latent_dim)
        self.logvar_head = nn.Linear(m.latent_dim, m.latent_dim) if m.variational else None
        self.decoder_kind = m.decoder
        if m.decoder == "per_domain":
            self.decoders = nn.ModuleList(
                ConvDecoder(m.latent_dim, d.channels, d.image_size, m.decoder_width)
                for _ in range(num_domains))
        elif m.decoder == "shared":
            self.decoders = nn.ModuleList(
                [ConvDecoder(m.latent_dim, d.channels, d.image_size, m.decoder_width, num_domains)])
        else:
            self.decoders = nn.ModuleList()
        self.classifier = mlp(m.latent_dim, m.hidden_dim, num_classes)
        self.discriminator = (mlp(m.latent_dim, m.discriminator_hidden, num_domains)
                              if m.use_discriminator else None)

    # ---- pieces used at train and test time -------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, mu) of a batch of images."""
        h = self.encoder(x)
        return h, self.mu_head(h)

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
        if self.modulation == "swap":
            return other, zero
        eps = torch.randn(other.shape, generator=noise_gen, device=other.device, dtype=other.dtype)
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
        h_all = self.encoder(torch.cat(xs))  # one encoder call: shared BatchNorm statistics
        mu_all = self.mu_head(h_all)
        h, mu = list(h_all.split(sizes)), list(mu_all.split(sizes))
        if self.logvar_head is not None:
            logvar = list(self.logvar_head(h_all).split(sizes))
        else:
            logvar = [None] * len(xs)
        out = ForwardOutput(h=h, mu=mu, logvar=logvar, pairs=[])

        hbar = [standardise(hk, self.sync_stats) for hk in h] if self.variational else []
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
                    pair.rec_logits = self.decode(z, k)
                if labelled[k]:
                    pair.cls_logits = self.classify(z)
                self._consistency_terms(pair, mu[k], len(xs))
                out.pairs.append(pair)

        if self.discriminator is not None:
            out.domain_logits = [self.discriminator(grad_reverse(hk, grl_coeff)) for hk in h]
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
