"""Domains stored as image files: MNIST-M and any ``<class>/<image>`` folder (Office-31, -Home).

Images are decoded with PIL, converted to RGB and resized to ``data.image_size`` as they load,
so a folder of large photographs costs ``3 * image_size**2`` bytes an image in memory. Resizing
is a plain bilinear resize to a square (aspect ratio not kept), the same for every domain.

- ``mnistm``: ``<root>/mnist_m/mnist_m_train/*.png`` + ``mnist_m_train_labels.txt`` and the same
  for ``test`` (lines ``<filename> <label>``), the layout of the MNIST-M archive. Its PNGs are
  RGB 32 x 32; the whole frame is resized to ``data.image_size`` (28 in ``mnist_to_mnistm``), not
  cropped: the geometry of the published pipelines (docs/data.md, "MNIST-M").
- ``imagefolder:<path>``: ``<root>/<path>/<class>/*.{jpg,jpeg,png}`` (``<path>`` may also be
  absolute). Classes are the sorted sub-folder names, so domains of one benchmark share label
  indices. A folder whose only sub-folder is ``images/`` (the Office-31 archive:
  ``amazon/images/<class>``) is read through it. The train / test split is a stratified 80 / 20
  split seeded by :data:`SPLIT_SEED`, fixed so it never depends on the run's seed.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cdlm_dist.config import ConfigError, DataConfig
from cdlm_dist.data.domains import (
    RawDomain,
    Split,
    register_domain,
    register_family,
    register_row_counter,
)
from cdlm_dist.data.files import NUM_DIGITS, checked_split, data_root, ensure_files, reading

SPLIT_SEED = 4321  # fixed: a folder's train/test split is part of the dataset, not of the run
TEST_FRACTION = 0.2
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
OFFICE_IMAGES_DIR = "images"
MNISTM_DIR = "mnist_m"
LOAD_THREADS = min(8, os.cpu_count() or 1)  # PIL decodes outside the GIL


def _rgb(img: Image.Image, size: int | None) -> np.ndarray:
    rgb = img.convert("RGB")  # decodes: a truncated or bad file fails here
    if size is not None and rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def _load_image(path: Path, size: int) -> np.ndarray:
    with reading(path), Image.open(path) as img:
        return _rgb(img, size)


def decode_image(data: bytes, size: int | None) -> np.ndarray:
    """Encoded bytes (JPEG, PNG) -> uint8 (H, W, 3), resized whole to ``size`` unless None:
    the same pixels as loading the file itself, so prepared shards equal the image folder."""
    with Image.open(io.BytesIO(data)) as img:
        return _rgb(img, size).copy()  # writable: torch wraps it without a warning


def load_images(paths: list[Path], size: int) -> torch.Tensor:
    """Decode ``paths`` to uint8 (N, 3, size, size), resizing each as it loads."""
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    with ThreadPoolExecutor(LOAD_THREADS) as pool:
        for i, img in enumerate(pool.map(lambda p: _load_image(p, size), paths)):
            out[i] = img
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def read_label_list(path: Path) -> list[tuple[str, int]]:
    """Parse MNIST-M's ``<filename> <label>`` lines; a malformed line is named by number."""
    entries = []
    with reading(path):
        lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise ConfigError(f"{path}:{number}: expected '<filename> <label>', got {line!r}")
        entries.append((parts[0], int(parts[1])))
    return entries


@register_domain("mnistm")
def mnistm(cfg: DataConfig, seed: int) -> RawDomain:
    """Real MNIST-M (59,001 / 9,001; the archive's RGB 32 x 32 PNGs); it has no download."""
    root = data_root(cfg) / MNISTM_DIR
    layout = {split: (root / f"mnist_m_{split}", root / f"mnist_m_{split}_labels.txt")
              for split in ("train", "test")}
    ensure_files("mnistm", [p for pair in layout.values() for p in pair], cfg, download=None)
    splits = {}
    for split, (folder, label_file) in layout.items():
        entries = read_label_list(label_file)
        paths = [folder / name for name, _ in entries]
        absent = [p for p in paths if not p.is_file()]
        if absent:
            raise ConfigError(f"{label_file} lists {len(absent)} image(s) missing from {folder}, "
                              f"e.g. {absent[0]}")
        splits[split] = checked_split(load_images(paths, cfg.image_size),
                                      [label for _, label in entries], NUM_DIGITS, str(label_file))
    return RawDomain(train=splits["train"], test=splits["test"], num_classes=NUM_DIGITS)


def _class_folders(folder: Path) -> list[Path]:
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if [d.name for d in subdirs] == [OFFICE_IMAGES_DIR]:
        return _class_folders(subdirs[0])
    return subdirs


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean test mask holding ``test_fraction`` of each class (rounded), seeded."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n_test = int(round(len(members) * test_fraction))
        test[rng.permutation(members)[:n_test]] = True
    return test


@dataclass
class FolderListing:
    """An image folder's files in load order, their labels, class names and test mask."""

    paths: list[Path]
    labels: np.ndarray
    classes: list[str]
    test: np.ndarray  # bool, the fixed stratified test split (SPLIT_SEED)


def folder_listing(cfg: DataConfig, arg: str) -> FolderListing:
    """List ``<root>/<arg>/<class>/*`` without decoding anything (also what `cdlm-data prepare`
    shards and what the in-memory size check counts)."""
    folder = data_root(cfg) / os.path.expanduser(arg)
    expected = f"{folder}/<class>/*{{{','.join(IMAGE_EXTENSIONS)}}}"
    if not folder.is_dir():
        raise ConfigError(f"domain 'imagefolder:{arg}': no folder {folder}; it expects {expected} "
                          "(e.g. Office-31's amazon/images/<class>/...). Set data.root=<the "
                          "folder that holds it>; image folders have no download")
    classes = _class_folders(folder)
    paths, labels = [], []
    for index, class_dir in enumerate(classes):
        files = sorted(f for f in class_dir.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        paths.extend(files)
        labels.extend([index] * len(files))
    if not paths:
        raise ConfigError(f"domain 'imagefolder:{arg}': no images found; it expects {expected}")
    label_array = np.asarray(labels, dtype=np.int64)
    test = stratified_split(label_array, TEST_FRACTION, SPLIT_SEED)
    if bool(test.all()) or not bool(test.any()):
        raise ConfigError(f"domain 'imagefolder:{arg}': {len(paths)} images are too few for an "
                          f"{1 - TEST_FRACTION:.0%} / {TEST_FRACTION:.0%} train / test split")
    return FolderListing(paths, label_array, [c.name for c in classes], test)


@register_family("imagefolder")
def imagefolder(cfg: DataConfig, seed: int, arg: str) -> RawDomain:
    """Image folder <root>/<arg>/<class>/*.jpg|jpeg|png; labels = sorted class names."""
    listing = folder_listing(cfg, arg)
    test = torch.from_numpy(listing.test)
    data = checked_split(load_images(listing.paths, cfg.image_size), listing.labels,
                         len(listing.classes), str(data_root(cfg) / os.path.expanduser(arg)))
    return RawDomain(train=Split(data.images[~test], data.labels[~test]),
                     test=Split(data.images[test], data.labels[test]),
                     num_classes=len(listing.classes))


@register_row_counter("imagefolder")
def imagefolder_rows(cfg: DataConfig, arg: str) -> tuple[int, int]:
    """(train, test) images of a folder, from its listing alone."""
    test = folder_listing(cfg, arg).test
    return int((~test).sum()), int(test.sum())
