"""Tiny datasets written in each real on-disk format, so loaders are tested without downloads."""

from __future__ import annotations

import bz2
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cdlm_dist.config import DataConfig

IDX_UBYTE = 0x08
MNIST_SHAPE = (28, 28)
USPS_SIDE = 16
USPS_VALUES = {-1.0: 0, -0.5: 63, 0.0: 127, 0.5: 191, 1.0: 255}  # torchvision: (v+1)/2*255, floored
SVHN_SIDE = 32
MNISTM_SHAPE = (32, 32, 3)  # the MNIST-M archive's PNGs


@dataclass
class Written:
    """What a fixture wrote: per split, the images and labels a loader must return."""

    root: Path
    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]

    def cfg(self, **overrides) -> DataConfig:
        """A DataConfig reading from this root (download off unless asked)."""
        return DataConfig(root=str(self.root), **overrides)


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes, as in MNIST's *-ubyte files (big-endian header)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">HBB", 0, IDX_UBYTE, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _digits(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    labels = np.arange(n) % 10  # every class present
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8), labels.astype(np.int64)


@pytest.fixture
def mnist_files(tmp_path: Path) -> Written:
    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    splits = {}
    for split, prefix, n in (("train", "train", 30), ("test", "t10k", 20)):
        images, labels = _digits(rng, n, MNIST_SHAPE)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        splits[split] = (images, labels)
    return Written(tmp_path, **splits)


@pytest.fixture
def usps_files(tmp_path: Path) -> Written:
    """libsvm lines ``<label 1..10> 1:v 2:v ... 256:v`` with v in [-1, 1], bzip2'd."""
    rng = np.random.default_rng(1)
    values = np.array(list(USPS_VALUES))
    splits = {}
    for split, name, n in (("train", "usps.bz2", 12), ("test", "usps.t.bz2", 10)):
        labels = np.arange(n) % 10
        pixels = rng.choice(values, size=(n, USPS_SIDE * USPS_SIDE))
        lines = [f"{y + 1} " + " ".join(f"{i + 1}:{v:g}" for i, v in enumerate(row))
                 for y, row in zip(labels, pixels)]
        (tmp_path / "USPS").mkdir(exist_ok=True)
        (tmp_path / "USPS" / name).write_bytes(bz2.compress(("\n".join(lines) + "\n").encode()))
        expected = np.vectorize(USPS_VALUES.get)(pixels).astype(np.uint8)
        splits[split] = (expected.reshape(n, USPS_SIDE, USPS_SIDE), labels)
    return Written(tmp_path, **splits)


@pytest.fixture
def svhn_files(tmp_path: Path) -> Written:
    """The official layout: X (32, 32, 3, N) uint8 and y (N, 1) with 10 for the digit 0."""
    import scipy.io

    rng = np.random.default_rng(2)
    splits = {}
    for split, n in (("train", 12), ("test", 10)):
        x = rng.integers(0, 256, size=(SVHN_SIDE, SVHN_SIDE, 3, n), dtype=np.uint8)
        labels = np.arange(n) % 10
        y = np.where(labels == 0, 10, labels).astype(np.uint8).reshape(n, 1)
        (tmp_path / "SVHN").mkdir(exist_ok=True)
        scipy.io.savemat(tmp_path / "SVHN" / f"{split}_32x32.mat", {"X": x, "y": y})
        splits[split] = (x.transpose(3, 2, 0, 1), labels)
    return Written(tmp_path, **splits)


def save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def mnistm_files(tmp_path: Path) -> Written:
    """mnist_m/mnist_m_<split>/*.png plus mnist_m_<split>_labels.txt (``name label`` lines)."""
    rng = np.random.default_rng(3)
    root = tmp_path / "mnist_m"
    splits = {}
    for split, n in (("train", 12), ("test", 10)):
        images, labels = _digits(rng, n, MNISTM_SHAPE)
        names = [f"{i:08d}.png" for i in range(n)]
        for name, image in zip(names, images):
            save_png(root / f"mnist_m_{split}" / name, image)
        (root / f"mnist_m_{split}_labels.txt").write_text(
            "".join(f"{name} {y}\n" for name, y in zip(names, labels)))
        splits[split] = (images.transpose(0, 3, 1, 2), labels)
    return Written(tmp_path, **splits)


FOLDER_CLASSES = ("cat", "ant", "bee")  # written unsorted: labels must follow sorted names
FOLDER_PER_CLASS = 5


@dataclass
class Folder:
    """An image folder: its data.root, and the label each image's unique colour must get."""

    root: Path
    labels_by_colour: dict[tuple[int, int, int], int]
    per_class: int = FOLDER_PER_CLASS


@pytest.fixture
def image_folder(tmp_path: Path) -> Folder:
    """office31/amazon/images/<class>/frame_*.png (Office-31 layout), solid 40x30 images."""
    base = tmp_path / "office31" / "amazon" / "images"
    labels = {}
    for name in FOLDER_CLASSES:
        for i in range(FOLDER_PER_CLASS):
            colour = (FOLDER_CLASSES.index(name) * 80 + 10, i * 40 + 5, 200)
            image = np.empty((30, 40, 3), dtype=np.uint8)
            image[:] = colour
            save_png(base / name / f"frame_{i:04d}.png", image)
            labels[colour] = sorted(FOLDER_CLASSES).index(name)
    (base / "ant" / "notes.txt").write_text("not an image")
    (base / ".ipynb_checkpoints").mkdir()
    return Folder(tmp_path, labels)
