"""Search-space and sweep-config validation: fails before Ray or any trial, naming the key."""

from __future__ import annotations

import pytest

from cdlm_dist.config import ConfigError
from cdlm_dist.tuning.config import training_config
from cdlm_dist.tuning.space import parse_space

LOG = {"type": "loguniform", "low": 0.01, "high": 10.0}


@pytest.fixture(scope="module")
def train_cfg(sweep_cfg):
    return training_config(sweep_cfg)


def test_default_space_is_two_log_uniform_loss_weights(sweep_cfg, train_cfg):
    params = parse_space(sweep_cfg.sweep.space, train_cfg)
    assert [p.key for p in params] == ["loss.l_adv", "loss.l_con"]
    dists = [p.distribution() for p in params]
    assert all(d.log and d.low == 0.01 and d.high == 10.0 for d in dists)


def test_categorical_and_int_parameters_parse(train_cfg):
    space = {"model": {"modulation": {"type": "categorical", "choices": ["swap", "additive"]}},
             "data": {"batch_size": {"type": "int", "low": 16, "high": 64}}}
    mod, bs = parse_space(space, train_cfg)
    assert mod.distribution().choices == ("swap", "additive")
    assert (bs.distribution().low, bs.distribution().high) == (16, 64)


@pytest.mark.parametrize("space, message", [
    ({"loss": {"l_adv": LOG | {"low": -1.0}}}, r"sweep\.space\.loss\.l_adv: low=-1\.0 must be > 0"),
    ({"loss": {"l_con": LOG | {"low": 0.0}}}, r"sweep\.space\.loss\.l_con: low=0\.0 must be > 0"),
    ({"loss": {"l_adv": LOG | {"low": 5.0, "high": 1.0}}},
     r"sweep\.space\.loss\.l_adv: low=5\.0 must be below high=1\.0"),
    ({"loss": {"l_advv": LOG}}, r"sweep\.space\.loss\.l_advv: unknown parameter 'loss\.l_advv'"),
    ({"optim": {"lr": LOG}}, r"unknown parameter 'optim\.lr'"),
    ({"loss": {"l_adv": LOG | {"type": "lognormal"}}},
     r"sweep\.space\.loss\.l_adv\.type='lognormal' is not a distribution type"),
    ({"loss": {"l_adv": LOG | {"lo": 1}}}, r"sweep\.space\.loss\.l_adv: unknown field"),
    ({"model": {"modulation": {"type": "categorical", "choices": ["swap", "bogus"]}}},
     r"sweep\.space\.model\.modulation: a trial with model\.modulation='bogus'"),
    ({"loss": {"beta": {"type": "uniform", "low": -1.0, "high": 1.0}}},
     r"sweep\.space\.loss\.beta: a trial with loss\.beta=-1\.0 would be invalid"),
    ({"train": {"log_every": {"type": "uniform", "low": 1.5, "high": 4.0}}},
     r"sweep\.space\.train\.log_every: cannot set"),
    ({"data": {"max_train_per_domain": {"type": "int", "low": 1, "high": 9}}},
     r"'data\.max_train_per_domain' cannot be searched"),
    ({"train": {"seed": {"type": "int", "low": 0, "high": 3}}}, r"'train\.seed' cannot be searched"),
    ({"loss": {"type": "uniform", "low": 0.0, "high": 1.0}}, r"'loss' is a section"),
    ({"loss": {"l_adv": 0.5}}, r"sweep\.space\.loss\.l_adv=0\.5 must be a mapping"),
    ({}, r"sweep\.space is empty"),
])
def test_invalid_space_names_the_key(train_cfg, space, message):
    with pytest.raises(ConfigError, match=message):
        parse_space(space, train_cfg)


def test_bad_space_fails_before_ray_or_the_study(tmp_path, monkeypatch):
    """The CLI path: a negative log bound given as an override stops before anything starts."""
    from cdlm_dist.cli import sweep as cli
    from cdlm_dist.tuning import driver

    def must_not_run(*_args, **_kwargs):
        raise AssertionError("started work for an invalid search space")

    monkeypatch.setattr(driver, "open_study", must_not_run)
    monkeypatch.setattr(driver, "start_ray", must_not_run)
    from tests.tuning.conftest import sweep_overrides

    code = cli.main(sweep_overrides(tmp_path, 2, "sweep.space.loss.l_adv.low=-0.5"))
    assert code == cli.EXIT_BAD_INPUT
    assert not (tmp_path / "t" / "study.db").exists()


def test_target_metrics_cannot_be_optimised(tmp_path):
    from cdlm_dist.tuning.config import compose_sweep
    from tests.tuning.conftest import sweep_overrides

    with pytest.raises(ConfigError, match=r"sweep\.metric='oracle_target_acc' is not a label-free"):
        compose_sweep(sweep_overrides(tmp_path, 2, "sweep.metric=oracle_target_acc"))


def test_resuming_with_another_search_space_is_refused(sweep_cfg, tmp_path):
    from cdlm_dist.tuning.driver import check_same_sweep

    check_same_sweep(sweep_cfg, tmp_path)  # the first run records the config
    more = sweep_cfg.copy()
    more.sweep.num_samples = 8  # extending a sweep is allowed
    check_same_sweep(more, tmp_path)
    other = sweep_cfg.copy()
    other.sweep.space.loss.l_adv.high = 100.0
    with pytest.raises(ConfigError, match=r"sweep\.space\.loss\.l_adv\.high: 10\.0 -> 100\.0"):
        check_same_sweep(other, tmp_path)
