"""The cost model's algebra: one data-parallel CDLM step on p GPUs, term by term, and the
efficiency that follows. The report (benchmarks/cost_model.py) runs it over the inputs of
cost_inputs.py and the facts of model_facts.py; this module measures nothing.

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
with the package's own config (no weights, no download): see model_facts.model_facts.

The model is checked against what can be measured here: 1 and 2 CPU workers on gloo
(docs/scaling.md), from the 1-worker step, gloo's measured collective costs and the sync count
(:func:`cpu_check`).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cost_inputs import (  # noqa: E402
    BACKBONES,
    COTENANCY,
    CPU_BATCH,
    CPU_MEASURED,
    GB,
    GPUS,
    INTER,
    NUM_DOMAINS,
    NVLINK,
    OVERLAP,
    RESNET50_BATCH,
    RESNET50_IMG_S,
    RESNET50_IMG_S_8GPU,
    SYNCBN_ARITH_MS_PER_IMAGE,
    SYNCBN_GPU_OVERHEAD,
    US,
    Link,
    Network,
)
from gloo_timing import gloo_allreduce_s  # noqa: E402
from gpu_compute import Compute  # noqa: E402
from model_facts import Facts, ddp_buckets  # noqa: E402


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


# ---- the check against the 1- and 2-worker CPU points -----------------------------------------
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
