"""A sweep's exported files, from a study built by hand (no Ray): they pin the settings a trial
took from its machine, name no absolute path, and mark the rows a killed driver left behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from cdlm_dist.config import compose
from cdlm_dist.tuning.config import compose_sweep, num_epochs, sweep_dir, training_config
from cdlm_dist.tuning.results import (
    LEADERBOARD_FILE,
    RETRAIN_COMMAND,
    SUMMARY_JSON,
    TRIALS_FILE,
    export_results,
    trial_settings,
)
from cdlm_dist.tuning.search import ATTR_ORPHANED, ATTR_RESUMED_FROM
from cdlm_dist.tuning.space import parse_space
from tests.tuning.conftest import sweep_overrides

TRIAL_CPUS = 3  # not torch's default here, and not the test session's 1 thread
TEXT_FILES = (LEADERBOARD_FILE, SUMMARY_JSON, "experiment/best.yaml")


def _trial(state: TrialState, value: float | None, l_adv: float, **attrs):
    dist = FloatDistribution(0.01, 10.0, log=True)
    return create_trial(state=state, value=value, params={"loss.l_adv": l_adv, "loss.l_con": 1.0},
                        distributions={"loss.l_adv": dist, "loss.l_con": dist},
                        user_attrs=attrs)


@pytest.fixture
def exported(tmp_path: Path):
    """Trial 1 was running when its driver was killed; trial 2 reran it; trial 0 is the best."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = compose_sweep(sweep_overrides(tmp_path / "head", 2, f"sweep.trial_cpus={TRIAL_CPUS}"))
    train_cfg = training_config(cfg)
    epochs = num_epochs(train_cfg.train)
    study = optuna.create_study(direction="maximize")
    study.add_trial(_trial(TrialState.COMPLETE, 0.9, 0.5, epoch=epochs))
    study.add_trial(_trial(TrialState.FAIL, None, 2.0, epoch=1, **{ATTR_ORPHANED: True}))
    study.add_trial(_trial(TrialState.COMPLETE, 0.8, 2.0, epoch=epochs,
                           **{ATTR_RESUMED_FROM: 1}))
    directory = sweep_dir(cfg)
    directory.mkdir(parents=True)
    summary = export_results(study, parse_space(cfg.sweep.space, train_cfg), cfg, train_cfg,
                             directory)
    return directory, summary


def test_best_config_pins_the_trials_thread_count(exported) -> None:
    directory, _ = exported
    best = yaml.safe_load((directory / "experiment" / "best.yaml").read_text())
    assert best["train"]["num_threads"] == TRIAL_CPUS
    assert best["loss"]["l_adv"] == 0.5


@pytest.mark.parametrize("overrides, threads", [
    ([f"sweep.trial_cpus={TRIAL_CPUS}"], TRIAL_CPUS),
    (["sweep.trial_cpus=0.5"], 1),
    (["sweep.trial_cpus=2", "train.num_threads=4"], 4),
    (["runner=ray", "runner.cpus_per_worker=2", "sweep.trial_cpus=1"], 2),  # the workers'
])
def test_thread_count_is_the_one_the_trial_used(tmp_path: Path, overrides: list[str],
                                                threads: int) -> None:
    cfg = compose_sweep(sweep_overrides(tmp_path, 2, *overrides))
    assert trial_settings(cfg, training_config(cfg)) == {"train.num_threads": threads}


def test_files_name_no_absolute_path_and_retrain_from_a_copy(exported, tmp_path: Path,
                                                             monkeypatch) -> None:
    """What `cdlm-submit fetch` brings back must hold on another machine, in another folder."""
    directory, summary = exported
    head = str(tmp_path / "head")
    for name in TEXT_FILES:
        assert head not in (directory / name).read_text(), name
    trials = pd.read_parquet(directory / TRIALS_FILE)
    assert not trials.astype(str).apply(lambda col: col.str.contains(head)).any().any()
    written = json.loads((directory / SUMMARY_JSON).read_text())
    assert written["directory"] == "." and written["best_config"] == "experiment/best.yaml"
    assert written["retrain_command"] == RETRAIN_COMMAND == summary["retrain_command"]
    assert summary["directory"] == str(directory)  # the CLI's own copy stays absolute

    fetched = tmp_path / "elsewhere" / "results"
    shutil.copytree(directory, fetched)
    monkeypatch.chdir(fetched)
    retrain = compose(RETRAIN_COMMAND.replace("'", "").split()[1:])
    assert retrain.train.num_threads == TRIAL_CPUS and retrain.loss.l_adv == 0.5
    assert retrain.run_dir == "best_run"  # i.e. inside the fetched sweep directory


def test_orphaned_rows_say_so(exported) -> None:
    directory, _ = exported
    trials = pd.read_parquet(directory / TRIALS_FILE).set_index("number")
    orphan = trials.loc[1]
    assert orphan["state"] == "FAIL" and not orphan["finished"] and orphan[ATTR_ORPHANED]
    assert orphan["note"] == "orphaned: its driver was killed while it ran; rerun as trial 2"
    assert trials.loc[[0, 2], "note"].eq("").all()
    assert trials.loc[2, ATTR_RESUMED_FROM] == 1
    board = (directory / LEADERBOARD_FILE).read_text()
    assert "1 trial(s) (1) were running when a driver was killed" in board
