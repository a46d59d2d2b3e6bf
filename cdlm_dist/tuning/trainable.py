"""One trial: the same runner and loop as cdlm-train, reporting to Tune once per epoch.

An "epoch" here is one checkpoint interval (``train.checkpoint_every`` steps; the last one ends
at ``train.steps``): the loop reports exactly there, with a fresh evaluation (the sweep config
requires checkpoint_every to be a multiple of eval_every), the metrics of
:func:`cdlm_dist.training.selection.progress_metrics`. A runner=local trial reports to Tune
itself (its checkpoints are Tune's, so Tune can retry a failed trial from one and a restarted
driver can continue an unfinished trial from one, see :mod:`cdlm_dist.tuning.search`); a
runner=ray trial runs Ray Train inside the trial, and Ray's TuneReportCallback passes rank 0's
reports on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from cdlm_dist.data.domains import DomainData
from cdlm_dist.runners import TuneTrial, get_runner
from cdlm_dist.runners.session import STATE_FILE
from cdlm_dist.tracking import RunTracking
from cdlm_dist.training.context import set_threads
from cdlm_dist.training.selection import BEST_SCORE, EVAL_SCORE, ORACLE, selection_summary
from cdlm_dist.tuning.config import apply_params

EPOCH = "epoch"
RESUME_KEY = "_resume_from"  # trial-config key: a previous driver's trial directory
# Reported metrics that the study keeps per trial (as user attributes) for the results table.
RECORDED_METRICS = (BEST_SCORE, EVAL_SCORE, ORACLE, "step", EPOCH, "selected_step")
NESTED_SUBDIR = "ray"  # runner=ray trials: Ray Train's checkpoints, inside the Tune trial's folder


def trial_dir_name(trial_id: str) -> str:
    """A Tune trial's folder name, fixed by its id so a later driver can find its checkpoints."""
    return f"trial_{trial_id}"


def has_checkpoint(trial_dir: Path) -> bool:
    """Whether a trial folder holds a loop state (its own Tune checkpoints or nested Train's)."""
    return any(trial_dir.glob(f"checkpoint_*/{STATE_FILE}")) or any(
        trial_dir.glob(f"{NESTED_SUBDIR}/*/checkpoint_*/{STATE_FILE}"))


def run_trial(config: dict[str, Any], base: DictConfig, domains: list[DomainData],
              trial_cpus: float, experiment_dir: str,
              tracking_parent: dict[str, str] | None = None) -> None:
    """Tune's function trainable: ``config`` holds the sampled parameters (dotted keys);
    ``experiment_dir`` is this Tune experiment's folder in the sweep directory;
    ``tracking_parent``: the sweep's MLflow run, of which this trial's run is a child."""
    from ray import tune

    params = dict(config)
    resume_from = params.pop(RESUME_KEY, None)
    cfg = apply_params(base, params)
    cfg.train.progress = False
    set_threads(cfg.train.num_threads, max(1.0, trial_cpus))
    run_dir = Path(tune.get_context().get_trial_dir())  # local: metrics.jsonl, synced by Tune
    if cfg.runner.name == "ray":
        # Train's checkpoints go to the trial's folder in the sweep directory (persistent, unlike
        # the local trial dir); an orphan's rerun continues the orphan's Train run there.
        home = Path(resume_from or Path(experiment_dir) / trial_dir_name(
            tune.get_context().get_trial_id()))
        cfg.name = f"{cfg.name}_{home.name}"
        cfg.runner.storage_path = str(home / NESTED_SUBDIR)
        resume_from = None
    if cfg.tracking.backend == "mlflow" and tracking_parent is None:
        cfg.tracking.backend = "tensorboard"  # the sweep has no MLflow run (it has warned)
    tracking = RunTracking.start(cfg, run_dir, tracking_parent,
                                 trial_dir_name(tune.get_context().get_trial_id()))
    try:
        result = get_runner(cfg.runner.name)(cfg, domains, run_dir, TuneTrial(resume_from))
    except Exception:
        tracking.fail()  # Tune may retry it; the retry reopens the same MLflow run
        raise
    tracking.finish(result, selection_summary(result.history), files=False)
