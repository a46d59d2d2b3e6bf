"""Sharded Parquet of encoded images (`cdlm-data prepare --sharded`), the in-memory size check and
the parts of data.loader=ray_data that run without Ray: which rows stream, validate and test, and
the decoding that Ray Data's workers run. No download: a generated tree of tiny JPEGs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from cdlm_dist.cli.data import main
from cdlm_dist.config import ConfigError, compose
from cdlm_dist.data.domains import load_domain, load_domains
from cdlm_dist.data.ray_stream import decode_batch, domain_rows, load_streamed_domains
from cdlm_dist.data.shards import MANIFEST, prepare_sharded, sharded_dir_name

DOMAINS, CLASSES, PER_CLASS, SIZE = ("Art", "Clipart"), 3, 10, 32
NAMES = [f"imagefolder:OfficeHome/{d}" for d in DOMAINS]


def _overrides(root: Path, *extra: str) -> list[str]:
    spec = ", ".join(f"{{name: '{n}', labelled: {str(i == 0).lower()}}}"
                     for i, n in enumerate(NAMES))
    return [f"data.domains=[{spec}]", f"data.root={root}", f"data.image_size={SIZE}",
            "data.channels=3", "model=lenet", *extra]


@pytest.fixture
def tree(tmp_path: Path, jpeg_tree) -> Path:
    jpeg_tree(tmp_path / "OfficeHome", list(DOMAINS), CLASSES, PER_CLASS)
    return tmp_path


def test_shards_hold_the_files_bytes_and_load_as_the_folder_does(tree: Path) -> None:
    cfg = compose(_overrides(tree))
    out = prepare_sharded(cfg, tree / "prepared", rows_per_shard=8, row_group_rows=4)
    assert [p.name for p in out] == [sharded_dir_name(n) for n in NAMES]
    manifest = json.loads((out[0] / MANIFEST).read_text())
    assert manifest["classes"] == [f"class_{c:03d}" for c in range(CLASSES)]
    assert manifest["rows"] == {"train": 24, "test": 6}
    assert manifest["class_counts"] == {"train": [8, 8, 8], "test": [2, 2, 2]}
    assert len(manifest["files"]["train"]) == 3  # 24 rows, 8 a shard
    table = pq.read_table(out[0] / manifest["files"]["train"][0])
    assert table.column_names == ["image", "label", "domain", "index"]
    assert pq.ParquetFile(out[0] / manifest["files"]["train"][0]).metadata.num_row_groups == 2
    assert len(set(table.column("label").to_pylist())) > 1, "a shard mixes the classes"
    assert table.column("image")[0].as_py()[:2] == b"\xff\xd8", "the JPEG itself, not pixels"
    folder = load_domain(NAMES[0], cfg.data, True, 0)
    shards = load_domain(f"shards:{out[0]}", cfg.data, True, 0)
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(folder, split).images, getattr(shards, split).images), split
        assert torch.equal(getattr(folder, split).labels, getattr(shards, split).labels), split


def test_prepare_resumes_skipping_complete_shards_and_refuses_a_changed_tree(
        tree: Path, jpeg_tree) -> None:
    out = tree / "out"
    args = ["prepare", *_overrides(tree), "--sharded", "--rows-per-shard", "8", "--out", str(out)]
    assert main(args) == 0
    folder = out / sharded_dir_name(NAMES[0])
    kept, lost = folder / "train" / "part-00000.parquet", folder / "train" / "part-00001.parquet"
    before = kept.stat().st_mtime_ns
    lost.unlink()
    (folder / MANIFEST).unlink()  # as an interrupted prepare leaves it
    assert main(args) == 0
    assert lost.exists() and (folder / MANIFEST).exists()
    assert kept.stat().st_mtime_ns == before, "a complete shard is not rewritten"
    jpeg_tree(tree / "OfficeHome", ["Art"], CLASSES + 1, PER_CLASS, seed=1)  # the tree grew
    with pytest.raises(ConfigError, match="another listing"):
        prepare_sharded(compose(_overrides(tree)), out, rows_per_shard=8)


def test_memory_path_refuses_domains_over_the_cap_before_loading(tree: Path) -> None:
    images = len(DOMAINS) * CLASSES * PER_CLASS
    cap_gb = images * 3 * SIZE * SIZE / 3 / 1e9  # a third of what the domains need
    cfg = compose(_overrides(tree, f"data.max_in_memory_gb={cap_gb}"))
    with pytest.raises(ConfigError, match=r"over data\.max_in_memory_gb.*data\.loader=ray_data"):
        load_domains(cfg.data)
    assert len(load_domains(compose(_overrides(tree)).data)) == 2  # the default cap holds them


def test_streamed_domains_validate_and_test_on_the_in_memory_paths_rows(tree: Path) -> None:
    """ray_data keeps validation and test in memory: the same rows and pixels as memory's."""
    prepare_sharded(compose(_overrides(tree)), tree / "prepared", rows_per_shard=8)
    cfg = compose(_overrides(tree, "data.max_test_per_domain=4", "data.val_fraction=0.25"))
    memory = load_domains(cfg.data)
    streamed = load_streamed_domains(cfg.data)
    for m, s in zip(memory, streamed):
        assert len(s.train) == 0, "the train split is never loaded"
        assert torch.equal(m.test.images, s.test.images) and torch.equal(m.test.labels,
                                                                       s.test.labels)
    assert streamed[1].val is None  # the unlabelled target has no validation split
    val_m, val_s = memory[0].val, streamed[0].val
    order = torch.argsort(val_m.labels * 1000 + val_m.images.float().mean((1, 2, 3)))
    order_s = torch.argsort(val_s.labels * 1000 + val_s.images.float().mean((1, 2, 3)))
    assert torch.equal(val_m.images[order], val_s.images[order_s])
    rows = domain_rows(cfg.data, NAMES[0], True, cfg.train.seed)
    assert len(rows.train) == len(memory[0].train) and not set(rows.train) & set(rows.val)


def test_ray_data_workers_decode_what_memory_holds_and_augment_imagenet_style(tree: Path
                                                                              ) -> None:
    cfg = compose(_overrides(tree))
    folder = prepare_sharded(cfg, tree / "prepared", rows_per_shard=64)[0]
    table = pq.read_table(folder / "train" / "part-00000.parquet")
    batch = {k: np.asarray(table.column(k).to_pylist(), dtype=object if k == "image" else None)
             for k in ("image", "label", "index")}
    keep = np.sort(batch["index"])[:20]
    out = decode_batch(batch, keep, SIZE, 3, "none")
    assert out["image"].shape == (20, 3, SIZE, SIZE) and out["image"].dtype == np.uint8
    train = load_domain(NAMES[0], cfg.data, False, 0).train  # index = position in memory
    picked = np.isin(batch["index"], keep)
    assert np.array_equal(out["image"], train.images[batch["index"][picked]].numpy())
    assert np.array_equal(out["label"], train.labels[batch["index"][picked]].numpy())
    grey = decode_batch(batch, keep, SIZE, 1, "imagenet")
    assert grey["image"].shape == (20, 1, SIZE, SIZE)
