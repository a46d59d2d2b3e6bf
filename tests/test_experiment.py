"""The label-free summaries that run_experiment derives from a run's history and log."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cdlm_dist.experiment import adversarial_gap, selection_summary
from cdlm_dist.losses import adversarial_chance


def _log(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_adversarial_gap_averages_the_distance_from_chance_over_the_second_half(tmp_path):
    chance = adversarial_chance(2)
    rows = [{"step": 10, "loss/adv": 9.0},  # first half: ignored
            {"step": 20, "loss/adv": chance + 0.5}, {"step": 30, "eval/score": 0.9},
            {"step": 30, "loss/adv": chance - 0.3}, {"step": 40, "loss/adv": chance}]
    gap = adversarial_gap(_log(tmp_path / "m.jsonl", rows), 2)
    assert gap == pytest.approx((0.3 + 0.0) / 2)  # steps 30 and 40 are past half of 40


def test_adversarial_gap_uses_k_way_chance(tmp_path):
    rows = [{"step": s, "loss/adv": adversarial_chance(3)} for s in (1, 2, 3, 4)]
    assert adversarial_gap(_log(tmp_path / "m.jsonl", rows), 3) == pytest.approx(0.0)
    assert adversarial_gap(_log(tmp_path / "m.jsonl", rows), 2) > 0.5


def test_adversarial_gap_is_nan_without_a_discriminator(tmp_path):
    assert math.isnan(adversarial_gap(_log(tmp_path / "m.jsonl", [{"step": 1, "loss/cls": 1}]), 2))
    assert math.isnan(adversarial_gap(tmp_path / "missing.jsonl", 2))


def test_selection_uses_the_score_and_reports_the_oracle_apart():
    history = [{"step": 1, "score": 0.9, "target_acc": 0.2, "target_im": 1.0},
               {"step": 2, "score": 0.95, "target_acc": 0.5, "target_im": 2.0},
               {"step": 3, "score": 0.95, "target_acc": 0.7, "target_im": 0.5}]
    s = selection_summary(history)
    assert s["selected_step"] == 2  # first maximum of the label-free score
    assert s["target_acc_selected"] == 0.5 and s["target_acc_oracle"] == 0.7
    assert s["target_acc_last"] == 0.7
    assert s["target_im_selected"] == 2.0 and s["target_im_last"] == 0.5
