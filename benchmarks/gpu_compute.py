"""The per-GPU compute term of a step, which no GPU here can time: assumed from the PUBLISHED
ResNet-50 throughput on an A100 (scaled by each model's counted FLOPs, floored by its launch
cost), or MEASURED by benchmarks/gpu.py on whatever GPU it ran (``--gpu-result``)."""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cost_inputs import LAUNCH_US, NUM_DOMAINS, RESNET50_IMG_S, US  # noqa: E402
from gloo_timing import fit_line  # noqa: E402
from model_facts import Facts  # noqa: E402


@dataclass
class Compute:
    """Per-GPU compute of one step: max(launch floor, t_img x images) + t_fixed (seconds)."""

    t_img: float
    floor: float = 0.0
    t_fixed: float = 0.0
    source: str = ""

    def __call__(self, images: float) -> float:
        return max(self.floor, self.t_img * images) + self.t_fixed


def assumed_gpu_compute(facts: Facts, precision: str, ref_flops: float) -> Compute:
    """ASSUMPTION: every model runs at the FLOP/s the PUBLISHED ResNet-50 throughput implies on
    an A100, or at the launch floor (ops x LAUNCH_US), whichever is slower."""
    achieved = RESNET50_IMG_S[precision] * ref_flops
    return Compute(facts.flops_per_image / achieved, facts.ops_per_step * LAUNCH_US * US, 0.0,
                   f"ASSUMPTION: {achieved / 1e12:.0f} TFLOP/s (A100 ResNet-50, {precision}, "
                   f"PUBLISHED) and a {LAUNCH_US:.0f} us/op launch floor")


def measured_gpu_compute(path: Path, precision: str, facts: dict[str, Facts]
                         ) -> dict[str, Compute]:
    """Compute models from benchmarks/gpu.py's results.json (MEASURED): lenet from its
    throughput rows (cdlm, plain loop, not compiled: step ms = a + t_img x images, fitted over
    the batches), digits from lenet's scaled by their FLOPs per image (a derived figure), and
    resnet50 from its ResNet-50 rows (contiguous memory)."""
    data = json.loads(path.read_text())
    device = data.get("environment", {}).get("device name", data.get("meta", {}).get("device"))
    amp = precision == "amp"
    out: dict[str, Compute] = {}
    by_batch: dict[int, list[float]] = {}
    for r in data.get("throughput", []):
        if (r.get("method"), r.get("runner"), r.get("amp"), r.get("compile")) == \
                ("cdlm", "plain", amp, False) and "error" not in r:
            by_batch.setdefault(r["batch"], []).append(r["step_ms"])
    if by_batch:
        a, slope = fit_line([(NUM_DOMAINS * b, statistics.median(v) / 1000)
                             for b, v in sorted(by_batch.items())])
        what = f"MEASURED on {device} by gpu.py (batches {sorted(by_batch)} per domain)"
        out["lenet"] = Compute(slope, 0.0, a, what)
        ratio = facts["digits"].flops_per_image / facts["lenet"].flops_per_image
        out["digits"] = Compute(slope * ratio, 0.0, a, f"lenet's, x{ratio:.1f} FLOPs per image; "
                                                        + what)
    rows = [r for r in data.get("resnet50", []) if r.get("amp") == amp
            and not r.get("channels_last") and "step_ms" in r]
    if rows:
        r = rows[0]
        out["resnet50"] = Compute(r["step_ms"] / 1000 / (NUM_DOMAINS * r["batch"]), 0.0, 0.0,
                                  f"MEASURED on {device} by gpu.py (batch {r['batch']})")
    return out
