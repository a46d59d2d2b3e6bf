"""Accuracy and the label-free IM score against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cdlm_dist.data.domains import Split
from cdlm_dist.evaluation.accuracy import prediction_stats


class FixedLogits(nn.Module):
    """A stand-in model: image i's logits are row i of a table, read from its first pixel."""

    num_classes = 3

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.table = logits

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.round(x[:, 0, 0, 0] * 255).long()
        return index, index

    def classify(self, index: torch.Tensor) -> torch.Tensor:
        return self.table[index]


def _split(n: int, labels: list[int]) -> Split:
    images = torch.zeros(n, 1, 2, 2, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return Split(images=images, labels=torch.tensor(labels))


def _entropy(p: list[float]) -> float:
    return -sum(q * math.log(q) for q in p if q > 0)


def test_confident_and_diverse_predictions_score_the_maximum():
    logits = torch.eye(3) * 50  # one-hot predictions, one image per class
    stats = prediction_stats(FixedLogits(logits), _split(3, [0, 1, 1]), 2, torch.device("cpu"))
    assert stats["acc"] == pytest.approx(2 / 3)
    assert stats["im"] == pytest.approx(math.log(3), abs=1e-4)


def test_im_is_entropy_of_mean_minus_mean_entropy():
    logits = torch.tensor([[2.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    p = torch.softmax(logits, 1)
    expected = _entropy(p.mean(0).tolist()) - sum(_entropy(r.tolist()) for r in p) / 3
    stats = prediction_stats(FixedLogits(logits), _split(3, [0, 0, 2]), 2, torch.device("cpu"))
    assert stats["im"] == pytest.approx(expected, abs=1e-5)
    assert stats["acc"] == pytest.approx(2 / 3)  # argmax of the uniform row is class 0


def test_collapsed_predictions_score_zero():
    logits = torch.tensor([[9.0, 0.0, 0.0]] * 4)  # every image confidently class 0
    stats = prediction_stats(FixedLogits(logits), _split(4, [0, 1, 2, 0]), 3, torch.device("cpu"))
    assert stats["im"] == pytest.approx(0.0, abs=1e-3)


def test_shards_summed_over_ranks_equal_the_whole_split():
    logits = torch.randn(7, 3, generator=torch.Generator().manual_seed(0))
    model, split = FixedLogits(logits), _split(7, [0, 1, 2, 0, 1, 2, 0])
    whole = prediction_stats(model, split, 2, torch.device("cpu"))
    partial: list[torch.Tensor] = []  # each rank's local sums, as all_reduce_sum receives them
    for rank in range(2):
        prediction_stats(model, split, 2, torch.device("cpu"), rank, 2,
                         lambda t: partial.append(t.clone()) or t)
    reduced = prediction_stats(model, split, 2, torch.device("cpu"), 0, 2,
                               lambda t: partial[0] + partial[1])
    assert reduced["acc"] == pytest.approx(whole["acc"])
    assert reduced["im"] == pytest.approx(whole["im"], abs=1e-6)
