"""Every config composes and validates; bad configs fail before any work with a named key."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdlm_dist.config import CONFIG_DIR, ConfigError, compose

PRESETS = sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml"))
METHODS = sorted(p.stem for p in (CONFIG_DIR / "method").glob("*.yaml"))
RECIPES = {"dann_peer": "dann"}  # a published recipe of a method keeps the method's label


def test_config_dir_is_the_repository_configs():
    assert CONFIG_DIR.resolve() == (Path(__file__).resolve().parents[1] / "configs").resolve()


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("method", METHODS)
def test_every_preset_and_method_composes(preset, method):
    overrides = [f"data={preset}", f"method={method}"]
    if preset.startswith("office31"):
        overrides.append("model=resnet50")
    cfg = compose(overrides)
    assert cfg.method == RECIPES.get(method, method)
    assert len(cfg.data.domains) >= 2


@pytest.mark.parametrize("overrides, key", [
    (["data.image_size=64"], "data.image_size"),
    (["model.modulation=sideways"], "model.modulation"),
    (["model.pairing=everyone"], "model.pairing"),
    (["runner.num_workers=3"], "runner.num_workers"),
    (["data.batch_size=0"], "data.batch_size"),
    (["loss.l_adv=-1"], "loss.l_adv"),
    (["method=dann", "loss.l_rec=1"], "decoder"),
    (["data.domains=[{name: mnist5k, labelled: true}]"], "data.domains"),
    (["data.domains=[{name: mnist5k, labelled: false}, {name: ucidigits, labelled: false}]"],
     "labelled"),
])
def test_invalid_configs_fail_fast_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        compose(overrides)


@pytest.mark.parametrize("override, key", [("model.lattent_dim=3", "model.lattent_dim"),
                                           ("trian.steps=3", "trian.steps"),
                                           ("train.steps=many", "train.steps")])
def test_unknown_keys_and_wrong_types_are_rejected(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        compose([override])


def test_unknown_domain_lists_the_registered_ones():
    from cdlm_dist.data import load_domains

    cfg = compose(["data.domains=[{name: mnist5k, labelled: true}, {name: mnist9k}]"])
    with pytest.raises(ConfigError, match="unknown domain 'mnist9k'.*ucidigits"):
        load_domains(cfg.data)
