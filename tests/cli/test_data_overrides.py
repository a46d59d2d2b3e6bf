"""Choosing data from the command line in cdlm-train: presets, one domain, and one-line errors
that show how to write it (issue 11, point 5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdlm_dist.cli.train import EXIT_BAD_INPUT, main
from cdlm_dist.config import ConfigError, compose

SYNTH_TARGET = [("mnist5k", True), ("mnistm_synth", False)]


def _domains(cfg) -> list[tuple[str, bool]]:
    return [(d.name, d.labelled) for d in cfg.data.domains]


@pytest.mark.parametrize("overrides", [
    ["data=mnist5k_to_mnistm_synth"],
    ["data.domains.1.name=mnistm_synth"],  # one domain of the default preset
    ["data.domains=[{name:mnist5k,labelled:true},{name:mnistm_synth}]"],  # no spaces
    ["data.domains=[{name: mnist5k, labelled: true}, {name: mnistm_synth}]"],
    ["data.domains.1={name: mnistm_synth}"],
], ids=["preset", "one domain", "list without spaces", "list", "one domain as a dict"])
def test_each_way_of_choosing_domains_composes(overrides):
    assert _domains(compose(overrides)) == SYNTH_TARGET


@pytest.mark.parametrize("overrides", [
    ["data.domains=[{name: mnist5k, labelled: true}, {name: mnistm_synth}]", "data.preset=mine"],
    ["data=mnist_to_usps", "data.preset=mnist_to_usps"],
])
def test_preset_as_a_label_is_accepted(overrides):
    assert compose(overrides).data.preset == overrides[-1].split("=")[1]


@pytest.mark.parametrize("overrides, expected", [
    # a preset's name as a label, with other domains: it would only rename the run
    (["data.preset=mnist_to_usps"], "write data=mnist_to_usps"),
    (["data.domains[1].name=usps"], "data.domains.1.name=usps"),
    (["data.domains=[mnist5k,usps]"], "{name: mnist5k, labelled: true}"),
    (["data.domains.1=usps"], "data.domains.1.name=usps"),
    (["data.domains.2.name=usps"], "no domain 2"),
    (["data.domains.x.name=usps"], "data.domains.1.name="),
    (["data.domains.1={name: usps, labeled: true}"], "'labeled'"),
    (["data.domains.1.nam=usps"], "'nam'"),
    (["data.domains=[{name: mnist5k, labelled: true}, {name: usps}"], "data.domains="),
], ids=["preset as label", "brackets", "bare names", "bare name for one", "past the end",
        "index not a number", "misspelt key in dict", "misspelt key", "unclosed list"])
def test_wrong_data_syntax_is_one_line_that_shows_the_right_form(overrides, expected):
    with pytest.raises(ConfigError) as info:
        compose(overrides)
    message = str(info.value)
    assert expected in message and "\n" not in message


def test_cdlm_train_prints_the_data_error_as_one_line(tiny_overrides, capsys):
    run_dir = Path(tiny_overrides[-1].split("=", 1)[1])
    assert main(tiny_overrides + ["data.preset=mnist_to_usps"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.startswith("cdlm-train: error:") and "data=mnist_to_usps" in err
    assert "\n" not in err and not run_dir.exists()


def test_a_run_with_overridden_domains_gets_its_own_name_and_folder():
    """Named after the preset, it would resume the preset's checkpoint in the preset's folder."""
    from cdlm_dist.config import compose

    preset = compose([])
    changed = compose(["data.domains.1.name=usps"])
    assert changed.data.preset == "mnist5k_to_usps"
    assert changed.run_dir != preset.run_dir and changed.name == "cdlm_mnist5k_to_usps"
    relabelled = compose(["data.domains.1.labelled=true"])  # same names, another task
    assert relabelled.run_dir != preset.run_dir
    clash = compose(["data.domains.1.name=mnistm_synth"])  # a preset's name, not its settings
    assert clash.data.preset == "mnist5k_to_mnistm_synth_custom"
    assert compose(["data=mnist_to_usps", "data.preset=my_label"]).name == "cdlm_my_label"
