"""The sweep driver: validate, open the study, run the remaining trials with Ray Tune, export.

Resume design: the Optuna study in its RDB storage is the ledger. Each run of the driver counts
the study's finished trials F, requeues trials a killed driver left running (same parameters,
continued from their last Tune checkpoint), and starts a *new* Tune experiment
(``tune_<k>`` in the sweep directory) for the remaining ``num_samples - F`` trials. Tune's own
``Tuner.restore`` is not used: its experiment snapshot is throttled (``TUNE_GLOBAL_CHECKPOINT_S``,
"auto" = at least every 10 s) and synced asynchronously, so after a hard kill its view of which
trials finished can lag the study's, and a trial that finished in that window would be run again
or one too many sampled. Optuna writes each result in its own transaction, so counting the study
gives exactly ``num_samples`` finished trials. ASHA's rungs are re-seeded from the study, TPE
conditions on all earlier trials because it reads the same study, and the sampler seed is offset
by the study's size so a random sampler does not replay its first suggestions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from cdlm_dist.config import ConfigError
from cdlm_dist.tracking import SweepTracking
from cdlm_dist.tracking import preflight as tracking_preflight
from cdlm_dist.tuning.config import num_epochs, sweep_dir, training_config
from cdlm_dist.tuning.results import export_results
from cdlm_dist.tuning.search import (
    finished_trials,
    make_scheduler,
    make_searcher,
    open_study,
    recover_orphans,
    trial_dirname,
)
from cdlm_dist.tuning.space import optuna_space, parse_space

SWEEP_CONFIG = "sweep_config.yaml"
EXPERIMENT_PREFIX = "tune_"
# Keys that may change between driver runs of one sweep: they say how many trials and where they
# run, not what a trial is (num_samples may grow to extend a finished sweep).
RUNTIME_KEYS = frozenset(f"sweep.{k}" for k in (
    "num_samples", "max_concurrent_trials", "trial_cpus", "trial_gpus", "max_failures",
    "verbose", "importance_min_trials", "output_dir", "storage")) | frozenset(
    {"train.device", "train.progress", "train.num_threads", "runner.address", "runner.num_cpus"})


def run_sweep(cfg: DictConfig, log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Run (or resume) the sweep described by a composed sweep config; return its summary."""
    start = time.time()
    train_cfg = training_config(cfg)
    params = parse_space(cfg.sweep.space, train_cfg)  # every space error, before Ray starts
    tracking_preflight(cfg)  # tracking=mlflow: the server answers, before anything is written
    directory = sweep_dir(cfg)
    directory.mkdir(parents=True, exist_ok=True)
    check_same_sweep(cfg, directory)
    study, storage = open_study(cfg, directory)
    recovered = recover_orphans(study, storage, directory)
    done = len(finished_trials(study))
    remaining = max(0, cfg.sweep.num_samples - done)
    experiment = next_experiment_name(directory)
    log(f"sweep {cfg.sweep.study_name}: {done}/{cfg.sweep.num_samples} trials finished in the "
        f"study ({storage_label(cfg)})"
        + (f", {recovered} requeued from a killed driver" if recovered else "")
        + (f"; running {remaining} in {directory / experiment}" if remaining else ""))
    tracking = SweepTracking.start(cfg, directory)  # MLflow: the parent run of the trials
    if remaining:
        _tune(cfg, train_cfg, params, study, storage, directory, experiment, remaining, log,
              tracking.child_spec())
    summary = export_results(study, params, cfg, train_cfg, directory)
    summary |= {"ran_now": remaining, "recovered": recovered,
                "wall_seconds": round(time.time() - start, 1)}
    tracking.finish(summary)
    if summary["finished"] < cfg.sweep.num_samples:
        log(f"sweep {cfg.sweep.study_name}: only {summary['finished']} of "
            f"{cfg.sweep.num_samples} trials finished ({summary['failed']} failed); run the same "
            "command again to run the missing ones")
    return summary


def _tune(cfg: DictConfig, train_cfg: DictConfig, params: list, study, storage,
          directory: Path, experiment: str, remaining: int, log: Callable[[str], Any],
          tracking_parent: dict[str, str] | None = None) -> None:
    from ray import tune

    from cdlm_dist.data.domains import load_domains
    from cdlm_dist.tuning.trainable import run_trial

    s = cfg.sweep
    domains = load_domains(train_cfg.data, train_cfg.train.seed)  # once; shared via the store
    start_ray(cfg)
    trials_so_far = len(study.get_trials(deepcopy=False))
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=train_cfg, domains=domains,
                             trial_cpus=s.trial_cpus, experiment_dir=str(directory / experiment),
                             tracking_parent=tracking_parent),
        {"cpu": s.trial_cpus, "gpu": s.trial_gpus})
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=make_searcher(cfg, optuna_space(params), storage, experiment,
                                     trials_so_far),
            scheduler=make_scheduler(cfg, num_epochs(train_cfg.train), study),
            num_samples=remaining, max_concurrent_trials=s.max_concurrent_trials,
            trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=experiment, storage_path=str(directory), verbose=s.verbose,
            failure_config=tune.FailureConfig(max_failures=s.max_failures),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=train_cfg.train.keep_checkpoints or None)),
    )
    grid = tuner.fit()
    if grid.errors:
        log(f"{len(grid.errors)} trial(s) failed; first error: {grid.errors[0]}")


def start_ray(cfg: DictConfig) -> None:
    """Connect to the cluster runner.address names (or the running Ray), and check that one
    trial fits: its own sweep.trial_cpus/_gpus, plus its Ray Train workers for runner=ray."""
    import ray

    from cdlm_dist.runners.cluster import check_resources, connect_ray

    s = cfg.sweep
    connect_ray(cfg.runner, need_cpus=s.trial_cpus, dashboard=cfg.runner.name == "ray")
    check_resources(cfg.runner, ray.cluster_resources(), driver_cpus=s.trial_cpus,
                    driver_gpus=s.trial_gpus)


def check_same_sweep(cfg: DictConfig, directory: Path) -> None:
    """Refuse to resume a sweep directory with a different search or training config.

    The first run writes the resolved config to sweep_config.yaml; later runs may change only
    RUNTIME_KEYS. Anything else would mix incomparable trials in one study.
    """
    path = directory / SWEEP_CONFIG
    now = OmegaConf.to_container(cfg, resolve=True)
    if not path.exists():
        path.write_text(yaml.safe_dump(now, sort_keys=False))
        return
    before = _flat(yaml.safe_load(path.read_text()))
    after = _flat(now)
    changed = sorted(k for k in before.keys() | after.keys()
                     if k not in RUNTIME_KEYS and before.get(k) != after.get(k))
    if changed:
        shown = ", ".join(f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in changed)
        raise ConfigError(
            f"{directory} holds sweep {cfg.sweep.study_name!r} with a different config "
            f"({shown}); resume it with the same overrides, or start a new sweep with "
            "sweep.study_name=<new name>")


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out |= _flat(v, f"{prefix}{k}.")
        return out
    return {prefix.rstrip("."): node}


def next_experiment_name(directory: Path) -> str:
    """tune_<k>: one Tune experiment per driver run, so no run overwrites another's trials."""
    taken = [int(p.name.removeprefix(EXPERIMENT_PREFIX)) for p in directory.glob(
        f"{EXPERIMENT_PREFIX}*") if p.name.removeprefix(EXPERIMENT_PREFIX).isdigit()]
    return f"{EXPERIMENT_PREFIX}{max(taken, default=-1) + 1}"


def storage_label(cfg: DictConfig) -> str:
    """The storage URL without a password, for logs."""
    if not cfg.sweep.storage:
        return "SQLite in the sweep directory"
    from sqlalchemy.engine import make_url

    return make_url(cfg.sweep.storage).render_as_string(hide_password=True)
