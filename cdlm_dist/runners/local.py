"""Run the training loop in this process (one device): debugging, single-GPU use, sweep trials."""

from __future__ import annotations

from pathlib import Path

from cdlm_dist.config import Config
from cdlm_dist.data.domains import DomainData
from cdlm_dist.training.context import RunContext, resolve_device, set_threads
from cdlm_dist.training.loop import TrainResult, fit


def run_local(cfg: Config, domains: list[DomainData], run_dir: Path, trial=None) -> TrainResult:
    """Train with checkpoints under ``run_dir/checkpoints`` (resuming from the latest one), or,
    in a sweep trial (``trial``: a :class:`cdlm_dist.runners.TuneTrial`), with Tune's."""
    set_threads(cfg.train.num_threads)
    store = None
    if trial is not None:
        from cdlm_dist.runners.session import SessionStore

        store = SessionStore("tune", trial.resume_from)
    ctx = RunContext(run_dir, resolve_device(cfg.train.device), cfg.train.keep_checkpoints,
                     store=store)
    return fit(cfg, domains, ctx, progress=cfg.train.progress)
