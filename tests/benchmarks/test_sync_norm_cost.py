"""The synchronised-layer cost benchmark's report: per-call microseconds and the extra ms."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from sync_norm_cost import SHAPES, report  # noqa: E402


def test_report_gives_microseconds_per_call_and_the_fused_layers_extra_milliseconds() -> None:
    arith = {name: {"native": 0.002, "fused": 0.0035} for name in SHAPES}
    text = report({"c10d all-reduce, 65 floats": 0.0014}, arith, "cmd")
    assert "| c10d all-reduce, 65 floats | 1400 |" in text
    layer = next(iter(SHAPES))
    assert f"| {layer} | {SHAPES[layer]} | 2.00 | 3.50 | +1.50 |" in text
    assert text.count("+1.50") == len(SHAPES)
