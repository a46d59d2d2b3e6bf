"""Run the training loop in this process (one device): debugging and single-GPU use."""

from __future__ import annotations

from pathlib import Path

import torch

from cdlm_dist.config import Config
from cdlm_dist.data.domains import DomainData
from cdlm_dist.training.context import RunContext, resolve_device
from cdlm_dist.training.loop import TrainResult, fit


def run_local(cfg: Config, domains: list[DomainData], run_dir: Path) -> TrainResult:
    """Train with checkpoints under ``run_dir/checkpoints``; resumes from the latest one."""
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    ctx = RunContext(run_dir, resolve_device(cfg.train.device), cfg.train.keep_checkpoints)
    return fit(cfg, domains, ctx, progress=cfg.train.progress)
