"""Runners: where the one training loop runs. Each is ``(cfg, domains, run_dir) -> TrainResult``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cdlm_dist.config import Config
from cdlm_dist.data.domains import DomainData
from cdlm_dist.training.loop import TrainResult

Runner = Callable[[Config, list[DomainData], Path], TrainResult]


def get_runner(name: str) -> Runner:
    """The runner registered as ``runner.name`` (imported lazily: Ray is heavy)."""
    if name == "local":
        from cdlm_dist.runners.local import run_local

        return run_local
    if name == "ray":
        from cdlm_dist.runners.ray_train import run_ray

        return run_ray
    raise ValueError(f"unknown runner {name!r}")
