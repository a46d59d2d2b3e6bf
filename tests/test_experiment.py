"""The label-free summaries that run_experiment derives from a run's history and log."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from cdlm_dist.experiment import adversarial_gap
from cdlm_dist.losses import adversarial_chance


def test_adversarial_gap_averages_the_distance_from_chance_over_the_second_half():
    chance = adversarial_chance(2)
    rows = [{"step": 10, "loss/adv": 9.0},  # first half: ignored
            {"step": 20, "loss/adv": chance + 0.5}, {"step": 30, "eval/eval_score": 0.9},
            {"step": 30, "loss/adv": chance - 0.3}, {"step": 40, "loss/adv": chance}]
    gap = adversarial_gap(rows, 2)
    assert gap == pytest.approx((0.3 + 0.0) / 2)  # steps 30 and 40 are past half of 40


def test_adversarial_gap_uses_k_way_chance():
    rows = [{"step": s, "loss/adv": adversarial_chance(3)} for s in (1, 2, 3, 4)]
    assert adversarial_gap(rows, 3) == pytest.approx(0.0)
    assert adversarial_gap(rows, 2) > 0.5


def test_adversarial_gap_is_nan_without_a_discriminator():
    assert math.isnan(adversarial_gap([{"step": 1, "loss/cls": 1}], 2))
    assert math.isnan(adversarial_gap([], 2))


@pytest.mark.ray
def test_a_run_the_cluster_cannot_host_writes_nothing(ray_local, tiny_overrides, tmp_path):
    from cdlm_dist.config import ConfigError
    from cdlm_dist.experiment import run_experiment

    with pytest.raises(ConfigError, match="runner.num_workers=8"):
        run_experiment(tiny_overrides + ["runner=ray", "runner.num_workers=8",
                                         "data.batch_size=64"], log=lambda *_: None)
    assert not (tmp_path / "run").exists()


def test_the_source_only_baseline_is_trained_once_and_then_reused(tiny_domains, tmp_path):
    from cdlm_dist.experiment import run_experiment
    from tests.conftest import TINY

    def run(name: str) -> dict:
        return run_experiment(TINY + ["eval.baseline=true", f"run_dir={tmp_path / name}"],
                              log=lambda *_: None)

    first, second = run("a"), run("b")
    assert not first["baseline_source_only_reused"] and second["baseline_source_only_reused"]
    assert first["baseline_source_only_run"] == second["baseline_source_only_run"]
    assert Path(first["baseline_source_only_run"]).parent == tmp_path / "baselines"
    assert (first["baseline_source_only_target_acc_selected"]
            == second["baseline_source_only_target_acc_selected"])
    other_seed = run_experiment(TINY + ["eval.baseline=true", "train.seed=1",
                                        f"run_dir={tmp_path / 'c'}"], log=lambda *_: None)
    assert not other_seed["baseline_source_only_reused"]  # another seed: its own baseline
