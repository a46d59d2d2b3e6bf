"""The ``sweep`` section of ``configs/sweep.yaml`` and how a sweep config is composed.

A sweep config is a whole training config (the same Hydra groups as ``cdlm-train``) plus
``sweep``. Keeping the training part intact means a trial trains exactly what ``cdlm-train``
would train with the trial's parameters, and the best trial exports as a plain training config.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cdlm_dist.config import Config, ConfigError, compose, validate
from cdlm_dist.evaluation.validators import DEFAULT_VALIDATOR, VALIDATORS
from cdlm_dist.training.selection import BEST_SCORE, EVAL_SCORE

SAMPLERS = ("tpe", "random")
SCHEDULERS = ("asha", "fifo")
# Label-free metrics a sweep may optimise (see cdlm_dist/tuning/__init__.py for why only these):
# "best_score" is the best score so far of the trial's train.select_by validator (the score of
# the weights it selects), "eval_score" that score at the latest evaluation; a validator's name
# (e.g. "snd") means train.select_by=<name> and its best_score (see tune_metric).
LABEL_FREE_METRICS = (BEST_SCORE, EVAL_SCORE, *VALIDATORS)


@dataclass
class SweepConfig:
    """What cdlm-sweep searches, with which algorithms, on which resources, and where it writes."""

    # Nested like the training config; each leaf is {type, low, high} or {type: categorical,
    # choices}. Types: loguniform, uniform, int, logint, categorical (see tuning/space.py).
    space: dict[str, Any] = field(default_factory=dict)
    num_samples: int = 16  # trials that must finish; a resumed sweep counts the study's
    max_concurrent_trials: int = 2
    trial_cpus: float = 1.0  # Ray resources of one trial (of its driver, for runner=ray)
    trial_gpus: float = 0.0
    seed: int = 0  # seeds the sampler (the training seed is train.seed, fixed for all trials)
    metric: str = BEST_SCORE  # label-free only: one of LABEL_FREE_METRICS (or a validator)
    sampler: str = "tpe"  # "tpe" (Optuna TPE) | "random"
    n_startup_trials: int = 4  # TPE: random trials before its model is used
    multivariate: bool = True  # TPE: model the parameters jointly (l_adv and l_con trade off)
    scheduler: str = "asha"  # "asha" (early stopping) | "fifo" (every trial runs to the end)
    grace_period: int = 1  # ASHA: epochs every trial gets before it can be stopped
    reduction_factor: int = 2  # ASHA: about 1/reduction_factor of trials pass each rung
    storage: str = ""  # SQLAlchemy URL of the Optuna study; "" = SQLite in the sweep directory
    study_name: str = "${name}"
    output_dir: str = "sweeps"  # the sweep directory is <output_dir>/<study_name>
    max_failures: int = 0  # Tune retries of a failed trial, from its last checkpoint
    importance_min_trials: int = 8  # fewer finished trials: correlation instead of fANOVA
    verbose: int = 1  # Ray Tune console output: 0 silent, 1 status, 2 every result


@dataclass
class SweepRunConfig(Config):
    """The schema of configs/sweep.yaml: a training config plus its ``sweep`` section."""

    sweep: SweepConfig = field(default_factory=SweepConfig)


SCHEMA_NAME = "cdlm_sweep_schema"
TRAINING_KEYS = tuple(f.name for f in fields(Config))


def register_sweep_schema() -> None:
    """Register the schema next to cdlm_schema (compose() does not clear the ConfigStore)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=SweepRunConfig)


def compose_sweep(overrides: list[str] | None = None) -> DictConfig:
    """Compose configs/sweep.yaml with Hydra overrides and check everything that can be checked
    without Ray: the training part (as cdlm-train would) and the sweep section's own rules.
    The search space is checked against the training config by :func:`space.parse_space`."""
    register_sweep_schema()
    cfg = compose(overrides, config_name="sweep")
    select_by_metric(cfg)
    validate(training_config(cfg))
    check_sweep(cfg)
    return cfg


def select_by_metric(cfg: DictConfig) -> None:
    """``sweep.metric=<validator>``: every trial selects its checkpoint by that validator (so a
    trial's score is the score of the weights it keeps, and best.yaml retrains the same rule).
    A different non-default ``train.select_by`` beside it is a contradiction."""
    metric, select_by = cfg.sweep.metric, cfg.train.select_by
    if metric not in VALIDATORS:
        return
    if select_by not in (DEFAULT_VALIDATOR, metric):
        raise ConfigError(f"sweep.metric={metric} selects trials and checkpoints by {metric}, "
                          f"but train.select_by={select_by}; drop one of them")
    cfg.train.select_by = metric


def tune_metric(metric: str) -> str:
    """The reported key Tune, ASHA and the study climb for ``sweep.metric``: a validator's
    name climbs ``best_score``, which the loop computes for train.select_by=<that validator>."""
    return BEST_SCORE if metric in VALIDATORS else metric


def training_config(cfg: DictConfig) -> DictConfig:
    """The training part of a sweep config, typed as cdlm-train's :class:`Config`."""
    part = OmegaConf.masked_copy(cfg, list(TRAINING_KEYS))
    return OmegaConf.merge(OmegaConf.structured(Config), part)


def apply_params(train_cfg: DictConfig, params: dict[str, Any]) -> DictConfig:
    """A copy of ``train_cfg`` with dotted ``params`` set (typed: a wrong type names its key)."""
    cfg = train_cfg.copy()
    for key, value in params.items():
        try:
            OmegaConf.update(cfg, key, value, merge=False)
        except OmegaConfBaseException as exc:
            raise ConfigError(f"sweep.space.{key}: cannot set {key}={value!r}: "
                              f"{str(exc).splitlines()[0]}") from exc
    return cfg


def check_sweep(cfg: DictConfig) -> None:
    """Rules of the sweep section that a schema cannot express."""
    s = cfg.sweep
    if s.metric not in LABEL_FREE_METRICS:
        raise ConfigError(f"sweep.metric={s.metric!r} is not a label-free metric: choose one "
                          f"of {list(LABEL_FREE_METRICS)}; target accuracy is reported as the "
                          "oracle_target_acc column and never optimised")
    for key, allowed in (("sweep.sampler", SAMPLERS), ("sweep.scheduler", SCHEDULERS)):
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {list(allowed)}")
    for key in ("num_samples", "max_concurrent_trials", "grace_period"):
        if getattr(s, key) < 1:
            raise ConfigError(f"sweep.{key}={getattr(s, key)} must be at least 1")
    if s.reduction_factor < 2:
        raise ConfigError(f"sweep.reduction_factor={s.reduction_factor} must be at least 2")
    if s.trial_cpus <= 0 or s.trial_gpus < 0:
        raise ConfigError(f"sweep.trial_cpus={s.trial_cpus} must be > 0 and "
                          f"sweep.trial_gpus={s.trial_gpus} >= 0")
    if s.n_startup_trials < 0:
        raise ConfigError(f"sweep.n_startup_trials={s.n_startup_trials} must be >= 0")
    t = cfg.train
    if t.checkpoint_every % t.eval_every:
        raise ConfigError(
            f"train.checkpoint_every={t.checkpoint_every} is not a multiple of "
            f"train.eval_every={t.eval_every}: a sweep reports once per checkpoint interval "
            "(its 'epoch') and each report must carry a fresh evaluation")
    if s.scheduler == "asha" and s.grace_period > num_epochs(cfg.train):
        raise ConfigError(f"sweep.grace_period={s.grace_period} exceeds the "
                          f"{num_epochs(cfg.train)} epochs of a trial (train.steps / "
                          "train.checkpoint_every); lower it or use sweep.scheduler=fifo")
    if not s.study_name or "/" in s.study_name:
        raise ConfigError(f"sweep.study_name={s.study_name!r} must be a non-empty name "
                          "without '/'")


def num_epochs(train: Any) -> int:
    """Reports per trial: one per checkpoint interval, the last one at the final step."""
    return -(-train.steps // train.checkpoint_every)


def sweep_dir(cfg: DictConfig) -> Path:
    """Where the study (SQLite default), Tune experiments and results of this sweep live."""
    return (Path(cfg.sweep.output_dir).expanduser() / cfg.sweep.study_name).resolve()
