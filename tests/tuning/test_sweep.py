"""Ray-backed sweep tests: a small sweep of 3-domain (digits3) trials, selecting by the acc_im
validator, completes and exports; its best config retrains to the same score; a sweep whose driver is killed resumes to exactly num_samples finished trials.

Three Tune runs in all (one small sweep, one killed driver, one resume), each of 6-step trials.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch

from cdlm_dist.tuning.config import compose_sweep
from cdlm_dist.tuning.driver import run_sweep
from cdlm_dist.tuning.results import (
    IMPORTANCE_PNG,
    LEADERBOARD_FILE,
    PLANE_PNG,
    TRIALS_FILE,
    retrain_overrides,
)
from cdlm_dist.tuning.search import ATTR_ORPHANED, ATTR_RESUMED_FROM
from cdlm_dist.tuning.trainable import ORACLE, RESUME_KEY, STATE_FILE, trial_dir_name
from tests.tuning.conftest import sweep_overrides

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]
KILL_WAIT_S = 300  # the killed driver must finish its first trial within this (slow CI)
POLL_S = 0.1
# 4 epochs of 3 steps: a window of 3 epochs in which the second trial is running with a checkpoint
KILL_TEST_STEPS = ("train.steps=12",)


@pytest.fixture(scope="module")
def small_sweep(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("small")
    # digits3: the N-domain model (two labelled sources, one target) runs unchanged in a sweep
    # sweep.metric=acc_im: trials select by a validator other than the default src_acc
    cfg = compose_sweep(sweep_overrides(out, 4, "sweep.max_concurrent_trials=2", "data=digits3",
                                        "sweep.metric=acc_im"))
    return cfg, run_sweep(cfg, log=lambda *_: None)


def test_small_sweep_finishes_and_exports(small_sweep):
    cfg, summary = small_sweep
    assert summary["finished"] == summary["ran_now"] == 4
    directory = Path(summary["directory"])
    frame = pd.read_parquet(directory / TRIALS_FILE)
    assert len(frame) == 4 and frame["finished"].all()
    for key in ("loss.l_adv", "loss.l_con"):
        assert frame[key].between(0.01, 10.0).all() and frame[key].nunique() == 4
    assert frame["score"].between(0, 1).all() and frame[ORACLE].between(0, 1).all()
    assert summary["score_name"] == "acc_im"
    assert "Ranked by `acc_im`" in (directory / LEADERBOARD_FILE).read_text()
    # selection is by the label-free score among full-budget trials, never by the oracle column
    full = frame[frame["full_budget"]]
    assert summary["best_score"] == full["score"].max()
    assert summary["best_trial"] == full.sort_values(["score", "number"],
                                                     ascending=[False, True])["number"].iloc[0]
    board = (directory / LEADERBOARD_FILE).read_text()
    assert "oracle target acc" in board and summary["retrain_command"] in board
    assert board.count("\n| ") == 1 + 4  # header + one row per finished trial
    for png in (IMPORTANCE_PNG, PLANE_PNG):
        assert (directory / png).stat().st_size > 0


def test_running_a_finished_sweep_again_runs_nothing(small_sweep):
    cfg, first = small_sweep
    again = run_sweep(cfg, log=lambda *_: None)
    assert again["ran_now"] == 0 and again["finished"] == 4
    assert again["best_trial"] == first["best_trial"]


def test_retraining_the_exported_best_reproduces_its_score(small_sweep):
    """cdlm-train on experiment/best.yaml: same seed and config, so the same evaluations."""
    from cdlm_dist.experiment import run_experiment

    _, summary = small_sweep
    directory = Path(summary["directory"])
    retrained = run_experiment(retrain_overrides(directory), log=lambda *_: None)
    assert retrained["preset"] == "digits3"
    assert {"final/test_acc/mnist5k", "final/test_acc/ucidigits",
            "final/test_acc/mnistm_synth"} <= set(retrained)
    assert retrained["selected_score"] == pytest.approx(summary["best_score"], abs=1e-6)
    trial = pd.read_parquet(directory / TRIALS_FILE).set_index("number").loc[
        summary["best_trial"]]
    last = sorted((directory / trial["tune_experiment"] / trial_dir_name(trial["tune_trial_id"]))
                  .glob(f"checkpoint_*/{STATE_FILE}"))[-1]
    trial_history = torch.load(last, weights_only=True)["history"]
    run_ckpt = sorted((directory / "best_run" / "checkpoints").glob("step_*.pt"))[-1]
    assert torch.load(run_ckpt, weights_only=True)["history"] == trial_history


def test_killed_driver_resumes_to_exactly_num_samples(ray_local, tmp_path):
    """SIGKILL the driver (a separate process joined to the test's Ray) once one trial has
    finished and the next has reported an epoch; the same command then finishes the sweep: the
    finished trial is kept, the interrupted one continues from its checkpoint, and exactly
    num_samples trials end up finished."""
    num_samples = 3
    address = ray_local.get_runtime_context().gcs_address
    overrides = sweep_overrides(tmp_path, num_samples, "sweep.max_concurrent_trials=1",
                                "sweep.scheduler=fifo", *KILL_TEST_STEPS)
    log = tmp_path / "killed_driver.log"
    with open(log, "w") as out:
        driver = subprocess.Popen(
            [sys.executable, "-m", "cdlm_dist.cli.sweep", *overrides, f"runner.address={address}"],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    storage = f"sqlite:///{tmp_path / 't' / 'study.db'}"
    try:
        done_before = _wait_for_a_finished_and_a_started_trial(storage, driver, log)
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    assert 1 <= len(done_before) < num_samples

    resumed = run_sweep(compose_sweep(overrides), log=lambda *_: None)

    assert resumed["finished"] == num_samples
    assert resumed["ran_now"] == num_samples - len(done_before)
    study = optuna.load_study(study_name="t", storage=storage)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == num_samples
    for number, (params, value) in done_before.items():  # kept as they were, not rerun
        assert study.trials[number].value == value
        assert sum(t.params == params for t in complete) == 1
    orphans = [t for t in study.trials if t.user_attrs.get(ATTR_ORPHANED)]
    assert len(orphans) == 1 and orphans[0].state.name == "FAIL"
    rerun = [t for t in complete if t.user_attrs.get(ATTR_RESUMED_FROM) == orphans[0].number]
    assert len(rerun) == 1 and rerun[0].params == orphans[0].params
    # it continued from the orphan's checkpoint: no epoch the orphan reported was trained again
    assert RESUME_KEY in rerun[0].user_attrs
    assert min(rerun[0].intermediate_values) > max(orphans[0].intermediate_values)
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["finished"] == num_samples


def _wait_for_a_finished_and_a_started_trial(storage: str, driver: subprocess.Popen, log: Path
                                             ) -> dict[int, tuple[dict, float]]:
    """{number: (params, value)} of the finished trials, once another trial has reported."""
    deadline = time.monotonic() + KILL_WAIT_S
    while time.monotonic() < deadline:
        assert driver.poll() is None, f"the driver exited early:\n{log.read_text()[-3000:]}"
        try:
            trials = optuna.load_study(study_name="t", storage=storage).trials
        except Exception:  # the study or its tables do not exist yet
            trials = []
        done = {t.number: (t.params, t.value) for t in trials if t.state.name == "COMPLETE"}
        if done and any(t.state.name == "RUNNING" and t.intermediate_values for t in trials):
            return done
        time.sleep(POLL_S)
    raise AssertionError(f"the driver did not get there in {KILL_WAIT_S} s:\n"
                         f"{log.read_text()[-3000:]}")
