"""The training loop every runner uses: resume, step, log, evaluate, select, checkpoint.

Model selection is label-free (:mod:`cdlm_dist.training.selection`): an evaluation's
``eval_score`` is the score of the validator ``train.select_by`` names (by default the mean
accuracy on the labelled domains' held-out validation data); every validator's score is recorded
beside it. Target test accuracy is recorded at every evaluation, but only to report it.

Every training row also carries each rank's RSS at its start, when its data had loaded, and at
its peak (:mod:`cdlm_dist.training.memory`, the ``sys/`` keys): what a worker held, measured.

Everything the driver needs after training travels in the checkpoint state, not in files that
rank 0 wrote: the weights, the selection, the evaluation history and the logged rows (losses and
evaluations, each with its wall time). So a Ray driver on another node than rank 0 rebuilds the
same run directory as a local run (metrics.jsonl on rank 0 is only a live view).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from omegaconf import OmegaConf

from cdlm_dist.config import Config
from cdlm_dist.data.domains import DomainData
from cdlm_dist.data.streams import MultiDomainStream
from cdlm_dist.evaluation.accuracy import Predictions, predict, test_stats
from cdlm_dist.evaluation.validators import EvalPass, score_all, validator_key
from cdlm_dist.model.cdlm import CDLM, build_model
from cdlm_dist.model.sync_norm import convert_sync_batchnorm
from cdlm_dist.tracking import LiveTracking, open_live
from cdlm_dist.training.checkpoint import rng_state, set_rng_state
from cdlm_dist.training.context import METRICS_LOG, RunContext, read_log
from cdlm_dist.training.memory import memory_row, peak_rss_mb
from cdlm_dist.training.selection import EVAL_SCORE, Selection, progress_metrics
from cdlm_dist.training.step import build_optimizer, step_generators, train_step

FAULT_MARKER = ".fault_injected"


class InjectedFault(RuntimeError):
    """Raised once at train.fail_at_step to test recovery."""


@dataclass
class TrainResult:
    """What a runner hands back to the driver (from rank 0's final checkpoint under Ray)."""

    final_state: dict[str, torch.Tensor]  # weights after the last step
    selected_state: dict[str, torch.Tensor]  # weights at the best label-free score
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per evaluation
    log: list[dict[str, float]] = field(default_factory=list)  # the rows of metrics.jsonl
    step: int = 0

    @classmethod
    def from_state(cls, state: dict) -> TrainResult:
        """The result a (final) checkpoint state describes."""
        selection = Selection.from_checkpoint(state["best"])
        return cls(final_state=state["model"], selected_state=selection.state or state["model"],
                   history=list(state["history"]), log=list(state.get("log", [])),
                   step=state["step"])


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def evaluate_in_training(model: CDLM, domains: list[DomainData], cfg: Config,
                         ctx: RunContext) -> dict[str, float]:
    """Validation accuracy of labelled domains, :func:`test_stats` (every domain's test
    accuracy, each unlabelled one's IM) and, from the same pass, every label-free validator's
    score (``validator/<name>``); ``eval_score`` is the one ``train.select_by`` names."""
    out: dict[str, float] = {}
    sources = []
    for d, spec in zip(domains, cfg.data.domains):
        if spec.labelled and d.val is not None:
            pred = predict(model, d.val, cfg.data.eval_batch_size, ctx.device, ctx.rank,
                           ctx.world_size, ctx.all_reduce_sum, keep=True)
            out[f"val_acc/{d.name}"] = pred.acc
            sources.append(pred)
    out[EVAL_SCORE] = math.nan  # set below; keeps its place among the keys
    targets: dict[str, Predictions] = {}
    out |= test_stats(model, domains, cfg.data.domains, cfg.data.eval_batch_size, ctx.device,
                      ctx.rank, ctx.world_size, ctx.all_reduce_sum, kept=targets)
    scores = score_all(EvalPass(sources, list(targets.values()), domains[0].num_classes))
    out[EVAL_SCORE] = scores[validator_key(cfg.train.select_by)]
    return out | scores


def _cpu_state(model: CDLM) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _resumed_log(state: dict, ctx: RunContext) -> list[dict]:
    """The logged rows up to the resumed step (older checkpoints kept them only in the file)."""
    if "log" in state:
        return list(state["log"])
    return [r for r in read_log(ctx.run_dir / METRICS_LOG) if r["step"] <= state["step"]]


class BatchSource(Protocol):
    """Where training batches come from: ``batch(step, device) -> [(x_k, y_k)]``, this rank's
    share of every domain at ``step`` (MultiDomainStream in memory, RayDataStream streamed)."""

    def batch(self, step: int, device: torch.device | str = "cpu"
              ) -> list[tuple[torch.Tensor, torch.Tensor]]: ...


def build_for_rank(cfg: Config, domains: list[DomainData], ctx: RunContext
                   ) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The model (on ``ctx.device``, not yet DDP-wrapped) and optimiser :func:`fit` starts from
    on this rank: seeded, with BatchNorm synchronised across ranks when ``train.sync_batchnorm``
    and there are several (our SyncBatchNorm: torch's own refuses CPU/gloo tensors). The
    scaling benchmarks build theirs here too, so they time the loop's own setup."""
    seed_everything(cfg.train.seed)
    model = build_model(cfg, len(domains), domains[0].num_classes).to(ctx.device)
    if cfg.train.sync_batchnorm and ctx.world_size > 1:
        model = convert_sync_batchnorm(model, cfg.train.sync_batchnorm_scope)
    return model, build_optimizer(model, cfg)


def fit(cfg: Config, domains: list[DomainData], ctx: RunContext, progress: bool = True,
        stream: BatchSource | None = None) -> TrainResult:
    """Train CDLM on ``domains`` under ``ctx``; resumes from ``ctx.latest_state()`` if any.

    ``stream``: the training batches; None draws them from ``domains``' train splits in memory.
    """
    loaded_rss = peak_rss_mb()  # data loaded, nothing built: what loading cost, from ctx's start
    model, optimizer = build_for_rank(cfg, domains, ctx)
    start, history, rows, selection = 0, [], [], Selection()
    state = ctx.latest_state() if cfg.resume else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        start, history = state["step"], list(state["history"])
        selection = Selection.from_checkpoint(state["best"])
        rows = _resumed_log(state, ctx)
        ctx.restart_log(rows)
    train_model = ctx.wrap_model(model, cfg.train)
    if stream is None:
        stream = MultiDomainStream([d.train for d in domains], cfg.data.batch_size,
                                   cfg.train.seed, ctx.rank, ctx.world_size)
    config_yaml = OmegaConf.to_yaml(cfg)
    tracking = open_live(cfg, ctx.run_dir, start, ctx.is_main, ctx.live_log)  # main rank
    bar = _progress_bar(cfg, start, enabled=progress and ctx.is_main)
    running: dict[str, list[torch.Tensor]] = defaultdict(list)
    last_eval: dict[str, float] = history[-1] if history else {}

    for step in range(start, cfg.train.steps):
        _maybe_inject_fault(cfg, step, ctx)
        pair_gen, noise_gen = step_generators(step, cfg, ctx.rank, ctx.device)
        batch = stream.batch(step, ctx.device)
        for k, v in train_step(train_model, optimizer, batch, step, cfg, pair_gen,
                               noise_gen).items():
            running[k].append(v)
        done = step + 1
        final = done == cfg.train.steps
        if done % cfg.train.log_every == 0 or final:
            logged = _reduce_row(running, ctx, loaded_rss)
            running.clear()
            _log(rows, ctx, tracking, done, logged)
            if bar is not None:
                bar.set_postfix({k.split("/")[-1]: f"{v:.3f}" for k, v in logged.items()
                                 if k in ("loss/total", "loss/cls", "loss/adv", "train/acc")}
                                | {"tgt": f"{last_eval.get('target_acc', float('nan')):.3f}"})
        if done % cfg.train.eval_every == 0 or final:
            last_eval = {"step": done, **evaluate_in_training(model, domains, cfg, ctx)}
            history.append(last_eval)
            _log(rows, ctx, tracking, done, {f"eval/{k}": v for k, v in last_eval.items() if k != "step"})
            selection.update(done, last_eval[EVAL_SCORE], model)
            if tracking is not None:  # at evaluations only: off the hot path
                tracking.grid(model, domains, done)
        if done % cfg.train.checkpoint_every == 0 or final:
            state = None
            if ctx.is_main:
                state = {"model": _cpu_state(model), "optimizer": optimizer.state_dict(),
                         "step": done, "rng": rng_state(), "history": history,
                         "best": selection.to_checkpoint(), "log": rows,
                         "config_yaml": config_yaml}
            ctx.report(done, progress_metrics(history, done, cfg.train.checkpoint_every), state)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if tracking is not None:
        tracking.close()
    if start >= cfg.train.steps:  # resumed at the end: nothing ran, but the result must reach
        ctx.report(start, progress_metrics(history, start, cfg.train.checkpoint_every), None)
    final_state = _cpu_state(model)
    return TrainResult(final_state=final_state, selected_state=selection.state or final_state,
                       history=history, log=rows, step=cfg.train.steps)


def _log(rows: list[dict], ctx: RunContext, tracking: LiveTracking | None, step: int,
         metrics: dict[str, float]) -> None:
    """One row of the run's log: kept for the checkpoint, mirrored live to metrics.jsonl and to
    the live trackers (main rank)."""
    row = {"step": step, "wall_time": time.time(), **metrics}  # wall_time: per-step timing
    rows.append(row)
    ctx.log(row)
    if tracking is not None:
        tracking.row(row)


def _reduce_row(running: dict[str, list[torch.Tensor]], ctx: RunContext, loaded_rss: float
                ) -> dict[str, float]:
    """Mean of each metric over the steps since the last log, averaged over ranks, and every
    rank's peak, loaded and start RSS (``sys/`` keys, :mod:`memory`): one all-reduce, in which
    each rank fills its own column of the memory block."""
    keys = sorted(running)
    means = torch.stack([torch.stack(running[k]).float().mean() for k in keys]).to(ctx.device)
    memory = torch.zeros(3, ctx.world_size)  # float32: every backend and device has it
    memory[:, ctx.rank] = torch.tensor([peak_rss_mb(), loaded_rss, ctx.start_rss_mb])
    total = ctx.all_reduce_sum(torch.cat([means, memory.flatten().to(ctx.device)]))
    row = dict(zip(keys, (total[:len(keys)] / ctx.world_size).tolist()))
    return row | memory_row(*total[len(keys):].view(3, ctx.world_size).tolist())


def _maybe_inject_fault(cfg: Config, step: int, ctx: RunContext) -> None:
    """Raise once (per run directory) at train.fail_at_step; the marker makes it once."""
    if step != cfg.train.fail_at_step or ctx.rank != 0:
        return
    marker = Path(ctx.run_dir) / FAULT_MARKER
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    raise InjectedFault(f"injected fault at step {step} (train.fail_at_step)")


def _progress_bar(cfg: Config, start: int, enabled: bool):
    if not enabled or not cfg.train.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=cfg.train.steps, initial=start, desc=f"train {cfg.name}", unit="step",
                dynamic_ncols=True, mininterval=1.0)


