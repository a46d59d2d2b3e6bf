"""Training batches streamed by Ray Data (``data.loader=ray_data``), for domains too large to
hold in every worker's memory.

The driver builds one Ray Data pipeline per domain over its prepared shards
(:mod:`cdlm_dist.data.shards`): read the train shards' row groups in a per-epoch seeded order,
drop the rows held out for validation (or left out by ``data.max_train_per_domain``), decode,
resize and augment in ``map_batches`` on Ray Data's CPU workers. Ray Train gives each worker an
equal shard of every pipeline (``get_dataset_shard``), and :class:`RayDataStream` turns them into
the same ``[(x_k, y_k)]`` per step that :class:`~cdlm_dist.data.streams.MultiDomainStream` yields,
so ``train_step`` and the loop do not know which loader runs.

What resume keeps (ARCHITECTURE.md, "Streaming with Ray Data"): each domain's epoch is a function
of the step (``step // batches_per_epoch``, exactly as in memory), so every domain cycles on its
own epoch counter and the epoch boundaries are the same steps after a restart; each epoch's
shuffle-buffer seed is a function of (seed, domain, epoch, rank). Which rows fill the rest of an
interrupted epoch, the row-group order (Ray counts executions, and a restart counts from 0 again)
and the augmentation draws are not restored.

Validation and test splits stay in memory (they are evaluated every ``train.eval_every``), the
same rows the in-memory path would pick; ``data.max_test_per_domain`` bounds them.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cdlm_dist.config import ConfigError, DataConfig
from cdlm_dist.data.domains import (
    BYTES_PER_GB,
    DomainData,
    Split,
    cap_split,
    split_validation,
    to_format,
)
from cdlm_dist.data.files import data_root
from cdlm_dist.data.images import decode_image
from cdlm_dist.data.shards import (
    decode_rows,
    read_manifest,
    read_rows,
    sharded_dir_name,
    split_files,
)
from cdlm_dist.data.streams import to_unit

PREPARED_SUBDIR = "prepared"  # data.prepared "" = <data.root>/prepared
SEED_STRIDE = 1_000_003  # seeds of (seed, epoch) pairs, as the in-memory streams and the loop
RANK_STRIDE = 1009
DOMAIN_STRIDE = 7919  # domain k's seed is seed + 7919 k, as in MultiDomainStream


def dataset_name(k: int) -> str:
    """The name of domain ``k``'s pipeline in the trainer's ``datasets``."""
    return f"domain_{k}"


def streamed_folder(cfg: DataConfig, name: str) -> Path:
    """The sharded folder a domain streams from: ``shards:<folder>`` itself, any other domain
    its `cdlm-data prepare --sharded` output under ``data.prepared``."""
    if name.startswith("shards:"):
        return data_root(cfg) / os.path.expanduser(name.split(":", 1)[1])
    root = Path(os.path.expanduser(cfg.prepared)) if cfg.prepared else data_root(
        cfg) / PREPARED_SUBDIR
    return root / sharded_dir_name(name)


@dataclass
class DomainRows:
    """Which rows of a prepared domain train (streamed), validate and test (in memory)."""

    folder: Path
    manifest: dict[str, Any]
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def _positions(n: int) -> Split:
    """A split of ``n`` rows holding only their positions, to reuse the in-memory selection."""
    return Split(torch.empty((n, 0), dtype=torch.uint8), torch.arange(n))


def domain_rows(cfg: DataConfig, name: str, labelled: bool, seed: int) -> DomainRows:
    """The in-memory path's choice of rows (the same caps and validation hold-out, same seeds),
    by the ``index`` column, without reading an image."""
    folder = streamed_folder(cfg, name)
    manifest = read_manifest(folder)
    train = cap_split(_positions(manifest["rows"]["train"]), cfg.max_train_per_domain, seed)
    val = None
    if labelled:
        train, val = split_validation(train, cfg.val_fraction, seed)
    test = cap_split(_positions(manifest["rows"]["test"]), cfg.max_test_per_domain, seed + 1)
    empty = np.empty(0, dtype=np.int64)
    return DomainRows(folder, manifest, np.sort(train.labels.numpy()),
                      empty if val is None else np.sort(val.labels.numpy()), test.labels.numpy())


def all_domain_rows(cfg: DataConfig, seed: int) -> list[DomainRows]:
    return [domain_rows(cfg, d.name, d.labelled, seed) for d in cfg.domains]


def check_eval_size(cfg: DataConfig, rows: list[DomainRows]) -> None:
    """The validation and test splits are held in memory: refuse them over the cap, early."""
    per_image = cfg.channels * cfg.image_size ** 2
    total = sum((len(r.val) + len(r.test)) * per_image for r in rows)
    if total > cfg.max_in_memory_gb * BYTES_PER_GB:
        raise ConfigError(
            f"data.loader=ray_data streams the train splits but holds validation and test in "
            f"memory: {total / BYTES_PER_GB:.2f} GB per worker, over data.max_in_memory_gb="
            f"{cfg.max_in_memory_gb}; set data.max_test_per_domain (and data.val_fraction) lower")


def load_streamed_domains(cfg: DataConfig, seed: int = 0) -> list[DomainData]:
    """Domains whose train split streams: validation and test decoded here, train left empty
    (its rows are in :func:`domain_rows`)."""
    rows = all_domain_rows(cfg, seed)
    check_eval_size(cfg, rows)
    classes = {r.manifest["num_classes"] for r in rows}
    if len(classes) != 1:
        counts = {d.name: r.manifest["num_classes"] for d, r in zip(cfg.domains, rows)}
        raise ConfigError(f"domains disagree on the number of classes: {counts}")
    empty = Split(torch.empty((0, cfg.channels, cfg.image_size, cfg.image_size),
                              dtype=torch.uint8), torch.empty(0, dtype=torch.long))
    domains = []
    for d, r in zip(cfg.domains, rows):
        split = {}
        for key, source, index in (("val", "train", r.val), ("test", "test", r.test)):
            table = read_rows(r.folder, r.manifest, source, index) if len(index) else None
            split[key] = None if table is None else Split(
                to_format(decode_rows(table, cfg.image_size), cfg.image_size, cfg.channels),
                torch.from_numpy(table.column("label").to_numpy().copy()))
        domains.append(DomainData(d.name, train=empty, test=split["test"], val=split["val"],
                                  num_classes=r.manifest["num_classes"]))
    return domains


# ---- the pipelines (driver side) ---------------------------------------------------------------
def _augmentation(size: int):
    """ImageNet-style training augmentation on uint8 CHW tensors (torchvision transforms v2)."""
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()])


def decode_batch(batch: dict[str, np.ndarray], keep: np.ndarray, size: int, channels: int,
                 augment: str) -> dict[str, np.ndarray]:
    """Ray Data's map_batches: keep the training rows, decode, augment, convert to the tensor
    format (uint8 N x C x S x S); runs on Ray Data's CPU workers, not in the training process."""
    mask = np.isin(batch["index"], keep)
    blobs = batch["image"][mask]
    if augment == "none":  # whole image resized: the pixels the in-memory path holds
        images = [torch.from_numpy(decode_image(b, size)).permute(2, 0, 1) for b in blobs]
    else:
        transform = _augmentation(size)
        images = [transform(torch.from_numpy(decode_image(b, None)).permute(2, 0, 1))
                  for b in blobs]
    x = (to_format(torch.stack(images), size, channels) if images
         else torch.empty((0, channels, size, size), dtype=torch.uint8))
    return {"image": x.numpy(), "label": batch["label"][mask].astype(np.int64),
            "index": batch["index"][mask].astype(np.int64)}  # which rows: for checks


def read_row_groups(items: dict[str, np.ndarray], keep: np.ndarray, size: int, channels: int,
                    augment: str) -> dict[str, np.ndarray]:
    """Ray Data's map_batches over (file, row group) items: read them, then :func:`decode_batch`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.concat_tables(
        pq.ParquetFile(str(f)).read_row_group(int(g), columns=["image", "label", "index"])
        for f, g in zip(items["file"], items["row_group"]))
    blobs = np.empty(table.num_rows, dtype=object)  # bytes objects: numpy's "S" would strip
    blobs[:] = table.column("image").to_pylist()  # trailing zero bytes off the images
    batch = {"image": blobs, "label": table.column("label").to_numpy(),
             "index": table.column("index").to_numpy()}
    return decode_batch(batch, keep, size, channels, augment)


def build_datasets(cfg: Any) -> dict[str, Any]:
    """One Ray Data pipeline per domain of ``cfg.data``, named :func:`dataset_name`.

    Its input is the list of (shard, row group) pairs, in a seeded order that changes every
    execution (epoch); each task reads and decodes one row group. (``read_parquet`` costs
    seconds of planning per execution, which a pass per epoch repeats.)
    """
    import pyarrow.parquet as pq
    import ray.data

    data = cfg.data
    # Ray Data redraws progress bars for every domain's pass (an epoch), which drowns the loop's
    # own progress lines on a long run; datasets take the context current when they are made
    ray.data.DataContext.get_current().enable_progress_bars = False
    datasets = {}
    for k, rows in enumerate(all_domain_rows(data, cfg.train.seed)):
        items = [{"file": f, "row_group": g}
                 for f in split_files(rows.folder, rows.manifest, "train")
                 for g in range(pq.ParquetFile(f).num_row_groups)]
        order = ray.data.RandomSeedConfig(seed=cfg.train.seed + DOMAIN_STRIDE * k,
                                          reseed_after_execution=True)  # a new order each epoch
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        datasets[dataset_name(k)] = ds.randomize_block_order(seed=order).map_batches(
            functools.partial(read_row_groups, keep=rows.train, size=data.image_size,
                              channels=data.channels, augment=data.augment),
            batch_format="numpy", batch_size=1)
    return datasets


def ingest_options(data: DataConfig) -> Any:
    """Ray Train's ingest options with Ray Data's object store budget at data.max_in_memory_gb."""
    from ray.train import DataConfig as RayDataConfig

    options = RayDataConfig.default_ingest_options()
    options.resource_limits = options.resource_limits.copy(
        object_store_memory=data.max_in_memory_gb * BYTES_PER_GB)
    return RayDataConfig(execution_options=options)


# ---- the stream (worker side) -------------------------------------------------------------------
class RayDataStream:
    """This worker's batches of every domain, in the interface of ``MultiDomainStream``:
    ``batch(step, device) -> [(x_k, y_k)]`` with x in [0, 1] and ``data.batch_size / W`` rows.

    Domain k's epoch is ``step // batches_per_epoch[k]`` (its train rows // the global batch);
    a new epoch starts a new pass over the worker's shard with its own shuffle seed. Ray Train's
    equal split gives each worker exactly ``batches_per_epoch`` local batches a pass.
    """

    def __init__(self, shards: list[Any], train_rows: list[int], global_batch: int, seed: int,
                 shuffle_buffer: int, rank: int = 0, world_size: int = 1) -> None:
        for n in train_rows:
            if n < global_batch:
                raise ValueError(f"a split of {n} images cannot fill a global batch of "
                                 f"{global_batch}; lower data.batch_size")
        self.shards = shards
        self.local_batch = global_batch // world_size
        self.batches_per_epoch = [n // global_batch for n in train_rows]
        self.seeds = [seed + DOMAIN_STRIDE * k for k in range(len(shards))]
        self.shuffle_buffer = shuffle_buffer
        self.rank = rank
        self.epochs = [-1] * len(shards)  # the epoch each domain's current pass belongs to
        self._passes: list[Any] = [None] * len(shards)

    def shuffle_seed(self, k: int, epoch: int) -> int:
        return ((self.seeds[k] * SEED_STRIDE + epoch) * RANK_STRIDE + self.rank) % 2 ** 32

    def _start(self, k: int, epoch: int) -> None:
        if self._passes[k] is not None:
            self._passes[k].close()  # ends the pass so every worker can start the next epoch
        self._passes[k] = iter(self.shards[k].iter_torch_batches(
            batch_size=self.local_batch, drop_last=True, device="cpu",
            local_shuffle_buffer_size=self.shuffle_buffer,
            local_shuffle_seed=self.shuffle_seed(k, epoch)))
        self.epochs[k] = epoch

    def _next(self, k: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch = step // self.batches_per_epoch[k]
        if epoch != self.epochs[k]:
            self._start(k, epoch)
        batch = next(self._passes[k], None)
        if batch is None:
            raise RuntimeError(f"domain {k}: epoch {epoch} ended before its "
                               f"{self.batches_per_epoch[k]} batches (this worker's shard is "
                               "short of its equal share); check the prepared manifest's rows")
        return to_unit(batch["image"]), batch["label"].long()

    def batch(self, step: int, device: torch.device | str = "cpu"
              ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
                for x, y in (self._next(k, step) for k in range(len(self.shards)))]


def worker_stream(cfg: Any, rank: int, world_size: int) -> RayDataStream:
    """The stream of a Ray Train worker, over its shards of the trainer's datasets."""
    import ray.train

    rows = all_domain_rows(cfg.data, cfg.train.seed)
    shards = [ray.train.get_dataset_shard(dataset_name(k)) for k in range(len(rows))]
    return RayDataStream(shards, [len(r.train) for r in rows], cfg.data.batch_size,
                         cfg.train.seed, cfg.data.shuffle_buffer, rank, world_size)
