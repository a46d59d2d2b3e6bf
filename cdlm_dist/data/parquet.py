"""The prepared on-disk format: one Parquet file per domain, written by ``cdlm-data prepare``.

Columns, one row per image:

- ``image`` (binary): the raw uint8 pixels in (C, H, W) order, exactly
  ``channels * image_size ** 2`` bytes. Raw rather than PNG: reading is a copy, not a decode,
  every row's size can be checked against the metadata, and Parquet's zstd compression wins back
  most of what PNG would save. The shape lives in the file metadata, as all rows share it.
- ``label`` (int64) in ``[0, num_classes)``; ``domain`` (string), the registered name the file
  was prepared from; ``split`` (string), ``"train"`` or ``"test"``.

File metadata (Arrow schema metadata under ``cdlm_dist``, JSON): ``format_version``,
``image_size``, ``channels``, ``num_classes``, ``domain`` and ``rows`` (``{"train": n, "test": m}``).
Everything is validated on read, so a truncated, foreign or mismatched file fails with its name.

A prepared file is a domain: ``parquet:<path>`` (relative to ``data.root``, or absolute).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from cdlm_dist.config import ConfigError, DataConfig
from cdlm_dist.data.domains import (
    DomainData,
    RawDomain,
    check_domain_name,
    load_domain,
    register_family,
    register_row_counter,
)
from cdlm_dist.data.files import checked_split, data_root, reading

FORMAT_VERSION = 1
METADATA_KEY = b"cdlm_dist"
SPLITS = ("train", "test")
SCHEMA = pa.schema([("image", pa.binary()), ("label", pa.int64()), ("domain", pa.string()),
                    ("split", pa.string())])
METADATA_FIELDS = ("format_version", "image_size", "channels", "num_classes", "domain", "rows")
CHANNEL_CHOICES = (1, 3)
ROW_GROUP_BYTES = 64 << 20  # bounds writer memory and keeps binary offsets far below 2**31
COMPRESSION = "zstd"
PREPARE_HINT = "re-create it with `cdlm-data prepare data=<preset> --out DIR`"


def prepared_file_name(domain: str) -> str:
    """A file name for a domain name (``imagefolder:office31/amazon`` has ':' and '/')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", domain) + ".parquet"


def _image_array(images: torch.Tensor) -> pa.Array:
    """A binary array over the images' own bytes, one fixed-size row each (no per-row copies)."""
    flat = np.ascontiguousarray(images.numpy().reshape(len(images), -1))
    offsets = np.arange(len(images) + 1, dtype=np.int32) * flat.shape[1]
    return pa.Array.from_buffers(pa.binary(), len(images),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(flat)])


def write_prepared(domain: DomainData, path: Path) -> Path:
    """Write a domain's train and test splits (already in the tensor format) atomically."""
    splits = {"train": domain.train, "test": domain.test}
    _, channels, size, _ = domain.train.images.shape
    metadata = {"format_version": FORMAT_VERSION, "image_size": int(size),
                "channels": int(channels), "num_classes": int(domain.num_classes),
                "domain": domain.name, "rows": {k: len(s) for k, s in splits.items()}}
    schema = SCHEMA.with_metadata({METADATA_KEY: json.dumps(metadata).encode()})
    rows_per_group = max(1, ROW_GROUP_BYTES // (channels * size * size))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with pq.ParquetWriter(partial, schema, compression=COMPRESSION) as writer:
        for name, split in splits.items():
            for start in range(0, len(split), rows_per_group):
                part = split.subset(torch.arange(start, min(start + rows_per_group, len(split))))
                n = len(part)
                writer.write_table(pa.table([
                    _image_array(part.images), pa.array(part.labels.numpy(), pa.int64()),
                    pa.array([domain.name] * n, pa.string()), pa.array([name] * n, pa.string()),
                ], schema=schema))
    os.replace(partial, path)  # a crash mid-write never leaves a half file under the real name
    return path


def _bad(path: Path, problem: str) -> ConfigError:
    return ConfigError(f"{path}: {problem}; {PREPARE_HINT}")


def read_metadata(path: Path, schema: pa.Schema) -> dict[str, Any]:
    """The file's cdlm_dist metadata, checked field by field."""
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise _bad(path, f"no '{METADATA_KEY.decode()}' metadata: not a prepared domain file")
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise _bad(path, f"metadata is not JSON ({exc})") from exc
    if not isinstance(meta, dict) or any(k not in meta for k in METADATA_FIELDS):
        raise _bad(path, f"metadata lacks fields; it needs {list(METADATA_FIELDS)}")
    if meta["format_version"] != FORMAT_VERSION:
        raise _bad(path, f"format version {meta['format_version']!r}; this reader reads "
                         f"{FORMAT_VERSION}")
    for key in ("image_size", "num_classes"):
        if not isinstance(meta[key], int) or meta[key] < 1:
            raise _bad(path, f"metadata {key}={meta[key]!r} must be a positive integer")
    if meta["channels"] not in CHANNEL_CHOICES:
        raise _bad(path, f"metadata channels={meta['channels']!r} must be one of {CHANNEL_CHOICES}")
    rows = meta["rows"]
    if not isinstance(rows, dict) or sorted(rows) != sorted(SPLITS):
        raise _bad(path, f"metadata rows={rows!r} must give a count for each of {SPLITS}")
    return meta


def _check_columns(path: Path, table: pa.Table, meta: dict[str, Any]) -> None:
    """Row counts, nulls, split and domain values and image byte sizes against the metadata."""
    for column in table.column_names:
        if table.column(column).null_count:
            raise _bad(path, f"column {column!r} has {table.column(column).null_count} nulls")
    splits = table.column("split").to_numpy(zero_copy_only=False)
    unknown = set(splits.tolist()) - set(SPLITS)
    if unknown:
        raise _bad(path, f"split values {sorted(unknown)} are not {SPLITS}")
    for name in SPLITS:
        count = int((splits == name).sum())
        if count != meta["rows"][name]:
            raise _bad(path, f"{count} {name} rows but the metadata says {meta['rows'][name]}")
    domains = set(pc.unique(table.column("domain")).to_pylist())
    if domains != {meta["domain"]}:
        raise _bad(path, f"domain column holds {sorted(domains)}, metadata says {meta['domain']!r}")
    row_bytes = meta["channels"] * meta["image_size"] ** 2
    lengths = pc.binary_length(table.column("image")).to_numpy()
    wrong = np.flatnonzero(lengths != row_bytes)
    if len(wrong):
        raise _bad(path, f"row {wrong[0]} has a {lengths[wrong[0]]}-byte image; the metadata "
                         f"(channels={meta['channels']}, image_size={meta['image_size']}) "
                         f"means {row_bytes} bytes")


def _images(table: pa.Table, channels: int, size: int) -> torch.Tensor:
    column = table.column("image").combine_chunks()
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int32)
    offsets = offsets[column.offset:column.offset + len(column) + 1]
    data = np.frombuffer(column.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
    return torch.from_numpy(data.copy()).view(len(column), channels, size, size)


def read_prepared(path: Path | str) -> RawDomain:
    """Read and validate a prepared file; any mismatch raises a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no prepared domain file {path}; create one with "
                          "`cdlm-data prepare data=<preset> --out DIR`")
    with reading(path, fix=PREPARE_HINT):
        parquet = pq.ParquetFile(path)
    schema = parquet.schema_arrow
    meta = read_metadata(path, schema)
    got = [(f.name, str(f.type)) for f in schema]
    want = [(f.name, str(f.type)) for f in SCHEMA]
    if got != want:
        raise _bad(path, f"columns {got} are not the prepared format's {want}")
    with reading(path, fix=PREPARE_HINT):
        table = parquet.read()
    _check_columns(path, table, meta)
    if table.num_rows == 0:
        raise _bad(path, "it holds no images")
    images = _images(table, meta["channels"], meta["image_size"])
    labels = torch.from_numpy(table.column("label").to_numpy().copy())  # arrow memory is read-only
    is_train = torch.from_numpy(table.column("split").to_numpy(zero_copy_only=False) == "train")
    split = {name: checked_split(images[mask], labels[mask], meta["num_classes"], f"{path} ({name})")
             for name, mask in (("train", is_train), ("test", ~is_train))}
    return RawDomain(train=split["train"], test=split["test"], num_classes=meta["num_classes"])


@register_family("parquet")
def parquet_domain(cfg: DataConfig, seed: int, arg: str) -> RawDomain:
    """A file written by `cdlm-data prepare` (path relative to data.root, or absolute)."""
    return read_prepared(data_root(cfg) / os.path.expanduser(arg))


@register_row_counter("parquet")
def parquet_rows(cfg: DataConfig, arg: str) -> tuple[int, int]:
    """(train, test) rows from a prepared file's metadata (nothing else is read)."""
    path = data_root(cfg) / os.path.expanduser(arg)
    if not path.is_file():
        return 0, 0  # the loader says what is missing
    with reading(path, fix=PREPARE_HINT):
        schema = pq.read_schema(path)
    rows = read_metadata(path, schema)["rows"]
    return int(rows["train"]), int(rows["test"])


def prepare(cfg: Any, out_dir: Path) -> list[Path]:
    """Write every domain of ``cfg.data`` in the tensor format to ``out_dir``, one file each."""
    for d in cfg.data.domains:
        check_domain_name(d.name)  # every name, before the first (slow) load
    written = []
    for d in cfg.data.domains:
        domain = load_domain(d.name, cfg.data, labelled=False, seed=cfg.train.seed)
        written.append(write_prepared(domain, out_dir / prepared_file_name(d.name)))
    return written
