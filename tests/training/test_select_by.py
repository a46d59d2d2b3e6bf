"""Selecting by a named validator: the loop's checkpoint (train.select_by), the sweep's metric
(sweep.metric=<validator>), and the errors for names that are not label-free validators."""

from __future__ import annotations

import math

import pytest
import torch

from cdlm_dist.config import ConfigError, compose
from cdlm_dist.evaluation.validators import VALIDATORS, validator_key
from cdlm_dist.training.selection import BEST_SCORE, EVAL_SCORE, Selection, selection_summary
from tests.conftest import TINY

STEPS = ["train.steps=8", "train.checkpoint_every=4", "train.eval_every=2", "train.log_every=2"]


def test_unknown_validator_is_one_line_listing_the_registry():
    with pytest.raises(ConfigError) as err:
        compose([*TINY, "train.select_by=target_acc"])
    message = str(err.value)
    assert "\n" not in message and "train.select_by='target_acc'" in message
    assert all(name in message for name in VALIDATORS)


def test_a_nan_score_never_beats_a_number():
    model = torch.nn.Linear(1, 1)
    selection = Selection()
    assert selection.update(1, math.nan, model)  # the first evaluation is kept, whatever it is
    assert selection.update(2, 0.1, model) and selection.step == 2
    assert not selection.update(3, math.nan, model)
    history = [{"step": 1, EVAL_SCORE: math.nan, "target_acc": 0.9},
               {"step": 2, EVAL_SCORE: 0.1, "target_acc": 0.2}]
    assert selection_summary(history)["selected_step"] == 2


def test_loop_selects_by_the_named_validator_and_records_them_all(tiny_domains, tmp_path):
    from cdlm_dist.training.context import RunContext
    from cdlm_dist.training.loop import fit

    cfg = compose([*TINY, *STEPS, "train.select_by=snd", f"run_dir={tmp_path}"])
    result = fit(cfg, tiny_domains, RunContext(tmp_path, "cpu"), progress=False)
    for entry in result.history:
        assert entry[EVAL_SCORE] == entry[validator_key("snd")]
        assert all(validator_key(name) in entry for name in VALIDATORS)
    best = max(result.history, key=lambda h: h[validator_key("snd")])
    assert selection_summary(result.history)["selected_step"] == best["step"]


def test_sweep_metric_names_a_validator_and_trials_select_by_it(tmp_path):
    from cdlm_dist.tuning.config import compose_sweep, training_config, tune_metric
    from tests.tuning.conftest import sweep_overrides

    cfg = compose_sweep(sweep_overrides(tmp_path, 2, "sweep.metric=snd"))
    assert training_config(cfg).train.select_by == "snd"  # what every trial trains with
    assert tune_metric(cfg.sweep.metric) == BEST_SCORE  # ... and the score Tune climbs
    assert tune_metric("eval_score") == EVAL_SCORE
    with pytest.raises(ConfigError, match="sweep.metric=snd .* train.select_by=dev"):
        compose_sweep(sweep_overrides(tmp_path, 2, "sweep.metric=snd", "train.select_by=dev"))
    with pytest.raises(ConfigError, match=r"choose one of .*'snd'"):
        compose_sweep(sweep_overrides(tmp_path, 2, "sweep.metric=target_acc"))


def test_searcher_and_asha_climb_best_score_for_a_validator_metric(tmp_path):
    import optuna
    from optuna.distributions import FloatDistribution

    from cdlm_dist.tuning.config import compose_sweep
    from cdlm_dist.tuning.search import make_scheduler, make_searcher
    from tests.tuning.conftest import sweep_overrides

    cfg = compose_sweep(sweep_overrides(tmp_path, 2, "sweep.metric=dev"))
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    searcher = make_searcher(cfg, {"loss.l_adv": FloatDistribution(0.01, 10.0, log=True)},
                             storage, "tune_0", trials_so_far=0)
    searcher.suggest("a")
    searcher.on_trial_complete("a", {BEST_SCORE: -0.7, "epoch": 2})
    (trial,) = optuna.load_study(study_name=cfg.sweep.study_name, storage=storage).trials
    assert trial.value == -0.7
    assert make_scheduler(cfg, 2, searcher.study).metric == BEST_SCORE


def test_the_run_summary_names_the_validator_it_selected_by():
    from cdlm_dist.experiment import format_summary

    summary = {"name": "r", "preset": "p", "steps": 6, "train_seconds": 1.0, "selected_step": 3,
               "selected_score": 0.5, "select_by": "snd"}
    table = format_summary(summary)
    assert "selected at step (best snd)" in table and "snd (selection score)" in table
    assert "source val" not in table
