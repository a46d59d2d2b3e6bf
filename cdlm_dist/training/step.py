"""One optimisation step: the only place a gradient is taken, for every runner."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn
from torch.profiler import record_function

from cdlm_dist.config import Config
from cdlm_dist.losses import compute_losses
from cdlm_dist.model.grl import grl_coefficient


def beta_at(step: int, cfg: Config) -> float:
    """Linear KL warm-up from 0 to loss.beta over loss.beta_warmup_steps."""
    warm = cfg.loss.beta_warmup_steps
    return cfg.loss.beta * (min(1.0, step / warm) if warm > 0 else 1.0)


def lr_at(step: int, cfg: Config) -> float:
    """The learning rate at ``step`` under ``train.lr_schedule`` (a pure function: exact resume).

    "dann" anneals over progress p = step / steps, so its shape stretches with the budget; "inv"
    depends on the step alone, so a longer run keeps the same early schedule.
    """
    t = cfg.train
    if t.lr_schedule == "constant":
        return t.lr
    if t.lr_schedule == "inv":
        return t.lr / (1.0 + t.lr_decay_gamma * step) ** t.lr_decay_beta
    return t.lr / (1.0 + t.lr_decay_alpha * step / t.steps) ** t.lr_decay_beta


def grl_at(step: int, cfg: Config) -> float:
    """GRL coefficient at ``step``: warm-up over train.steps, or over loss.grl_horizon steps."""
    horizon = cfg.loss.grl_horizon or cfg.train.steps
    return grl_coefficient(step / horizon, cfg.loss.grl_gamma, cfg.loss.grl_max)


def step_generators(step: int, cfg: Config, rank: int = 0, device: torch.device | str = "cpu"
                    ) -> tuple[torch.Generator, torch.Generator]:
    """(pair_gen, noise_gen) of a step, seeded by the step: partners agree on every rank (CPU),
    noise differs per rank (on the batch's device), and a resumed run draws what it would have."""
    seed = cfg.train.seed * 1_000_003 + step
    return (torch.Generator().manual_seed(seed),
            torch.Generator(device=device).manual_seed(seed * 1009 + rank))


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """Adam, or SGD with momentum (the DANN recipes'); the lr is set per step by :func:`lr_at`."""
    t = cfg.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum,
                               nesterov=t.nesterov and t.momentum > 0,
                               weight_decay=t.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)


def active_domains(cfg: Config) -> list[int]:
    """Indices of the domains the model consumes: source-only never sees unlabelled data."""
    uses_unlabelled = cfg.model.use_discriminator or cfg.model.decoder != "none"
    return [k for k, d in enumerate(cfg.data.domains) if d.labelled or uses_unlabelled]


def autocast(device: torch.device, enabled: bool):
    return torch.autocast("cuda", dtype=torch.bfloat16) if enabled and device.type == "cuda" \
        else nullcontext()


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer,
               batch: list[tuple[torch.Tensor, torch.Tensor]], step: int, cfg: Config,
               pair_gen: torch.Generator | None = None,
               noise_gen: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Forward all active domains in one pass, take one optimiser step, return the loss terms.

    Values stay (detached) tensors on the device: converting to Python floats here would force a
    GPU sync every step; the loop averages them at log time.
    """
    model.train()
    active = active_domains(cfg)
    labelled = [cfg.data.domains[k].labelled for k in active]
    xs = [batch[k][0] for k in active]
    ys = [batch[k][1] if lab else None for k, lab in zip(active, labelled)]
    device = xs[0].device
    coeff = grl_at(step, cfg)
    with autocast(device, cfg.train.amp), record_function("forward"):
        out = model(xs, labelled, grl_coeff=coeff, pair_gen=pair_gen, noise_gen=noise_gen)
        total, terms = compute_losses(out, xs, ys, cfg.loss, beta_at(step, cfg))
    for group in optimizer.param_groups:  # a function of the step: resumes exactly
        group["lr"] = lr_at(step, cfg)
    optimizer.zero_grad(set_to_none=True)
    with record_function("backward"):  # named scopes: benchmarks/step_cost.py splits the cost
        total.backward()
    with record_function("optimizer"):
        optimizer.step()
    metrics = {f"loss/{k}": v.detach() for k, v in terms.items()}
    with torch.no_grad():
        accs = [(p.cls_logits.argmax(1) == ys[p.k]).float().mean() for p in out.pairs
                if p.cls_logits is not None]
        metrics["train/acc"] = torch.stack(accs).mean()
    return metrics
