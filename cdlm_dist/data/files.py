"""File-backed domains: datasets read from ``data.root`` (``os.path.expanduser`` applied).

Layouts (the ones torchvision and the usual archives produce):

- ``mnist``: ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (torchvision MNIST).
- ``usps``: ``<root>/USPS/usps.bz2`` and ``usps.t.bz2`` (torchvision USPS, libsvm text in bzip2).
- ``svhn``: ``<root>/SVHN/train_32x32.mat`` and ``test_32x32.mat`` (the official files). Read with
  scipy exactly as torchvision's SVHN does (X (32, 32, 3, N) -> (N, 3, 32, 32), label 10 -> 0);
  torchvision's class is used only to download, because it refuses any file whose md5 differs
  from the official one and reports a corrupt file as "not found".
- ``mnistm``: ``<root>/mnist_m/mnist_m_{train,test}/*.png`` with ``mnist_m_{train,test}_labels.txt``
  (lines ``<filename> <label>``); see :mod:`cdlm_dist.data.images`.

Missing files raise a :class:`ConfigError` that names every expected file and the fix; an
unreadable file raises one that names the file, so a bad file never loads as a wrong dataset.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from cdlm_dist.config import ConfigError, DataConfig
from cdlm_dist.data.domains import RawDomain, Split, register_domain

NUM_DIGITS = 10
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_UBYTE = 0x08  # IDX type code of unsigned bytes, the only one MNIST uses
IDX_IMAGE_DIMS = 3  # (N, H, W)
IDX_LABEL_DIMS = 1  # (N,)
USPS_FILES = {"train": "usps.bz2", "test": "usps.t.bz2"}
SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
SVHN_ZERO_LABEL = 10  # the official files label the digit 0 as 10
SVHN_IMAGE_DIMS = 4  # X is (H, W, C, N)
REPLACE_HINT = "replace it (or delete it and set data.download=true)"
FIX_HINT = ("set data.root=<the folder that holds them> or data.download=true "
            "(downloads with torchvision; needs the network)")
NO_DOWNLOAD_HINT = "set data.root=<the folder that holds them> (this dataset has no download)"


def data_root(cfg: DataConfig) -> Path:
    """The folder file-backed domains live in (``~`` expanded, as users write it)."""
    return Path(os.path.expanduser(cfg.root))


@contextmanager
def reading(*paths: Path, fix: str = REPLACE_HINT) -> Iterator[None]:
    """Turn any failure to parse ``paths`` into a ConfigError that names them and the fix."""
    try:
        yield
    except ConfigError:
        raise
    except Exception as exc:
        names = " / ".join(str(p) for p in paths)
        raise ConfigError(f"cannot read {names}: {type(exc).__name__}: {exc}. The file is corrupt "
                          f"or not in the expected format; {fix}") from exc


def checked_split(images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray | list,
                  num_classes: int, source: str) -> Split:
    """A Split whose counts match, that is not empty, and whose labels fit ``num_classes``."""
    images = torch.as_tensor(images)
    labels = torch.as_tensor(labels).long().reshape(-1)
    if images.dtype != torch.uint8:
        raise ConfigError(f"{source}: images are {images.dtype}, expected uint8")
    if len(images) != len(labels):
        raise ConfigError(f"{source}: {len(images)} images but {len(labels)} labels")
    if len(labels) == 0:
        raise ConfigError(f"{source}: contains no images")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise ConfigError(f"{source}: labels span [{low}, {high}], expected [0, {num_classes})")
    return Split(images, labels)


def ensure_files(domain: str, files: Sequence[Path], cfg: DataConfig,
                 download: Callable[[], object] | None) -> None:
    """Raise a ConfigError naming every expected file unless all exist (downloading if allowed)."""
    missing = [f for f in files if not f.exists()]
    if not missing:
        return
    failure = ""
    if cfg.download and download is not None:
        try:
            download()
        except Exception as exc:  # no network, mirror down, bad checksum: all end the same way
            failure = f" Download failed: {type(exc).__name__}: {exc}."
        missing = [f for f in files if not f.exists()]
        if not missing:
            return
    gz = [f for f in missing if f.with_name(f.name + ".gz").exists()]
    gz_hint = f" Found {', '.join(f.name + '.gz' for f in gz)}: extract them (gunzip)." if gz else ""
    fix = FIX_HINT if download is not None else NO_DOWNLOAD_HINT
    listed = ", ".join(str(f) for f in files)
    which = "none of them exists" if len(missing) == len(files) else (
        f"missing: {', '.join(str(f) for f in missing)}")
    raise ConfigError(f"domain {domain!r} reads {listed}; {which} (data.root={cfg.root})."
                      f"{failure}{gz_hint} To fix: {fix}.")


def split_files(domain: str, cfg: DataConfig, folder: str, names: dict[str, str],
                fetch: Callable[[str, str], object]) -> dict[str, Path]:
    """``{split: <root>/<folder>/<name>}`` for a one-file-a-split torchvision dataset, checked
    by :func:`ensure_files`; ``fetch(folder_path, split)`` downloads one split."""
    root = data_root(cfg) / folder
    files = {split: root / name for split, name in names.items()}
    ensure_files(domain, list(files.values()), cfg,
                 lambda: [fetch(str(root), split) for split in files])
    return files


def check_idx(path: Path, ndim: int) -> tuple[int, ...]:
    """Validate an IDX file's header against its size; return its dimensions.

    torchvision's reader checks the header with ``assert`` (gone under ``python -O``) and
    reports a truncated file as a bare reshape error, so the file is checked here first.
    """
    header_bytes = 4 + 4 * ndim
    with reading(path), open(path, "rb") as f:
        header = f.read(header_bytes)
    if len(header) < header_bytes:
        raise ConfigError(f"{path}: {len(header)} bytes, shorter than an IDX header; truncated; "
                          f"{REPLACE_HINT}")
    zero, kind, dims_in_file = struct.unpack(">HBB", header[:4])
    if zero != 0 or kind != IDX_UBYTE or dims_in_file != ndim:
        raise ConfigError(f"{path}: not an IDX file of {ndim}-d unsigned bytes "
                          f"(magic {header[:4].hex()}); corrupt or the wrong file; {REPLACE_HINT}")
    dims = struct.unpack(f">{ndim}I", header[4:])
    expected = header_bytes + int(np.prod(dims))
    actual = path.stat().st_size
    if actual != expected:
        state = "truncated" if actual < expected else "has trailing bytes"
        raise ConfigError(f"{path}: header says shape {dims} ({expected} bytes), file has {actual} "
                          f"bytes: {state}; {REPLACE_HINT}")
    return dims


@register_domain("mnist")
def mnist(cfg: DataConfig, seed: int) -> RawDomain:
    """Real MNIST (60,000 / 10,000, 28 x 28) through torchvision.datasets.MNIST."""
    from torchvision.datasets import MNIST

    root = data_root(cfg)
    raw = root / "MNIST" / "raw"
    files = {split: tuple(raw / name for name in names) for split, names in MNIST_FILES.items()}
    ensure_files("mnist", [f for pair in files.values() for f in pair], cfg,
                 lambda: MNIST(str(root), train=True, download=True))
    splits = {}
    for split, (image_file, label_file) in files.items():
        n_images = check_idx(image_file, IDX_IMAGE_DIMS)[0]
        n_labels = check_idx(label_file, IDX_LABEL_DIMS)[0]
        if n_images != n_labels:
            raise ConfigError(f"{image_file} holds {n_images} images but {label_file} holds "
                              f"{n_labels} labels; the files do not belong together")
        with reading(image_file, label_file):
            ds = MNIST(str(root), train=split == "train", download=False)
        splits[split] = checked_split(ds.data, ds.targets, NUM_DIGITS, str(label_file))
    return RawDomain(train=splits["train"], test=splits["test"], num_classes=NUM_DIGITS)


@register_domain("usps")
def usps(cfg: DataConfig, seed: int) -> RawDomain:
    """USPS (7,291 / 2,007 digits, 16 x 16) through torchvision.datasets.USPS."""
    from torchvision.datasets import USPS

    files = split_files("usps", cfg, "USPS", USPS_FILES,
                        lambda root, split: USPS(root, train=split == "train", download=True))
    splits = {}
    for split, path in files.items():
        with reading(path):
            ds = USPS(str(path.parent), train=split == "train", download=False)
        splits[split] = checked_split(ds.data, ds.targets, NUM_DIGITS, str(path))
    return RawDomain(train=splits["train"], test=splits["test"], num_classes=NUM_DIGITS)


def read_svhn_mat(path: Path) -> Split:
    """One official SVHN .mat file as torchvision reads it: (N, 3, 32, 32) uint8, labels 0-9."""
    import scipy.io

    with reading(path):
        mat = scipy.io.loadmat(str(path))
    x, y = mat.get("X"), mat.get("y")
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
        raise ConfigError(f"{path}: expected variables X and y, found {sorted(mat)}")
    if x.dtype != np.uint8 or x.ndim != SVHN_IMAGE_DIMS or x.shape[2] != 3:
        raise ConfigError(f"{path}: X is {x.dtype} {x.shape}, expected uint8 (H, W, 3, N)")
    labels = y.astype(np.int64).reshape(-1)
    labels[labels == SVHN_ZERO_LABEL] = 0
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))
    return checked_split(images, labels, NUM_DIGITS, str(path))


@register_domain("svhn")
def svhn(cfg: DataConfig, seed: int) -> RawDomain:
    """SVHN cropped digits (73,257 / 26,032, RGB 32 x 32)."""
    from torchvision.datasets import SVHN

    files = split_files("svhn", cfg, "SVHN", SVHN_FILES,
                        lambda root, split: SVHN(root, split=split, download=True))
    return RawDomain(train=read_svhn_mat(files["train"]), test=read_svhn_mat(files["test"]),
                     num_classes=NUM_DIGITS)
