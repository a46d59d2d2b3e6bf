"""File-backed domains read tiny files in each real on-disk format through the registry."""

from __future__ import annotations

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


# --- MNIST (IDX files) -------------------------------------------------------------------------

def test_mnist_reads_idx_files(mnist_files):
    domain = load_domain("mnist", mnist_files.cfg(), labelled=False)
    assert_loaded(domain, mnist_files, channels=1)
    assert domain.num_classes == 10


def test_mnist_missing_files_name_each_file_and_fix(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    with raises_naming(raw / "train-images-idx3-ubyte", raw / "t10k-labels-idx1-ubyte",
                       "data.root=", "data.download=true"):
        load_domain("mnist", DataConfig(root=str(tmp_path)), labelled=False)


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


def test_mnist_truncated_idx_names_the_file(mnist_files):
    path = mnist_files.root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with raises_naming(path, "truncated"):
        load_domain("mnist", mnist_files.cfg(), labelled=False)


def test_mnist_wrong_idx_kind_names_the_file(mnist_files):
    raw = mnist_files.root / "MNIST" / "raw"
    shutil.copy(raw / "t10k-images-idx3-ubyte", raw / "t10k-labels-idx1-ubyte")
    with raises_naming(raw / "t10k-labels-idx1-ubyte", "not an IDX file of 1-d"):
        load_domain("mnist", mnist_files.cfg(), labelled=False)


def test_mnist_mismatched_counts_name_both_files(mnist_files):
    raw = mnist_files.root / "MNIST" / "raw"
    shutil.copy(raw / "t10k-labels-idx1-ubyte", raw / "train-labels-idx1-ubyte")  # 20 vs 30
    with raises_naming(raw / "train-images-idx3-ubyte", raw / "train-labels-idx1-ubyte", "30", "20"):
        load_domain("mnist", mnist_files.cfg(), labelled=False)


# --- USPS (bzip2'd libsvm) ----------------------------------------------------------------------

def test_usps_reads_bz2_libsvm(usps_files):
    domain = load_domain("usps", usps_files.cfg(image_size=16), labelled=False)
    assert_loaded(domain, usps_files, channels=1)


def test_usps_missing_files_name_both(tmp_path):
    with raises_naming(tmp_path / "USPS" / "usps.bz2", tmp_path / "USPS" / "usps.t.bz2"):
        load_domain("usps", DataConfig(root=str(tmp_path)), labelled=False)


def test_usps_not_bzip2_names_the_file(usps_files):
    path = usps_files.root / "USPS" / "usps.t.bz2"
    path.write_bytes(b"this is not bzip2 data")
    with raises_naming(path, "corrupt"):
        load_domain("usps", usps_files.cfg(), labelled=False)


def test_usps_label_out_of_range_names_the_file(usps_files):
    import bz2

    path = usps_files.root / "USPS" / "usps.bz2"
    lines = bz2.decompress(path.read_bytes()).decode().splitlines()
    lines[0] = "11" + lines[0][lines[0].index(" "):]  # label 11 -> class 10 of 10
    path.write_bytes(bz2.compress("\n".join(lines).encode()))
    with raises_naming(path, "labels span [0, 10]"):
        load_domain("usps", usps_files.cfg(), labelled=False)


# --- SVHN (.mat) --------------------------------------------------------------------------------

def test_svhn_reads_mat_and_maps_label_10_to_0(svhn_files):
    domain = load_domain("svhn", svhn_files.cfg(image_size=32, channels=3), labelled=False)
    assert_loaded(domain, svhn_files, channels=3)
    assert int(domain.train.labels.min()) == 0 and int(domain.train.labels.max()) == 9


def test_svhn_missing_files_name_both(tmp_path):
    with raises_naming(tmp_path / "SVHN" / "train_32x32.mat", tmp_path / "SVHN" / "test_32x32.mat"):
        load_domain("svhn", DataConfig(root=str(tmp_path)), labelled=False)


def test_svhn_bad_mat_names_the_file(svhn_files):
    path = svhn_files.root / "SVHN" / "test_32x32.mat"
    path.write_bytes(path.read_bytes()[:200])
    with raises_naming(path):
        load_domain("svhn", svhn_files.cfg(image_size=32, channels=3), labelled=False)


def test_svhn_mat_without_x_names_the_file(svhn_files):
    import scipy.io

    path = svhn_files.root / "SVHN" / "train_32x32.mat"
    scipy.io.savemat(path, {"images": np.zeros((2, 2), np.uint8), "y": np.ones((1, 1))})
    with raises_naming(path, "expected variables X and y"):
        load_domain("svhn", svhn_files.cfg(image_size=32, channels=3), labelled=False)


# --- MNIST-M (PNG folders + label lists) --------------------------------------------------------

def test_mnistm_reads_png_folders(mnistm_files):
    domain = load_domain("mnistm", mnistm_files.cfg(channels=3), labelled=False)
    assert_loaded(domain, mnistm_files, channels=3)


def test_mnistm_missing_names_folders_and_label_files(tmp_path):
    base = tmp_path / "mnist_m"
    with raises_naming(base / "mnist_m_train", base / "mnist_m_test_labels.txt", "no download"):
        load_domain("mnistm", DataConfig(root=str(tmp_path), download=True), labelled=False)


def test_mnistm_malformed_label_line_names_file_and_line(mnistm_files):
    path = mnistm_files.root / "mnist_m" / "mnist_m_test_labels.txt"
    lines = path.read_text().splitlines()
    lines[2] = "00000002.png seven"
    path.write_text("\n".join(lines))
    with raises_naming(f"{path}:3", "seven"):
        load_domain("mnistm", mnistm_files.cfg(channels=3), labelled=False)


def test_mnistm_listed_image_missing_is_named(mnistm_files):
    image = mnistm_files.root / "mnist_m" / "mnist_m_train" / "00000004.png"
    image.unlink()
    with raises_naming(image):
        load_domain("mnistm", mnistm_files.cfg(channels=3), labelled=False)


def test_mnistm_unreadable_png_is_named(mnistm_files):
    image = mnistm_files.root / "mnist_m" / "mnist_m_test" / "00000001.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with raises_naming(image, "corrupt"):
        load_domain("mnistm", mnistm_files.cfg(channels=3), labelled=False)


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
