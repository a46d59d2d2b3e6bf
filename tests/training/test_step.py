"""The step's schedules and optimiser: pure functions of the step, as configured."""

from __future__ import annotations

import math

import pytest
import torch

from cdlm_dist.config import compose
from cdlm_dist.model import build_model
from cdlm_dist.training.step import build_optimizer, grl_at, lr_at


def test_dann_lr_stretches_with_the_budget_and_inv_lr_does_not():
    short = compose(["train.steps=1000"])
    long = compose(["train.steps=4000"])
    assert lr_at(500, short) < lr_at(500, long)  # "dann": progress-based
    inv = ["train.lr_schedule=inv", "train.lr=0.01", "train.lr_decay_gamma=0.001"]
    a, b = compose(["train.steps=1000", *inv]), compose(["train.steps=4000", *inv])
    assert lr_at(500, a) == lr_at(500, b) == pytest.approx(0.01 * (1 + 0.5) ** -0.75)
    assert lr_at(0, a) == 0.01
    assert lr_at(777, compose(["train.lr_schedule=constant"])) == 1e-3


def test_grl_warms_up_over_the_run_or_over_a_fixed_horizon():
    run = compose(["train.steps=3000"])
    assert grl_at(0, run) == 0.0
    assert grl_at(1500, run) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    fixed = compose(["train.steps=3000", "loss.grl_horizon=1000", "loss.grl_gamma=1.0"])
    assert grl_at(1000, fixed) == pytest.approx(2 / (1 + math.exp(-1)) - 1)
    assert grl_at(1000, fixed) < grl_at(3000, fixed) < 1.0  # keeps rising past the horizon
    at_once = compose(["loss.grl_horizon=1"])
    assert grl_at(1, at_once) == pytest.approx(1.0, abs=1e-4)


def test_optimizer_is_adam_or_nesterov_sgd_with_weight_decay():
    cfg = compose(["model=lenet"])
    model = build_model(cfg, 2, 10)
    assert isinstance(build_optimizer(model, cfg), torch.optim.Adam)
    sgd_cfg = compose(["model=lenet", "train.optimizer=sgd", "train.weight_decay=0.001"])
    sgd = build_optimizer(model, sgd_cfg)
    assert isinstance(sgd, torch.optim.SGD)
    group = sgd.param_groups[0]
    assert group["momentum"] == 0.9 and group["nesterov"] and group["weight_decay"] == 0.001


def test_method_configs_override_the_train_group():
    """A recipe in method/ sets train.* keys; the train group must not silently undo them."""
    cfg = compose(["method=dann_peer", "model=lenet", "train=long"])
    assert cfg.train.lr == 1e-4 and cfg.train.lr_schedule == "constant"
    assert cfg.data.batch_size == 32 and cfg.model.discriminator_layers == 2
    assert cfg.train.steps == 3000
