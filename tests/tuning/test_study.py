"""The study as the sweep's ledger: orphan recovery, ASHA re-seeding, label-free metrics (no Ray
cluster needed)."""

from __future__ import annotations

import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from cdlm_dist.training.selection import BEST_SCORE, ORACLE
from cdlm_dist.tuning.search import (
    ATTR_EXPERIMENT,
    ATTR_ORPHANED,
    ATTR_RESUMED_FROM,
    ATTR_TUNE_ID,
    finished_trials,
    recover_orphans,
    seed_asha_rungs,
)
from cdlm_dist.tuning.trainable import RESUME_KEY, STATE_FILE, trial_dir_name

SPACE = {"loss.l_adv": FloatDistribution(0.01, 10.0, log=True)}


@pytest.fixture
def storage(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")


@pytest.fixture
def study(storage):
    return optuna.create_study(storage=storage, study_name="s", direction="maximize")


def test_orphans_are_failed_and_requeued_with_their_checkpoint(study, storage, tmp_path):
    done = study.ask(SPACE)
    study.tell(done, 0.5)
    running = study.ask(SPACE)
    running.set_user_attr(ATTR_EXPERIMENT, "tune_0")
    running.set_user_attr(ATTR_TUNE_ID, "abc_00001")
    ckpt = tmp_path / "tune_0" / trial_dir_name("abc_00001") / "checkpoint_000000"
    ckpt.mkdir(parents=True)
    torch.save({"model": {}}, ckpt / STATE_FILE)

    assert recover_orphans(study, storage, tmp_path) == 1

    states = {t.number: t.state for t in study.trials}
    assert states == {0: TrialState.COMPLETE, 1: TrialState.FAIL, 2: TrialState.WAITING}
    assert study.trials[1].user_attrs[ATTR_ORPHANED] is True
    assert [t.number for t in finished_trials(study)] == [0]
    assert recover_orphans(study, storage, tmp_path) == 0  # idempotent
    rerun = study.ask(SPACE)  # what OptunaSearch gets next: the same point, not a new sample
    assert rerun.number == 2 and rerun.params == running.params
    assert rerun.user_attrs[ATTR_RESUMED_FROM] == 1
    assert rerun.user_attrs[RESUME_KEY] == str(ckpt.parent)


def test_asha_rungs_are_reseeded_from_the_study(study):
    from ray.tune.schedulers import ASHAScheduler

    for value in (0.2, 0.4, 0.6, 0.8):
        t = study.ask(SPACE)
        t.report(value, 1)
        t.report(value + 0.1, 2)
        study.tell(t, value + 0.1)
    asha = ASHAScheduler(time_attr="epoch", metric=BEST_SCORE, mode="max", max_t=4,
                         grace_period=1, reduction_factor=2)
    # rungs at epochs 1 and 2 (and 4, which no trial reached): 4 values each
    assert seed_asha_rungs(asha, finished_trials(study)) == 8
    rungs = dict(asha._brackets[0]._rungs)
    assert sorted(rungs[1].values()) == [0.2, 0.4, 0.6, 0.8]
    assert asha._brackets[0].cutoff(rungs[1]) == pytest.approx(0.5)  # median with rf=2


def test_searcher_records_the_last_result_and_fails_errored_trials(sweep_cfg, storage):
    """Tune hands the result ASHA stops on to on_trial_complete only: it must reach the study
    (ASHA's rungs are re-seeded from it); an errored trial's partial result must not count."""
    from cdlm_dist.tuning.search import make_searcher

    searcher = make_searcher(sweep_cfg, SPACE, storage, "tune_0", trials_so_far=0)
    config = searcher.suggest("stopped")
    assert set(config) == {"loss.l_adv"}
    searcher.on_trial_result("stopped", {BEST_SCORE: 0.3, "epoch": 1})
    searcher.on_trial_complete("stopped", {BEST_SCORE: 0.4, "epoch": 2, ORACLE: 0.25, "step": 6})
    searcher.suggest("crashed")
    searcher.on_trial_complete("crashed", {BEST_SCORE: 0.9, "epoch": 1}, error=True)

    stopped, crashed = optuna.load_study(study_name=sweep_cfg.sweep.study_name,
                                         storage=storage).trials
    assert stopped.state == TrialState.COMPLETE and stopped.value == 0.4
    assert stopped.intermediate_values == {1: 0.3, 2: 0.4}
    assert stopped.user_attrs[ORACLE] == 0.25
    assert stopped.user_attrs[ATTR_TUNE_ID] == "stopped"
    assert stopped.user_attrs[ATTR_EXPERIMENT] == "tune_0"
    assert crashed.state == TrialState.FAIL


def test_asha_stops_weak_trials_but_never_at_their_last_epoch(sweep_cfg, study):
    """A stop at the last report would kill a finishing trial (and leak a nested Train run's
    workers); earlier rungs still stop weak trials."""
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from cdlm_dist.tuning.search import make_scheduler

    for value in (0.8, 0.9):
        t = study.ask(SPACE)
        t.report(value, 1)
        t.report(value, 2)
        study.tell(t, value)
    asha = make_scheduler(sweep_cfg, 2, study)  # rungs at epochs 1 and 2, seeded
    weak_early, weak_last = SimpleNamespace(trial_id="a"), SimpleNamespace(trial_id="b")
    for trial in (weak_early, weak_last):
        asha.on_trial_add(None, trial)
    assert asha.on_trial_result(None, weak_early, {"epoch": 1, BEST_SCORE: 0.1}) == \
        TrialScheduler.STOP
    assert asha.on_trial_result(None, weak_last, {"epoch": 2, BEST_SCORE: 0.1}) == \
        TrialScheduler.CONTINUE
