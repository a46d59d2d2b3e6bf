"""Label-free selection: which weights a run keeps, and what it reports to Ray and Tune."""

from __future__ import annotations

import torch

from cdlm_dist.training.selection import (
    BEST_SCORE,
    EVAL_SCORE,
    ORACLE,
    Selection,
    progress_metrics,
    selection_summary,
)


def test_summary_selects_on_the_score_and_reports_the_oracle_apart():
    history = [{"step": 1, EVAL_SCORE: 0.9, "target_acc": 0.2, "target_im": 1.0},
               {"step": 2, EVAL_SCORE: 0.95, "target_acc": 0.5, "target_im": 2.0},
               {"step": 3, EVAL_SCORE: 0.95, "target_acc": 0.7, "target_im": 0.5}]
    s = selection_summary(history)
    assert s["selected_step"] == 2  # first maximum of the label-free score
    assert s["target_acc_selected"] == 0.5 and s["target_acc_oracle"] == 0.7
    assert s["target_acc_last"] == 0.7
    assert s["target_im_selected"] == 2.0 and s["target_im_last"] == 0.5


def test_progress_metrics_are_label_free_except_the_oracle_column():
    history = [{"step": 3, EVAL_SCORE: 0.7, "target_acc": 0.4, "val_acc/a": 0.7, "test_acc/b": 0.4},
               {"step": 6, EVAL_SCORE: 0.6, "target_acc": 0.5, "val_acc/a": 0.6, "test_acc/b": 0.5}]
    m = progress_metrics(history, 6, interval=3)
    assert m["epoch"] == 2 and m["step"] == 6
    assert m[BEST_SCORE] == 0.7  # the best so far: the score of the weights a run selects
    assert m[EVAL_SCORE] == 0.6
    assert m[ORACLE] == 0.4  # target accuracy of the selected weights, not the best one (0.5)
    assert not any("target" in k or "test_acc" in k for k in m if k != ORACLE)
    assert progress_metrics([], 2, interval=3) == {"epoch": 1, "step": 2}  # before any eval


def test_selection_keeps_the_first_best_weights_and_survives_a_checkpoint():
    model = torch.nn.Linear(2, 1)
    selection = Selection()
    assert selection.update(1, 0.5, model)
    kept = selection.state["weight"].clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    assert not selection.update(2, 0.5, model)  # a tie keeps the earlier weights
    assert torch.equal(selection.state["weight"], kept)
    assert selection.update(3, 0.6, model)
    restored = Selection.from_checkpoint(selection.to_checkpoint())
    assert (restored.step, restored.score) == (3, 0.6)
    assert torch.equal(restored.state["weight"], model.weight.detach())
    assert Selection.from_checkpoint(None).state is None
