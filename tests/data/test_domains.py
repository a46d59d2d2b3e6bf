"""The registry, the tensor-format conversion, load_domain(s) and the data presets."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from cdlm_dist.config import CONFIG_DIR, ConfigError, DataConfig, DomainConfig, compose
from cdlm_dist.data import DOMAINS, check_domain_name, load_domain, load_domains
from cdlm_dist.data.domains import RawDomain, Split, to_format

PRESETS = sorted((CONFIG_DIR / "data").glob("*.yaml"))


def _toy_loader(n_train: int, n_test: int, num_classes: int = 10, side: int = 8):
    """A loader of grey side x side images whose pixel value is the image's index (traceable)."""

    def load(cfg: DataConfig, seed: int) -> RawDomain:
        def split(n: int, offset: int) -> Split:
            images = (torch.arange(n) + offset).to(torch.uint8).view(n, 1, 1).expand(n, side, side)
            return Split(images.contiguous(), torch.arange(n) % num_classes)

        return RawDomain(train=split(n_train, 0), test=split(n_test, 128), num_classes=num_classes)

    return load


@pytest.fixture
def toys(monkeypatch):
    monkeypatch.setitem(DOMAINS, "toy_a", _toy_loader(100, 30))
    monkeypatch.setitem(DOMAINS, "toy_b", _toy_loader(60, 20))
    monkeypatch.setitem(DOMAINS, "toy_five", _toy_loader(60, 20, num_classes=5))


# --- to_format ----------------------------------------------------------------------------------

def test_grey_to_rgb_replicates_the_channel():
    grey = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8)
    rgb = to_format(grey, 28, 3)
    assert rgb.shape == (4, 3, 28, 28) and rgb.dtype == torch.uint8
    assert all(torch.equal(rgb[:, c], grey) for c in range(3))


def test_rgb_to_grey_uses_luma_weights():
    rgb = torch.zeros(3, 3, 4, 4, dtype=torch.uint8)
    rgb[0, 0] = 255  # pure red
    rgb[1, 1] = 255  # pure green
    rgb[2] = 255  # white
    grey = to_format(rgb, 4, 1)
    assert grey.shape == (3, 1, 4, 4)
    assert grey[:, 0, 0, 0].tolist() == [76, 150, 255]  # round(0.299*255), round(0.587*255)


def test_resize_keeps_constant_images_and_mean_intensity():
    flat = torch.full((2, 1, 8, 8), 200, dtype=torch.uint8)
    assert torch.equal(to_format(flat, 28, 1), torch.full((2, 1, 28, 28), 200, dtype=torch.uint8))
    checker = ((torch.arange(16).view(4, 4) + torch.arange(16).view(4, 4).T) % 2 * 255)
    big = to_format(checker.to(torch.uint8).expand(1, 1, 4, 4), 64, 1)
    assert big.shape == (1, 1, 64, 64)
    assert abs(big.float().mean().item() - 127.5) < 4


def test_downsize_then_grey_to_rgb():
    rgb = to_format(torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8), 16, 3)
    assert rgb.shape == (3, 3, 16, 16)


def test_to_format_rejects_two_channels():
    with pytest.raises(ValueError, match="1 or 3 channels"):
        to_format(torch.zeros(1, 2, 8, 8, dtype=torch.uint8), 8, 1)


# --- the registry and load_domain(s) ------------------------------------------------------------

def test_unknown_domain_lists_the_registered_ones():
    with pytest.raises(ConfigError, match=r"(?s)'nope'.*mnist5k.*imagefolder:<arg>"):
        check_domain_name("nope")
    with pytest.raises(ConfigError, match="unknown domain"):
        check_domain_name("nofamily:x")
    check_domain_name("imagefolder:office31/amazon")  # a family with its argument is known


def test_labelled_domain_holds_out_a_seeded_validation_part(toys):
    cfg = DataConfig(val_fraction=0.2)
    a = load_domain("toy_a", cfg, labelled=True, seed=3)
    assert (len(a.train), len(a.val), len(a.test)) == (80, 20, 30)
    ids = torch.cat([a.train.images[:, 0, 0, 0], a.val.images[:, 0, 0, 0]]).sort().values
    assert torch.equal(ids, torch.arange(100, dtype=torch.uint8))  # disjoint, complete
    again = load_domain("toy_a", cfg, labelled=True, seed=3)
    assert torch.equal(again.val.images, a.val.images)
    other = load_domain("toy_a", cfg, labelled=True, seed=4)
    assert not torch.equal(other.val.images, a.val.images)
    assert load_domain("toy_a", cfg, labelled=False).val is None


def test_caps_subsample_train_and_test(toys):
    d = load_domain("toy_a", DataConfig(max_train_per_domain=16, max_test_per_domain=5), False)
    assert (len(d.train), len(d.test)) == (16, 5)
    assert d.train.images.shape[1:] == (1, 28, 28)  # converted to the config's format


def test_load_domains_keeps_order_and_rejects_class_mismatch(toys):
    cfg = DataConfig(domains=[DomainConfig("toy_b", labelled=True), DomainConfig("toy_a")])
    names = [d.name for d in load_domains(cfg)]
    assert names == ["toy_b", "toy_a"]
    cfg.domains[1] = DomainConfig("toy_five")
    with pytest.raises(ConfigError, match="disagree on the number of classes"):
        load_domains(cfg)


# --- presets ------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_preset_fits_the_schema_and_names_registered_domains(preset):
    cfg = OmegaConf.merge(OmegaConf.structured(DataConfig), OmegaConf.load(preset))
    assert cfg.preset == preset.stem
    assert any(d.labelled for d in cfg.domains) and len(cfg.domains) >= 2
    for d in cfg.domains:
        check_domain_name(d.name)


def test_office31_presets_compose_with_resnet50():
    names = {p.stem for p in PRESETS if p.stem.startswith("office31_")}
    assert {"office31_amazon_to_webcam", "office31_dslr_to_webcam",
            "office31_webcam_to_dslr"} <= names
    cfg = compose(["data=office31_amazon_to_webcam", "model=resnet50"])
    assert (cfg.data.image_size, cfg.data.channels, cfg.data.batch_size) == (224, 3, 32)
    assert [d.name for d in cfg.data.domains] == ["imagefolder:office31/amazon",
                                                  "imagefolder:office31/webcam"]
    with pytest.raises(ConfigError, match="resnet50"):
        compose(["data=office31_amazon_to_webcam"])  # the digits encoder cannot take 224 px


def test_digits3_is_multi_source():
    cfg = compose(["data=digits3"])
    assert [(d.name, d.labelled) for d in cfg.data.domains] == [
        ("mnist5k", True), ("ucidigits", True), ("mnistm_synth", False)]
    assert (cfg.data.channels, cfg.data.image_size) == (3, 28)
