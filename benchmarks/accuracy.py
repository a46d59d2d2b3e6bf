"""Accuracy benchmark: source-only, DANN, VAE (no modulation) and CDLM on the same pipeline,
the same step budget and 3 seeds per domain pair; target accuracy under named selection rules.

    python benchmarks/accuracy.py                                   # the embedded pair
    python benchmarks/accuracy.py --data-root ../shared/data        # + mnist<->usps (real data)
    python benchmarks/accuracy.py --steps 300 --seeds 0 --jobs 2    # a quick look
    python benchmarks/accuracy.py --variant cdlm_shift=cdlm,model.modulation=shift \
        --methods cdlm cdlm_shift                                  # a named CDLM variant

Selection rule of the headline column: the evaluation step with the best *source validation
accuracy* (label-free). "last" is the final step; "oracle" picks the step by target test labels
and is reported only for comparison, never for choosing anything.

Every run uses PROTOCOL (the LeNet backbone, configs/train/long.yaml: 3000 steps, an evaluation
every 200). Runs are cached under a key that hashes the resolved config and the package source
(cdlm_dist/runkey.py): a finished run is read back, an interrupted one resumes from its last
checkpoint, and a run made by other code or other defaults is never reused. `--report-only` tabulates what
has finished for the current code.
Writes <out>/results.parquet (one row per run) and <out>/results.md (mean +- std per cell).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from cdlm_dist.runkey import run_key

EMBEDDED_PAIRS = ["mnist5k_to_mnistm_synth"]
REAL_PAIRS = ["mnist_to_usps", "usps_to_mnist"]
METHODS = ["source_only", "dann", "vae", "cdlm"]
# The protocol every run shares: the literature's LeNet, the 3000-step budget (configs/train/long)
PROTOCOL = ["model=lenet", "train=long"]
COLUMNS = [("target_acc_selected", "target acc (selected by source val)"),
           ("target_acc_last", "target acc (last step)"),
           ("target_acc_oracle", "oracle target acc (selected by target labels)")]


@dataclass(frozen=True)
class Job:
    """One run: its table cell, its overrides (without a location) and its cache key."""

    pair: str
    variant: str
    seed: int
    overrides: tuple[str, ...]
    key: str
    out: str
    data_root: str

    @property
    def run_dir(self) -> Path:
        """The run with this key, whatever variant name it was made under (names are labels)."""
        runs = Path(self.out) / "runs"
        made = sorted(runs.glob(f"*__{self.key}")) if runs.exists() else []
        return made[0] if made else runs / f"{self.pair}__{self.variant}__seed{self.seed}__{self.key}"

    @property
    def finished(self) -> bool:
        return (self.run_dir / "summary.json").exists()


def parse_variant(text: str) -> tuple[str, list[str]]:
    """"name=method,key=value,..." -> (name, ["method=<method>", "key=value", ...])."""
    name, sep, spec = text.partition("=")
    parts = [p for p in spec.split(",") if p]
    if not sep or not name or not parts or "=" in parts[0]:
        raise SystemExit(f"--variant {text!r}: expected NAME=METHOD[,key=value...], "
                         "e.g. cdlm_shift=cdlm,model.modulation=shift")
    return name, [f"method={parts[0]}", *parts[1:]]


def build_jobs(pairs: list[str], variants: dict[str, list[str]], seeds: list[int], steps: int,
               overrides: list[str], out: str, data_root: str = "") -> list[Job]:
    """One :class:`Job` per pair x variant x seed under PROTOCOL (``steps`` 0: its budget)."""
    root = str(Path(data_root).resolve()) if data_root else ""
    jobs = []
    for pair in pairs:
        for name, variant in variants.items():
            for seed in seeds:
                ov = [f"data={pair}", *PROTOCOL, *variant, f"train.seed={seed}",
                      *([f"train.steps={steps}"] if steps else []), "eval.baseline=false",
                      "eval.plots=false", *overrides]
                jobs.append(Job(pair, name, seed, tuple(ov), run_key(ov), out, root))
    return jobs


def one_run(job: Job) -> dict:
    """Train (resuming if interrupted) or read back one run."""
    import torch

    torch.set_num_threads(int(os.environ.get("CDLM_BENCH_THREADS", "1")))
    from cdlm_dist.experiment import SUMMARY_FILE, run_experiment

    if job.finished:
        summary = json.loads((job.run_dir / SUMMARY_FILE).read_text())
    else:
        overrides = [*job.overrides, f"run_dir={job.run_dir}", "train.progress=false"]
        if job.data_root:
            overrides.append(f"data.root={job.data_root}")
        summary = run_experiment(overrides, log=lambda *_: None)
    return summary | {"variant": job.variant, "key": job.key}


def _mean_of(g, prefix: str, fmt: str) -> str:
    """Mean over runs and domains of the columns starting with ``prefix`` ("n/a" if none)."""
    cols = [c for c in g.columns if c.startswith(prefix) and g[c].notna().all()]
    return format(g[cols].to_numpy().mean(), fmt) if cols else "n/a"


def table(df, hide_target: bool = False) -> str:
    """Markdown: one row per pair x method, mean +- std over seeds for each selection rule
    (only the label-free columns when ``hide_target``)."""
    columns = [] if hide_target else COLUMNS
    lines = ["| pair | method | seeds | " + "".join(f"{t} | " for _, t in columns)
             + "source val acc | target IM (label-free) | adversarial gap (label-free) "
             "| domain KL (latents) | hbar PR | sigma |",
             "|---|---|---|" + "---|" * (len(columns) + 6)]
    for (pair, method), g in df.groupby(["preset", "variant"], sort=False):  # one_run sets it
        cells = [f"{100 * g[c].mean():.1f} +- {100 * g[c].std(ddof=0):.1f} | " for c, _ in columns]
        kl_cols = [c for c in g.columns
                   if c.startswith("final/domain_kl/") and g[c].notna().all()]  # this pair's
        kl = f"{g[kl_cols[0]].mean():.2f}" if kl_cols else "n/a"
        im = (f"{g['target_im_selected'].mean():.3f}" if "target_im_selected" in g
              and g["target_im_selected"].notna().all() else "n/a")
        gap = (f"{g['adv_gap'].mean():.2f}" if "adv_gap" in g and g["adv_gap"].notna().all()
               else "n/a")
        lines.append(f"| {pair} | {method} | {len(g)} | " + "".join(cells)
                     + f"{100 * g['selected_score'].mean():.1f} | {im} | {gap} | {kl} "
                     f"| {_mean_of(g, 'final/hbar_pr/', '.1f')} "
                     f"| {_mean_of(g, 'final/sigma_mean/', '.2f')} |")
    return "\n".join(lines)


def label_free_choice(df, candidates: list[str], default: str) -> tuple[str, str]:
    """The rule of docs/studies.md section 2, on label-free columns only: drop candidates whose
    adversarial gap exceeds max(0.25, 2 x the default's) on any pair; take the best mean source
    validation accuracy over pairs, ties (< 0.1 points) broken by the higher mean target IM.
    Returns (winner, a line per candidate explaining the decision)."""
    df = df[df["variant"].isin(candidates)]
    per = df.groupby(["variant", "preset"])[["selected_score", "target_im_selected", "adv_gap"]]
    per = per.mean().reset_index()
    limit = per[per["variant"] == default].set_index("preset")["adv_gap"].mul(2).clip(lower=0.25)
    lines, kept = [], []
    for name, g in per.groupby("variant", sort=False):
        worst = (g.set_index("preset")["adv_gap"] - limit).max()
        val, im = 100 * g["selected_score"].mean(), g["target_im_selected"].mean()
        ok = bool(worst <= 0) and len(g) == len(limit)
        lines.append(f"{name}: source val {val:.2f}, target IM {im:.3f}, adv_gap "
                     f"{', '.join(f'{v:.2f}' for v in g['adv_gap'])} "
                     f"({'balanced' if ok else 'dropped: unbalanced game or missing pair'})")
        if ok:
            kept.append((val, im, name))
    best_val = max(v for v, _, _ in kept)
    ties = [(im, name) for v, im, name in kept if best_val - v < 0.1]
    return max(ties)[1], "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pairs", nargs="*", default=None, help="presets (default: embedded + real "
                   "pairs when --data-root is given)")
    p.add_argument("--methods", nargs="*", default=METHODS,
                   help="methods or --variant names to run")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=METHOD[,k=v...]",
                   help="a named method with extra overrides (repeatable)")
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=0,
                   help="override the protocol's budget (0: train=long's 3000 steps)")
    p.add_argument("--hide-target", action="store_true",
                   help="print no target accuracy while runs finish (blind label-free studies)")
    p.add_argument("--data-root", default="", help="folder with torchvision's MNIST/ and USPS/")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (1 torch thread each)")
    p.add_argument("--out", default="bench_results/accuracy")
    p.add_argument("--report-only", action="store_true",
                   help="tabulate the runs already finished under --out; train nothing")
    p.add_argument("--select-among", nargs="*", default=[], metavar="NAME",
                   help="apply docs/studies.md section 2's label-free rule to these variants")
    p.add_argument("--default", default="cdlm", help="the variant the rule compares against")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    a = p.parse_args(argv)
    pairs = a.pairs or (EMBEDDED_PAIRS + (REAL_PAIRS if a.data_root else []))
    variants = {m: [f"method={m}"] for m in METHODS} | dict(map(parse_variant, a.variant))
    unknown = [m for m in a.methods if m not in variants]
    if unknown:
        p.error(f"unknown method(s) {unknown}: use {METHODS} or define them with --variant")
    jobs = build_jobs(pairs, {m: variants[m] for m in a.methods}, a.seeds, a.steps, a.overrides,
                      a.out, a.data_root)
    done = sum(j.finished for j in jobs)
    print(f"{len(jobs)} runs ({len(pairs)} pairs x {len(a.methods)} methods x {len(a.seeds)} "
          f"seeds), {done} already finished, {a.jobs} at a time -> {a.out}", flush=True)
    start = time.time()
    rows = []
    if a.report_only:
        for j in jobs:
            if not j.finished:
                print(f"  not finished (left out of the table): {j.pair} {j.variant} seed {j.seed}")
        jobs = [j for j in jobs if j.finished]
    with ProcessPoolExecutor(a.jobs, mp_context=get_context("spawn")) as pool:
        for job, row in zip(jobs, pool.map(one_run, jobs)):
            rows.append(row)
            shown = ("" if a.hide_target else
                     f": target acc {row['target_acc_selected']:.3f} (selected), "
                     f"{row['target_acc_oracle']:.3f} (oracle)")
            print(f"  {job.pair} {job.variant} seed {job.seed}{shown}  "
                  f"[{time.time() - start:.0f}s]", flush=True)
    import pandas as pd

    if not rows:
        print("no finished runs to tabulate")
        return 1
    df = pd.DataFrame(rows)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out / "results.parquet", index=False)
    md = (f"Command: `python benchmarks/accuracy.py {' '.join(sys.argv[1:] if argv is None else argv)}`"
          f"\n\nProtocol {' '.join(PROTOCOL)}, steps {a.steps or 'of train=long'}; each preset's "
          "data.batch_size per domain; mean +- std over "
          f"seeds {a.seeds}; accuracies in %.\n"
          "Headline rule: checkpoint with the best source validation accuracy (no target "
          "labels). The oracle column uses target labels and is for reference only.\n\n"
          + table(df, a.hide_target) + "\n")
    if a.select_among:
        winner, why = label_free_choice(df, a.select_among, a.default)
        md += f"\nLabel-free rule (docs/studies.md section 2):\n\n```\n{why}\n```\n\nChosen: {winner}\n"
    (out / "results.md").write_text(md)
    print("\n" + md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
