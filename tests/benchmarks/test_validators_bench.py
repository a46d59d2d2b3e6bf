"""The validator benchmark's statistics: the weighted Spearman correlation and the pick."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from validators import picked, weighted_spearman  # noqa: E402


def test_weighted_spearman_is_one_for_the_same_order_and_minus_one_reversed():
    acc = np.array([0.1, 0.4, 0.2, 0.9, 0.5])
    assert weighted_spearman(acc * 3 + 1, acc) == pytest.approx(1.0)
    assert weighted_spearman(-acc, acc) < -0.99  # not exactly -1: ranks are weighted
    assert math.isnan(weighted_spearman(np.ones(5), acc))  # a constant validator ranks nothing


def test_weighted_spearman_cares_most_about_the_top_of_the_validators_ranking():
    """Two validators each swap one pair of neighbours: at the top it costs more."""
    acc = np.arange(10, dtype=float)
    top_wrong, bottom_wrong = acc.copy(), acc.copy()
    top_wrong[[8, 9]] = top_wrong[[9, 8]]
    bottom_wrong[[0, 1]] = bottom_wrong[[1, 0]]
    assert weighted_spearman(top_wrong, acc) < weighted_spearman(bottom_wrong, acc) < 1.0


def test_pick_is_the_target_accuracy_at_the_highest_score_ignoring_nan():
    frame = pd.DataFrame({"snd": [1.0, math.nan, 3.0, 2.0], "target_acc": [0.5, 0.9, 0.7, 0.6]})
    assert picked(frame, "snd") == 0.7
