"""The cluster cost model's algebra (benchmarks/cost_terms.py, and the GPU compute of
benchmarks/gpu_compute.py) on constructed cases: no model is built, nothing is measured, no
network."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from cost_inputs import GB, MIB, US, Link, Network  # noqa: E402
from cost_terms import (  # noqa: E402
    collective_time,
    efficiency,
    exposed,
    ring_time,
    step,
    syncs_time,
)
from gpu_compute import Compute, measured_gpu_compute  # noqa: E402
from model_facts import Facts, ddp_buckets  # noqa: E402

FAST = Link("fast", busbw_gbs=100.0, alpha_us=2.0, source="test")
SLOW = Link("slow", busbw_gbs=10.0, alpha_us=20.0, source="test")


def _facts(syncs: int = 4) -> Facts:
    """syncs BatchNorm layers of 64 channels: an all-gather forward, an all-reduce backward."""
    collectives = [("all_gather_into_tensor", 4 * 129), ("all_reduce", 4 * 128)] * syncs
    return Facts("toy", params=2_000_000, buckets=ddp_buckets(8_000_000),
                 collectives=collectives, flops_per_image=1e9, backward_share=2 / 3,
                 ops_per_step=100)


def test_ring_all_reduce_is_2_p_minus_1_over_p_bytes_over_busbw_plus_2_p_minus_1_latencies():
    nbytes, p = 64 * MIB, 4
    expected = 2 * 3 / 4 * nbytes / (100 * GB) + 2 * 3 * 2.0 * US
    assert ring_time(nbytes, p, FAST) == pytest.approx(expected)
    # all-gather / reduce-scatter: half the steps
    assert ring_time(nbytes, p, FAST, steps_per_rank=1) == pytest.approx(expected / 2)
    assert ring_time(nbytes, 1, FAST) == 0.0
    # a tree's latency: 2 log2(p) steps instead of 2(p-1); the same bandwidth term
    tree = ring_time(nbytes, 8, FAST, tree=True)
    assert tree == pytest.approx(ring_time(nbytes, 8, FAST) - (14 - 6) * 2.0 * US)


def test_hierarchical_collective_uses_the_network_only_across_nodes():
    net = Network(FAST, SLOW, t0_us=5.0, per_node=8)
    assert net.layout(8) == (8, 1) and net.layout(64) == (8, 8)
    assert collective_time(MIB, 1, net) == 0.0
    inside = collective_time(MIB, 8, net)
    assert inside == pytest.approx(5.0 * US + ring_time(MIB, 8, FAST))
    assert collective_time(MIB, 16, net) == pytest.approx(inside + ring_time(MIB, 2, SLOW))


def test_syncs_gather_p_times_their_input_and_all_reduce_twice_the_steps():
    net = Network(FAST, SLOW, t0_us=5.0)
    gather = syncs_time([("all_gather_into_tensor", 1000)], 4, net)
    assert gather == pytest.approx(5.0 * US + ring_time(4 * 1000, 4, FAST, steps_per_rank=1))
    reduce = syncs_time([("all_reduce", 1000)], 4, net)
    assert reduce == pytest.approx(collective_time(1000, 4, net))
    assert syncs_time([("all_reduce", 1000)], 1, net) == 0.0


def test_ddp_buckets_first_one_mib_then_25_mib():
    sizes = ddp_buckets(60 * MIB)
    assert sizes == [MIB, 25 * MIB, 25 * MIB, 9 * MIB]
    assert ddp_buckets(MIB // 2) == [MIB // 2]


def test_exposed_all_reduce_hides_behind_the_backward_but_never_the_last_bucket():
    assert exposed(10.0, 1.0, backward=100.0, overlap=0.5) == 1.0
    assert exposed(10.0, 1.0, backward=8.0, overlap=0.5) == pytest.approx(6.0)
    assert exposed(10.0, 1.0, backward=100.0, overlap=0.0) == 10.0  # the no-overlap bound
    assert exposed(0.0, 0.0, backward=1.0, overlap=0.5) == 0.0


def test_one_gpu_has_no_communication_and_efficiency_one():
    net = Network(FAST, SLOW)
    compute = Compute(t_img=1e-3, floor=2e-3, t_fixed=1e-3)
    one = step(_facts(), compute, 64, 1, net)
    assert one["syncs"] == one["allreduce"] == one["allreduce_exposed"] == 0.0
    assert one["step"] == pytest.approx(64e-3 + 1e-3)
    for mode in ("weak", "strong"):
        assert efficiency(one["step"], one["step"], 1, mode) == 1.0


def test_compute_is_the_larger_of_the_launch_floor_and_the_images():
    compute = Compute(t_img=1e-3, floor=10e-3, t_fixed=1e-3)
    assert compute(4) == pytest.approx(11e-3) and compute(100) == pytest.approx(101e-3)


@pytest.mark.parametrize("mode", ["weak", "strong"])
def test_efficiency_falls_as_latency_grows_and_as_syncs_are_added(mode):
    compute = Compute(t_img=1e-4)
    images = 128

    def eff(alpha_us: float, syncs: int, p: int = 64) -> float:
        net = Network(FAST, Link("inter", 50.0, alpha_us, "test"))
        local = images if mode == "weak" else images / p
        one = step(_facts(syncs), compute, images, 1, net)["step"]
        return efficiency(one, step(_facts(syncs), compute, local, p, net)["step"], p, mode)

    by_latency = [eff(a, 4) for a in (1.0, 10.0, 100.0, 1000.0)]
    assert all(a > b for a, b in zip(by_latency, by_latency[1:]))
    assert eff(10.0, 0) > eff(10.0, 4) > eff(10.0, 40)
    assert all(0 < e <= 1 for e in by_latency)


def test_sync_off_and_no_overlap_bound_order_the_step():
    net = Network(FAST, SLOW)
    t = step(_facts(), Compute(t_img=1e-5), 64, 16, net)
    off = step(_facts(), Compute(t_img=1e-5), 64, 16, net, sync=False)
    assert off["syncs"] == 0.0 and off["step"] < t["step"] <= t["step_no_overlap"]
    assert t["step_no_overlap"] - t["step"] == pytest.approx(t["allreduce"]
                                                              - t["allreduce_exposed"])


def test_gpu_result_replaces_the_assumed_compute(tmp_path):
    """benchmarks/gpu.py's results.json: lenet's plain-loop steps are fitted as a + t x images
    over the batches; digits scales lenet's per-image time by FLOPs; resnet50 from its row."""
    rows = [{"method": "cdlm", "batch": b, "amp": False, "compile": False, "runner": "plain",
             "step_ms": 2.0 + 0.01 * 2 * b} for b in (64, 256, 1024)]
    rows += [{"method": "cdlm", "batch": 64, "amp": False, "compile": False, "runner": "ray",
              "step_ms": 99.0}, {"method": "dann", "batch": 64, "amp": False, "compile": False,
                                 "runner": "plain", "step_ms": 99.0}]
    resnet = [{"model": "resnet50", "batch": 64, "amp": False, "channels_last": False,
               "step_ms": 128.0}]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"environment": {"device name": "TestGPU"}, "throughput": rows,
                                "resnet50": resnet}))
    facts = {"lenet": replace_flops(_facts(), 1e9), "digits": replace_flops(_facts(), 4e9)}
    got = measured_gpu_compute(path, "tf32", facts)
    assert got["lenet"].t_img == pytest.approx(1e-5) and got["lenet"].t_fixed == pytest.approx(2e-3)
    assert got["digits"].t_img == pytest.approx(4e-5)
    assert got["resnet50"].t_img == pytest.approx(128e-3 / 128)
    assert "TestGPU" in got["lenet"].source
    assert math.isclose(got["lenet"](0), 2e-3)


def replace_flops(facts: Facts, flops: float) -> Facts:
    from dataclasses import replace

    return replace(facts, flops_per_image=flops)
