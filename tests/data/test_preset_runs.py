"""Every preset runs, not just composes: each data preset, method and model trains 2 steps.

File-backed datasets are this folder's tiny fakes (conftest.py), written in the on-disk layouts
the loaders read, so no test needs the network or real data. Runs go through run_experiment
with the local runner, the road `cdlm-train` takes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cdlm_dist.config import CONFIG_DIR, compose
from cdlm_dist.experiment import run_experiment

PRESETS = sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml"))
METHODS = sorted(p.stem for p in (CONFIG_DIR / "method").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
FILE_PRESET = "mnist_to_usps"  # fakes load in milliseconds: the preset methods and models run on
# The fake of each file-backed domain (conftest.py); embedded domains need none.
FAKES = {"mnist": "mnist_files", "usps": "usps_files", "svhn": "svhn_files",
         "mnistm": "mnistm_files", "imagefolder": "image_folder"}
IMAGE_PRESETS = ("office31", "officehome", "domainnet")  # 224 px image-folder presets
# 2 steps of batch 4 (the fakes hold 10-30 images a split), one evaluation, nothing else.
RUN = ["train.steps=2", "train.log_every=1", "train.eval_every=2", "train.checkpoint_every=2",
       "train.progress=false", "data.batch_size=4", "data.max_train_per_domain=64",
       "data.max_test_per_domain=16", "eval.plots=false", "eval.a_distance=false",
       "eval.domain_kl=false", "eval.baseline=false"]


def _fake_data(overrides: list[str], request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """Write the fakes of the file-backed domains ``overrides`` train on; their data.root."""
    for domain in compose(overrides).data.domains:
        fixture = FAKES.get(domain.name.split(":")[0])
        if fixture:
            request.getfixturevalue(fixture)  # fixtures write into this test's tmp_path
    amazon = tmp_path / "office31" / "amazon"
    for domain in compose(overrides).data.domains:  # image_folder writes amazon; every other
        folder = domain.name.split(":", 1)[1] if domain.name.startswith("imagefolder:") else ""
        if folder and amazon.is_dir() and not (tmp_path / folder).exists():  # folder copies it
            shutil.copytree(amazon, tmp_path / folder)
    return tmp_path


def _runs(overrides: list[str], request: pytest.FixtureRequest, tmp_path: Path) -> None:
    root = _fake_data(overrides, request, tmp_path)
    summary = run_experiment([*overrides, *RUN, f"data.root={root}",
                              f"run_dir={tmp_path / 'run'}"])
    assert summary["steps"] == 2
    assert 0.0 <= summary["target_acc_selected"] <= 1.0


@pytest.mark.parametrize("preset", PRESETS)
def test_every_data_preset_trains(preset: str, request: pytest.FixtureRequest,
                                  tmp_path: Path) -> None:
    overrides = [f"data={preset}"]
    if preset.startswith(IMAGE_PRESETS):  # their 224 px ResNet-50 costs seconds a step; the
        # model runs below, so the preset's data runs on LeNet at 32 px here
        overrides += ["model=lenet", "data.image_size=32"]
    _runs(overrides, request, tmp_path)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains(method: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    _runs([f"data={FILE_PRESET}", f"method={method}"], request, tmp_path)


@pytest.mark.parametrize("model", MODELS)
def test_every_model_trains(model: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    overrides = [f"data={FILE_PRESET}", f"model={model}"]
    if model == "resnet50":
        overrides.append("data.image_size=64")  # the smallest size validate() allows
    _runs(overrides, request, tmp_path)
