"""Every config composes and validates; bad configs fail before any work with a named key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from cdlm_dist.config import CONFIG_DIR, Config, ConfigError, compose
from cdlm_dist.tuning.config import SweepRunConfig, register_sweep_schema

PRESETS = sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml"))
METHODS = sorted(p.stem for p in (CONFIG_DIR / "method").glob("*.yaml"))
RECIPES = {"dann_peer": "dann"}
IMAGE_PRESETS = ("office31", "officehome", "domainnet")  # 224 px: they need model=resnet50  # a published recipe of a method keeps the method's label


def test_config_dir_is_the_repository_configs():
    assert CONFIG_DIR.resolve() == (Path(__file__).resolve().parents[1] / "configs").resolve()


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("method", METHODS)
def test_every_preset_and_method_composes(preset, method):
    overrides = [f"data={preset}", f"method={method}"]
    if preset.startswith(IMAGE_PRESETS):
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
    (["train.sync_batchnorm_scope=decoders"], "train.sync_batchnorm_scope"),
    (["train.ddp_bucket_cap_mb=-1"], "train.ddp_bucket_cap_mb"),
    (["train.ddp_broadcast_buffers=false"], "train.ddp_broadcast_buffers"),
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


# --- defaults live in the dataclasses, once -----------------------------------------------------

def _package(path: Path) -> list[str]:
    """Where a configs/ file's keys land: its ``# @package`` line, else its group (primary: root)."""
    for line in path.read_text().splitlines():
        if line.startswith("# @package"):
            package = line.split()[-1]
            return [] if package == "_global_" else package.split(".")
    group = path.parent.relative_to(CONFIG_DIR)
    return [] if str(group) == "." else list(group.parts)


def _restated(node: Any, defaults: Any, key: str) -> list[str]:
    """Dotted keys of ``node`` whose value is the dataclass default at the same place."""
    if isinstance(node, dict) and isinstance(defaults, dict):
        return [k for name, value in node.items() if name in defaults
                for k in _restated(value, defaults[name], f"{key}.{name}".lstrip("."))]
    return [key] if node == defaults else []


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.rglob("*.yaml")),
                         ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_yaml_files_never_restate_a_dataclass_default(path: Path) -> None:
    """configs/ holds only what differs from config.py (the rule in ARCHITECTURE.md), so a
    default changes in one place and a YAML value always means a choice."""
    defaults = OmegaConf.to_container(OmegaConf.structured(SweepRunConfig), resolve=False)
    node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    node.pop("defaults", None)
    for part in reversed(_package(path)):
        node = {part: node}
    restated = _restated(node, defaults, "")
    assert not restated, (f"{path.relative_to(CONFIG_DIR)} restates the defaults of "
                          f"{restated}: delete them there (config.py holds every default)")


def test_the_default_composition_is_the_dataclasses_but_for_the_data_preset() -> None:
    """`cdlm-train` with no overrides runs the schema's defaults: only the preset's domains, the
    run's name and the cdlm method's one [ours] choice are set in YAML."""
    composed = _leaves(OmegaConf.to_container(compose([]), resolve=False))
    schema = _leaves(OmegaConf.to_container(OmegaConf.structured(Config), resolve=False))
    differ = sorted(k for k, value in composed.items() if value != schema[k])
    assert differ == ["data.domains", "data.preset", "model.modulation_grad", "name"]


def _leaves(node: dict, key: str = "") -> dict[str, Any]:
    """{dotted key: value} of a nested dict (lists are values)."""
    out = {}
    for name, value in node.items():
        dotted = f"{key}.{name}".lstrip(".")
        out |= _leaves(value, dotted) if isinstance(value, dict) else {dotted: value}
    return out


def test_an_unknown_group_option_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"runner=rays is not an option .*: local, ray"):
        compose(["runner=rays"])
    for group in ("data", "model", "method", "train"):
        options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
        with pytest.raises(ConfigError, match=f"{group}=nope .*{', '.join(options)}"):
            compose([f"{group}=nope"])
    register_sweep_schema()
    with pytest.raises(ConfigError, match="hparams_search=nope .*adv_con, adv_con_beta_lr"):
        compose(["hparams_search=nope"], config_name="sweep")
