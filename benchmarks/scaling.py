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
            f"name=scaling_{case.label}", f"run_dir={run_dir}"]


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
    args = p.parse_args(argv)
    if args.steps - args.warmup < args.windows:
        p.error("--steps minus --warmup must be at least --windows")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python", "benchmarks/scaling.py", *(sys.argv[1:] if argv is None
                                                              else argv)])
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
