"""The paired scaling benchmark's arithmetic: ratios paired per round, the weak step's split."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from scaling_paired import BLOCKS, WEAK_PARTS, paired_stats  # noqa: E402


def _ranks(per_round: list[dict[str, float]], rank1_solo: float = 1.0) -> list[dict]:
    """Two ranks timing the same blocks; rank 1's solo 'step' is its wait, not a step."""
    def rank(solo_override: float | None) -> dict:
        rounds = [{b.name: {"ms": (solo_override if b.name == "solo" and solo_override
                                   else row.get(b.name, 100.0)), "cpu_ms": 1.0}
                   for b in BLOCKS} for row in per_round]
        return {"rounds": rounds}
    return [rank(None), rank(rank1_solo)]


def test_ratios_pair_each_round_so_a_uniform_slowdown_cancels() -> None:
    # Round 2 is the same machine running twice as slow: every paired ratio is unchanged.
    base = {"solo": 100.0, "pair": 110.0, "lockstep": 125.0, "weak_nosync": 160.0,
            "weak": 200.0, "strong": 80.0}
    slow = {k: 2 * v for k, v in base.items()}
    stats = paired_stats(_ranks([base, slow, base]))
    assert stats["ratios"]["weak"][:3] == pytest.approx((0.5, 0.5, 0.5))
    assert stats["ratios"]["pair"][0] == pytest.approx(100 / 110)
    assert stats["ratios"]["strong"][0] == pytest.approx(1.25)
    assert stats["ratios"]["weak"][3:] == pytest.approx((0.5, 0.5))  # min and max
    # unpaired medians would mix the rounds: the block medians do move
    assert stats["step_ms"]["solo"][0] == 100 and stats["step_ms"]["weak"][2] == 300


def test_solo_is_rank_zeros_time_and_the_weak_parts_add_up() -> None:
    row = {"solo": 100.0, "pair": 110.0, "lockstep": 125.0, "weak_nosync": 160.0,
           "weak": 200.0}
    stats = paired_stats(_ranks([row, row], rank1_solo=5.0))  # rank 1 only waited in solo
    assert stats["step_ms"]["solo"][0] == 100
    parts = stats["weak_parts"]
    assert [parts[p][0] for p, _, _ in WEAK_PARTS] == [10, 15, 35, 40]
    assert sum(parts[p][0] for p, _, _ in WEAK_PARTS) == stats["weak_growth"][0] == 100


def test_a_block_is_the_mean_of_the_ranks() -> None:
    ranks = _ranks([{"weak": 200.0}, {"weak": 200.0}])
    for r in ranks[1]["rounds"]:
        r["weak"]["ms"] = 300.0
    assert paired_stats(ranks)["step_ms"]["weak"][0] == 250
