"""Label-free model selection: the one place that says which weights a run keeps and reports.

Every evaluation of the loop has an ``eval_score``: the score of the label-free validator
``train.select_by`` names (:mod:`cdlm_dist.evaluation.validators`; by default the mean validation
accuracy of the labelled domains, docs/method.md section 5). Each validator's own score is
recorded beside it as ``validator/<name>``. :class:`Selection` keeps the weights at the best
score so far (``best_score``); it travels inside every checkpoint, so a
resumed run, the Ray driver and a Tune trial all select the same weights. Target accuracy is
recorded beside each evaluation only to report it: "selected" is the target accuracy at the best
score, "oracle" the best target accuracy at any evaluation (it uses target labels, so it is named
as such and never chooses anything).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

EVAL_SCORE = "eval_score"  # this evaluation's label-free score (of train.select_by)
BEST_SCORE = "best_score"  # the best eval_score so far: the score of the selected weights
ORACLE = "oracle_target_acc"  # target accuracy of the selected weights: reported, never used


@dataclass
class Selection:
    """The weights at the best ``eval_score`` so far, and where they were found."""

    step: int = -1
    score: float = -math.inf
    state: dict[str, torch.Tensor] | None = None

    def update(self, step: int, eval_score: float, model: torch.nn.Module) -> bool:
        """Keep ``model``'s weights if ``eval_score`` beats the best (the first of ties wins;
        a NaN score, a validator that could not score, never beats a number)."""
        if self.state is not None and _rank(eval_score) <= _rank(self.score):
            return False
        self.step, self.score = step, eval_score
        self.state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return True

    def to_checkpoint(self) -> dict[str, Any] | None:
        if self.state is None:
            return None
        return {"step": self.step, "score": self.score, "model": self.state}

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any] | None) -> Selection:
        if saved is None:
            return cls()
        return cls(step=saved["step"], score=saved["score"], state=saved["model"])


def _rank(score: float) -> float:
    """The order of scores: NaN below every number."""
    return -math.inf if math.isnan(score) else score


def selection_summary(history: list[dict[str, float]]) -> dict[str, float]:
    """Target accuracy under each named selection rule, from the evaluation history.

    - ``selected``: at the evaluation with the best label-free score (the first of ties)
    - ``last``: at the final step
    - ``oracle``: the best at any evaluation; it peeks at target labels, so it is only reported
    """
    if not history:
        return {}
    best = max(history, key=lambda h: _rank(h[EVAL_SCORE]))  # first maximum: earliest on ties
    return {
        "selected_step": best["step"],
        "selected_score": best[EVAL_SCORE],
        "target_acc_selected": best["target_acc"],
        "target_acc_last": history[-1]["target_acc"],
        "target_acc_oracle": max(h["target_acc"] for h in history),
        "target_im_selected": best.get("target_im", math.nan),  # label-free, for comparing runs
        "target_im_last": history[-1].get("target_im", math.nan),
    }


def progress_metrics(history: list[dict[str, float]], step: int, interval: int
                     ) -> dict[str, float]:
    """What a run reports at a checkpoint (to Ray Train, and through it or directly to Tune).

    ``epoch`` counts checkpoint intervals of ``interval`` steps (the last one ends at the final
    step), the unit ASHA stops trials by. ``best_score`` and ``eval_score`` are label-free;
    ``oracle_target_acc`` uses target labels and is only recorded. No other target metric is
    passed on, so no scheduler or searcher can climb it.
    """
    progress = {"epoch": -(-step // interval), "step": step}
    if not history:  # a checkpoint before the first evaluation
        return progress
    selected = selection_summary(history)
    last = history[-1]
    return progress | {
        BEST_SCORE: selected["selected_score"], EVAL_SCORE: last[EVAL_SCORE],
        ORACLE: selected["target_acc_selected"], "selected_step": selected["selected_step"],
        **{k: v for k, v in last.items() if k.startswith("val_acc/")}}
