"""benchmarks/gpu.py cannot rot while no GPU is at hand: its --smoke mode runs every path a CPU
can (Ray Train with one CPU worker included) and these tests read what it wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))
import gpu  # noqa: E402

PNG_MAGIC = b"\x89PNG"
SMOKE_LIMIT_S = 420  # a safety net: the smoke took 95-190 s on two shared, busy cores


def run_gpu(out: Path, *args: str) -> dict:
    proc = subprocess.run([sys.executable, str(BENCH / "gpu.py"), "--smoke", "--out", str(out),
                           "--runs", str(out / "runs"), *args], capture_output=True, text=True,
                          timeout=SMOKE_LIMIT_S + 60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


@pytest.mark.ray
def test_smoke_measures_every_cpu_path_and_says_what_it_skipped(tmp_path):
    data = run_gpu(tmp_path, "--time-limit", str(SMOKE_LIMIT_S))
    assert data["meta"]["status"].startswith("finished"), data["meta"]["status"]
    assert data["meta"]["elapsed_s"] < SMOKE_LIMIT_S
    for name in ("throughput.png", "amp_band.png"):
        assert (tmp_path / name).read_bytes()[:4] == PNG_MAGIC

    check, band = data["correctness"]
    assert check["passed"] and check["worst / tolerance"] == 0.0  # cpu vs cpu: bit-identical
    assert band["passed"] and len(band["curves"]["fp32"]) == gpu.SMOKE.band_steps

    rows = data["throughput"]
    assert not [r for r in rows if "error" in r]
    measured = {(r["method"], r["runner"], r["compile"]) for r in rows}
    assert measured == {("cdlm", "plain", False), ("cdlm", "local", False), ("cdlm", "ray", False),
                        ("cdlm", "plain", True), ("dann", "plain", False),
                        ("dann", "local", False)}
    for r in rows:
        assert r["images_per_s"] == pytest.approx(2 * r["batch"] / (r["step_ms"] / 1000))
        assert r["flops_per_step"] > 0
    assert len([r for r in rows if r["runner"] == "plain" and not r["compile"]]) == \
        2 * (gpu.SMOKE.repeats + gpu.SMOKE.runner_repeats)

    assert [r["channels_last"] for r in data["resnet50"]] == [False, True]
    assert all(r["images_per_s"] > 0 for r in data["resnet50"])

    finished = [r for r in data["accuracy"] if r["status"] == "finished"]
    assert {r["method"] for r in finished} == set(gpu.SMOKE.acc_methods)
    assert all(0 <= r["summary"]["target_acc_selected"] <= 1 for r in finished)
    assert data["meta"]["accuracy data"].startswith("embedded")

    no_cuda = {(r["section"], r["what"]) for r in data["skipped"] if r["why"].startswith("no CUDA")}
    assert ("throughput", "every case with amp=True") in no_cuda
    assert sum(section == "resnet50" for section, _ in no_cuda) == 2
    assert not [r for r in data["skipped"] if r["why"] == "time limit"]

    md = (tmp_path / "results.md").read_text()
    for heading in ("## Environment", "## Correctness", "## Throughput", "Ray overhead (c)/(a): "
                    "cdlm b8 fp32", "## ResNet-50", "## Accuracy", "## Skipped"):
        assert heading in md


def test_a_short_limit_stops_the_script_and_keeps_what_it_measured(tmp_path):
    limit = 30
    data = run_gpu(tmp_path, "--time-limit", str(limit))
    assert data["meta"]["elapsed_s"] < limit
    assert data["environment"]["device"] == "cpu"  # written first (later sections: load-bound)
    stopped = [r for r in data["skipped"] if r["why"] == "time limit"] + [
        r for r in data["accuracy"] if "time limit" in r["status"]]
    assert stopped or "time limit" in data["meta"]["status"]
    assert "## Skipped" in (tmp_path / "results.md").read_text()


def test_peak_table_matches_specific_names_before_their_prefixes():
    assert gpu.peak_tflops("NVIDIA H100 PCIe") == (756.0, 51.2)
    assert gpu.peak_tflops("NVIDIA H100 80GB HBM3") == (989.4, 66.9)
    assert gpu.peak_tflops("NVIDIA L40S")[0] > gpu.peak_tflops("NVIDIA L4")[0]
    assert gpu.peak_tflops("NVIDIA A100-SXM4-80GB") == (312.0, 19.5)
    assert gpu.peak_tflops("Tesla T4") is None


def test_summary_takes_medians_ratios_to_plain_and_the_peak_of_the_rows_precision():
    def row(runner, ms, amp=False, compiled=False):
        return {"method": "cdlm", "batch": 64, "amp": amp, "compile": compiled, "runner": runner,
                "step_ms": ms, "flops_per_step": 1e12, "peak_mib": None}

    rows = [row("plain", 10), row("plain", 30), row("plain", 20), row("ray", 25),
            row("plain", 5, amp=True)]
    summary = {(r["runner"], r["precision"]): r for r in gpu.throughput_summary(rows, (1000, 100))}
    plain, ray, bf16 = summary["plain", "fp32"], summary["ray", "fp32"], summary["plain", "bf16"]
    assert (plain["n"], plain["ms/step"], plain["x plain"]) == (3, 20, 1)
    assert ray["x plain"] == pytest.approx(1.25)
    assert plain["images/s"] == pytest.approx(2 * 64 / 0.020)
    assert plain["% of peak"] == pytest.approx(100 * 50 / 100)  # 50 TFLOP/s of fp32's 100
    assert bf16["% of peak"] == pytest.approx(100 * 200 / 1000)  # 200 TFLOP/s of bf16's 1000


def test_accuracy_uses_real_pairs_only_when_the_root_has_their_files(tmp_path):
    assert gpu.accuracy_pairs("")[0] == gpu.EMBEDDED_PAIRS
    assert gpu.accuracy_pairs(str(tmp_path))[0] == gpu.EMBEDDED_PAIRS
    from cdlm_dist.data.files import MNIST_FILES, USPS_FILES

    (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    (tmp_path / "USPS").mkdir()
    for names in MNIST_FILES.values():
        for n in names:
            (tmp_path / "MNIST" / "raw" / n).touch()
    assert gpu.accuracy_pairs(str(tmp_path))[0] == gpu.EMBEDDED_PAIRS  # USPS still missing
    for n in USPS_FILES.values():
        (tmp_path / "USPS" / n).touch()
    pairs, source = gpu.accuracy_pairs(str(tmp_path))
    assert pairs == ["mnist_to_usps", "usps_to_mnist"] and source.startswith("real")
