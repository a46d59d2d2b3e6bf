"""cdlm-eval round trip on a checkpoint written by a tiny fit, and its errors (exit code 2)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from cdlm_dist.cli.evaluate import (
    EVAL_FILE,
    EXIT_BAD_INPUT,
    config_from_checkpoint,
    default_out_dir,
    main,
    select_weights,
)
from cdlm_dist.config import ConfigError
from cdlm_dist.evaluation.metrics import PLOT_FILES
from cdlm_dist.training.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from cdlm_dist.training.context import RunContext
from cdlm_dist.training.loop import fit

TRAIN_BATCH = 32  # the fit only has to write checkpoints
GRID_ROWS = 2  # passed as an override; differs from the saved config's eval.grid_rows


@pytest.fixture(scope="module")
def mixed_checkpoint(eval_setup, tmp_path_factory) -> Path:
    """A smoke run's last checkpoint with "best" set to its first evaluation's weights, so
    ``--weights best`` and ``--weights last`` must give different models."""
    run = tmp_path_factory.mktemp("run")
    torch.set_num_threads(1)  # before the function-scoped autouse fixture does; far faster here
    cfg = copy.deepcopy(eval_setup.cfg)
    cfg.data.batch_size = TRAIN_BATCH
    fit(cfg, eval_setup.domains, RunContext(run, torch.device("cpu")), progress=False)
    first, last = (load_checkpoint(p) for p in list_checkpoints(run / "checkpoints"))
    last["best"] = {"step": first["step"], "score": 0.0, "model": first["model"]}
    path = run / "checkpoints" / "mixed.pt"
    save_checkpoint(last, path)
    return path


def _history(state: dict, step: int) -> dict[str, float]:
    return next(h for h in state["history"] if h["step"] == step)


def _assert_test_acc(metrics: dict, expected: dict) -> None:
    keys = [k for k in expected if k.startswith("test_acc/")]
    assert keys and all(metrics[k] == pytest.approx(expected[k], abs=1e-6) for k in keys)


def test_round_trip_evaluates_the_selected_weights(mixed_checkpoint: Path, tmp_path: Path,
                                                   eval_setup, capsys):
    state = load_checkpoint(mixed_checkpoint)
    run_dir = mixed_checkpoint.parent.parent
    assert main([str(mixed_checkpoint), f"eval.grid_rows={GRID_ROWS}"]) == 0
    best = json.loads((run_dir / EVAL_FILE).read_text())  # default --out: the run directory
    assert (best["weights"], best["weights_step"]) == ("best", state["best"]["step"])
    _assert_test_acc(best["metrics"], _history(state, state["best"]["step"]))
    assert set(PLOT_FILES) == {k.removeprefix("plot/") for k in best["metrics"]
                               if k.startswith("plot/")}  # metrics.jsonl is there: curves too
    with Image.open(best["metrics"]["plot/translation_grid"]) as grid:
        one_block = GRID_ROWS * eval_setup.cfg.data.image_size
        assert 2 * one_block < grid.size[1] < 2 * (one_block + eval_setup.cfg.data.image_size)
    assert "target_acc" in capsys.readouterr().out

    out = tmp_path / "last"
    assert main([str(mixed_checkpoint), "--weights", "last", "--out", str(out),
                 "eval.plots=false"]) == 0
    last = json.loads((out / EVAL_FILE).read_text())
    assert (last["weights"], last["weights_step"]) == ("last", state["step"])
    _assert_test_acc(last["metrics"], _history(state, state["step"]))
    kl = next(k for k in last["metrics"] if k.startswith("domain_kl/"))
    assert last["metrics"][kl] != pytest.approx(best["metrics"][kl])  # other weights, other mu
    assert not any(k.startswith("plot/") for k in last["metrics"])


@pytest.mark.parametrize("content, message", [(b"not a torch file", "corrupt"),
                                              (None, "no checkpoint file")])
def test_unreadable_checkpoint_is_a_clear_error(tmp_path: Path, capsys, content, message):
    path = tmp_path / "step_0000001.pt"
    if content is not None:
        path.write_bytes(content)
    assert main([str(path)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("cdlm-eval: error:") and message in err and "Traceback" not in err
    assert not (tmp_path / EVAL_FILE).exists()


def test_bad_override_is_a_clear_error(mixed_checkpoint: Path, capsys):
    assert main([str(mixed_checkpoint), "eval.no_such_option=1"]) == EXIT_BAD_INPUT
    assert "no_such_option" in capsys.readouterr().err


def test_best_falls_back_to_last_before_any_evaluation_and_out_dir_default(tmp_path: Path):
    weights = {"w": torch.zeros(1)}
    assert select_weights({"model": weights, "step": 4, "best": None}, "best") == (
        weights, 4, "last")
    assert default_out_dir(tmp_path / "run" / "checkpoints" / "step_0000004.pt") == (
        tmp_path / "run").resolve()
    assert default_out_dir(tmp_path / "elsewhere.pt") == tmp_path.resolve()


def test_checkpoint_with_a_foreign_config_is_a_clear_error(tmp_path: Path, capsys):
    path = tmp_path / "foreign.pt"
    save_checkpoint({"model": {}, "config_yaml": "model:\n  no_such_field: 1\n"}, path)
    assert main([str(path)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "saved config" in err and "no_such_field" in err and "Traceback" not in err


# Scoring a checkpoint on another domain: a preset, one domain, or the list (issue 11, point 5).
CHEAP = ["eval.plots=false", "eval.a_distance=false", "eval.domain_kl=false"]
OTHER_TARGET = {"preset": "data=mnist5k_to_mnistm_synth",
                "one domain": "data.domains.1.name=mnistm_synth",
                "list without spaces": "data.domains=[{name:mnist5k,labelled:true},{name:mnistm_synth}]"}


def test_scores_a_checkpoint_on_another_domain_each_way_alike(mixed_checkpoint: Path,
                                                               tmp_path: Path):
    metrics = {}
    for way, override in OTHER_TARGET.items():
        out = tmp_path / way.replace(" ", "_")
        assert main([str(mixed_checkpoint), "--out", str(out), override, *CHEAP]) == 0, way
        metrics[way] = json.loads((out / EVAL_FILE).read_text())["metrics"]
    assert "test_acc/mnistm_synth" in metrics["preset"]
    assert metrics["preset"] == metrics["one domain"] == metrics["list without spaces"]


@pytest.fixture(scope="module")
def saved_state(eval_setup) -> dict:
    """What config_from_checkpoint reads of a checkpoint: its config (grey, 28 px, 2 domains)."""
    return {"config_yaml": OmegaConf.to_yaml(eval_setup.cfg)}


def test_a_preset_brings_its_domains_in_the_checkpoints_geometry(saved_state, eval_setup):
    cfg = config_from_checkpoint(saved_state, ["data=mnist5k_to_mnistm_synth"])
    assert [(d.name, d.labelled) for d in cfg.data.domains] == [
        ("mnist5k", True), ("mnistm_synth", False)]
    assert cfg.data.preset == "mnist5k_to_mnistm_synth"
    saved = eval_setup.cfg.data  # the weights take grey 28 px: the preset's RGB is converted
    assert (cfg.data.channels, cfg.data.image_size, cfg.data.max_test_per_domain) == (
        saved.channels, saved.image_size, saved.max_test_per_domain)


@pytest.mark.parametrize("override, expected", [
    ("data.preset=mnist_to_usps", "write data=mnist_to_usps"),
    ("data=digits3", "2 domains"),
    ("data=no_such_preset", "mnist_to_usps"),
    ("model=lenet", "data=<preset>"),
    ("data.domains[1].name=usps", "data.domains.1.name=usps"),
    ("data.domains.1=usps", "data.domains.1.name=usps"),
    ("data.domains.2.name=usps", "no domain 2"),
    ("data.domains.1.nam=usps", "'nam'"),
    ("eval.no_such_option=1", "eval.no_such_option"),
], ids=["preset as label", "preset of 3 domains", "unknown preset", "other group", "brackets",
        "bare name", "past the end", "misspelt key", "unknown key"])
def test_wrong_overrides_are_one_line_errors(saved_state, override, expected):
    with pytest.raises(ConfigError) as info:
        config_from_checkpoint(saved_state, [override])
    assert expected in str(info.value) and "\n" not in str(info.value)
