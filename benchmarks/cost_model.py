"""A cost model of CDLM data-parallel training on a GPU cluster we cannot run here (issue 15,
part 3).

    python benchmarks/cost_model.py                      # table + plot -> bench_results/cost_model
    python benchmarks/cost_model.py --measure-gloo       # first re-time gloo on loopback (~20 s)
    python benchmarks/cost_model.py --precision amp      # bf16 compute instead of TF32
    python benchmarks/cost_model.py --tree               # tree latency across nodes, not ring
    python benchmarks/cost_model.py --override train.sync_batchnorm_scope=encoder   # a variant
    python benchmarks/cost_model.py --gpu-result bench_results/gpu/results.json   # measured 1-GPU

One step on p GPUs (g = min(p, 8) per node, n = p / g nodes), per-GPU batch b images:

    step(p) = compute(b) + syncs(p) + exposed(all-reduce(p))
    compute(b)      = max(launch floor, t_img * b) + t_fixed          (per GPU, no communication)
    syncs(p)        = the synced statistics' small collectives, on the critical path: each
                      BatchNorm layer call and hbar standardisation is an all-gather forward and
                      an all-reduce (or reduce-scatter) backward; counted by running the model
    all-reduce(p)   = sum over DDP buckets of a hierarchical ring all-reduce:
                      t0 + 2(g-1)/g * B / bw_intra + 2(g-1) a_intra          (inside a node)
                         + 2(n-1)/n * B / bw_inter + 2(n-1) a_inter          (across nodes)
    exposed(T)      = max(T_last bucket, T - f * t_backward)          f = overlap (an assumption);
                      the no-overlap bound is exposed(T) = T
    weak efficiency   = step(1) / step(p)          (per-GPU batch fixed)
    strong efficiency = step(1) / (p * step(p))    (global batch fixed, split over p GPUs)

An all-gather or reduce-scatter is the same ring with (p-1) steps instead of 2(p-1). bw is the
NCCL "bus bandwidth" (nccl-tests' busbw: algbw x 2(p-1)/p for all-reduce), so published busbw
plugs straight in. Inputs are of three kinds, each labelled where it is defined and in the
output: MEASURED here, PUBLISHED (with its URL) and ASSUMPTION. Parameter counts, DDP buckets,
the synced-statistics collectives, FLOPs and op counts come from the models themselves, composed
with the package's own config (no weights, no download): see :func:`model_facts`.

The model is checked against what can be measured here: 1 and 2 CPU workers on gloo
(docs/scaling.md), from the 1-worker step, gloo's measured collective costs and the sync count.
``--gpu-result`` reads benchmarks/gpu.py's results.json and replaces the assumed GPU compute
(lenet: throughput rows, cdlm, plain loop; resnet50: its ResNet-50 rows) with the measured one.
Writes <out>/cost_model.md, <out>/cost_model.csv and <out>/cost_model.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scaling import markdown  # noqa: E402

DEFAULT_OUT = Path("bench_results/cost_model")
GPUS = [1, 2, 4, 8, 16, 32, 64]
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


# ---- facts of the models (built here: meta device, fake process group) -------------------------
BACKBONES = {  # overrides composed with the package's config, and the batch sizes modelled
    "digits": {"overrides": [], "weak": 64, "strong": 1024},
    "lenet": {"overrides": ["model=lenet"], "weak": 64, "strong": 1024},
    "resnet50": {"overrides": ["model=resnet50", "data.image_size=224", "data.channels=3"],
                 "weak": 32, "strong": 256},
}
NUM_DOMAINS = 2


@dataclass
class Facts:
    """What one CDLM step of a backbone moves and computes, counted on the model."""

    backbone: str
    params: int
    buckets: list[int]  # DDP bucket sizes (bytes), in launch order
    collectives: list[tuple[str, int]]  # the step's synced-statistics collectives: (op, bytes in)
    flops_per_image: float  # forward + backward
    backward_share: float  # backward FLOPs / (forward + backward)
    ops_per_step: int  # ops dispatched by forward + backward (each ~ one GPU kernel)

    @property
    def syncs(self) -> int:
        return len(self.collectives)


def ddp_buckets(grad_bytes: int, cap: int = 25 * MIB, first: int = MIB) -> list[int]:
    """DDP's bucket sizes: the first bucket is capped at 1 MiB, the rest at bucket_cap_mb."""
    sizes, left = [], grad_bytes
    while left > 0:
        size = min(left, first if not sizes else cap)
        sizes.append(size)
        left -= size
    return sizes


def _forward_loss(model, cfg, device: str):
    """A training forward of 2 images per domain; a scalar that every output feeds (its
    backward is the backward of the step, up to the loss arithmetic)."""
    import torch

    shape = (2, cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
    out = model([torch.rand(shape, device=device) for _ in range(NUM_DOMAINS)],
                [True] + [False] * (NUM_DOMAINS - 1))
    outputs = [*out.h, *out.mu, *out.domain_logits,
               *[t for p in out.pairs for t in (p.rec_logits, p.cls_logits) if t is not None],
               *[t for t in out.prior_rec_logits if t is not None]]
    return sum(t.float().mean() for t in outputs)


def _dispatch_counter():
    """A dispatch mode counting ops, and the collectives among them as (op name, bytes in)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops = 0
            self.collectives: list[tuple[str, int]] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops += 1
            name = func.overloadpacket.__name__
            if func.namespace in ("_c10d_functional", "c10d") and any(
                    k in name for k in ("gather", "reduce", "scatter", "broadcast")):
                self.collectives.append((name, args[0].numel() * args[0].element_size()))
            return func(*args, **(kwargs or {}))

    return Counter()


def model_facts(backbone: str, overrides: list[str]) -> Facts:
    """The backbone's CDLM composed as runner=ray composes it (train.sync_batchnorm on), then:
    on the meta device (no weights, no download), FLOPs and dispatched ops of one forward and
    backward; on the CPU in a fake 2-rank process group (torch's testing backend: collectives
    return at once), the loop's own convert_sync_batchnorm and the collectives that one
    forward and backward dispatch, i.e. the synced statistics of the code as it is."""
    import torch
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore
    from torch.utils.flop_counter import FlopCounterMode

    from cdlm_dist.config import compose
    from cdlm_dist.model import build_model
    from cdlm_dist.model.sync_norm import convert_sync_batchnorm

    cfg = compose(["method=cdlm", "runner=ray", *BACKBONES[backbone]["overrides"], *overrides])
    with torch.device("meta"):
        model = build_model(cfg, NUM_DOMAINS, 10).train()
    counter = _dispatch_counter()
    with FlopCounterMode(display=False) as flops, counter:
        loss = _forward_loss(model, cfg, "meta")
        forward = flops.get_total_flops()
        loss.backward()
    total = flops.get_total_flops()
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    cap = getattr(cfg.train, "ddp_bucket_cap_mb", 0) or 25  # 0: torch's default

    collectives: list[tuple[str, int]] = []
    if cfg.train.sync_batchnorm:
        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
        try:
            model = build_model(cfg, NUM_DOMAINS, 10).train()
            scope = getattr(cfg.train, "sync_batchnorm_scope", None)  # as the loop converts
            model = convert_sync_batchnorm(model, scope) if scope else \
                convert_sync_batchnorm(model)
            synced = _dispatch_counter()
            with synced:
                _forward_loss(model, cfg, "cpu").backward()
            collectives = synced.collectives
        finally:
            dist.destroy_process_group()
    return Facts(backbone, params, ddp_buckets(4 * params, int(cap * MIB)), collectives,
                 total / (NUM_DOMAINS * 2), 1 - forward / total, counter.ops)


def reference_resnet50() -> tuple[float, int]:
    """(FLOPs of one training image, forward + backward, at 224 px; parameters) of the plain
    torchvision ResNet-50 that the published throughput is for."""
    import torch
    import torchvision
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        net = torchvision.models.resnet50(weights=None)
    x = torch.rand(2, 3, 224, 224, device="meta")
    with FlopCounterMode(display=False) as flops:
        net(x).float().mean().backward()
    return flops.get_total_flops() / 2, sum(p.numel() for p in net.parameters())


# ---- the algebra --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Network:
    intra: Link
    inter: Link
    t0_us: float = T0_US
    per_node: int = GPUS_PER_NODE
    tree: bool = False  # across nodes, latency of a tree (log2 n steps) instead of a ring

    def layout(self, p: int) -> tuple[int, int]:
        """(GPUs per node, nodes) of p GPUs packed onto full nodes."""
        g = min(p, self.per_node)
        return g, math.ceil(p / g)


def ring_time(nbytes: float, ranks: int, link: Link, steps_per_rank: int = 2,
              tree: bool = False) -> float:
    """Seconds of a ring collective over ``ranks`` on one link, without the launch cost:
    all-reduce (steps_per_rank=2): 2(r-1)/r * bytes / busbw + 2(r-1) * latency;
    all-gather / reduce-scatter (1): (r-1)/r * bytes / busbw + (r-1) * latency.
    ``tree``: the latency term of a tree, 2 log2(r) (all-reduce) or log2(r) steps."""
    if ranks <= 1:
        return 0.0
    k = steps_per_rank * (ranks - 1)
    hops = steps_per_rank * math.ceil(math.log2(ranks)) if tree else k
    return k / ranks * nbytes / (link.busbw_gbs * GB) + hops * link.alpha_us * US


def collective_time(nbytes: float, p: int, net: Network, steps_per_rank: int = 2) -> float:
    """Hierarchical ring: inside each node over NVLink, then across nodes over the NIC(s)."""
    if p <= 1:
        return 0.0
    g, n = net.layout(p)
    return (net.t0_us * US + ring_time(nbytes, g, net.intra, steps_per_rank)
            + ring_time(nbytes, n, net.inter, steps_per_rank, net.tree))


def allreduce_time(buckets: list[int], p: int, net: Network) -> tuple[float, float]:
    """(all buckets, the last bucket) in seconds."""
    times = [collective_time(b, p, net) for b in buckets]
    return sum(times), (times[-1] if times else 0.0)


def syncs_time(collectives: list[tuple[str, int]], p: int, net: Network) -> float:
    """The synced statistics' collectives (cdlm_dist/model/sync_norm.py), on the critical path:
    an all-gather moves p x its input, an all-reduce is twice the ring steps."""
    if p <= 1:
        return 0.0
    return sum(collective_time(nbytes * p, p, net, 1) if "gather" in op else
               collective_time(nbytes, p, net, 2 if "all_reduce" in op else 1)
               for op, nbytes in collectives)


def exposed(total: float, last: float, backward: float, overlap: float) -> float:
    """The part of the gradient all-reduce the step waits for: the last bucket always, the rest
    once it exceeds the backward time it can hide behind."""
    return max(last, total - overlap * backward) if total > 0 else 0.0


@dataclass
class Compute:
    """Per-GPU compute of one step: max(launch floor, t_img x images) + t_fixed (seconds)."""

    t_img: float
    floor: float = 0.0
    t_fixed: float = 0.0
    source: str = ""

    def __call__(self, images: float) -> float:
        return max(self.floor, self.t_img * images) + self.t_fixed


def step(facts: Facts, compute: Compute, images: float, p: int, net: Network,
         overlap: float = OVERLAP, sync: bool = True,
         syncbn_overhead: float = SYNCBN_GPU_OVERHEAD) -> dict[str, float]:
    """One step's terms (seconds): compute, sync-BN arithmetic, syncs, DDP all-reduce."""
    c = compute(images)
    synced = sync and p > 1 and facts.syncs > 0
    ar, last = allreduce_time(facts.buckets, p, net)
    terms = {"compute": c, "syncbn_arith": syncbn_overhead * c if synced else 0.0,
             "syncs": syncs_time(facts.collectives, p, net) if synced else 0.0,
             "allreduce": ar,
             "allreduce_exposed": exposed(ar, last, facts.backward_share * c, overlap)}
    terms["step"] = (terms["compute"] + terms["syncbn_arith"] + terms["syncs"]
                     + terms["allreduce_exposed"])
    terms["step_no_overlap"] = terms["step"] - terms["allreduce_exposed"] + ar
    return terms


def efficiency(one: float, many: float, p: int, mode: str) -> float:
    """weak: step(1) / step(p); strong: step(1) / (p step(p))."""
    return one / many if mode == "weak" else one / (p * many)


# ---- GPU compute: assumed from published ResNet-50 throughput, or measured by gpu.py ---------
def assumed_gpu_compute(facts: Facts, precision: str, ref_flops: float) -> Compute:
    """ASSUMPTION: every model runs at the FLOP/s the PUBLISHED ResNet-50 throughput implies on
    an A100, or at the launch floor (ops x LAUNCH_US), whichever is slower."""
    achieved = RESNET50_IMG_S[precision] * ref_flops
    return Compute(facts.flops_per_image / achieved, facts.ops_per_step * LAUNCH_US * US, 0.0,
                   f"ASSUMPTION: {achieved / 1e12:.0f} TFLOP/s (A100 ResNet-50, {precision}, "
                   f"PUBLISHED) and a {LAUNCH_US:.0f} us/op launch floor")


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of y on x; slope alone through 0 for one point."""
    if len(points) == 1:
        return 0.0, points[0][1] / points[0][0]
    xs, ys = zip(*points)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)
    return max(0.0, my - slope * mx), slope


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


# ---- gloo on loopback: MEASURED here ----------------------------------------------------------
GLOO_SIZES = [4, 64, 1024, 16 * 1024, 256 * 1024, 4 * MIB, 64 * MIB]
SMALL = 1024  # bytes: the size of a synchronised-statistics message (2C+1 floats, C <= 128)


def _gloo_rank(rank: int, world: int, store: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)

    def timed(fn, reps: int) -> float:
        for _ in range(3):
            fn()
        times = []
        for _ in range(reps):
            dist.barrier()
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    result = {"allreduce": {}}
    for size in GLOO_SIZES:
        t = torch.ones(max(1, size // 4))
        result["allreduce"][size] = timed(lambda t=t: dist.all_reduce(t),
                                          40 if size <= MIB else 6)
    row = torch.ones(SMALL // 4)
    gathered = torch.empty(world * len(row))
    result["allgather_small"] = timed(lambda: dist.all_gather_into_tensor(gathered, row), 40)
    try:
        result["reduce_scatter_small"] = timed(
            lambda: dist.reduce_scatter_tensor(row, gathered), 40)
    except RuntimeError:  # a gloo without reduce-scatter: as an all-reduce of the same size
        result["reduce_scatter_small"] = result["allreduce"][SMALL]
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    dist.destroy_process_group()


def measure_gloo(out: Path) -> dict:
    """Time gloo collectives between 2 local processes (file store); fit all-reduce time =
    a + bytes / busbw (busbw = algbw at 2 ranks). Writes <out>/gloo.json."""
    import torch.multiprocessing as mp

    load = os.getloadavg()[0]  # this machine's other jobs share the 2 vCPUs
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.json"
        start = time.perf_counter()
        mp.spawn(_gloo_rank, args=(2, str(Path(tmp) / "store"), str(raw)), nprocs=2, join=True)
        result = json.loads(raw.read_text())
        elapsed = time.perf_counter() - start
    ar = {int(k): v for k, v in result["allreduce"].items()}
    _, slope = fit_line([(s, t - ar[4]) for s, t in ar.items() if s >= 256 * 1024])
    gloo = {"allreduce_small_us": ar[4] / US, "allreduce_busbw_gbs": 1 / slope / GB,
            "allgather_small_us": result["allgather_small"] / US,
            "reduce_scatter_small_us": result["reduce_scatter_small"] / US,
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            + f", {elapsed:.0f} s, 1-min load average {load:.1f} on {os.cpu_count()} CPUs",
            "sizes": [[s, t / US] for s, t in sorted(ar.items())]}
    (out / "gloo.json").write_text(json.dumps(gloo, indent=1))
    return gloo


# ---- the check against the 1- and 2-worker CPU points -----------------------------------------
def gloo_allreduce_s(nbytes: float, gloo: dict) -> float:
    return gloo["allreduce_small_us"] * US + nbytes / (gloo["allreduce_busbw_gbs"] * GB)


def cpu_check(facts: dict[str, Facts], gloo: dict) -> list[dict]:
    """Predict the measured 2-worker gloo steps from the 1-worker step, co-tenancy, the
    measured run's sync count x gloo's small-collective cost, DDP's buckets x gloo's all-reduce, no
    overlap (gloo's thread shares the 2 cores: docs/scaling.md saw the backward grow by about
    the all-reduce), and, for the BatchNorm model with the sync on, the unfused SyncBatchNorm
    arithmetic (measured separately, per image)."""
    rows = []
    for case, m in CPU_MEASURED.items():
        f = facts["lenet" if case == "lenet" else "digits"]
        per_image = (m["one"] - m["fixed"]) / (NUM_DOMAINS * CPU_BATCH)
        for mode, per_worker in (("strong", CPU_BATCH // 2), ("weak", CPU_BATCH)):
            images = NUM_DOMAINS * per_worker
            compute = (m["fixed"] + per_image * images) * COTENANCY
            arith = SYNCBN_ARITH_MS_PER_IMAGE * images if case == "digits" else 0.0
            syncs = m["syncs"] / 2 * (gloo["allgather_small_us"]
                                      + gloo["reduce_scatter_small_us"]) * US * 1000
            ddp = sum(gloo_allreduce_s(b, gloo) for b in f.buckets) * 1000
            predicted = compute + arith + syncs + ddp
            rows.append({"case": case, "mode": mode, "images/worker": images,
                         "measured ms": m[mode], "predicted ms": predicted,
                         "error": predicted / m[mode] - 1,
                         "predicted without sync-BN arithmetic": predicted - arith,
                         "compute (x co-tenancy)": compute, "sync-BN arithmetic": arith,
                         "collectives/step": m["syncs"],
                         "syncs predicted": syncs, "syncs measured (incl. waits)":
                         m["sync_ms"][mode], "DDP all-reduce predicted (no overlap)": ddp,
                         "DDP all-reduce measured (overlapped)": m["ddp_ms"][mode]})
    return rows


# ---- the cluster table -----------------------------------------------------------------------
def predict(facts: dict[str, Facts], computes: dict[str, Compute], overlap: float,
            tree: bool = False) -> list[dict]:
    rows = []
    for backbone, f in facts.items():
        compute = computes[backbone]
        for inter in INTER:
            net = Network(NVLINK, inter, tree=tree)
            for mode in ("weak", "strong"):
                per_domain = BACKBONES[backbone][mode]
                one = step(f, compute, NUM_DOMAINS * per_domain, 1, net, overlap)["step"]
                for p in GPUS:
                    local = per_domain if mode == "weak" else per_domain / p
                    if local < 2:  # BatchNorm needs 2 images per domain per GPU
                        continue
                    t = step(f, compute, NUM_DOMAINS * local, p, net, overlap)
                    off = step(f, compute, NUM_DOMAINS * local, p, net, overlap, sync=False)
                    rows.append({"backbone": backbone, "interconnect": inter.name, "mode": mode,
                                 "gpus": p, "nodes": net.layout(p)[1],
                                 "batch/GPU/domain": local, **{f"{k} ms": 1000 * v
                                                               for k, v in t.items()},
                                 "efficiency": efficiency(one, t["step"], p, mode),
                                 "efficiency no overlap": efficiency(one, t["step_no_overlap"],
                                                                     p, mode),
                                 "efficiency sync BN off": efficiency(one, off["step"], p, mode)})
    return rows


def resnet50_cross_check(flops: float, params: int, precision: str, overlap: float
                         ) -> dict[str, float]:
    """Predicted 8-GPU weak efficiency of the plain ResNet-50 (no sync BN) of the PUBLISHED
    DGX A100 table, against that table's own 8-GPU / (8 x 1-GPU) throughput."""
    plain = Facts("resnet50 (plain)", params, ddp_buckets(4 * params), [], flops, 2 / 3, 0)
    compute = Compute(1 / RESNET50_IMG_S[precision])
    net = Network(NVLINK, INTER[0])
    one, eight = (step(plain, compute, RESNET50_BATCH, p, net, overlap) for p in (1, 8))
    return {"predicted": efficiency(one["step"], eight["step"], 8, "weak"),
            "predicted no overlap": efficiency(one["step"], eight["step_no_overlap"], 8, "weak"),
            "published": RESNET50_IMG_S_8GPU[precision] / (8 * RESNET50_IMG_S[precision])}


def pivot(rows: list[dict], mode: str, column: str = "efficiency") -> str:
    """Rows (backbone, interconnect), columns #GPUs."""
    import pandas as pd

    df = pd.DataFrame([r for r in rows if r["mode"] == mode])
    table = df.pivot_table(index=["backbone", "interconnect"], columns="gpus", values=column,
                           sort=False).reset_index()
    table.columns = [str(c) for c in table.columns]
    return markdown(table.round(3))


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backbones = list(BACKBONES)
    fig, axes = plt.subplots(1, len(backbones), figsize=(5 * len(backbones), 4.2), sharey=True)
    colours = dict(zip([i.name for i in INTER], ["tab:blue", "tab:orange", "tab:red"]))
    for ax, backbone in zip(axes, backbones):
        for inter in INTER:
            for mode, style in (("weak", "-"), ("strong", "--")):
                pts = [r for r in rows if (r["backbone"], r["interconnect"], r["mode"])
                       == (backbone, inter.name, mode)]
                ax.plot([r["gpus"] for r in pts], [r["efficiency"] for r in pts], style,
                        marker="o", ms=3, color=colours[inter.name],
                        label=f"{inter.name}, {mode}")
        ax.axvline(GPUS_PER_NODE, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_xticks(GPUS, [str(g) for g in GPUS])
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("GPUs (8 per node; dotted: one node)")
        batch = BACKBONES[backbone]
        ax.set_title(f"{backbone}: weak {batch['weak']}/GPU, strong {batch['strong']} global "
                     "(per domain)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("predicted efficiency")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- main ---------------------------------------------------------------------------------------
def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--measure-gloo", action="store_true",
                   help="time gloo collectives between 2 local processes first (~20 s)")
    p.add_argument("--gloo-json", type=Path, help="gloo costs from an earlier --measure-gloo")
    p.add_argument("--gpu-result", type=Path,
                   help="benchmarks/gpu.py's results.json: measured GPU compute replaces the "
                        "assumed one")
    p.add_argument("--precision", choices=["tf32", "amp"], default="tf32",
                   help="which published ResNet-50 throughput sets the assumed GPU compute")
    p.add_argument("--overlap", type=float, default=OVERLAP,
                   help="fraction of the backward the gradient all-reduce can hide behind")
    p.add_argument("--tree", action="store_true",
                   help="latency of a tree across nodes (log2 n steps; NCCL's choice for small\n"
                        "messages on several nodes) instead of a ring's n - 1")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every backbone (repeatable), e.g.\n"
                        "train.sync_batchnorm_scope=encoder or train.sync_batchnorm=false")
    p.add_argument("--plot-copy", type=Path, help="also write the plot here (docs/images/...)")
    return p.parse_args(argv)


def inputs_text(gloo: dict, computes: dict[str, Compute], facts: dict[str, Facts],
                args: argparse.Namespace) -> list[str]:
    lines = ["## Inputs", "",
             f"- Bus bandwidth and its all-reduce formula: nccl-tests, {NCCL_BUSBW}",
             *[f"- {link.name}: busbw {link.busbw_gbs:g} GB/s, {link.alpha_us:g} us per ring "
               f"step. {link.source}" for link in (NVLINK, *INTER)],
             f"- Per-collective launch t0 = {T0_US:g} us, launch floor {LAUNCH_US:g} us per "
             f"dispatched op, overlap f = {args.overlap:g} of the backward, GPU sync-BN "
             f"arithmetic overhead {SYNCBN_GPU_OVERHEAD:g} x compute: ASSUMPTIONS",
             f"- ResNet-50: PUBLISHED {SOURCES['resnet50']}",
             f"- gloo on loopback, 2 processes (MEASURED here, {gloo['when']}): small all-reduce "
             f"{gloo['allreduce_small_us']:.0f} us, busbw {gloo['allreduce_busbw_gbs']:.2f} GB/s,"
             f" 1 KiB all-gather {gloo['allgather_small_us']:.0f} us, reduce-scatter "
             f"{gloo['reduce_scatter_small_us']:.0f} us",
             "- CPU steps at 1 and 2 workers: MEASURED, docs/scaling.md (part 1)", "",
             "| backbone | parameters | DDP buckets (MiB) | synced-statistics collectives/step "
             "| GFLOP/image (fwd+bwd) | backward share | ops/step | GPU compute |",
             "|---|---|---|---|---|---|---|---|"]
    for name, f in facts.items():
        c = computes[name]
        ops = Counter(op for op, _ in f.collectives)
        lines.append(f"| {name} | {f.params / 1e6:.2f} M | "
                     f"{', '.join(f'{b / MIB:.1f}' for b in f.buckets)} | {f.syncs} ("
                     f"{' + '.join(f'{n} {op}' for op, n in ops.items()) or 'none'}) | "
                     f"{f.flops_per_image / 1e9:.3g} | {f.backward_share:.2f} | {f.ops_per_step} |"
                     f" {1e6 * c.t_img:.1f} us/image, floor {1000 * c.floor:.1f} ms, fixed "
                     f"{1000 * c.t_fixed:.1f} ms ({c.source}) |")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python", "benchmarks/cost_model.py",
                        *(sys.argv[1:] if argv is None else argv)])
    if args.measure_gloo:
        gloo = measure_gloo(args.out)
    elif args.gloo_json:
        gloo = json.loads(args.gloo_json.read_text())
    else:
        gloo = GLOO_MEASURED
    facts = {name: model_facts(name, args.override) for name in BACKBONES}
    ref, ref_params = reference_resnet50()
    computes = {name: assumed_gpu_compute(f, args.precision, ref) for name, f in facts.items()}
    if args.gpu_result:
        computes |= measured_gpu_compute(args.gpu_result, args.precision, facts)
    rows = predict(facts, computes, args.overlap, args.tree)
    check = cpu_check(facts, gloo)
    cross = resnet50_cross_check(ref, ref_params, args.precision, args.overlap)

    import pandas as pd

    pd.DataFrame(rows).to_csv(args.out / "cost_model.csv", index=False)
    largest: dict[tuple, dict] = {}  # the row with the most GPUs of each curve
    for r in rows:
        largest[r["backbone"], r["interconnect"], r["mode"]] = r
    cols = ["backbone", "interconnect", "mode", "gpus", "batch/GPU/domain", "compute ms",
            "syncs ms", "allreduce ms", "allreduce_exposed ms", "step ms", "efficiency",
            "efficiency no overlap", "efficiency sync BN off"]
    latency = "tree" if args.tree else "ring"
    text = [f"# CDLM data-parallel cost model ({args.precision}, {latency} latency across nodes)",
            "", f"command: `{command}`", "",
            *inputs_text(gloo, computes, facts, args), "",
            "## Predicted weak-scaling efficiency (per-GPU batch fixed)", "",
            pivot(rows, "weak"), "",
            "## Predicted strong-scaling efficiency (global batch fixed)", "",
            pivot(rows, "strong"), "",
            "## Terms at the largest GPU count (ms per step)", "",
            markdown(pd.DataFrame(list(largest.values()))[cols].round(3)), "",
            "## Check against the measured CPU points (2 gloo workers)", "",
            markdown(pd.DataFrame(check).round(3)), "",
            "## Cross-check: plain ResNet-50, 8 A100s, batch 256 (no sync BN)", "",
            f"predicted weak efficiency {cross['predicted']:.3f} (no overlap "
            f"{cross['predicted no overlap']:.3f}); published {cross['published']:.3f} "
            f"({SOURCES['resnet50']})", ""]
    (args.out / "cost_model.md").write_text("\n".join(text))
    plot(rows, args.out / "cost_model.png",
         f"CDLM DDP, predicted efficiency ({args.precision}, {latency} latency across nodes, "
         "NVLink inside a node; solid weak, dashed strong)")
    if args.plot_copy:
        args.plot_copy.write_bytes((args.out / "cost_model.png").read_bytes())
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
