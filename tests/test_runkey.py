"""Run cache keys: a changed default or a changed source never reuses an old run."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdlm_dist import runkey

BASE = ["data=mnist_to_usps", "model=lenet", "train=long", "method=cdlm", "train.seed=0"]


def test_key_follows_what_the_run_computes_not_where_it_lives():
    key = runkey.run_key(BASE)
    assert runkey.run_key(BASE) == key
    assert runkey.run_key([*BASE, "run_dir=/elsewhere", "data.root=/other/data"]) == key
    assert runkey.run_key([*BASE, "train.seed=1"]) != key
    assert runkey.run_key([*BASE, "loss.l_adv=0.3"]) != key


def test_a_method_file_and_the_same_overrides_share_a_key():
    recipe = runkey.run_key(["data=mnist_to_usps", "model=lenet", "train=long", "method=dann_peer",
                             "data.image_size=32", "data.channels=3"])
    spelled = runkey.run_key(["data=mnist_to_usps", "model=lenet", "train=long", "method=dann",
                              "model.discriminator_layers=2", "model.discriminator_hidden=256",
                              "train.lr=1e-4", "train.lr_schedule=constant",
                              "data.batch_size=32", "loss.grl_horizon=1", "loss.l_adv=1.0",
                              "data.image_size=32", "data.channels=3"])
    assert recipe == spelled


def test_key_changes_with_the_package_source(monkeypatch: pytest.MonkeyPatch):
    key = runkey.run_key(BASE)
    monkeypatch.setattr(runkey, "source_digest", lambda: "another source tree")
    assert runkey.run_key(BASE) != key


def test_source_digest_covers_every_module_of_the_package():
    import cdlm_dist

    digest = runkey.source_digest()
    assert len(digest) == 64
    assert len(list(Path(cdlm_dist.__file__).parent.rglob("*.py"))) > 20
