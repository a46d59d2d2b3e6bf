"""final_evaluation on a tiny untrained model: documented keys, valid PNGs, grid geometry."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cdlm_dist.config import DomainConfig
from cdlm_dist.data.domains import DomainData, Split
from cdlm_dist.evaluation.metrics import PLOT_FILES, final_evaluation, latents
from cdlm_dist.evaluation.plots import BLOCK_PAD, TILE_PAD, training_curves
from cdlm_dist.model import build_model

MIN_PLOT_SIDE = 200  # a matplotlib figure of a few inches is far larger than this


def _model(cfg, domains: list[DomainData]):
    torch.manual_seed(0)
    return build_model(cfg, len(domains), domains[0].num_classes)


def _expected_grid(k: int, rows: int, side: int) -> tuple[int, int]:
    """(width, height) as PIL reports it: K row blocks of ``rows`` images, K + 1 columns."""
    height = k * (rows * side + (rows - 1) * TILE_PAD) + (k + 1) * BLOCK_PAD
    return (k + 1) * side + (k + 2) * BLOCK_PAD, height


def test_latents_are_eval_mode_mu_of_evenly_spaced_points(eval_setup):
    cfg, domains = eval_setup.cfg, eval_setup.domains
    model = _model(cfg, domains)
    model.train()
    test = domains[0].test
    mu, labels = latents(model, test, batch_size=7, device=torch.device("cpu"), max_points=10)
    assert not model.training
    assert mu.shape == (10, cfg.model.latent_dim) and labels.shape == (10,)
    with torch.no_grad():
        full_mu = model.encode(test.images.float() / 255.0)[1]
    picked = [int((full_mu - row).abs().sum(1).argmin()) for row in mu]
    assert picked[0] == 0 and picked[-1] == len(test) - 1  # spread over the whole split
    assert torch.allclose(mu, full_mu[picked], atol=1e-5)
    assert torch.equal(labels, test.labels[picked])


def test_two_domains_give_documented_keys_and_valid_pngs(eval_setup, tmp_path: Path):
    cfg, domains = eval_setup.cfg, eval_setup.domains
    out = final_evaluation(_model(cfg, domains), domains, cfg, tmp_path)
    src, tgt = (d.name for d in domains)
    assert set(out) == {f"test_acc/{src}", f"test_acc/{tgt}", "target_acc",
                        f"target_im/{tgt}", "target_im",
                        f"hbar_pr/{src}", f"hbar_pr/{tgt}", f"sigma_mean/{src}", f"sigma_mean/{tgt}",
                        f"a_distance/{src}__{tgt}", f"domain_kl/{src}__{tgt}",
                        "plot/translation_grid", "plot/tsne"}  # no metrics.jsonl: no curves
    assert out["target_acc"] == out[f"test_acc/{tgt}"]
    assert out["target_im"] == out[f"target_im/{tgt}"]
    assert 0.0 <= out["target_im"] <= math.log(10) + 1e-6
    assert all(0.0 <= out[f"test_acc/{d}"] <= 1.0 for d in (src, tgt))
    assert 0.0 <= out[f"a_distance/{src}__{tgt}"] <= 2.0
    assert out[f"domain_kl/{src}__{tgt}"] > 0.0
    json.dumps(out)  # what cdlm-eval writes must serialise
    with Image.open(out["plot/translation_grid"]) as grid:
        assert grid.size == _expected_grid(2, cfg.eval.grid_rows, cfg.data.image_size)
    with Image.open(out["plot/tsne"]) as tsne:
        assert min(tsne.size) >= MIN_PLOT_SIDE
    assert Path(out["plot/tsne"]) == tmp_path / PLOT_FILES["tsne"]


def test_three_domains_give_every_pair_and_a_3x4_grid(eval_setup, tmp_path: Path):
    cfg = copy.deepcopy(eval_setup.cfg)
    cfg.data.domains.append(DomainConfig(name="mnist5k_inverted", labelled=False))
    base = eval_setup.domains[0]
    inverted = DomainData("mnist5k_inverted", Split(255 - base.train.images, base.train.labels),
                          Split(255 - base.test.images, base.test.labels))
    domains = [*eval_setup.domains, inverted]
    cfg.eval.a_distance = False  # pairs are checked on the KL keys; the A-distance is slower
    out = final_evaluation(_model(cfg, domains), domains, cfg, tmp_path)
    names = [d.name for d in domains]
    assert sorted(k for k in out if k.startswith("domain_kl/")) == sorted(
        f"domain_kl/{names[i]}__{names[j]}" for i, j in ((0, 1), (0, 2), (1, 2)))
    assert not any(k.startswith("a_distance/") for k in out)
    assert out["target_acc"] == pytest.approx(
        (out[f"test_acc/{names[1]}"] + out[f"test_acc/{names[2]}"]) / 2)
    with Image.open(out["plot/translation_grid"]) as grid:
        assert grid.size == _expected_grid(3, cfg.eval.grid_rows, cfg.data.image_size)
        assert grid.mode == "L"  # one channel in, one channel out
        pixels = torch.from_numpy(np.array(grid))
    side, rows = cfg.data.image_size, cfg.eval.grid_rows
    top = BLOCK_PAD + 2 * (rows * side + (rows - 1) * TILE_PAD + BLOCK_PAD)  # third row block
    first_input = pixels[top:top + side, BLOCK_PAD:BLOCK_PAD + side]
    assert torch.equal(first_input, inverted.test.images[0, 0])  # column 0: the input itself


def test_switches_off_and_no_decoder(eval_setup, tmp_path: Path):
    cfg = copy.deepcopy(eval_setup.cfg)
    cfg.eval.a_distance = cfg.eval.domain_kl = cfg.eval.plots = False
    domains = eval_setup.domains
    out = final_evaluation(_model(cfg, domains), domains, cfg, tmp_path / "off")
    target = domains[1].name
    assert sorted(out) == sorted([f"test_acc/{d.name}" for d in domains]
                                 + [f"{k}/{d.name}" for d in domains
                                    for k in ("hbar_pr", "sigma_mean")]
                                 + ["target_acc", f"target_im/{target}", "target_im"])
    assert not (tmp_path / "off").exists()

    cfg.eval.plots = True
    cfg.model.decoder = "none"
    cfg.data.domains[1].labelled = True  # no target: target_acc is NaN, not an error
    out = final_evaluation(_model(cfg, domains), domains, cfg, tmp_path / "nodec")
    assert "plot/tsne" in out and "plot/translation_grid" not in out
    assert math.isnan(out["target_acc"])


def test_training_curves_from_the_loops_log(tmp_path: Path):
    log = tmp_path / "metrics.jsonl"
    lines = [{"step": 25, "wall_time": 1.0, "loss/total": 3.0, "train/acc": 0.2},
             {"step": 50, "loss/total": 2.0, "train/acc": 0.4},
             {"step": 50, "eval/eval_score": 0.5, "eval/target_acc": 0.3}]
    log.write_text("".join(json.dumps(row) + "\n" for row in lines))
    path = training_curves(log, tmp_path / "curves.png")
    with Image.open(path) as img:
        assert min(img.size) >= MIN_PLOT_SIDE
    assert training_curves(tmp_path / "missing.jsonl", tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
