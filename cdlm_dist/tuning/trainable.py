"""One trial: the same ``fit`` loop as cdlm-train, reporting to Tune once per epoch.

An "epoch" here is one checkpoint interval (``train.checkpoint_every`` steps; the last one ends
at ``train.steps``): ``fit`` calls ``ctx.report`` exactly there, with a fresh evaluation (the
sweep config requires checkpoint_every to be a multiple of eval_every). Each report carries the
loop's checkpoint, so Tune can retry a failed trial from it and a restarted driver can continue an
unfinished trial from it (see :mod:`cdlm_dist.tuning.search`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from cdlm_dist.data.domains import DomainData
from cdlm_dist.experiment import selection_summary
from cdlm_dist.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from cdlm_dist.training.context import RunContext, resolve_device
from cdlm_dist.training.loop import fit
from cdlm_dist.tuning.config import apply_params

EPOCH = "epoch"
STATE_FILE = "state.pt"  # the loop's state inside a Tune checkpoint directory
RESUME_KEY = "_resume_from"  # trial-config key: a previous driver's trial directory
ORACLE = "oracle_target_acc"  # target accuracy of the label-free selection: reported, not used
# Reported metrics that the study keeps per trial (as user attributes) for the results table.
RECORDED_METRICS = ("score", "eval_score", ORACLE, "step", EPOCH, "selected_step")
NESTED_SUBDIR = "ray"  # runner=ray trials: Ray Train's checkpoints, inside the Tune trial's folder


def trial_dir_name(trial_id: str) -> str:
    """A Tune trial's folder name, fixed by its id so a later driver can find its checkpoints."""
    return f"trial_{trial_id}"


def has_checkpoint(trial_dir: Path) -> bool:
    """Whether a trial folder holds a loop state (its own Tune checkpoints or nested Train's)."""
    return any(trial_dir.glob(f"checkpoint_*/{STATE_FILE}")) or any(
        trial_dir.glob(f"{NESTED_SUBDIR}/*/checkpoint_*/{STATE_FILE}"))


def trial_metrics(history: list[dict[str, float]], step: int, steps_per_epoch: int
                  ) -> dict[str, float]:
    """What Tune sees after an evaluation: label-free scores, and the oracle column.

    ``score`` is the best source validation accuracy so far, i.e. the score of the weights
    cdlm-train would select; ``eval_score`` the latest evaluation's. ``oracle_target_acc`` is
    the target test accuracy at the selected evaluation: it uses target labels, so it is only
    recorded. No other target metric is passed on.
    """
    selected = selection_summary(history)
    last = history[-1]
    return {EPOCH: -(-step // steps_per_epoch), "step": step,
            "score": selected["selected_score"], "eval_score": last["score"],
            ORACLE: selected["target_acc_selected"],
            "selected_step": selected["selected_step"],
            **{k: v for k, v in last.items() if k.startswith("val_acc/")}}


def latest_trial_state(trial_dir: Path, device: torch.device) -> dict[str, Any] | None:
    """The newest readable loop state among a Tune trial directory's checkpoints.

    A checkpoint being copied when the driver was killed can be truncated; older ones are tried.
    """
    for path in sorted(Path(trial_dir).glob(f"checkpoint_*/{STATE_FILE}"), reverse=True):
        try:
            return load_checkpoint(path, map_location=device)
        except CheckpointError:
            continue
    return None


class TuneContext(RunContext):
    """The loop's context inside a Tune trial: state goes to Tune checkpoints, metrics to Tune."""

    def __init__(self, run_dir: Path, device: torch.device, steps_per_epoch: int,
                 resume_from: str | None = None) -> None:
        super().__init__(run_dir, device, keep_checkpoints=0)  # Tune's CheckpointConfig prunes
        self.steps_per_epoch = steps_per_epoch
        self.resume_from = resume_from
        self.reports = 0

    def latest_state(self) -> dict[str, Any] | None:
        """Tune's checkpoint (a retry of this trial), else the previous driver's (a resume)."""
        from ray import tune

        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                return load_checkpoint(Path(directory) / STATE_FILE, map_location=self.device)
        if self.resume_from:
            return latest_trial_state(Path(self.resume_from), self.device)
        return None

    def report(self, step: int, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        from ray import tune

        out = trial_metrics(state["history"], step, self.steps_per_epoch)
        with tempfile.TemporaryDirectory(prefix="cdlm_trial_") as directory:
            save_checkpoint(state, Path(directory) / STATE_FILE)
            tune.report(out, checkpoint=tune.Checkpoint.from_directory(directory))
        self.reports += 1


def run_trial(config: dict[str, Any], base: DictConfig, domains: list[DomainData],
              trial_cpus: float, experiment_dir: str) -> None:
    """Tune's function trainable: ``config`` holds the sampled parameters (dotted keys);
    ``experiment_dir`` is this Tune experiment's folder in the sweep directory."""
    from ray import tune

    params = dict(config)
    resume_from = params.pop(RESUME_KEY, None)
    cfg = apply_params(base, params)
    cfg.train.progress = False
    torch.set_num_threads(cfg.train.num_threads or max(1, int(trial_cpus)))
    run_dir = Path(tune.get_context().get_trial_dir())  # local: metrics.jsonl, synced by Tune
    if cfg.runner.name == "ray":
        # Train's checkpoints go to the trial's folder in the sweep directory (persistent, unlike
        # the local trial dir); an orphan's rerun continues the orphan's Train run there.
        home = Path(resume_from or Path(experiment_dir) / trial_dir_name(
            tune.get_context().get_trial_id()))
        cfg.name = f"{cfg.name}_{home.name}"
        cfg.runner.storage_path = str(home / NESTED_SUBDIR)
        _run_nested(cfg, domains, run_dir)
        return
    ctx = TuneContext(run_dir, resolve_device(cfg.train.device), cfg.train.checkpoint_every,
                      resume_from)
    result = fit(cfg, domains, ctx, progress=False)
    if ctx.reports == 0 and result.history:
        # resumed from a checkpoint at the final step: nothing left to train, but the trial's
        # result must still reach Tune (and the study)
        tune.report(trial_metrics(result.history, result.step, cfg.train.checkpoint_every))


def _run_nested(cfg: DictConfig, domains: list[DomainData], run_dir: Path) -> None:
    """A multi-worker trial: Ray Train V2 nests in Tune by running its TorchTrainer inside the
    function trainable (cdlm-train's run_ray, runner.num_workers workers with their own
    resources); a Train callback forwards rank 0's per-epoch reports to Tune."""
    from ray import tune

    from cdlm_dist.runners.ray_train import run_ray

    reporter = epoch_report_callback(cfg.train.checkpoint_every)
    result = run_ray(cfg, domains, run_dir, callbacks=[reporter])
    if not reporter.history:  # resumed at the final step: report the checkpoint's result
        tune.report(trial_metrics(result.history, result.step, cfg.train.checkpoint_every))


def epoch_report_callback(steps_per_epoch: int):
    """A Train V2 callback that forwards rank 0's evaluations to Tune as :func:`trial_metrics`.

    It sees only this driver's reports, so after a driver restart the running best restarts
    from the resumed evaluations (the final report from the checkpoint history is exact).
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    class EpochReportCallback(TuneReportCallback):
        def __init__(self) -> None:
            super().__init__()
            self.history: list[dict[str, float]] = []

        def after_report(self, run_context, metrics, checkpoint) -> None:
            first = dict(metrics[0])
            if "score" not in first:
                return
            self.history.append(first)
            self._training_actor_item_queue.put(
                trial_metrics(self.history, int(first["step"]), steps_per_epoch))

    return EpochReportCallback()
