"""The variant study's label-free rule (docs/studies.md section 2) reads no target labels."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from accuracy import label_free_choice  # noqa: E402


def _rows(name, val, im, gaps):
    return [{"variant": name, "preset": p, "selected_score": val, "target_im_selected": im,
             "adv_gap": g, "target_acc_selected": 0.0} for p, g in zip(("a", "b"), gaps)]


def test_rule_drops_unbalanced_games_then_takes_source_val_with_im_as_tie_break():
    df = pd.DataFrame(_rows("cdlm", 0.980, 1.0, (0.10, 0.20))
                      + _rows("unbalanced", 0.999, 2.0, (0.10, 0.60))  # > 2 x 0.20 on pair b
                      + _rows("close_low_im", 0.9905, 1.1, (0.1, 0.1))
                      + _rows("close_high_im", 0.9900, 1.5, (0.1, 0.1)))
    winner, why = label_free_choice(df, ["cdlm", "unbalanced", "close_low_im", "close_high_im"],
                                    "cdlm")
    assert winner == "close_high_im"  # 0.05 points apart: a tie, broken by IM
    assert "unbalanced: " in why and "dropped" in why.split("unbalanced: ")[1].split("\n")[0]


def test_rule_ignores_target_accuracy():
    df = pd.DataFrame(_rows("cdlm", 0.99, 1.0, (0.1, 0.1)) + _rows("other", 0.98, 1.0, (0.1, 0.1)))
    df.loc[df["variant"] == "other", "target_acc_selected"] = 1.0
    assert label_free_choice(df, ["cdlm", "other"], "cdlm")[0] == "cdlm"


def test_a_run_is_found_by_its_key_whatever_variant_name_made_it(tmp_path):
    from accuracy import Job

    made = tmp_path / "runs" / "mnist_to_usps__old_name__seed0__abc123"
    (made).mkdir(parents=True)
    (made / "summary.json").write_text("{}")
    job = Job("mnist_to_usps", "new_name", 0, (), "abc123", str(tmp_path), "")
    assert job.run_dir == made and job.finished
    fresh = Job("mnist_to_usps", "new_name", 0, (), "def456", str(tmp_path), "")
    assert fresh.run_dir.name == "mnist_to_usps__new_name__seed0__def456" and not fresh.finished
