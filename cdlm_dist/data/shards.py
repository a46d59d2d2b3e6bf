"""Sharded Parquet of encoded images: the format that streams (``cdlm-data prepare --sharded``).

The single-file format (:mod:`cdlm_dist.data.parquet`) holds decoded pixels and is read whole;
this one is for domains too large for that. Layout of one domain's folder::

    manifest.json                 written last: the folder is complete when it exists
    plan.json                     what the shards were cut from (a resumed prepare must match it)
    train/part-00000.parquet ...  test/part-00000.parquet ...

Columns, one row per image: ``image`` (binary: the encoded JPEG/PNG bytes as the source file
holds them, or a lossless PNG of a tensor domain's converted image), ``label`` (int64),
``domain`` (string) and ``index`` (int64: the row's position in its split in the loader's order,
so validation hold-outs and test caps are the same rows the in-memory path picks). Rows are
written in a seeded random order, so every shard and row group mixes the classes and a stream
that reads a few shards at a time still sees all classes. Row groups of ``row_group_rows``
bound what a reader holds at once.

Preparing is resumable (a shard is written to ``*.partial`` and renamed, and shards that exist
are skipped) and runs on Ray Data when asked (one task per shard, for trees on shared storage).
``shards:<folder>`` (relative to data.root, or absolute) loads a prepared folder in memory like
any domain; ``data.loader=ray_data`` streams it (:mod:`cdlm_dist.data.ray_stream`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import torch
from PIL import Image

from cdlm_dist.config import ConfigError, DataConfig
from cdlm_dist.data.domains import (
    RawDomain,
    check_domain_name,
    load_domain,
    register_family,
    register_row_counter,
)
from cdlm_dist.data.files import checked_split, data_root, reading
from cdlm_dist.data.images import LOAD_THREADS, decode_image, folder_listing
from cdlm_dist.data.parquet import prepared_file_name

FORMAT = "cdlm_dist.shards"
FORMAT_VERSION = 1
MANIFEST, PLAN = "manifest.json", "plan.json"
SPLITS = ("train", "test")
SCHEMA = pa.schema([("image", pa.binary()), ("label", pa.int64()), ("domain", pa.string()),
                    ("index", pa.int64())])
ROWS_PER_SHARD = 2048  # one file a Ray Data read task streams (~100 MB of 224 px JPEGs)
ROW_GROUP_ROWS = 256  # what a reader decodes at once (~10 MB of JPEGs)
ORDER_SEED = 2718  # fixed: the row order inside the shards is part of the prepared data
PREPARE_HINT = "prepare it with `cdlm-data prepare data=<preset> --sharded --out DIR`"


def sharded_dir_name(domain: str) -> str:
    """The folder of a domain inside ``--out`` (``imagefolder:office31/amazon`` has ':' '/')."""
    return prepared_file_name(domain).removesuffix(".parquet")


@dataclass
class _Source:
    """A domain's rows before writing: per split, items (file paths or uint8 HWC arrays) and
    labels, in the loader's order."""

    classes: list[str]
    items: dict[str, Sequence[Any]]
    labels: dict[str, np.ndarray]
    settings: dict[str, Any]  # what else the bytes depend on (tensor domains: size, channels)


def _source(name: str, cfg: DataConfig, seed: int) -> _Source:
    """Image folders keep their files' own bytes; any other domain is loaded and converted to
    the task's size and channels first (then stored losslessly)."""
    if name.startswith("imagefolder:"):
        listing = folder_listing(cfg, name.split(":", 1)[1])
        items, labels = {}, {}
        for split, mask in (("train", ~listing.test), ("test", listing.test)):
            items[split] = [str(p) for p, m in zip(listing.paths, mask) if m]
            labels[split] = listing.labels[mask]
        return _Source(listing.classes, items, labels, {})
    domain = load_domain(name, cfg, labelled=False, seed=seed)
    splits = {"train": domain.train, "test": domain.test}
    return _Source([str(c) for c in range(domain.num_classes)],
                   {k: s.images.permute(0, 2, 3, 1).numpy() for k, s in splits.items()},
                   {k: s.labels.numpy() for k, s in splits.items()},
                   {"image_size": cfg.image_size, "channels": cfg.channels})


def _encoded(item: Any) -> bytes:
    if isinstance(item, str):
        return Path(item).read_bytes()
    buffer = io.BytesIO()
    Image.fromarray(item.squeeze(-1) if item.shape[-1] == 1 else item).save(buffer, format="PNG")
    return buffer.getvalue()


def write_shard(task: dict[str, Any]) -> dict[str, Any]:
    """Write one shard atomically (``*.partial``, then rename); a Ray Data task or a plain call."""
    blobs = [_encoded(item) for item in task["items"]]
    n = len(blobs)
    table = pa.table([pa.array(blobs, pa.binary()), pa.array(task["labels"], pa.int64()),
                      pa.array([task["domain"]] * n, pa.string()),
                      pa.array(task["indices"], pa.int64())], schema=SCHEMA)
    path = Path(task["file"])
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    pq.write_table(table, partial, row_group_size=task["row_group_rows"], compression="none")
    os.replace(partial, path)
    return {"file": task["file"], "rows": n}


def _tasks(name: str, source: _Source, folder: Path, rows_per_shard: int, row_group_rows: int
           ) -> dict[str, list[dict[str, Any]]]:
    """Per split, one task per shard: a seeded random order of the rows, cut into shards."""
    tasks: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        n = len(source.labels[split])
        order = np.random.default_rng(ORDER_SEED).permutation(n)
        tasks[split] = [
            {"file": str(folder / split / f"part-{i:05d}.parquet"), "domain": name,
             "items": [source.items[split][j] for j in chunk],
             "labels": source.labels[split][chunk].tolist(), "indices": chunk.tolist(),
             "row_group_rows": row_group_rows}
            for i, chunk in enumerate(np.array_split(order, max(1, -(-n // rows_per_shard))))]
    return tasks


def _plan(name: str, source: _Source, rows_per_shard: int) -> dict[str, Any]:
    digest = hashlib.sha256()
    for split in SPLITS:
        refs = source.items[split] if source.settings == {} else [len(source.items[split])]
        digest.update(json.dumps([split, [str(r) for r in refs],
                                  source.labels[split].tolist()]).encode())
    return {"domain": name, "rows_per_shard": rows_per_shard, "order_seed": ORDER_SEED,
            "settings": source.settings, "rows": digest.hexdigest()}


def _check_plan(folder: Path, plan: dict[str, Any]) -> None:
    """A resumed prepare must cut the same shards, or the folder would mix two datasets."""
    path = folder / PLAN
    if path.exists() and json.loads(path.read_text()) != plan:
        raise ConfigError(f"{folder} holds shards of another listing or setting ({path} differs: "
                          "the source changed, or --rows-per-shard); delete the folder or choose "
                          "another --out")
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plan, indent=1))


def prepare_domain(name: str, cfg: DataConfig, folder: Path, seed: int = 0,
                   rows_per_shard: int = ROWS_PER_SHARD, row_group_rows: int = ROW_GROUP_ROWS,
                   use_ray: bool = False) -> Path:
    """Write one domain's shards into ``folder`` (skipping complete ones), then its manifest."""
    source = _source(name, cfg, seed)
    _check_plan(folder, _plan(name, source, rows_per_shard))
    tasks = _tasks(name, source, folder, rows_per_shard, row_group_rows)
    pending = [t for split in SPLITS for t in tasks[split] if not Path(t["file"]).exists()]
    if use_ray and pending and not source.settings:  # files: Ray Data tasks read and write them
        import ray.data

        ray.data.from_items(pending).map(write_shard).materialize()
    else:  # tensor domains are in this process's memory already: written here
        for task in pending:
            write_shard(task)
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "domain": name,
        "classes": source.classes, "num_classes": len(source.classes),
        "rows": {s: len(source.labels[s]) for s in SPLITS},
        "class_counts": {s: np.bincount(source.labels[s], minlength=len(source.classes)).tolist()
                         for s in SPLITS},
        "files": {s: [str(Path(t["file"]).relative_to(folder)) for t in tasks[s]] for s in SPLITS},
        "rows_per_shard": rows_per_shard, "row_group_rows": row_group_rows}
    partial = folder / (MANIFEST + ".partial")
    partial.write_text(json.dumps(manifest, indent=1))
    os.replace(partial, folder / MANIFEST)
    return folder


def prepare_sharded(cfg: Any, out_dir: Path, rows_per_shard: int = ROWS_PER_SHARD,
                    row_group_rows: int = ROW_GROUP_ROWS, use_ray: bool = False) -> list[Path]:
    """Every domain of ``cfg.data`` as a sharded folder under ``out_dir``."""
    for d in cfg.data.domains:
        check_domain_name(d.name)  # every name, before the first (slow) listing or load
    if use_ray:
        from cdlm_dist.runners.cluster import connect_ray

        connect_ray(cfg.runner)
    return [prepare_domain(d.name, cfg.data, out_dir / sharded_dir_name(d.name), cfg.train.seed,
                           rows_per_shard, row_group_rows, use_ray) for d in cfg.data.domains]


# ---- reading ------------------------------------------------------------------------------------
def read_manifest(folder: Path) -> dict[str, Any]:
    """A complete folder's manifest, checked; a missing or foreign one fails naming the fix."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ConfigError(f"no {MANIFEST} in {folder}: not a complete sharded domain (an "
                          f"interrupted prepare resumes when run again); {PREPARE_HINT}")
    with reading(path, fix=PREPARE_HINT):
        manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{path}: not a {FORMAT} v{FORMAT_VERSION} manifest; {PREPARE_HINT}")
    return manifest


def split_files(folder: Path, manifest: dict[str, Any], split: str) -> list[str]:
    files = [str(Path(folder) / f) for f in manifest["files"][split]]
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise ConfigError(f"{folder}: {len(missing)} shard(s) of the manifest are missing, e.g. "
                          f"{missing[0]}; {PREPARE_HINT}")
    return files


def read_rows(folder: Path, manifest: dict[str, Any], split: str,
              indices: np.ndarray | None = None) -> pa.Table:
    """The rows of a split (only those whose ``index`` is in ``indices`` if given), in index
    order, with the encoded images still encoded.

    A selection reads one row group at a time, and only the row groups whose ``index`` column
    holds a selected row: a streaming worker picks its validation and test rows out of shards
    it must not hold (a filtered dataset scan reads several shards ahead, here most of them)."""
    files = split_files(folder, manifest, split)
    if indices is None:
        table = pads.dataset(files, format="parquet").to_table()
    else:
        wanted = pa.array(indices, pa.int64())
        parts = [SCHEMA.empty_table()]
        for file in files:
            shard = pq.ParquetFile(file)
            for g in range(shard.num_row_groups):
                if pc.any(pc.is_in(shard.read_row_group(g, columns=["index"])["index"],
                                   value_set=wanted)).as_py():
                    group = shard.read_row_group(g)
                    parts.append(group.filter(pc.is_in(group["index"], value_set=wanted)))
        table = pa.concat_tables(parts)
    table = table.sort_by("index")
    expected = manifest["rows"][split] if indices is None else len(indices)
    if table.num_rows != expected:
        raise ConfigError(f"{folder} ({split}): {table.num_rows} rows, expected {expected}; "
                          f"{PREPARE_HINT}")
    return table


def decode_rows(table: pa.Table, size: int) -> torch.Tensor:
    """Encoded images -> uint8 (N, 3, size, size), whole images resized (as image folders load)."""
    blobs = table.column("image").to_pylist()
    out = np.empty((len(blobs), size, size, 3), dtype=np.uint8)
    with ThreadPoolExecutor(LOAD_THREADS) as pool:
        for i, img in enumerate(pool.map(lambda b: decode_image(b, size), blobs)):
            out[i] = img
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _folder(cfg: DataConfig, arg: str) -> Path:
    return data_root(cfg) / os.path.expanduser(arg)


@register_family("shards")
def shards_domain(cfg: DataConfig, seed: int, arg: str) -> RawDomain:
    """A folder written by `cdlm-data prepare --sharded`, loaded whole (decoded, resized)."""
    folder = _folder(cfg, arg)
    manifest = read_manifest(folder)
    splits = {}
    for split in SPLITS:
        table = read_rows(folder, manifest, split)
        splits[split] = checked_split(decode_rows(table, cfg.image_size),
                                      table.column("label").to_numpy().copy(),
                                      manifest["num_classes"],
                                      f"{folder} ({split})")
    return RawDomain(splits["train"], splits["test"], num_classes=manifest["num_classes"])


@register_row_counter("shards")
def shards_rows(cfg: DataConfig, arg: str) -> tuple[int, int]:
    rows = read_manifest(_folder(cfg, arg))["rows"]
    return int(rows["train"]), int(rows["test"])
