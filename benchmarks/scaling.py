"""Scaling benchmark: the same model and batch as (a) the plain single-process loop (no Ray),
(b) Ray Train with 1 worker and (c) Ray Train with 2 workers, in one run.

    python benchmarks/scaling.py                                  # defaults below
    python benchmarks/scaling.py --steps 40 --warmup 10 --batch 32 --max-train 1024
    python benchmarks/scaling.py --use-gpu --batch 256            # images/s per GPU

Per-step time comes from the loop's own metrics.jsonl (every line carries rank 0's wall time):
each logging window after ``--warmup`` steps gives seconds per step, and a case's step time is
the median over its windows of all ``--repeats`` (cases run interleaved, so a slow spell on a
shared machine does not land on one case). Start-up, data loading, the final evaluation and the
final checkpoint are outside the windows; metric all-reduces and Ray reports inside them count.
Every Ray worker gets ``--threads`` CPUs and sets torch to that many threads; the plain loop runs
with the same ``train.num_threads``, so (a) and (b) compare like with like.

- strong scaling: global batch fixed at ``--batch`` (2 workers take half each)
- weak scaling: per-worker batch fixed at ``--batch`` (2 workers: global batch 2 x ``--batch``)
- images/s counts every domain's images: num_domains x global batch / step time
- the data loader's throughput is the batch stream alone (no model) at the global batch

Writes <out>/scaling.parquet, <out>/scaling.md and <out>/scaling.png.

``--override KEY=VALUE`` (repeatable) adds a config override to every case, e.g.
``train.sync_batchnorm=false`` or ``model=lenet``.

``--breakdown`` (no Ray): where one step's time goes at 1 and 2 workers (strong and weak). Each
case is composed as runner=ray composes it, then run as a plain gloo group of processes with the
loop's own setup (build_model, convert_sync_batchnorm, RunContext.wrap_model, train_step): timed
steps, then ``--profile-steps`` under torch.profiler on every rank. Writes
<out>/breakdown.md, <out>/breakdown.json and <out>/breakdown/<case>/rank<r>_profile.txt.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cdlm_dist.model.sync_norm import SYNC_SCOPES

DEFAULT_OUT = Path("bench_results/scaling")
LOADER_STEPS = 200  # batches drawn to time the data loader alone


@dataclass
class Case:
    """One measured configuration."""

    mode: str  # "baseline", "strong" or "weak"
    runner: str  # "plain" (no Ray) or "ray"
    workers: int
    global_batch: int

    @property
    def label(self) -> str:
        return f"{self.runner}_{self.workers}w_b{self.global_batch}"


def cases(batch: int) -> list[Case]:
    """(a), (b) and (c): 1-worker runs serve both scaling modes (their global batch is `batch`)."""
    return [Case("baseline", "plain", 1, batch), Case("baseline", "ray", 1, batch),
            Case("strong", "ray", 2, batch), Case("weak", "ray", 2, 2 * batch)]


def overrides(args: argparse.Namespace, case: Case, run_dir: Path) -> list[str]:
    log_every = max(1, (args.steps - args.warmup) // args.windows)
    return [f"data={args.data}", f"data.batch_size={case.global_batch}",
            f"data.max_train_per_domain={args.max_train}",
            f"data.max_test_per_domain={args.max_test}", f"train.steps={args.steps}",
            f"train.log_every={log_every}", f"train.eval_every={args.steps}",
            f"train.checkpoint_every={args.checkpoint_every or args.steps}",
            f"train.num_threads={args.threads}", "train.progress=false", "resume=false",
            f"runner={'ray' if case.runner == 'ray' else 'local'}",
            f"runner.num_workers={case.workers}", f"runner.cpus_per_worker={args.threads}",
            f"runner.use_gpu={str(args.use_gpu).lower()}",
            f"train.device={'cuda' if args.use_gpu else 'cpu'}",
            f"name=scaling_{case.label}", f"run_dir={run_dir}", *args.override]


def window_seconds(run_dir: Path, warmup: int) -> list[float]:
    """Seconds per step of each logging window after ``warmup`` steps (rank 0's wall clock)."""
    lines = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [ln for ln in lines if "loss/total" in ln and ln["step"] >= warmup]
    if len(train) < 2:
        raise SystemExit(f"{run_dir}: fewer than 2 log lines after warm-up; raise --steps")
    return [(b["wall_time"] - a["wall_time"]) / (b["step"] - a["step"])
            for a, b in zip(train, train[1:])]


def loader_images_per_s(args: argparse.Namespace) -> tuple[float, int]:
    """The batch stream alone: (images per second it hands out at the global batch, domains)."""
    import torch

    from cdlm_dist.config import compose
    from cdlm_dist.data.domains import load_domains
    from cdlm_dist.data.streams import MultiDomainStream

    torch.set_num_threads(args.threads)
    cfg = compose(overrides(args, cases(args.batch)[0], Path("unused")))
    domains = load_domains(cfg.data, cfg.train.seed)
    stream = MultiDomainStream([d.train for d in domains], args.batch, cfg.train.seed)
    start = time.perf_counter()
    for step in range(LOADER_STEPS):
        stream.batch(step)
    return LOADER_STEPS * args.batch * len(domains) / (time.perf_counter() - start), len(domains)


def run_case(args: argparse.Namespace, case: Case) -> list[float]:
    """Train one case from scratch; its per-window seconds per step."""
    from cdlm_dist.config import compose
    from cdlm_dist.data.domains import load_domains
    from cdlm_dist.runners import get_runner

    run_dir = (args.out / "runs" / case.label).resolve()
    shutil.rmtree(run_dir, ignore_errors=True)  # a leftover checkpoint would skip the training
    cfg = compose(overrides(args, case, run_dir))
    domains = load_domains(cfg.data, cfg.train.seed)
    get_runner(cfg.runner.name)(cfg, domains, run_dir)
    windows = window_seconds(run_dir, args.warmup)
    print(f"{case.label}: {1000 * statistics.median(windows):.1f} ms/step (median of "
          f"{len(windows)} windows)", flush=True)
    return windows


def summarise(case: Case, windows: list[float], num_domains: int, use_gpu: bool) -> dict:
    """One table row: the median window (robust to other load on a shared machine) and spread."""
    seconds = statistics.median(windows)
    images = num_domains * case.global_batch / seconds
    row = asdict(case) | {"per_worker_batch": case.global_batch // case.workers,
                          "step_ms": 1000 * seconds, "step_ms_min": 1000 * min(windows),
                          "step_ms_max": 1000 * max(windows), "windows": len(windows),
                          "images_per_s": images}
    if use_gpu:
        row["images_per_s_per_gpu"] = images / case.workers
    return row


def add_ratios(rows: list[dict]) -> None:
    """Ray overhead vs the plain loop at 1 worker; speed-up (strong) and efficiency (weak)."""
    plain = next(r for r in rows if r["runner"] == "plain")
    ray1 = next(r for r in rows if r["runner"] == "ray" and r["workers"] == 1)
    for r in rows:
        r["step_vs_plain"] = r["step_ms"] / plain["step_ms"]
        r["speedup_vs_ray_1w"] = ray1["step_ms"] / r["step_ms"] if r["mode"] == "strong" \
            else float("nan")
        r["efficiency_vs_ray_1w"] = (r["images_per_s"] / (r["workers"] * ray1["images_per_s"])
                                     if r["mode"] != "baseline" else float("nan"))


def write_outputs(rows: list[dict], loader: float, args: argparse.Namespace,
                  command: str) -> None:
    import pandas as pd

    df = pd.DataFrame(rows)
    df["loader_images_per_s"] = loader
    df.to_parquet(args.out / "scaling.parquet", index=False)
    cols = ["mode", "runner", "workers", "global_batch", "per_worker_batch", "step_ms",
            "step_ms_min", "step_ms_max", "images_per_s"] + (["images_per_s_per_gpu"] if args.use_gpu else []) + \
        ["step_vs_plain", "speedup_vs_ray_1w", "efficiency_vs_ray_1w"]
    ray1 = df[(df.runner == "ray") & (df.workers == 1)].iloc[0]
    text = [f"# Scaling: {args.data}, {args.steps} steps ({args.warmup} warm-up) x "
            f"{args.repeats} repeats, {args.threads} thread(s) per worker", "",
            "step_ms: median over logging windows (min and max beside it)", "", f"command: `{command}`", "",
            markdown(df[cols]), "",
            f"Ray overhead at 1 worker: {ray1.step_vs_plain:.3f} x the plain loop's step time "
            f"(target <= 1.10).", f"Data loader alone: {loader:.0f} images/s.", ""]
    (args.out / "scaling.md").write_text("\n".join(text))
    plot(df, args.out / "scaling.png")


def markdown(df) -> str:
    """A pipe table (pandas' to_markdown needs tabulate, which is not a dependency)."""
    cell = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    rows = [" | ".join(map(str, df.columns)), " | ".join("---" for _ in df.columns)]
    rows += [" | ".join(cell(v) for v in r) for r in df.itertuples(index=False)]
    return "\n".join(f"| {r} |" for r in rows)


def plot(df, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_i) = plt.subplots(1, 2, figsize=(10, 4))
    labels = [f"{r.runner} {r.workers}w\n{r.mode} b={r.global_batch}" for r in df.itertuples()]
    ax_t.bar(labels, df.step_ms, color="tab:blue")
    ax_t.set_ylabel("ms per step")
    ax_i.bar(labels, df.images_per_s, color="tab:green")
    ax_i.set_ylabel("images / s (all domains)")
    for ax in (ax_t, ax_i):
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle("CDLM step cost: plain loop vs Ray Train")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)



# --- --breakdown: where one step's time goes, without Ray ---------------------------------------

# profiler events that are collectives (CPU/gloo and nccl alike): sync_norm's named scopes
# around its c10d calls (the fused BatchNorm's all-gather forward and sum over ranks backward),
# batch_moments' functional all-gather (its backward a reduce-scatter) and their waits, and
# DDP's gradient all-reduce (c10d's, launched by the reducer, waited on at the end of backward;
# on nccl sync_norm's sums are c10d all-reduces too, inside their scope)
SYNC_OPS = (*SYNC_SCOPES, "_c10d_functional::all_gather_into_tensor",
            "_c10d_functional::reduce_scatter_tensor",
            "_c10d_functional::all_reduce")
WAIT_OP = "_c10d_functional::wait_tensor"
ALLREDUCE_OP = "c10d::allreduce_"
SCOPES = ("forward", "backward", "optimizer")


def breakdown_cases(batch: int) -> list[Case]:
    """1 worker, and 2 workers strong and weak, composed as runner=ray composes them (so
    train.sync_batchnorm is Ray's default) but run as a plain gloo group: DDP without Ray."""
    return cases(batch)[1:]


class CommTimer:
    """A DDP comm hook: torch's all-reduce hook, timed from its launch to its completion (on
    gloo's thread, so it overlaps the backward); counts buckets."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0

    def hook(self):
        """The hook function (DDP checks its name and signature, so not a callable object)."""
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        def timed_allreduce_hook(state, bucket):
            start = time.perf_counter()
            self.calls += 1

            def done(fut):
                self.seconds += time.perf_counter() - start
                return fut.value()

            return allreduce_hook(state, bucket).then(done)

        return timed_allreduce_hook


def _breakdown_rank(rank: int, world: int, init_file: str, cfg, domains, args: argparse.Namespace,
                    out: str) -> None:
    """One rank: the loop's model, DDP and SyncBatchNorm setup and its train_step; ``--steps``
    timed steps (after ``--warmup``), then ``--profile-steps`` under torch.profiler."""
    import torch
    import torch.distributed as dist
    from torch.profiler import ProfilerActivity, profile, record_function

    from cdlm_dist.data.streams import MultiDomainStream
    from cdlm_dist.training.context import RunContext
    from cdlm_dist.training.loop import _reduce_row, build_for_rank
    from cdlm_dist.training.step import step_generators, train_step

    torch.set_num_threads(args.threads)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                world_size=world)
    try:
        ctx = RunContext(Path(out) / "run", torch.device("cpu"))
        model, optimizer = build_for_rank(cfg, domains, ctx)  # as fit() does, step for step
        train_model = ctx.wrap_model(model, cfg.train)
        timer = CommTimer()
        if world > 1:
            train_model.register_comm_hook(None, timer.hook())
        stream = MultiDomainStream([d.train for d in domains], cfg.data.batch_size,
                                   cfg.train.seed, ctx.rank, ctx.world_size)
        running: dict[str, list] = {}

        def one_step(step: int) -> None:
            with record_function("batch"):
                batch = stream.batch(step, ctx.device)
            pair_gen, noise_gen = step_generators(step, cfg, ctx.rank)
            for k, v in train_step(train_model, optimizer, batch, step, cfg, pair_gen,
                                   noise_gen).items():
                running.setdefault(k, []).append(v)
            if (step + 1) % cfg.train.log_every == 0:
                with record_function("metrics"):  # the loop's one all-reduce per log line
                    _reduce_row(running, ctx, 0.0)  # RSS values unused here
                running.clear()

        def barrier() -> None:
            if world > 1:
                dist.barrier()

        for step in range(args.warmup):
            one_step(step)
        barrier()
        start, calls0, secs0 = time.perf_counter(), timer.calls, timer.seconds
        for step in range(args.warmup, args.steps):
            one_step(step)
        barrier()
        timed = args.steps - args.warmup
        step_s = (time.perf_counter() - start) / timed
        comm = {"ddp_buckets": (timer.calls - calls0) / timed,
                "ddp_allreduce_ms": 1000 * (timer.seconds - secs0) / timed}
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            for step in range(args.steps, args.steps + args.profile_steps):
                with record_function("step"):
                    one_step(step)
            barrier()
            profiled_s = (time.perf_counter() - start) / args.profile_steps
        table = prof.key_averages().table(sort_by="cpu_time_total", row_limit=60)
        (Path(out) / f"rank{rank}_profile.txt").write_text(table)
        row = {"rank": rank, "world": world, "step_ms": 1000 * step_s,
               "profiled_step_ms": 1000 * profiled_s, **comm,
               **profile_split(prof.key_averages(), args.profile_steps)}
        (Path(out) / f"rank{rank}.json").write_text(json.dumps(row))
    finally:
        if world > 1:
            dist.destroy_process_group()


def profile_split(averages, steps: int) -> dict[str, float]:
    """Per-step ms of the named scopes and of the collectives, and per-step call counts.

    Inclusive CPU time of a scope is its wall time on this (single-threaded) rank. The
    collectives nest inside the scopes: sync all-gathers inside forward, their backward
    all-reduces (reduce-scatters for batch_moments) and DDP's final wait inside backward. A
    collective's cost to the step is its launch plus its wait (wait_tensor, or the reducer's
    wait at the end of backward).
    """
    by_name = {e.key: e for e in averages}

    def ms(name: str) -> float:
        e = by_name.get(name)
        return e.cpu_time_total / 1000 / steps if e is not None else 0.0

    def count(name: str) -> float:
        e = by_name.get(name)
        return e.count / steps if e is not None else 0.0

    out = {f"{s}_ms": ms(s) for s in (*SCOPES, "batch", "metrics")}
    out["syncs"] = sum(count(n) for n in SYNC_OPS)
    out["sync_ms"] = sum(ms(n) for n in SYNC_OPS) + ms(WAIT_OP)
    out["allreduce_launch_ms"] = ms(ALLREDUCE_OP)  # DDP's buckets and the metrics all-reduce
    out["other_ms"] = ms("step") - sum(out[f"{s}_ms"] for s in (*SCOPES, "batch", "metrics"))
    return out


def breakdown_table(rows: list[dict]) -> list[dict]:
    """One row per case: the mean over its ranks; speed-up and efficiency against 1 worker."""
    import pandas as pd

    df = pd.DataFrame(rows).drop(columns=["rank"])
    keys = ["mode", "world", "global_batch", "per_worker_batch", "sync_batchnorm"]
    table = df.groupby(keys, sort=False).mean().reset_index().to_dict("records")
    one = next(r for r in table if r["world"] == 1)
    for r in table:
        r["speedup"] = one["step_ms"] / r["step_ms"] if r["mode"] == "strong" else float("nan")
        r["weak_efficiency"] = one["step_ms"] / r["step_ms"] if r["mode"] == "weak" \
            else float("nan")
    return table


BREAKDOWN_COLUMNS = {  # column: header (ms are per step, means over the ranks)
    "mode": "case", "world": "workers", "per_worker_batch": "batch/worker",
    "step_ms": "step ms", "speedup": "speed-up", "weak_efficiency": "weak eff.",
    "profiled_step_ms": "profiled step", "forward_ms": "forward", "backward_ms": "backward",
    "optimizer_ms": "optimiser", "syncs": "batch-stat syncs", "sync_ms": "sync ms",
    "ddp_buckets": "DDP buckets", "ddp_allreduce_ms": "DDP all-reduce (overlapped)",
    "allreduce_launch_ms": "all-reduce launch", "batch_ms": "batch", "metrics_ms": "metrics",
    "other_ms": "other"}


def run_breakdown(args: argparse.Namespace, command: str) -> None:
    """Profile every breakdown case; write <out>/breakdown.md and breakdown.json."""
    import torch.multiprocessing as mp

    from cdlm_dist.config import compose
    from cdlm_dist.data.domains import load_domains

    rows = []
    for case in breakdown_cases(args.batch):
        out = (args.out / "breakdown" / case.label).resolve()
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        cfg = compose(overrides(args, case, out / "run"))
        domains = load_domains(cfg.data, cfg.train.seed)
        init = str(out / "store")
        if case.workers == 1:
            _breakdown_rank(0, 1, init, cfg, domains, args, str(out))
        else:
            mp.spawn(_breakdown_rank, args=(case.workers, init, cfg, domains, args, str(out)),
                     nprocs=case.workers, join=True)
        for rank in range(case.workers):
            row = json.loads((out / f"rank{rank}.json").read_text())
            rows.append({"mode": case.mode, "global_batch": case.global_batch,
                         "per_worker_batch": case.global_batch // case.workers,
                         "sync_batchnorm": cfg.train.sync_batchnorm} | row)
            print(rows[-1], flush=True)
    (args.out / "breakdown.json").write_text(json.dumps({"command": command, "rows": rows},
                                                        indent=1))
    import pandas as pd

    table = pd.DataFrame(breakdown_table(rows))[list(BREAKDOWN_COLUMNS)]
    text = [f"# Step breakdown: {args.data}, {' '.join(args.override) or 'defaults'}", "",
            f"command: `{command}`", "",
            f"step ms: {args.steps - args.warmup} steps after {args.warmup} warm-up, no profiler;"
            f" the rest: torch.profiler over the next {args.profile_steps} steps, ms per step,"
            " mean of the ranks. forward and backward include the syncs in them; sync ms ="
            " sync_norm's all-gathers + backward all-reduces or reduce-scatters + their waits;"
            " DDP all-reduce = launch to completion"
            " of each bucket, on gloo's thread (overlaps backward).", "",
            markdown(table.rename(columns=BREAKDOWN_COLUMNS)), ""]
    (args.out / "breakdown.md").write_text("\n".join(text))
    print("\n".join(text))


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default="mnist5k_to_ucidigits", help="a data preset")
    p.add_argument("--batch", type=int, default=64, help="global batch (strong), per worker (weak)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10, help="steps excluded from the timing")
    p.add_argument("--windows", type=int, default=5, help="log lines in the timed part")
    p.add_argument("--checkpoint-every", type=int, default=0, help="0 = only the final step")
    p.add_argument("--threads", type=int, default=1, help="CPUs and torch threads per worker")
    p.add_argument("--max-train", type=int, default=2048, help="images per domain")
    p.add_argument("--max-test", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2, help="runs of each case, interleaved")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override added to every case (repeatable), e.g.\n"
                        "train.sync_batchnorm=false or model=lenet")
    p.add_argument("--breakdown", action="store_true",
                   help="instead of the Ray cases: profile where a step's time goes at 1 and 2\n"
                        "workers (a plain gloo group of processes, no Ray)")
    p.add_argument("--profile-steps", type=int, default=10,
                   help="--breakdown: steps profiled after the timed ones")
    args = p.parse_args(argv)
    if args.steps - args.warmup < args.windows:
        p.error("--steps minus --warmup must be at least --windows")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python", "benchmarks/scaling.py", *(sys.argv[1:] if argv is None
                                                              else argv)])
    if args.breakdown:
        run_breakdown(args, command)
        return 0
    loader, num_domains = loader_images_per_s(args)
    windows: dict[str, list[float]] = {c.label: [] for c in cases(args.batch)}
    for _ in range(args.repeats):  # interleaved, so slow spells of a shared machine hit all
        for case in cases(args.batch):
            windows[case.label] += run_case(args, case)
    rows = [summarise(c, windows[c.label], num_domains, args.use_gpu) for c in cases(args.batch)]
    add_ratios(rows)
    write_outputs(rows, loader, args, command)
    print((args.out / "scaling.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
