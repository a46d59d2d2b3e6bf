"""The label-free summaries that run_experiment derives from a run's history and log."""

from __future__ import annotations

import math

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
