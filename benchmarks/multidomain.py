"""N-domain benchmark (CDLM.md section 4).

1. Multi-source vs single-source: for each target among the embedded digit domains, CDLM trained
   on the two other domains as labelled sources at once, against CDLM trained on each source
   alone (the pairwise model); the "best single source" is chosen per seed by the label-free
   score (source validation accuracy), and its oracle counterpart is reported separately.
2. Cost per step for K = 2, 3, 4 domains under each pairing strategy (random tensors, same
   per-domain batch), showing how all_pairs grows as O(K^2) and the others as O(K).

    python benchmarks/multidomain.py                        # 3 seeds, default budget
    python benchmarks/multidomain.py --steps 300 --seeds 0  # a quick look
Writes <out>/multisource.parquet, <out>/cost.parquet and <out>/results.md. Runs are idempotent:
one whose summary.json exists under <out>/runs is read back, not retrained.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

DOMAINS = ["mnist5k", "ucidigits", "mnistm_synth"]
PAIRINGS = ["all_pairs", "random_partner", "mean_of_others"]
TIMED_STEPS, WARMUP_STEPS = 10, 3


def domains_override(sources: list[str], target: str) -> str:
    items = [f"{{name:{s},labelled:true}}" for s in sources] + [f"{{name:{target},labelled:false}}"]
    return f"data.domains=[{','.join(items)}]"


def one_run(job: tuple[str, tuple[str, ...], int, int, str, list[str]]) -> dict:
    target, sources, seed, steps, out, extra = job
    import torch

    torch.set_num_threads(1)
    from cdlm_dist.experiment import SUMMARY_FILE, run_experiment

    tag = "+".join(sources)
    run_dir = Path(out) / "runs" / f"{tag}__to__{target}__seed{seed}"
    if (run_dir / SUMMARY_FILE).exists():  # idempotent: a finished run is read back
        summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    else:
        summary = run_experiment(
            ["data=digits3", domains_override(list(sources), target),
             f"data.preset={tag}_to_{target}", f"train.seed={seed}", f"train.steps={steps}",
             f"run_dir={run_dir}", "train.progress=false", "eval.baseline=false",
             "eval.plots=false", "eval.a_distance=false", "eval.domain_kl=false", *extra],
            log=lambda *_: None)
    return {"target": target, "sources": tag, "multi_source": len(sources) > 1, "seed": seed,
            **{k: summary[k] for k in ("target_acc_selected", "target_acc_oracle",
                                        "selected_score") if k in summary}}


def multisource_table(runs) -> list[str]:
    """Markdown rows: multi-source CDLM, each single source, the best single source by the
    label-free score, and the oracle columns (target labels; reference only)."""
    fmt = lambda s: f"{100 * s.mean():.1f} +- {100 * s.std(ddof=0):.1f}"  # noqa: E731
    lines = ["| target | multi-source CDLM (selected) | each single source (selected) "
             "| best single source by score (selected) | oracle: multi-source "
             "| oracle: best single source |", "|---|---|---|---|---|---|"]
    for target, g in runs.groupby("target"):
        multi, single = g[g.multi_source], g[~g.multi_source]
        each = ", ".join(f"{src} {fmt(s.target_acc_selected)}"
                         for src, s in single.groupby("sources"))
        best_single = single.loc[single.groupby("seed")["selected_score"].idxmax()]
        best_oracle = single.groupby("seed")["target_acc_oracle"].max()
        lines.append(f"| {target} | {fmt(multi.target_acc_selected)} | {each} | "
                     f"{fmt(best_single.target_acc_selected)} "
                     f"({', '.join(sorted(set(best_single.sources)))}) | "
                     f"{fmt(multi.target_acc_oracle)} | {fmt(best_oracle)} |")
    return lines


def step_cost(num_domains: int, pairing: str, batch: int = 64) -> float:
    """Seconds per train_step of CDLM with K domains (28 px RGB random images, 1 thread)."""
    import torch
    from step_cost import make_step, seconds_per_step

    torch.set_num_threads(1)
    step, _ = make_step(["data=digits3", f"model.pairing={pairing}"], batch, num_domains)
    return seconds_per_step(step, TIMED_STEPS, WARMUP_STEPS)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--targets", nargs="*", default=["mnistm_synth", "ucidigits"])
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=0, help="0: the config's train.steps")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default="bench_results/multidomain")
    p.add_argument("--reuse-cost", action="store_true",
                   help="read <out>/cost.parquet instead of timing steps again")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    import pandas as pd

    from cdlm_dist.config import compose

    a.steps = a.steps or compose(a.overrides).train.steps

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for target in a.targets:
        sources = [d for d in DOMAINS if d != target]
        for seed in a.seeds:
            jobs.append((target, tuple(sources), seed, a.steps, a.out, a.overrides))
            jobs += [(target, (s,), seed, a.steps, a.out, a.overrides) for s in sources]
    print(f"{len(jobs)} training runs, {a.steps} steps each, {a.jobs} at a time")
    with ProcessPoolExecutor(a.jobs, mp_context=get_context("spawn")) as pool:
        runs = pd.DataFrame(list(pool.map(one_run, jobs)))
    runs.to_parquet(out / "multisource.parquet", index=False)

    lines = multisource_table(runs)

    if a.reuse_cost and (out / "cost.parquet").exists():
        cost = pd.read_parquet(out / "cost.parquet")
    else:
        cost = pd.DataFrame([{"K": k, "pairing": pr, "seconds_per_step": step_cost(k, pr)}
                             for k in (2, 3, 4) for pr in PAIRINGS])
        cost.to_parquet(out / "cost.parquet", index=False)
    pivot = cost.pivot(index="K", columns="pairing", values="seconds_per_step")
    cost_lines = ["| K | " + " | ".join(PAIRINGS) + " |", "|---|" + "---|" * len(PAIRINGS)]
    cost_lines += [f"| {k} | " + " | ".join(f"{1000 * pivot.loc[k, pr]:.0f} ms" for pr in PAIRINGS)
                   + " |" for k in pivot.index]
    md = (f"Command: `python benchmarks/multidomain.py {' '.join(argv or sys.argv[1:])}`\n\n"
          f"Multi-source vs single-source CDLM, {a.steps} steps, seeds {a.seeds}, target accuracy "
          "in % (mean +- std). 'selected' = checkpoint with the best source validation accuracy; "
          "the best single source is also picked by that label-free score. Oracle columns use "
          "target labels and are for reference only.\n\n" + "\n".join(lines)
          + f"\n\nCost per training step (1 thread, batch 64 per domain, 28 px RGB), "
          f"mean of {TIMED_STEPS} steps:\n\n" + "\n".join(cost_lines) + "\n")
    (out / "results.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
