"""The domain registry and the one tensor format every domain is converted to.

Format (documented once, relied on everywhere): a :class:`Split` holds
``images`` as ``uint8`` of shape ``(N, C, H, W)`` with ``C = data.channels`` and
``H = W = data.image_size``, and ``labels`` as ``int64`` of shape ``(N,)`` in ``[0, num_classes)``.
Batches are converted to ``float32`` in ``[0, 1]`` only when they are drawn, so a domain costs
one byte a pixel in memory.

A loader registered with :func:`register_domain` returns images in its native size and channels
(``uint8``, ``(N, H, W)`` or ``(N, C, H, W)``); :func:`load_domain` converts them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cdlm_dist.config import ConfigError, DataConfig


@dataclass
class Split:
    """Images (uint8, N x C x H x W) and labels (int64, N) of one split of one domain."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8:
            raise TypeError(f"Split.images must be uint8, got {self.images.dtype}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> Split:
        return Split(self.images[index], self.labels[index])


@dataclass
class DomainData:
    """A domain's train and test splits, plus the validation part held out of train."""

    name: str
    train: Split
    test: Split
    val: Split | None = None
    num_classes: int = 10


@dataclass
class RawDomain:
    """What a registered loader returns: native-format splits before conversion."""

    train: Split
    test: Split
    num_classes: int = 10


DomainLoader = Callable[[DataConfig, int], RawDomain]
DOMAINS: dict[str, DomainLoader] = {}
# Parameterised domains, e.g. "imagefolder:office31/amazon": prefix -> loader(cfg, seed, arg).
DOMAIN_FAMILIES: dict[str, Callable[[DataConfig, int, str], RawDomain]] = {}


def register_domain(name: str) -> Callable[[DomainLoader], DomainLoader]:
    """Decorator that adds a loader to :data:`DOMAINS` under ``name``."""

    def wrap(fn: DomainLoader) -> DomainLoader:
        DOMAINS[name] = fn
        return fn

    return wrap


def register_family(prefix: str):
    """Decorator for loaders of parameterised names ``prefix:argument``."""

    def wrap(fn):
        DOMAIN_FAMILIES[prefix] = fn
        return fn

    return wrap


# (train, test) image counts of a domain family, found without decoding: the in-memory size
# check runs them before anything loads. Families without one (small built-ins) are not checked.
RowCounter = Callable[[DataConfig, str], tuple[int, int]]
ROW_COUNTERS: dict[str, RowCounter] = {}
BYTES_PER_GB = 1e9


def register_row_counter(prefix: str) -> Callable[[RowCounter], RowCounter]:
    """Decorator: how to count a family's train and test images cheaply (a listing, metadata)."""

    def wrap(fn: RowCounter) -> RowCounter:
        ROW_COUNTERS[prefix] = fn
        return fn

    return wrap


def capped(n: int, limit: int) -> int:
    return n if limit <= 0 else min(n, limit)


def check_in_memory_size(cfg: DataConfig) -> None:
    """Refuse, before loading, domains whose splits would not fit data.max_in_memory_gb per
    worker (N x C x S x S bytes; every rank holds every domain), naming the way out."""
    counters = {d.name: ROW_COUNTERS.get(d.name.split(":", 1)[0]) for d in cfg.domains}
    per_image = cfg.channels * cfg.image_size ** 2
    sizes = {}
    for name, count in counters.items():
        if count is not None and ":" in name:
            n_train, n_test = count(cfg, name.split(":", 1)[1])
            rows = capped(n_train, cfg.max_train_per_domain) + capped(n_test,
                                                                     cfg.max_test_per_domain)
            sizes[name] = rows * per_image
    total = sum(sizes.values())
    if total <= cfg.max_in_memory_gb * BYTES_PER_GB:
        return
    listed = ", ".join(f"{n} {b / BYTES_PER_GB:.2f} GB" for n, b in sizes.items())
    raise ConfigError(
        f"data.loader=memory would hold {total / BYTES_PER_GB:.2f} GB per worker ({listed} at "
        f"{cfg.image_size} px), over data.max_in_memory_gb={cfg.max_in_memory_gb}; stream it: "
        "`cdlm-data prepare data=<preset> --sharded --out DIR`, then train with "
        "data.loader=ray_data runner=ray data.prepared=DIR (or raise data.max_in_memory_gb)")


def known_domains() -> list[str]:
    return sorted(DOMAINS) + [f"{p}:<arg>" for p in sorted(DOMAIN_FAMILIES)]


def check_domain_name(name: str) -> None:
    """Raise a ConfigError naming the registered domains if ``name`` is not one of them."""
    prefix = name.split(":", 1)[0]
    if name in DOMAINS or (":" in name and prefix in DOMAIN_FAMILIES):
        return
    raise ConfigError(f"unknown domain {name!r}; registered domains: {', '.join(known_domains())}")


def to_format(images: torch.Tensor, image_size: int, channels: int) -> torch.Tensor:
    """Convert uint8 images of any size/channels to (N, channels, image_size, image_size) uint8."""
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4:
        raise ValueError(f"images must be (N, H, W) or (N, C, H, W), got shape {tuple(images.shape)}")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {images.shape[1]}")
    if images.shape[1] == 1 and channels == 3:
        images = images.expand(-1, 3, -1, -1)
    elif images.shape[1] == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        images = (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).byte()
    if images.shape[-2:] != (image_size, image_size):
        out = []
        for chunk in images.split(4096):  # bounded memory for large domains
            resized = F.interpolate(chunk.float(), size=(image_size, image_size),
                                    mode="bilinear", align_corners=False, antialias=True)
            out.append(resized.round().clamp(0, 255).byte())
        images = torch.cat(out)
    return images.contiguous()


def split_validation(train: Split, fraction: float, seed: int) -> tuple[Split, Split | None]:
    """Hold a seeded ``fraction`` of train out as validation (the label-free selection data)."""
    n_val = int(round(len(train) * fraction))
    if n_val == 0:
        return train, None
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    return train.subset(perm[n_val:]), train.subset(perm[:n_val])


def cap_split(split: Split, limit: int, seed: int) -> Split:
    """A seeded subset of at most ``limit`` rows (0 = all), in the original order."""
    if limit <= 0 or len(split) <= limit:
        return split
    perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    return split.subset(perm[:limit].sort().values)


def load_domain(name: str, cfg: DataConfig, labelled: bool, seed: int = 0) -> DomainData:
    """Load a registered domain and convert it to the project's tensor format."""
    import cdlm_dist.data  # noqa: F401  (registers every loader)

    check_domain_name(name)
    if name in DOMAINS:
        raw = DOMAINS[name](cfg, seed)
    else:
        prefix, arg = name.split(":", 1)
        raw = DOMAIN_FAMILIES[prefix](cfg, seed, arg)
    train = Split(to_format(raw.train.images, cfg.image_size, cfg.channels), raw.train.labels)
    test = Split(to_format(raw.test.images, cfg.image_size, cfg.channels), raw.test.labels)
    train = cap_split(train, cfg.max_train_per_domain, seed)
    test = cap_split(test, cfg.max_test_per_domain, seed + 1)
    val = None
    if labelled:
        train, val = split_validation(train, cfg.val_fraction, seed)
    return DomainData(name=name, train=train, test=test, val=val, num_classes=raw.num_classes)


def load_domains(cfg: DataConfig, seed: int = 0) -> list[DomainData]:
    """Load every domain of ``cfg.domains`` in order; names are checked before anything loads."""
    import cdlm_dist.data  # noqa: F401  (registers every loader and row counter)

    for d in cfg.domains:
        check_domain_name(d.name)
    if cfg.loader == "ray_data":  # train splits stream; validation and test load here
        from cdlm_dist.data.ray_stream import load_streamed_domains

        return load_streamed_domains(cfg, seed)
    check_in_memory_size(cfg)
    domains = [load_domain(d.name, cfg, d.labelled, seed) for d in cfg.domains]
    classes = {d.num_classes for d in domains}
    if len(classes) != 1:
        raise ConfigError(f"domains disagree on the number of classes: "
                          f"{ {d.name: d.num_classes for d in domains} }")
    return domains
