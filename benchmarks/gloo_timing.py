"""gloo's own collective costs on this machine, timed between local processes on loopback. The
cost model is checked against CPU workers that talk over gloo, so it needs gloo's small-message
latency and bus bandwidth from here, not from a table; any benchmark that wants them calls
:func:`time_gloo_collectives`. Timing keeps every core it spawns on busy: run it on an idle
machine, or the latencies measure the other jobs."""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cost_inputs import GB, MIB, US  # noqa: E402

GLOO_SIZES = [4, 64, 1024, 16 * 1024, 256 * 1024, 4 * MIB, 64 * MIB]
SMALL = 1024  # bytes: the size of a synchronised-statistics message (2C+1 floats, C <= 128)


def time_gloo_collectives(world: int = 2, sizes: Sequence[int] = GLOO_SIZES, small: int = SMALL,
                          reps: int = 40, large_reps: int = 6) -> dict:
    """Median seconds of gloo collectives between ``world`` local processes (1 thread each, file
    store), each rep started together after a barrier, after 3 warm-up calls: ``{"allreduce":
    {bytes: s for each of sizes}, "allgather_small": s, "reduce_scatter_small": s}``.
    The all-reduces are of float32 tensors (``large_reps`` reps above 1 MiB, ``reps`` below); the
    all-gather gathers ``small`` bytes from each rank and the reduce-scatter scatters them back
    (timed as an all-reduce of ``small`` bytes where gloo has no reduce-scatter). Call it under
    ``if __name__ == "__main__"``: torch's spawn re-imports the caller's main module."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.json"
        mp.spawn(_time_rank, args=(world, str(Path(tmp) / "store"), str(raw), list(sizes), small,
                                   reps, large_reps), nprocs=world, join=True)
        result = json.loads(raw.read_text())
    result["allreduce"] = {int(k): v for k, v in result["allreduce"].items()}  # JSON keys: str
    return result


def _time_rank(rank: int, world: int, store: str, out: str, sizes: list[int], small: int,
               reps: int, large_reps: int) -> None:
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
    for size in sizes:
        t = torch.ones(max(1, size // 4))
        result["allreduce"][size] = timed(lambda t=t: dist.all_reduce(t),
                                          reps if size <= MIB else large_reps)
    row = torch.ones(max(1, small // 4))
    gathered = torch.empty(world * len(row))
    result["allgather_small"] = timed(lambda: dist.all_gather_into_tensor(gathered, row), reps)
    try:
        result["reduce_scatter_small"] = timed(
            lambda: dist.reduce_scatter_tensor(row, gathered), reps)
    except RuntimeError:  # a gloo without reduce-scatter: as an all-reduce of the same size
        result["reduce_scatter_small"] = timed(lambda: dist.all_reduce(row), reps)
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    dist.destroy_process_group()


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of y on x; slope alone through 0 for one point."""
    if len(points) == 1:
        return 0.0, points[0][1] / points[0][0]
    xs, ys = zip(*points)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)
    return max(0.0, my - slope * mx), slope


def measure_gloo(out: Path) -> dict:
    """gloo's costs as the cost model takes them (cost_inputs.GLOO_MEASURED's keys), timed between
    2 local processes: all-reduce time = a + bytes / busbw fitted from 256 KiB up (busbw = algbw
    at 2 ranks), the small all-gather and reduce-scatter as timed. Writes <out>/gloo.json."""
    load = os.getloadavg()[0]  # this machine's other jobs share its cores
    start = time.perf_counter()
    result = time_gloo_collectives()
    elapsed = time.perf_counter() - start
    ar = result["allreduce"]
    _, slope = fit_line([(s, t - ar[4]) for s, t in ar.items() if s >= 256 * 1024])
    gloo = {"allreduce_small_us": ar[4] / US, "allreduce_busbw_gbs": 1 / slope / GB,
            "allgather_small_us": result["allgather_small"] / US,
            "reduce_scatter_small_us": result["reduce_scatter_small"] / US,
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            + f", {elapsed:.0f} s, 1-min load average {load:.1f} on {os.cpu_count()} CPUs",
            "sizes": [[s, t / US] for s, t in sorted(ar.items())]}
    (out / "gloo.json").write_text(json.dumps(gloo, indent=1))
    return gloo


def gloo_allreduce_s(nbytes: float, gloo: dict) -> float:
    """Seconds of a gloo all-reduce of ``nbytes`` from measure_gloo's fit (or GLOO_MEASURED)."""
    return gloo["allreduce_small_us"] * US + nbytes / (gloo["allreduce_busbw_gbs"] * GB)
