"""data.loader=ray_data end to end on 2 Ray Train workers (gloo): K = 3 domains streamed from
prepared shards of a generated image tree (Office-Home layout, ~0.75 GB) while the dataset on disk
is hundreds of times the workers' memory cap, which the in-memory path refuses, and no worker grows
by as much as one domain's shards; an interrupted run resumes at the right step, and a killed
worker recovers. Two TorchTrainer.fit calls in all (~40 s each), one of them restarting its
workers.

What resume restores on this path (ARCHITECTURE.md, "Streaming with Ray Data"): the step, the
model, optimiser and RNG state, each domain's epoch counter and its epoch boundaries; not which
rows fill the rest of an interrupted epoch. The log checks below are the step-level ones.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cdlm_dist.config import ConfigError, compose
from cdlm_dist.data.shards import prepare_sharded
from cdlm_dist.experiment import run_experiment
from cdlm_dist.runners.ray_train import RayRunError
from cdlm_dist.training.loop import FAULT_MARKER
from cdlm_dist.training.memory import (
    BYTES_PER_MB,
    LOAD_GROWTH,
    LOADED_RSS,
    PEAK_RSS,
    START_RSS,
    rank_key,
)

DOMAINS = ("Art", "Clipart", "Product")  # two labelled sources -> a target: K = 3
CLASSES, PER_CLASS, SIZE, WORKERS = 4, 60, 32, 2
SOURCE = (700, 500)  # px of the image files: ~1 MB each as stored (uncompressed) PNG
PNG_HEADER = 33  # bytes of a PNG's signature and IHDR chunk, after which a chunk may go
STEPS, FAIL_AT, CHECKPOINT_EVERY, LOG_EVERY = 6, 4, 3, 2
DISK_OVER_CAP = 4  # the prepared shards are at least this many times the memory cap
# the cap: a quarter of every image decoded at SIZE px, so the in-memory path must refuse
CAP_GB = len(DOMAINS) * CLASSES * PER_CLASS * 3 * SIZE ** 2 / 4 / 1e9


def _unique_copy(png: bytes, i: int) -> bytes:
    """``png`` with a tEXt chunk naming copy ``i``: the same pixels in bytes of its own (Parquet's
    dictionary encoding would store equal images once per row group)."""
    text = b"tEXt" + f"copy\0{i}".encode()
    chunk = struct.pack(">I", len(text) - 4) + text + struct.pack(">I", zlib.crc32(text))
    return png[:PNG_HEADER] + chunk + png[PNG_HEADER:]


def _write_tree(root: Path) -> None:
    """The Office-Home layout, one stored (uncompressed) PNG per domain and class whose colour
    says the class, in PER_CLASS unique copies: ~0.75 GB of image files written at the speed of
    a copy and cheap to decode; what the memory check needs is their bytes, not their variety."""
    for d, domain in enumerate(DOMAINS):
        for c in range(CLASSES):
            folder = root / "OfficeHome" / domain / f"class_{c:03d}"
            folder.mkdir(parents=True)
            colour = np.array([c * 60, d * 80, 255 - c * 60], dtype=np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(np.tile(colour, (SOURCE[1], SOURCE[0], 1))).save(
                buffer, format="PNG", compress_level=0)
            for i in range(PER_CLASS):
                (folder / f"{i:05d}.png").write_bytes(_unique_copy(buffer.getvalue(), i))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    """The tree and its shards, shared by the module's runs: the root and the shards' bytes."""
    root = tmp_path_factory.mktemp("ray_data") / "data"
    _write_tree(root)
    prepare_sharded(compose(_data(root)), root / "prepared", rows_per_shard=32, row_group_rows=8)
    yield root, sum(f.stat().st_size for f in (root / "prepared").rglob("*.parquet"))
    shutil.rmtree(root)  # ~1.5 GB with the tree: not left for pytest's kept temp folders


def _data(root: Path, *extra: str) -> list[str]:
    spec = ", ".join(f"{{name: 'imagefolder:OfficeHome/{d}', "
                     f"labelled: {str(d != 'Product').lower()}}}" for d in DOMAINS)
    return [f"data.domains=[{spec}]", f"data.root={root}", f"data.image_size={SIZE}",
            "data.channels=3", "model=lenet", *extra]


def _streamed(root: Path, tmp_path: Path, name: str, cap_gb: float, max_failures: int
              ) -> list[str]:
    return _data(root, "train=smoke", "data.loader=ray_data", "data.batch_size=8",
                 "data.max_test_per_domain=8", "data.val_fraction=0.05",
                 f"data.max_in_memory_gb={cap_gb}",
                 "data.shuffle_buffer=16", "eval.plots=false", "eval.a_distance=false",
                 "eval.domain_kl=false", "eval.baseline=false", "runner=ray",
                 f"runner.num_workers={WORKERS}", f"runner.max_failures={max_failures}",
                 f"train.steps={STEPS}", f"train.checkpoint_every={CHECKPOINT_EVERY}",
                 f"train.log_every={LOG_EVERY}", f"train.fail_at_step={FAIL_AT}",
                 f"name={name}", f"run_dir={tmp_path / 'run'}")


def _assert_steps_once_kept_before_and_redone_after(run_dir: Path, kept_before: float,
                                                    redone_after: float) -> None:
    """Each log step once; those up to the step-3 checkpoint written before ``kept_before``
    (kept, not retrained), those after it after ``redone_after``."""
    lines = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [ln for ln in lines if "loss/total" in ln]
    assert [ln["step"] for ln in train] == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    for ln in train:
        if ln["step"] > CHECKPOINT_EVERY:
            assert ln["wall_time"] > redone_after, ln
        else:
            assert ln["wall_time"] < kept_before, ln
    assert [ln["step"] for ln in lines if "eval/eval_score" in ln] == [CHECKPOINT_EVERY, STEPS]


def test_streams_three_domains_over_the_memory_cap_resumes_and_a_killed_worker_recovers(
        ray_local, prepared: tuple[Path, int], tmp_path: Path) -> None:
    """Recovery: with runner.max_failures=0 the injected fault at step 4 ends the run with the
    hint to start it again; started again with runner.max_failures=1 and the fault re-armed (its
    once-per-run-directory marker removed), it resumes at the step-3 checkpoint, a worker dies at
    step 4 once more and the run finishes from that checkpoint in the same fit.

    The per-worker RSS check: each worker logs its RSS when it starts (before it loads any
    data), its peak when its loop begins (validation and test rows picked out of the shards and
    decoded) and its peak so far (``cdlm_dist.training.memory``). What loading grew a worker by
    must stay under one domain's shards on disk (a third of them, ~0.24 GB): a worker that held
    any domain's shards whole would exceed it. Measured here: 0.14-0.15 GB, most of it one-time
    costs (torch's and Arrow's first allocations and thread pools, whatever the data's size).
    Checked the other way, with this module's tree and overrides: the in-memory path over the
    prepared folders (``shards:`` domains, ``data.loader=memory``, the cap raised) grew its
    workers by 1.0-1.1 GB, so this assertion fails on a worker that loads the data. Not bounded:
    the growth over the whole run, which adds the model, optimiser and the first steps'
    one-time costs (lazy imports: ~0.45 GB per worker on CPU, whatever the data)."""
    root, disk = prepared
    assert disk >= DISK_OVER_CAP * CAP_GB * 1e9
    overrides = _streamed(root, tmp_path, "stream_recover", CAP_GB, max_failures=0)
    in_memory = [o for o in overrides if o != "data.loader=ray_data"] + ["data.loader=memory"]
    with pytest.raises(ConfigError, match=r"over data\.max_in_memory_gb.*data\.loader=ray_data"):
        run_experiment(in_memory, log=lambda *_: None)
    assert not (tmp_path / "run").exists(), "refused before anything was written"
    with pytest.raises(RayRunError, match=r"InjectedFault.*start the same command again"):
        run_experiment(overrides, log=lambda *_: None)
    marker = tmp_path / "run" / FAULT_MARKER
    assert marker.exists(), "the fault was injected"
    marker.unlink()  # re-armed: the resumed run loses a worker at step 4 too
    restart = time.time()

    summary = run_experiment(_streamed(root, tmp_path, "stream_recover", CAP_GB, max_failures=1),
                             log=lambda *_: None)

    assert marker.exists() and marker.stat().st_mtime > restart, "the fault was injected again"
    assert summary["steps"] == STEPS
    _assert_steps_once_kept_before_and_redone_after(tmp_path / "run", restart,
                                                    marker.stat().st_mtime)
    last = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert 0.0 <= last["target_acc_selected"] <= 1.0
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
            if "loss/adv" in ln]
    assert rows and all(r["loss/adv"] > 0 for r in rows)  # the 3-way discriminator trains
    for key in (START_RSS, LOADED_RSS, PEAK_RSS):  # every rank's three numbers in every row
        assert all(rank_key(key, r) in row for row in rows for r in range(WORKERS))
    growth = [last[rank_key(LOAD_GROWTH, r)] for r in range(WORKERS)]  # max over the attempts
    bound = disk / len(DOMAINS) / BYTES_PER_MB
    assert all(0 < g < bound for g in growth), (growth, bound)


def test_each_domain_cycles_on_its_own_epochs_and_a_pass_is_its_train_rows(
        ray_local, jpeg_tree, tmp_path: Path) -> None:
    """Without Ray Train (one worker): `prepare --ray` writes what a plain prepare writes;
    domains of different sizes change epoch at their own steps, a pass yields exactly the rows
    that train (no validation row), and a stream started mid-run (a resume) is in the same
    epochs at the same steps."""
    from cdlm_dist.data.ray_stream import RayDataStream, all_domain_rows, build_datasets

    root = tmp_path / "data"
    jpeg_tree(root / "OfficeHome", ["Art"], 3, 6)  # 13 train rows: 3 batches of 4
    jpeg_tree(root / "OfficeHome", ["Clipart"], 3, 4, seed=1)  # 9 train rows: 2 batches
    spec = ("[{name: 'imagefolder:OfficeHome/Art', labelled: true}, "
            "{name: 'imagefolder:OfficeHome/Clipart'}]")
    cfg = compose([f"data.domains={spec}", f"data.root={root}", "data.image_size=16",
                   "data.channels=3", "model=lenet", "runner=ray", "runner.num_workers=1",
                   "data.loader=ray_data", "data.batch_size=4"])
    prepare_sharded(cfg, root / "prepared", rows_per_shard=8, row_group_rows=4, use_ray=True)
    prepare_sharded(cfg, root / "local", rows_per_shard=8, row_group_rows=4)
    for ray_file in sorted((root / "prepared").rglob("*.parquet")):  # Ray Data tasks wrote
        local = pq.read_table(root / "local" / ray_file.relative_to(root / "prepared"))
        assert pq.read_table(ray_file).equals(local)  # what this process writes
    rows = all_domain_rows(cfg.data, cfg.train.seed)
    datasets = build_datasets(cfg)
    for ds, r in zip(datasets.values(), rows):  # one pass = every train row once, nothing else
        seen = [int(i) for b in ds.iter_batches(batch_size=None) for i in b["index"]]
        assert sorted(seen) == r.train.tolist() and not set(seen) & set(r.val.tolist())
    shards = [ds.iterator() for ds in datasets.values()]
    stream = RayDataStream(shards, [len(r.train) for r in rows], 4, cfg.train.seed, 8)
    assert stream.batches_per_epoch == [len(r.train) // 4 for r in rows]
    assert stream.batches_per_epoch[0] != stream.batches_per_epoch[1]
    steps = 2 * max(stream.batches_per_epoch)  # each Ray Data pass costs seconds here
    epochs = []
    for step in range(steps):
        batch = stream.batch(step)
        assert [tuple(x.shape) for x, _ in batch] == [(4, 3, 16, 16)] * 2
        epochs.append(list(stream.epochs))
    assert epochs == [[s // n for n in stream.batches_per_epoch] for s in range(steps)]
    resumed = RayDataStream(shards, [len(r.train) for r in rows], 4, cfg.train.seed, 8)
    for step in range(steps - 2, steps):
        resumed.batch(step)
        assert resumed.epochs == epochs[step]
