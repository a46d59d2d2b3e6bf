"""Every input of the cluster cost model in one place, each labelled with where it comes from:
MEASURED here (docs/scaling.md), PUBLISHED (with its URL) or ASSUMPTION. The same labels travel
into the report, so a reader can tell which numbers to distrust first and what to re-measure."""

from __future__ import annotations

import math
from dataclasses import dataclass

GPUS_PER_NODE = 8
MIB = 2**20
US = 1e-6
GB = 1e9

# ---- PUBLISHED inputs (cited) -------------------------------------------------------------------
NCCL_BUSBW = "https://github.com/NVIDIA/nccl-tests/blob/master/doc/PERFORMANCE.md"
SOURCES = {
    "nvlink": "https://github.com/NVIDIA/nccl-tests/issues/149 (8x A100-SXM4 80GB, NVLink/"
              "NVSwitch: all_reduce_perf busbw ~200 GB/s; #178 reports 208 GB/s)",
    "ib400": "https://github.com/NVIDIA/nccl-tests/issues/290 (NVIDIA maintainer: \"For NDR @ "
             "400Gbps you should see 46-48GB/s per NIC\"; same thread: 476 GB/s busbw in one "
             "8x H100 node with NVLink SHARP)",
    "ib_latency": "https://github.com/NVIDIA/nccl-tests/issues/150 (2 nodes x 1 A100, HDR "
                  "InfiniBand: an 8-byte all_reduce_perf takes 19-20 us)",
    "resnet50": "https://github.com/NVIDIA/DeepLearningExamples/blob/master/PyTorch/"
                "Classification/ConvNets/resnet50v1.5/README.md (DGX A100 80GB, pytorch-21.03 "
                "NGC, batch 256/GPU: 1 GPU 938 img/s TF32, 2470 img/s mixed precision; 8 GPUs "
                "7248 and 16621 img/s)",
}
# ResNet-50 v1.5 training throughput on one A100 (images/s), and on 8 (for the cross-check).
RESNET50_IMG_S = {"tf32": 938.0, "amp": 2470.0}
RESNET50_IMG_S_8GPU = {"tf32": 7248.0, "amp": 16621.0}
RESNET50_BATCH = 256


@dataclass(frozen=True)
class Link:
    """One level of the network: NCCL bus bandwidth (GB/s) and latency per ring step (us)."""

    name: str
    busbw_gbs: float
    alpha_us: float
    source: str


# Inside a node: A100 NVLink 3 via NVSwitch (PUBLISHED busbw). Latency per ring step: ASSUMPTION
# (0.7 us, so that an 8-GPU small all-reduce takes t0 + 14 x 0.7 ~ 15 us, "a few to tens of us").
NVLINK = Link("NVLink (A100, NVSwitch)", 200.0, 0.7,
              f"busbw: PUBLISHED {SOURCES['nvlink']}; latency 0.7 us/step: ASSUMPTION")
# Across nodes: NDR InfiniBand 400 Gb/s, 47 GB/s per NIC (PUBLISHED); 8 NICs per node as in a DGX,
# or 1. Latency: t0 + 2 steps = 19.5 us between 2 nodes (PUBLISHED) -> 7 us per step.
# 100 Gb/s Ethernet (RoCE): busbw 10 GB/s (80 % of the 12.5 GB/s line rate) and 20 us per
# step are ASSUMPTIONS (no published NCCL figure found for it).
INTER = [
    Link("IB NDR 8x400 Gb/s per node", 8 * 47.0, 7.0,
         f"47 GB/s per NIC: PUBLISHED {SOURCES['ib400']}; 7 us/step from {SOURCES['ib_latency']}"),
    Link("IB NDR 1x400 Gb/s per node", 47.0, 7.0,
         f"PUBLISHED {SOURCES['ib400']}; 7 us/step from {SOURCES['ib_latency']}"),
    Link("Ethernet 1x100 Gb/s per node", 10.0, 20.0,
         "ASSUMPTION: 10 GB/s busbw (80 % of line rate), 20 us per ring step"),
]
T0_US = 5.0  # ASSUMPTION: fixed cost of launching one collective (kernel + dispatch)
LAUNCH_US = 5.0  # ASSUMPTION: GPU launch floor per dispatched op of an eager PyTorch step
OVERLAP = 0.5  # ASSUMPTION: the gradient all-reduce can hide behind half of the backward
SYNCBN_GPU_OVERHEAD = 0.0  # ASSUMPTION: SyncBatchNorm arithmetic on a GPU costs nothing extra
#   (i.e. fused, as part 2 of issue 15 is making it); unfused, it cost 0.87x compute on the CPU


@dataclass(frozen=True)
class Network:
    """GPUs packed onto nodes: ``intra`` links the GPUs of a node, ``inter`` the nodes."""

    intra: Link
    inter: Link
    t0_us: float = T0_US
    per_node: int = GPUS_PER_NODE
    tree: bool = False  # across nodes, latency of a tree (log2 n steps) instead of a ring

    def layout(self, p: int) -> tuple[int, int]:
        """(GPUs per node, nodes) of p GPUs packed onto full nodes."""
        g = min(p, self.per_node)
        return g, math.ceil(p / g)


# ---- MEASURED inputs (docs/scaling.md, part 1; 2 vCPUs, 1 thread per worker, gloo) -----------
# python benchmarks/scaling.py --breakdown --steps 40 --warmup 10 --batch 32 --max-train 1024
#   [--override train.sync_batchnorm=false | --override model=lenet], 2026-11-29 ~12:35 UTC.
# ms per step; fixed = optimiser + batch + other at 1 worker (profiled); images = both domains;
# syncs: the profiled collectives of a step (half all-gathers, half reduce-scatters, the code of
# then); sync_ms: they with their waits; ddp_ms: DDP's buckets, launch to completion (overlapped)
CPU_MEASURED = {
    "digits": {"one": 138.1, "fixed": 7.7 + 0.3 + 1.9, "strong": 204.1, "weak": 346.5, "syncs": 26,
               "sync_ms": {"strong": 42.5, "weak": 50.3}, "ddp_ms": {"strong": 9.2, "weak": 12.5}},
    "digits, sync_batchnorm=false": {"one": 167.4, "fixed": 8.4 + 0.3 + 1.9, "strong": 138.7,
                                     "weak": 215.0, "syncs": 0,
                                     "sync_ms": {"strong": 0.0, "weak": 0.0},
                                     "ddp_ms": {"strong": 24.5, "weak": 43.4}},
    "lenet": {"one": 44.6, "fixed": 8.6 + 0.4 + 1.7, "strong": 58.8, "weak": 71.8, "syncs": 4,
              "sync_ms": {"strong": 7.9, "weak": 5.8}, "ddp_ms": {"strong": 11.3, "weak": 13.1}},
}
CPU_BATCH = 32  # per domain at 1 worker and per worker (weak); 16 per worker when strong
# Two unrelated 1-worker processes at once: 152 and 161 ms against 148 ms alone (docs/scaling.md)
COTENANCY = (152 + 161) / 2 / 148
# The synchronised BatchNorm's unfused arithmetic, ~120 ms a step at 64 images per worker: the
# profiler's attribution in docs/scaling.md (aten::var, mul, sum and their backward, in place of
# the fused kernel), i.e. the forward+backward growth less the convolutions' growth and the syncs.
SYNCBN_ARITH_MS_PER_IMAGE = 120.0 / (2 * CPU_BATCH)

# gloo on loopback, 2 processes, 1 thread each (MEASURED here): the defaults below are from
#   python benchmarks/cost_model.py --measure-gloo   on 2026-11-29 at 13:27 UTC, while other
#   jobs loaded the 2 vCPUs (1-min load average 6.0; a second run at load 10.2 gave 447 us, 0.90
#   GB/s, 405 us and 604 us). The CPU points of docs/scaling.md were measured on an idle machine,
#   where these latencies are lower. --measure-gloo re-times them and uses the new values.
GLOO_MEASURED = {"allreduce_small_us": 127, "allreduce_busbw_gbs": 1.32,
                 "allgather_small_us": 211, "reduce_scatter_small_us": 461,
                 "when": "2026-11-29 13:27 UTC, 1-min load average 6.0 on 2 CPUs",
                 "sizes": [[4, 127], [64, 179], [1024, 185], [16384, 190], [262144, 608],
                           [4194304, 3527], [67108864, 51300]]}  # [bytes, us] of all-reduce

# ---- what is modelled ---------------------------------------------------------------------------
GPUS = [1, 2, 4, 8, 16, 32, 64]
BACKBONES = {  # overrides composed with the package's config, and the batch sizes modelled
    "digits": {"overrides": [], "weak": 64, "strong": 1024},
    "lenet": {"overrides": ["model=lenet"], "weak": 64, "strong": 1024},
    "resnet50": {"overrides": ["model=resnet50", "data.image_size=224", "data.channels=3"],
                 "weak": 32, "strong": 256},
}
NUM_DOMAINS = 2
