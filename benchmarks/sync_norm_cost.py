"""What a synchronised BatchNorm layer costs beyond a plain one, in its two parts (issue 15):

    python benchmarks/sync_norm_cost.py            # both parts, ~1 minute on 2 CPU cores

1. **Collectives**, 2 gloo ranks on this machine: the per-call time of the collectives a
   synchronised layer could use for a row of a few hundred floats: c10d all-gather (what
   ``sync_norm.all_gather_rows`` calls), c10d all-reduce, ``sync_norm.sum_over_ranks`` (on gloo
   an all-gather and a local sum), and the functional all-gather and all-reduce the layer used
   before commit 2e8d84a.
2. **Arithmetic**, one process: forward + backward of ``sync_batch_norm`` (the fused autograd
   function, in a group of one rank whose all-gather is replaced by a local copy, so no
   communication is timed) against torch's native
   training-mode BatchNorm, at the activation shapes of the default CDLM step (batch 32 per
   domain, 28 px): the encoder sees both domains (64 images), each decoder call one domain.

Medians of ``--repeats`` timings of ``--calls`` calls each; the cases interleave, so a slow
spell hits all of them. Writes <out>/sync_norm_cost.md and .json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

DEFAULT_OUT = Path("bench_results/sync_norm_cost")
ROW_FLOATS = (65, 513)  # 2C+1 floats: C = 32 (a decoder layer) and 256 (the encoder's fc)
SHAPES = {  # the default CDLM step's BatchNorm inputs on one rank at 32 images per domain
    "encoder conv 1": (64, 32, 28, 28), "encoder conv 2": (64, 64, 14, 14),
    "encoder fc": (64, 256), "decoder layer 1 (each call)": (32, 32, 14, 14),
    "decoder layer 2 (each call)": (32, 16, 28, 28), "hbar (2 domains)": (32, 128)}


def _timed(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def _collective_cases(n: int):
    import torch
    import torch.distributed as dist
    import torch.distributed._functional_collectives as funcol

    from cdlm_dist.model.sync_norm import all_gather_rows, sum_over_ranks

    row, out = torch.randn(n), torch.empty(2 * n)
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    fgather = getattr(funcol, "all_gather_single", None) or funcol.all_gather_tensor

    def waited(t):
        return t.wait() if isinstance(t, funcol.AsyncCollectiveTensor) else t

    return {"c10d all-gather": lambda: gather(out, row),
            "c10d all-reduce": lambda: dist.all_reduce(row.clone()),
            "sum_over_ranks (gloo: all-gather + sum)": lambda: sum_over_ranks(row),
            "all_gather_rows": lambda: all_gather_rows(row),
            "functional all-gather": lambda: waited(fgather(row, 0, dist.group.WORLD)),
            "functional all-reduce": lambda: waited(funcol.all_reduce(row, "sum",
                                                                      dist.group.WORLD))}


def _collectives_rank(rank: int, store: str, args: argparse.Namespace, out: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        times: dict[str, list[float]] = {}
        cases = {f"{name}, {n} floats": fn for n in ROW_FLOATS
                 for name, fn in _collective_cases(n).items()}
        for _ in range(args.repeats):
            for name, fn in cases.items():
                dist.barrier()
                times.setdefault(name, []).append(_timed(fn, args.calls))
        if rank == 0:
            Path(out).write_text(json.dumps({k: statistics.median(v) for k, v in times.items()}))
    finally:
        dist.destroy_process_group()


def _layer_cases(shape: tuple[int, ...]):
    """Forward + backward of one layer input, native and fused."""
    import torch
    import torch.nn.functional as F

    from cdlm_dist.model.sync_norm import sync_batch_norm

    x = torch.randn(*shape, requires_grad=True)
    w, b = torch.ones(shape[1], requires_grad=True), torch.zeros(shape[1], requires_grad=True)
    dy = torch.randn(*shape)
    return {"native": lambda: F.batch_norm(x, None, None, w, b, training=True).backward(dy),
            "fused": lambda: sync_batch_norm(x, w, b, 1e-5)[0].backward(dy)}


def arithmetic(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Per shape: native and fused forward + backward seconds (median)."""
    import torch
    import torch.distributed as dist

    from cdlm_dist.model import sync_norm

    torch.set_num_threads(1)
    store = args.out.resolve() / "store_one_rank"
    store.unlink(missing_ok=True)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0,
                            world_size=1)
    gather = sync_norm._all_gather
    sync_norm._all_gather = lambda out, row: out.copy_(row)  # one rank: the gather is a copy
    try:
        result = {}
        for name, shape in SHAPES.items():
            cases = _layer_cases(shape)
            times: dict[str, list[float]] = {}
            for _ in range(args.repeats):
                for case, fn in cases.items():
                    times.setdefault(case, []).append(_timed(fn, args.calls))
            result[name] = {case: statistics.median(v) for case, v in times.items()}
        return result
    finally:
        sync_norm._all_gather = gather
        dist.destroy_process_group()


def report(collectives: dict[str, float], arith: dict[str, dict[str, float]],
           command: str) -> str:
    lines = ["# Synchronised BatchNorm: collectives and arithmetic", "", f"command: `{command}`",
             "", "## Collectives, 2 gloo ranks (us per call, median)", "",
             "| collective | us |", "|---|---|"]
    lines += [f"| {k} | {1e6 * v:.0f} |" for k, v in collectives.items()]
    lines += ["", "## Arithmetic, one process (ms per forward + backward, median)", "",
              "| layer input | shape | native BatchNorm | fused sync_batch_norm | extra |",
              "|---|---|---|---|---|"]
    for name, t in arith.items():
        lines.append(f"| {name} | {SHAPES[name]} | {1e3 * t['native']:.2f} | "
                     f"{1e3 * t['fused']:.2f} | {1e3 * (t['fused'] - t['native']):+.2f} |")
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--calls", type=int, default=50, help="calls per timing")
    p.add_argument("--repeats", type=int, default=9, help="timings per case (median)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import torch.multiprocessing as mp

    args = parse(argv)
    command = " ".join(["python", "benchmarks/sync_norm_cost.py",
                        *(sys.argv[1:] if argv is None else argv)])
    args.out.mkdir(parents=True, exist_ok=True)
    timings = args.out.resolve() / "collectives.json"
    store = args.out.resolve() / "store"
    store.unlink(missing_ok=True)
    mp.spawn(_collectives_rank, args=(str(store), args, str(timings)), nprocs=2, join=True)
    collectives = json.loads(timings.read_text())
    arith = arithmetic(args)
    (args.out / "sync_norm_cost.json").write_text(json.dumps(
        {"command": command, "collectives_s": collectives, "arithmetic_s": arith}, indent=1))
    text = report(collectives, arith, command)
    (args.out / "sync_norm_cost.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
