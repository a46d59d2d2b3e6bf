"""File-backed domains read tiny files in each real on-disk format through the registry."""

from __future__ import annotations

import bz2
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from cdlm_dist.config import ConfigError, DataConfig
from cdlm_dist.data import load_domain

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def assert_loaded(domain, written, channels: int) -> None:
    """The loaded splits are exactly the written pixels and labels (in file order)."""
    for split, (images, labels) in (("train", written.train), ("test", written.test)):
        got = getattr(domain, split)
        expected = images if images.ndim == 4 else images[:, None]
        assert got.images.shape == (len(labels), channels, *expected.shape[-2:])
        np.testing.assert_array_equal(got.images.numpy(), expected)
        np.testing.assert_array_equal(got.labels.numpy(), labels)


def raises_naming(*parts: str | Path):
    """pytest.raises(ConfigError) whose message contains every part (paths as written)."""
    return pytest.raises(ConfigError, match="(?s)" + "".join(
        f"(?=.*{re.escape(str(p))})" for p in parts))


READS = {  # domain -> (fixture writing its real format, data config, channels it loads with)
    "mnist": ("mnist_files", {}, 1),
    "usps": ("usps_files", {"image_size": 16}, 1),
    "svhn": ("svhn_files", {"image_size": 32, "channels": 3}, 3),  # and label 10 -> digit 0
    "mnistm": ("mnistm_files", {"image_size": 32, "channels": 3}, 3),  # its native 32 px
}


@pytest.mark.parametrize("name", sorted(READS))
def test_reads_its_real_file_format_exactly(request, name):
    fixture, overrides, channels = READS[name]
    written = request.getfixturevalue(fixture)
    domain = load_domain(name, written.cfg(**overrides), labelled=False)
    assert_loaded(domain, written, channels)
    assert domain.num_classes == 10


def test_mnistm_is_resized_whole_not_cropped(mnistm_files):
    """The documented geometry (docs/data.md, "MNIST-M"): mnist_to_mnistm's 28 px are the
    archive's whole 32 x 32 frame, resized (bilinear), as the published pipelines do."""
    from PIL import Image

    domain = load_domain("mnistm", mnistm_files.cfg(image_size=28, channels=3), labelled=False)
    images, _ = mnistm_files.test
    expected = [np.asarray(Image.fromarray(img.transpose(1, 2, 0)).resize(
        (28, 28), Image.Resampling.BILINEAR)).transpose(2, 0, 1) for img in images]
    np.testing.assert_array_equal(domain.test.images.numpy(), np.stack(expected))


MISSING = {  # domain -> files its error must name (relative to data.root), then the fix it gives
    "mnist": ("MNIST/raw/train-images-idx3-ubyte", "MNIST/raw/t10k-labels-idx1-ubyte",
              "data.download=true"),
    "usps": ("USPS/usps.bz2", "USPS/usps.t.bz2", "data.download=true"),
    "svhn": ("SVHN/train_32x32.mat", "SVHN/test_32x32.mat", "data.download=true"),
    "mnistm": ("mnist_m/mnist_m_train", "mnist_m/mnist_m_test_labels.txt", "no download"),
}


@pytest.mark.parametrize("name", sorted(MISSING))
def test_missing_files_are_named_with_the_fix(tmp_path, name):
    *files, fix = MISSING[name]
    with raises_naming(*(tmp_path / f for f in files), "data.root=", fix):
        load_domain(name, DataConfig(root=str(tmp_path)), labelled=False)


# --- corrupt files: the error names the file, never a silently wrong dataset -------------------

def _cut(keep: int):
    return lambda p: p.write_bytes(p.read_bytes()[:keep])


def _usps_label_11(path: Path) -> None:
    lines = bz2.decompress(path.read_bytes()).decode().splitlines()
    lines[0] = "11" + lines[0][lines[0].index(" "):]  # label 11 -> class 10 of 10
    path.write_bytes(bz2.compress("\n".join(lines).encode()))


def _mat_without_x(path: Path) -> None:
    import scipy.io

    scipy.io.savemat(path, {"images": np.zeros((2, 2), np.uint8), "y": np.ones((1, 1))})


def _word_for_label(path: Path) -> None:
    lines = path.read_text().splitlines()
    lines[2] = "00000002.png seven"
    path.write_text("\n".join(lines))


CORRUPT = {  # case -> (domain, file under data.root, how to break it, what the error must say)
    "mnist truncated idx": ("mnist", "MNIST/raw/train-images-idx3-ubyte",
                            lambda p: p.write_bytes(p.read_bytes()[:-100]), ["bytes: truncated"]),
    "mnist idx of another kind": (
        "mnist", "MNIST/raw/t10k-labels-idx1-ubyte",
        lambda p: shutil.copy(p.parent / "t10k-images-idx3-ubyte", p), ["not an IDX file of 1-d"]),
    "usps not bzip2": ("usps", "USPS/usps.t.bz2", lambda p: p.write_bytes(b"not bzip2"),
                       ["corrupt"]),
    "usps label out of range": ("usps", "USPS/usps.bz2", _usps_label_11, ["labels span [0, 10]"]),
    "svhn truncated mat": ("svhn", "SVHN/test_32x32.mat", _cut(200), ["corrupt"]),
    "svhn mat without X": ("svhn", "SVHN/train_32x32.mat", _mat_without_x,
                           ["expected variables X and y"]),
    "mnistm malformed label line": ("mnistm", "mnist_m/mnist_m_test_labels.txt", _word_for_label,
                                    ["_labels.txt:3", "seven"]),
    "mnistm listed image missing": ("mnistm", "mnist_m/mnist_m_train/00000004.png", Path.unlink,
                                    ["missing"]),
    "mnistm unreadable png": ("mnistm", "mnist_m/mnist_m_test/00000001.png",
                              lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n garbage"), ["corrupt"]),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_file_is_named_with_the_problem(request, case):
    name, relative, corrupt, words = CORRUPT[case]
    fixture, overrides, _ = READS[name]
    written = request.getfixturevalue(fixture)
    corrupt(written.root / relative)
    with raises_naming(written.root / relative, *words):
        load_domain(name, written.cfg(**overrides), labelled=False)


def test_mnist_mismatched_counts_name_both_files(mnist_files):
    raw = mnist_files.root / "MNIST" / "raw"
    shutil.copy(raw / "t10k-labels-idx1-ubyte", raw / "train-labels-idx1-ubyte")  # 20 vs 30
    with raises_naming(raw / "train-images-idx3-ubyte", raw / "train-labels-idx1-ubyte", "30", "20"):
        load_domain("mnist", mnist_files.cfg(), labelled=False)


def test_mnist_gzipped_files_get_an_extract_hint(mnist_files):
    raw = mnist_files.root / "MNIST" / "raw"
    (raw / "train-images-idx3-ubyte").rename(raw / "train-images-idx3-ubyte.gz")
    with raises_naming("train-images-idx3-ubyte.gz", "gunzip"):
        load_domain("mnist", mnist_files.cfg(), labelled=False)


def test_mnist_failed_download_is_a_config_error(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(self):
        raise RuntimeError("no network here")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    with raises_naming("Download failed", "no network here", "train-images-idx3-ubyte"):
        load_domain("mnist", DataConfig(root=str(tmp_path), download=True), labelled=False)


# --- image folders (Office-31 / Office-Home trees) ----------------------------------------------

def _colours(images) -> list[tuple[int, int, int]]:
    return [tuple(int(v) for v in img[:, 0, 0]) for img in images]


def test_imagefolder_sorted_classes_resized_and_stratified(image_folder):
    cfg = DataConfig(root=str(image_folder.root), image_size=16, channels=3)
    domain = load_domain("imagefolder:office31/amazon", cfg, labelled=False)
    assert domain.num_classes == 3
    assert domain.train.images.shape[1:] == (3, 16, 16)
    everything = []
    for split in (domain.train, domain.test):
        assert (split.images == split.images[:, :, :1, :1]).all()  # solid images stay solid
        for colour, label in zip(_colours(split.images), split.labels.tolist()):
            assert image_folder.labels_by_colour[colour] == label  # label = sorted class index
            everything.append(colour)
    assert sorted(everything) == sorted(image_folder.labels_by_colour)  # each image once
    assert domain.test.labels.bincount().tolist() == [1, 1, 1]  # 20% of 5 per class


def test_imagefolder_split_ignores_run_seed(image_folder):
    cfg = DataConfig(root=str(image_folder.root), image_size=8, channels=3)
    a = load_domain("imagefolder:office31/amazon", cfg, labelled=False, seed=0)
    b = load_domain("imagefolder:office31/amazon", cfg, labelled=False, seed=5)
    assert _colours(a.test.images) == _colours(b.test.images)


def test_imagefolder_missing_folder_is_named(tmp_path):
    with raises_naming(tmp_path / "office31" / "dslr", "<class>"):
        load_domain("imagefolder:office31/dslr", DataConfig(root=str(tmp_path)), labelled=False)


def test_imagefolder_truncated_jpeg_is_named(image_folder):
    from PIL import Image

    path = image_folder.root / "office31" / "amazon" / "images" / "bee" / "broken.JPG"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(path, format="JPEG")
    path.write_bytes(path.read_bytes()[:300])
    with raises_naming(path):
        load_domain("imagefolder:office31/amazon", DataConfig(root=str(image_folder.root)),
                    labelled=False)


# --- the real files (developers and CI only) ----------------------------------------------------

@pytest.mark.realdata
def test_real_mnist_and_usps_through_the_registry():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (real MNIST/USPS exist only for developers and CI)")
    cfg = DataConfig(root=str(SHARED_DATA))
    for name, sizes in (("mnist", (60000, 10000)), ("usps", (7291, 2007))):
        domain = load_domain(name, cfg, labelled=False)
        assert (len(domain.train), len(domain.test)) == sizes
        assert domain.train.images.shape[1:] == (1, 28, 28)
        assert sorted(domain.test.labels.unique().tolist()) == list(range(10))
