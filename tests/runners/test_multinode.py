"""Results reach the driver whatever the node layout: a run whose ranks all live on other nodes
than the driver's writes the same run directory as a one-node run (two TorchTrainer.fit calls:
the multi-node one on its own simulated cluster in a subprocess, the one-node one here, on the
session's local Ray instance)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cdlm_dist.experiment import run_experiment
from cdlm_dist.tracking import TB_SUBDIR
from cdlm_dist.training.memory import SYSTEM_PREFIX
from tests.runners.multinode_run import LAYOUTS, MULTI, SINGLE, overrides

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
# What may differ between the two runs: where they live and how long they took.
LOCATION_KEYS = ("run_dir", "storage_path")
TIME_KEYS = ("wall_time", "train_seconds")  # and the processes' memory: SYSTEM_PREFIX keys


def _shared(key: str, keys: tuple[str, ...]) -> bool:
    return key not in keys and not key.startswith(SYSTEM_PREFIX)


def _drop(node, keys):
    if isinstance(node, dict):
        return {k: _drop(v, keys) for k, v in node.items() if _shared(k, keys)}
    if isinstance(node, list):
        return [_drop(v, keys) for v in node]
    return node


def _files(run_dir: Path) -> set[str]:
    """The run directory's files, TensorBoard's aside (their names carry a time and a pid)."""
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
            if p.is_file() and p.parent.name != TB_SUBDIR}


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar series of a run, read back with TensorBoard's event reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / TB_SUBDIR), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"] if _shared(tag.removeprefix("summary/"), TIME_KEYS)}


def test_ranks_on_other_nodes_give_the_same_run_directory_as_one_node(ray_local,
                                                                      tmp_path: Path) -> None:
    # a process joins one Ray cluster only: the simulated multi-node one needs a process of its
    # own, the one-node run uses this session's instance (a private instance on one node)
    subprocess.run([sys.executable, "-m", "tests.runners.multinode_run", str(tmp_path), MULTI],
                   cwd=REPO, check=True, timeout=900)
    run_experiment(overrides(tmp_path, SINGLE), log=lambda *_: None)
    multi, single = (tmp_path / layout for layout in LAYOUTS)

    assert _files(multi) == _files(single)
    assert {"config.yaml", "metrics.jsonl", "metrics.parquet", "summary.json",
            "training_curves.png"} <= _files(multi)
    rows = [[json.loads(ln) for ln in (d / "metrics.jsonl").read_text().splitlines()]
            for d in (multi, single)]
    assert [r["step"] for r in rows[0] if "loss/total" in r] == [2, 4, 6]
    assert [r["step"] for r in rows[0] if "eval/eval_score" in r] == [3, 6]
    assert _drop(rows[0], TIME_KEYS) == _drop(rows[1], TIME_KEYS)  # bit for bit, gloo on CPU
    summaries = [json.loads((d / "summary.json").read_text()) for d in (multi, single)]
    assert summaries[0]["selected_step"] in (3, 6) and "adv_gap" in summaries[0]
    assert _drop(summaries[0], TIME_KEYS) == _drop(summaries[1], TIME_KEYS)
    frames = [pd.read_parquet(d / "metrics.parquet").drop(columns="wall_time").filter(
        regex=f"^(?!{SYSTEM_PREFIX})") for d in (multi, single)]
    pd.testing.assert_frame_equal(frames[0], frames[1])
    # the driver backfills TensorBoard from the result: the same curves as rank 0's live writer
    assert _scalars(multi) == _scalars(single) and "loss/total" in _scalars(multi)
    configs = [yaml.safe_load((d / "config.yaml").read_text()) for d in (multi, single)]
    assert _drop(configs[0], LOCATION_KEYS) == _drop(configs[1], LOCATION_KEYS)
