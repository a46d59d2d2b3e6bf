"""Runners: where the one training loop runs.

Every runner is ``(cfg, domains, run_dir, trial=None) -> TrainResult`` and runs
:func:`cdlm_dist.training.loop.fit` under a :class:`~cdlm_dist.training.context.RunContext`:
``local`` in this process, ``ray`` on Ray Train workers. A sweep trial calls the same runner with
a :class:`TuneTrial`, which only changes where checkpoints and reports go (to Tune).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cdlm_dist.config import Config
from cdlm_dist.data.domains import DomainData
from cdlm_dist.training.loop import TrainResult


@dataclass(frozen=True)
class TuneTrial:
    """A run inside a Ray Tune trial: it reports to Tune (directly, or through Ray Train).

    ``resume_from``: a killed sweep driver's trial folder to continue from (runner=local; a
    runner=ray trial continues through its Ray Train storage path instead).
    """

    resume_from: str | None = None


Runner = Callable[[Config, list[DomainData], Path, "TuneTrial | None"], TrainResult]


def preflight(cfg: Config) -> None:
    """The runner's checks that must pass before anything is written: the device exists, for
    runner=ray the backend fits the workers and the cluster can host them, and with
    tracking=mlflow the tracking server answers."""
    import torch

    from cdlm_dist.config import ConfigError
    from cdlm_dist.tracking import preflight as tracking_preflight
    from cdlm_dist.training.context import resolve_device

    tracking_preflight(cfg)

    if cfg.runner.name == "ray":
        from cdlm_dist.runners.ray_train import preflight as ray_preflight

        ray_preflight(cfg)
    elif resolve_device(cfg.train.device).type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={cfg.train.device} but torch sees no CUDA device; use "
                          "train.device=auto or cpu")


def get_runner(name: str) -> Runner:
    """The runner registered as ``runner.name`` (imported lazily: Ray is heavy)."""
    if name == "local":
        from cdlm_dist.runners.local import run_local

        return run_local
    if name == "ray":
        from cdlm_dist.runners.ray_train import run_ray

        return run_ray
    raise ValueError(f"unknown runner {name!r}")
