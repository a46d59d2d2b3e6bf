"""Embedded domains: documented shapes, dtypes and label ranges, and determinism."""

from __future__ import annotations

import pytest
import torch

from cdlm_dist.config import DataConfig
from cdlm_dist.data import DOMAINS, load_domain

NATIVE = {  # name -> (train shape, test shape), as documented in cdlm_dist/data/embedded.py
    "mnist5k": ((4000, 28, 28), (1000, 28, 28)),
    "ucidigits": ((1438, 28, 28), (359, 28, 28)),  # 8 x 8 framed like MNIST
    "mnistm_synth": ((4000, 3, 28, 28), (1000, 3, 28, 28)),
}


@pytest.fixture(scope="module")
def raw():
    """Each embedded domain's native splits, loaded once (mnistm_synth takes seconds)."""
    return {name: DOMAINS[name](DataConfig(), 0) for name in NATIVE}


@pytest.mark.parametrize("name", sorted(NATIVE))
def test_native_shapes_dtypes_and_labels(raw, name):
    domain = raw[name]
    for split, shape in zip((domain.train, domain.test), NATIVE[name]):
        assert tuple(split.images.shape) == shape
        assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
        assert split.labels.unique().tolist() == list(range(10))  # all classes, nothing else
    assert domain.num_classes == 10


def test_mnist5k_is_balanced_and_full_range(raw):
    labels = torch.cat([raw["mnist5k"].train.labels, raw["mnist5k"].test.labels])
    assert labels.bincount().tolist() == [500] * 10
    assert int(raw["mnist5k"].train.images.max()) == 255


def test_ucidigits_are_framed_like_mnist(raw):
    images = raw["ucidigits"].train.images
    pad = (28 - 20) // 2  # a 20 x 20 box centred in 28 x 28, as MNIST's digits
    assert int(images[:, :pad].max()) == 0 and int(images[:, -pad:].max()) == 0
    assert int(images[:, :, :pad].max()) == 0 and int(images[:, :, -pad:].max()) == 0
    assert int(images[:, pad:-pad, pad:-pad].max()) == 255


def test_mnistm_synth_shares_mnist5k_split_and_is_coloured(raw):
    synth, mnist = raw["mnistm_synth"], raw["mnist5k"]
    assert torch.equal(synth.train.labels, mnist.train.labels)
    assert torch.equal(synth.test.labels, mnist.test.labels)
    channels = synth.train.images[:200].float()
    assert (channels[:, 0] - channels[:, 1]).abs().mean() > 5  # photographs, not grey


@pytest.mark.parametrize("name", ["ucidigits", "mnistm_synth"])
def test_loading_is_deterministic_and_independent_of_the_run_seed(raw, name):
    again = DOMAINS[name](DataConfig(), 7)
    assert torch.equal(again.train.images, raw[name].train.images)
    assert torch.equal(again.test.labels, raw[name].test.labels)


def test_load_domain_converts_to_the_config_format():
    cfg = DataConfig(image_size=28, channels=3, val_fraction=0.1)
    domain = load_domain("ucidigits", cfg, labelled=True, seed=0)
    assert domain.train.images.shape[1:] == (3, 28, 28)
    assert len(domain.train) + len(domain.val) == 1438 and len(domain.val) == 144
    assert len(domain.test) == 359
