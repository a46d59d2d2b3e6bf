"""Accuracy benchmark: source-only, DANN, VAE (no modulation) and CDLM on the same pipeline,
the same step budget and 3 seeds per domain pair; target accuracy under named selection rules.

    python benchmarks/accuracy.py                                   # embedded pairs
    python benchmarks/accuracy.py --data-root ../shared/data        # + mnist<->usps (real data)
    python benchmarks/accuracy.py --steps 300 --seeds 0 --jobs 2    # a quick look
    python benchmarks/accuracy.py --variant cdlm_shift=cdlm,model.modulation=shift \
        --methods cdlm cdlm_shift                                  # a named CDLM variant

Selection rule of the headline column: the evaluation step with the best *source validation
accuracy* (label-free). "last" is the final step; "oracle" picks the step by target test labels
and is reported only for comparison, never for choosing anything. Runs are idempotent: a run
whose summary.json exists is read, not retrained (delete --out to start over).
Writes <out>/results.parquet (one row per run) and <out>/results.md (mean +- std per cell).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

EMBEDDED_PAIRS = ["mnist5k_to_ucidigits", "mnist5k_to_mnistm_synth"]
REAL_PAIRS = ["mnist_to_usps", "usps_to_mnist"]
METHODS = ["source_only", "dann", "vae", "cdlm"]
COLUMNS = [("target_acc_selected", "target acc (selected by source val)"),
           ("target_acc_last", "target acc (last step)"),
           ("target_acc_oracle", "oracle target acc (selected by target labels)")]


def run_dir_of(job: tuple) -> Path:
    pair, method, seed, _, _, out, _ = job
    return Path(out) / "runs" / f"{pair}__{method}__seed{seed}"


def parse_variant(text: str) -> tuple[str, list[str]]:
    """"name=method,key=value,..." -> (name, ["method=<method>", "key=value", ...])."""
    name, sep, spec = text.partition("=")
    parts = [p for p in spec.split(",") if p]
    if not sep or not name or not parts or "=" in parts[0]:
        raise SystemExit(f"--variant {text!r}: expected NAME=METHOD[,key=value...], "
                         "e.g. cdlm_shift=cdlm,model.modulation=shift")
    return name, [f"method={parts[0]}", *parts[1:]]


def one_run(args: tuple[str, str, int, int, str, str, list[str]]) -> dict:
    """Train (or read back) one run; ``method`` is a variant name, ``extra`` its overrides."""
    pair, method, seed, steps, root, out, extra = args
    import torch

    torch.set_num_threads(int(os.environ.get("CDLM_BENCH_THREADS", "1")))
    from cdlm_dist.experiment import SUMMARY_FILE, adversarial_gap, run_experiment

    run_dir = run_dir_of(args)
    if (run_dir / SUMMARY_FILE).exists():
        summary = json.loads((run_dir / SUMMARY_FILE).read_text())
        if "adv_gap" not in summary:  # runs from before the gap was recorded: derive it
            gap = adversarial_gap(run_dir / "metrics.jsonl", 2)
            summary |= {} if math.isnan(gap) else {"adv_gap": gap}
        return summary | {"variant": method}
    overrides = [f"data={pair}", *extra, f"train.seed={seed}",
                 f"train.steps={steps}", f"run_dir={run_dir}", "train.progress=false",
                 "eval.baseline=false", "eval.plots=false"]
    if root:
        overrides.append(f"data.root={root}")
    return run_experiment(overrides, log=lambda *_: None) | {"variant": method}


def table(df) -> str:
    """Markdown: one row per pair x method, mean +- std over seeds for each selection rule."""
    lines = ["| pair | method | seeds | " + " | ".join(t for _, t in COLUMNS)
             + " | source val acc | target IM (label-free) | adversarial gap (label-free) "
             "| domain KL (latents) |",
             "|---|---|---|" + "---|" * (len(COLUMNS) + 4)]
    for (pair, method), g in df.groupby(["preset", "variant"], sort=False):  # one_run sets it
        cells = [f"{100 * g[c].mean():.1f} +- {100 * g[c].std(ddof=0):.1f}" for c, _ in COLUMNS]
        kl_cols = [c for c in g.columns
                   if c.startswith("final/domain_kl/") and g[c].notna().all()]  # this pair's
        kl = f"{g[kl_cols[0]].mean():.2f}" if kl_cols else "n/a"
        im = (f"{g['target_im_selected'].mean():.3f}" if "target_im_selected" in g
              and g["target_im_selected"].notna().all() else "n/a")
        gap = (f"{g['adv_gap'].mean():.2f}" if "adv_gap" in g and g["adv_gap"].notna().all()
               else "n/a")
        lines.append(f"| {pair} | {method} | {len(g)} | " + " | ".join(cells)
                     + f" | {100 * g['selected_score'].mean():.1f} | {im} | {gap} | {kl} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pairs", nargs="*", default=None, help="presets (default: embedded + real "
                   "pairs when --data-root is given)")
    p.add_argument("--methods", nargs="*", default=METHODS,
                   help="methods or --variant names to run")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=METHOD[,k=v...]",
                   help="a named method with extra overrides (repeatable)")
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--data-root", default="", help="folder with torchvision's MNIST/ and USPS/")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (1 torch thread each)")
    p.add_argument("--out", default="bench_results/accuracy")
    p.add_argument("--report-only", action="store_true",
                   help="tabulate the runs already finished under --out; train nothing")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    a = p.parse_args(argv)
    pairs = a.pairs or (EMBEDDED_PAIRS + (REAL_PAIRS if a.data_root else []))
    variants = {m: [f"method={m}"] for m in METHODS} | dict(map(parse_variant, a.variant))
    unknown = [m for m in a.methods if m not in variants]
    if unknown:
        p.error(f"unknown method(s) {unknown}: use {METHODS} or define them with --variant")
    jobs = [(pair, m, s, a.steps, a.data_root, a.out, variants[m] + a.overrides)
            for pair in pairs for m in a.methods for s in a.seeds]
    print(f"{len(jobs)} runs ({len(pairs)} pairs x {len(a.methods)} methods x "
          f"{len(a.seeds)} seeds), {a.steps} steps each, {a.jobs} at a time -> {a.out}")
    start = time.time()
    rows = []
    if a.report_only:
        missing = [j for j in jobs if not (run_dir_of(j) / "summary.json").exists()]
        jobs = [j for j in jobs if j not in missing]
        for j in missing:
            print(f"  not finished (left out of the table): {j[0]} {j[1]} seed {j[2]}")
    with ProcessPoolExecutor(a.jobs, mp_context=get_context("spawn")) as pool:
        for job, row in zip(jobs, pool.map(one_run, jobs)):
            rows.append(row)
            print(f"  {job[0]} {job[1]} seed {job[2]}: target acc {row['target_acc_selected']:.3f}"
                  f" (selected), {row['target_acc_oracle']:.3f} (oracle)  [{time.time() - start:.0f}s]",
                  flush=True)
    import pandas as pd

    if not rows:
        print("no finished runs to tabulate")
        return 1
    df = pd.DataFrame(rows)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out / "results.parquet", index=False)
    md = (f"Command: `python benchmarks/accuracy.py {' '.join(sys.argv[1:] if argv is None else argv)}`"
          f"\n\n{a.steps} steps, each preset's data.batch_size per domain; mean +- std over "
          f"seeds {a.seeds}; accuracies in %.\n"
          "Headline rule: checkpoint with the best source validation accuracy (no target "
          "labels). The oracle column uses target labels and is for reference only.\n\n"
          + table(df) + "\n")
    (out / "results.md").write_text(md)
    print("\n" + md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
