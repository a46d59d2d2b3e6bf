"""The Optuna study (the sweep's ledger) and the Tune searcher and scheduler built around it.

Every suggestion, per-epoch score and completion goes through the study in its RDB storage, each
as its own transaction, so after a hard kill of the driver the study says exactly which trials
finished. :func:`recover_orphans` turns trials that were running at the kill into queued trials
with the same parameters (and the path of their last Tune checkpoint, to continue from it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from cdlm_dist.config import ConfigError
from cdlm_dist.tuning.config import tune_metric
from cdlm_dist.tuning.trainable import (
    EPOCH,
    RECORDED_METRICS,
    RESUME_KEY,
    has_checkpoint,
    trial_dir_name,
)

STUDY_DB = "study.db"
# Optuna user attributes of a trial (beside the recorded metrics)
ATTR_EXPERIMENT = "tune_experiment"  # the Tune experiment (directory) that ran the trial
ATTR_TUNE_ID = "tune_trial_id"
ATTR_RESUMED_FROM = "resumed_from_trial"  # the orphaned trial whose parameters this one reruns
ATTR_ORPHANED = "orphaned_by_driver_kill"


def storage_url(cfg: DictConfig, directory: Path) -> str:
    return cfg.sweep.storage or f"sqlite:///{directory / STUDY_DB}"


def open_study(cfg: DictConfig, directory: Path):
    """Create or load the study; a bad URL fails here, naming sweep.storage."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(cfg, directory)
    try:
        storage = optuna.storages.RDBStorage(url)
    except Exception as exc:  # sqlalchemy raises many types for a bad URL or an unreachable DB
        raise ConfigError(f"sweep.storage={url!r}: cannot open the study storage: {exc}") \
            from exc
    study = optuna.create_study(storage=storage, study_name=cfg.sweep.study_name,
                                direction="maximize", load_if_exists=True)
    return study, storage


def finished_trials(study) -> list:
    """Trials that count towards sweep.num_samples (ASHA-stopped ones included)."""
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def make_sampler(cfg: DictConfig, trials_so_far: int):
    """TPE or random, seeded from sweep.seed and the study's size.

    The size term makes a resumed driver continue the random stream instead of replaying it
    (a restarted RandomSampler(seed) would suggest the first run's points again). With several
    trials in flight TPE uses the constant liar, so concurrent suggestions spread out.
    """
    import optuna

    seed = cfg.sweep.seed + trials_so_far
    if cfg.sweep.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=cfg.sweep.n_startup_trials,
        multivariate=cfg.sweep.multivariate,
        constant_liar=cfg.sweep.max_concurrent_trials > 1)


def trial_dirname(trial: Any) -> str:
    """TuneConfig.trial_dirname_creator."""
    return trial_dir_name(trial.trial_id)


def recover_orphans(study, storage, directory: Path) -> int:
    """Requeue trials left RUNNING by a killed driver; return how many.

    Each orphan is marked FAIL (it never finished) and its parameters are enqueued, carrying its
    Tune trial directory when a checkpoint exists there, so the rerun continues from it.
    """
    from optuna.trial import TrialState

    orphans = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in orphans:
        attrs = {ATTR_RESUMED_FROM: t.number}
        if ATTR_EXPERIMENT in t.user_attrs and ATTR_TUNE_ID in t.user_attrs:
            trial_dir = (directory / t.user_attrs[ATTR_EXPERIMENT]
                         / trial_dir_name(t.user_attrs[ATTR_TUNE_ID]))
            if has_checkpoint(trial_dir):
                attrs[RESUME_KEY] = str(trial_dir)
        mark_trial(study, storage, t.number, ATTR_ORPHANED, True)
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        study.enqueue_trial(t.params, user_attrs=attrs)
    return len(orphans)


def mark_trial(study, storage, number: int, key: str, value: Any) -> None:
    """Set a user attribute on a trial no live ``optuna.Trial`` holds (a killed driver's), through
    the storage's public API (a Study offers no call for that)."""
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), number)
    storage.set_trial_user_attr(trial_id, key, value)


def make_searcher(cfg: DictConfig, space: dict[str, Any], storage, experiment: str,
                  trials_so_far: int):
    """A Tune searcher on the persistent study, with the bookkeeping resumes need."""
    import optuna
    from ray.tune.search import Searcher

    metric = tune_metric(cfg.sweep.metric)

    class StudySearch(Searcher):
        """Tune's side of the study, on Optuna's public ask/tell API (Ray's OptunaSearch keeps
        its trials in private fields that our bookkeeping would have to reach into).

        It records in the study which Tune trial runs each Optuna trial, reports intermediate
        values by epoch (not Tune's iteration, which restarts when a trial is resumed), stores
        the recorded metrics (the oracle column among them) as user attributes, completes a
        trial with its last label-free value and fails an errored one.
        """

        def __init__(self) -> None:
            super().__init__(metric=metric, mode="max")
            self.study = optuna.create_study(
                storage=storage, study_name=cfg.sweep.study_name, direction="maximize",
                sampler=make_sampler(cfg, trials_so_far), load_if_exists=True)
            self.trials: dict[str, optuna.Trial] = {}  # Tune trial id -> its Optuna trial
            self.finished: set[str] = set()
            self.epochs_reported: dict[str, set[int]] = {}

        def set_search_properties(self, metric, mode, config, **spec) -> bool:
            return not config  # the space is the study's; Tune's param_space stays empty

        def suggest(self, trial_id: str) -> dict | None:
            if trial_id not in self.trials:  # asks enqueued (requeued) trials first
                self.trials[trial_id] = self.study.ask(fixed_distributions=space)
            ot = self.trials[trial_id]
            ot.set_user_attr(ATTR_EXPERIMENT, experiment)
            ot.set_user_attr(ATTR_TUNE_ID, trial_id)
            resume = ot.user_attrs.get(RESUME_KEY)
            return dict(ot.params) | ({RESUME_KEY: resume} if resume else {})

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if trial_id in self.trials and trial_id not in self.finished:
                self._report(trial_id, result)

        def _report(self, trial_id: str, result: dict) -> None:
            epoch = int(result[EPOCH])
            seen = self.epochs_reported.setdefault(trial_id, set())
            if epoch not in seen and metric in result:
                self.trials[trial_id].report(result[metric], epoch)
                seen.add(epoch)

        def on_trial_complete(self, trial_id: str, result: dict | None = None,
                              error: bool = False) -> None:
            ot = self.trials.get(trial_id)
            if ot is None or trial_id in self.finished:
                return
            self.finished.add(trial_id)
            if error or not result or metric not in result:
                # an errored trial's last result is partial: it never counts (one that ended
                # without any result was stopped, as Ray's OptunaSearch records it)
                state = optuna.trial.TrialState.FAIL if error else optuna.trial.TrialState.PRUNED
                self.study.tell(ot, state=state)
                return
            # Tune passes the last result (the one ASHA stopped on, or the final epoch) here
            # and not to on_trial_result; the rungs re-seeded after a resume need it
            self._report(trial_id, result)
            for key in RECORDED_METRICS:
                if key in result:
                    ot.set_user_attr(key, result[key])
            self.study.tell(ot, result[metric])

        def save(self, checkpoint_path: str) -> None:
            """Nothing to save: the study is the ledger (see cdlm_dist/tuning/driver.py)."""

        def restore(self, checkpoint_path: str) -> None:
            """Nothing to restore: a resumed driver reopens the study."""

    return StudySearch()


def make_scheduler(cfg: DictConfig, epochs: int, study):
    """ASHA on the label-free metric, by epoch, seeded with the study's finished trials so a
    resumed sweep stops trials against the same rungs; FIFO runs every trial to the end."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

    if cfg.sweep.scheduler == "fifo":
        return FIFOScheduler()

    class LastEpochASHA(ASHAScheduler):
        """ASHA that never stops a trial at its last report. The trial ends on its own right
        after it, and a stop there kills the trial while it shuts down: for a runner=ray trial
        that orphans its Ray Train workers' placement group (Train's cleaner needs the state
        API), and the next trial then waits forever for those CPUs. The last value still
        reaches the rungs through on_trial_complete."""

        def on_trial_result(self, tune_controller, trial, result: dict) -> str:
            if result.get(EPOCH, 0) >= epochs:
                return TrialScheduler.CONTINUE
            return super().on_trial_result(tune_controller, trial, result)

    scheduler = LastEpochASHA(time_attr=EPOCH, metric=tune_metric(cfg.sweep.metric), mode="max",
                              max_t=epochs, grace_period=cfg.sweep.grace_period,
                              reduction_factor=cfg.sweep.reduction_factor)
    seed_asha_rungs(scheduler, finished_trials(study))
    return scheduler


def seed_asha_rungs(scheduler, trials: list) -> int:
    """Record earlier trials' per-epoch values in ASHA's rungs (mode max: values as they are).

    Uses ASHA's bracket bookkeeping (``_brackets``/``_rungs``, stable since Ray 1.x); returns
    how many values were recorded so a test notices if that layout changes.
    """
    recorded = 0
    for bracket in scheduler._brackets:
        for milestone, rung in bracket._rungs:
            for t in trials:
                value = t.intermediate_values.get(int(milestone))
                if value is not None:
                    rung[f"study_trial_{t.number}"] = value
                    recorded += 1
    return recorded
