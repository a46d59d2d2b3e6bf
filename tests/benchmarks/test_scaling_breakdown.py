"""The scaling benchmark's step breakdown: how profiler events become per-step columns."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from scaling import (  # noqa: E402
    ALLREDUCE_OP,
    SYNC_OPS,
    WAIT_OP,
    breakdown_table,
    profile_split,
)


def _event(key: str, total_us: float, count: int) -> SimpleNamespace:
    return SimpleNamespace(key=key, cpu_time_total=total_us, count=count)


def test_profile_split_gives_per_step_ms_counts_and_the_rest() -> None:
    steps = 2
    events = [_event("step", 200_000, 2), _event("forward", 80_000, 2),
              _event("backward", 90_000, 2), _event("optimizer", 10_000, 2),
              _event("batch", 2_000, 2), _event("metrics", 0, 0),
              _event(SYNC_OPS[0], 6_000, 24), _event(SYNC_OPS[2], 4_000, 24),
              _event(WAIT_OP, 10_000, 104), _event(ALLREDUCE_OP, 3_000, 4)]
    split = profile_split(events, steps)
    assert split["forward_ms"] == 40 and split["backward_ms"] == 45
    assert split["optimizer_ms"] == 5 and split["batch_ms"] == 1
    assert split["syncs"] == 24  # 12 all-gathers and 12 all-reduces a step
    assert split["sync_ms"] == 10
    assert split["allreduce_launch_ms"] == 1.5
    assert split["other_ms"] == 100 - 40 - 45 - 5 - 1


def test_profile_split_without_collectives_is_zero_not_missing() -> None:
    split = profile_split([_event("step", 1_000, 1), _event("forward", 500, 1)], 1)
    assert split["syncs"] == 0 and split["sync_ms"] == 0 and split["allreduce_launch_ms"] == 0


def test_breakdown_table_averages_ranks_and_scores_against_one_worker() -> None:
    base = {"global_batch": 32, "sync_batchnorm": True}
    rows = [{"mode": "baseline", "world": 1, "per_worker_batch": 32, "rank": 0,
             "step_ms": 100.0} | base,
            {"mode": "strong", "world": 2, "per_worker_batch": 16, "rank": 0,
             "step_ms": 60.0} | base,
            {"mode": "strong", "world": 2, "per_worker_batch": 16, "rank": 1,
             "step_ms": 40.0} | base,
            {"mode": "weak", "world": 2, "per_worker_batch": 32, "rank": 0, "step_ms": 125.0,
             "global_batch": 64, "sync_batchnorm": True},
            {"mode": "weak", "world": 2, "per_worker_batch": 32, "rank": 1, "step_ms": 125.0,
             "global_batch": 64, "sync_batchnorm": True}]
    table = {r["mode"]: r for r in breakdown_table(rows)}
    assert table["strong"]["step_ms"] == 50 and table["strong"]["speedup"] == 2
    assert math.isnan(table["strong"]["weak_efficiency"])
    assert table["weak"]["weak_efficiency"] == 0.8
    assert math.isnan(table["baseline"]["speedup"])
