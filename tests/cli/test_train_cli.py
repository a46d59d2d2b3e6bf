"""cdlm-train end to end on tiny budgets: run directory contents, resume, bad input, 3 domains."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from PIL import Image

from cdlm_dist.cli.train import EXIT_BAD_INPUT, main


def test_train_writes_a_complete_run_directory_with_baseline(tiny_overrides, capsys):
    run_dir = Path(tiny_overrides[-1].split("=", 1)[1])
    assert main(tiny_overrides + ["eval.baseline=true", "eval.domain_kl=true"]) == 0
    out = capsys.readouterr().out
    assert "TARGET ACC (selected, label-free)" in out and "gain over source-only" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["selected_step"] in (3, 6)
    assert 0.0 <= summary["target_acc_selected"] <= summary["target_acc_oracle"] <= 1.0
    assert "baseline_source_only_target_acc_selected" in summary
    assert "final/domain_kl/mnist5k__ucidigits" in summary
    assert "method: cdlm" in (run_dir / "config.yaml").read_text()
    metrics = pd.read_parquet(run_dir / "metrics.parquet")
    assert list(metrics["step"]) == [2, 3, 4, 6]
    assert (run_dir / "checkpoints" / "step_0000006.pt").exists()
    base = json.loads((Path(summary["baseline_source_only_run"]) / "summary.json").read_text())
    assert base["method"] == "source_only"
    assert Path(summary["baseline_source_only_run"]).parent == run_dir.parent / "baselines"


def test_second_start_resumes_instead_of_retraining(tiny_overrides):
    run_dir = Path(tiny_overrides[-1].split("=", 1)[1])
    assert main(tiny_overrides) == 0
    first = (run_dir / "metrics.jsonl").read_text()
    assert main(tiny_overrides) == 0  # finds step 6 done: nothing is retrained or re-logged
    assert (run_dir / "metrics.jsonl").read_text() == first


def test_bad_key_fails_before_anything_is_written(tmp_path, capsys):
    run_dir = tmp_path / "never"
    assert main([f"run_dir={run_dir}", "model.lattent_dim=3"]) == EXIT_BAD_INPUT
    assert "model.lattent_dim" in capsys.readouterr().err
    assert not run_dir.exists()


def test_missing_dataset_names_the_files_before_training(tmp_path, capsys):
    run_dir = tmp_path / "never"
    code = main([f"run_dir={run_dir}", "data=mnist_to_usps", f"data.root={tmp_path / 'nodata'}"])
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte" in err and "data.root" in err
    assert not run_dir.exists()


def test_three_domain_run_reports_each_domain_and_draws_the_k_by_k_grid(tiny_overrides, capsys):
    run_dir = Path(tiny_overrides[-1].split("=", 1)[1])
    assert main(tiny_overrides + ["data=digits3", "eval.plots=true", "eval.tsne_points=60"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    printed = capsys.readouterr().out
    for domain in ("mnist5k", "ucidigits", "mnistm_synth"):
        assert f"final/test_acc/{domain}" in summary
        assert f"test acc {domain}" in printed  # the closing table names every domain
    grid = Image.open(run_dir / "translation_grid.png")
    rows = 3 * 8  # K row blocks of eval.grid_rows images
    assert grid.size[1] >= rows * 28 and grid.size[0] >= 4 * 28  # input + K translations
