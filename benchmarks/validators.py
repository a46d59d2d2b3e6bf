"""Validator benchmark: how well each label-free validator tracks target accuracy.

    python benchmarks/validators.py                                  # the defaults below
    python benchmarks/validators.py --pairs mnist5k_to_ucidigits --methods dann --trials 4 \
        --steps 400 --eval-every 100                                 # a quick look
    python benchmarks/validators.py --data-root ../shared/data --pairs mnist_to_usps ...
    python benchmarks/validators.py --extra-runs 'bench_results/accuracy/runs/*'  # reuse runs
    python benchmarks/validators.py --report-only                    # tabulate what finished

Trials: for every pair and method, ``--trials`` runs, trial 0 at the defaults and the others with
hyper-parameters drawn (seeded) from the sweep's default search space (configs/sweep.yaml,
log-uniform l_adv and l_con; a key the method does not use is left out) and the learning rate
from LR_RANGE. Every run records all validators (``eval/validator/<name>``) and the target
accuracy (``eval/target_acc``, an oracle column) at each evaluation; every evaluated checkpoint
of every trial of a pair is one point. Finished runs are read back (a rerun continues where it
stopped; runs are keyed by a hash of the resolved config and the package source, so a changed
default never reads a stale run back); ``--extra-runs`` adds other finished run directories
whose logs carry the validators.

Per pair (pooling methods and trials) and per validator:

- **weighted Spearman** correlation between validator score and target accuracy over all
  checkpoints, as in Musgrave et al. 2022 (the powerful-benchmarker study of UDA validators):
  weight_i = (dense rank of score_i / highest rank) ** WEIGHT_POWER, so the checkpoints the
  validator ranks highest (the ones it would pick) count most; Spearman = weighted Pearson of
  weighted ranks (the WeightedCorr package's definition, which the study calls).
- **picked**: target accuracy of the checkpoint the validator scores highest, next to the
  **oracle** (the best target accuracy of any checkpoint: what target labels would pick).

Writes <out>/checkpoints.parquet (one row per evaluated checkpoint), <out>/validators.md and
<out>/validators.png (validator score vs target accuracy, one panel per validator).
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

from cdlm_dist.evaluation.validators import KEY_PREFIX, VALIDATORS
from cdlm_dist.runkey import run_key

PAIRS = ["mnist5k_to_ucidigits", "mnist5k_to_mnistm_synth"]
METHODS = ["dann", "cdlm"]
LR_RANGE = (3e-4, 3e-3)  # learning rates drawn log-uniformly (trial 0 keeps the default)
WEIGHT_POWER = 2  # weighted Spearman: weights = (normalised validator rank) ** power
EVAL_PREFIX = "eval/"
TARGET = "target_acc"
CHEAP_FINAL_EVAL = ["eval.plots=false", "eval.a_distance=false", "eval.domain_kl=false",
                    "eval.baseline=false", "train.progress=false"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", nargs="+", default=PAIRS)
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--trials", type=int, default=16, help="runs per pair and method")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--eval-every", type=int, default=150)
    p.add_argument("--seed", type=int, default=0, help="seeds the draws and train.seed")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (one torch thread each)")
    p.add_argument("--data-root", default="", help="folder with torchvision's MNIST/ and USPS/")
    p.add_argument("--extra", nargs="*", default=[], help="overrides added to every run")
    p.add_argument("--extra-runs", nargs="*", default=[],
                   help="globs of finished run directories to add (their pair is data.preset)")
    p.add_argument("--out", default="bench_results/validators")
    p.add_argument("--report-only", action="store_true", help="only tabulate finished runs")
    p.add_argument("--min-src-acc", type=float, default=0.0,
                   help="tabulate only checkpoints with at least this source validation "
                        "accuracy (e.g. 0.9: how validators rank the trials that trained)")
    return p.parse_args(argv)


def sweep_space() -> dict[str, tuple[float, float]]:
    """The default sweep's continuous parameters: dotted key -> (low, high), log-uniform."""
    from omegaconf import OmegaConf

    from cdlm_dist.tuning.config import compose_sweep

    space = OmegaConf.to_container(compose_sweep([]).sweep.space)
    flat: dict[str, tuple[float, float]] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict) and "type" in value:
                if value["type"] == "loguniform":
                    flat[prefix + key] = (value["low"], value["high"])
            elif isinstance(value, dict):
                walk(value, f"{prefix}{key}.")

    walk(space, "")
    return flat


def trial_overrides(pair: str, method: str, trial: int, seed: int,
                    space: dict[str, tuple[float, float]]) -> list[str]:
    """One trial's overrides: the defaults for trial 0, else seeded log-uniform draws of the
    space keys the method uses (a weight that is 0 for the method stays 0) and of the lr."""
    from cdlm_dist.config import compose

    base = [f"data={pair}", f"method={method}"]
    if trial == 0:
        return base
    cfg = compose(base)
    rng = np.random.default_rng([seed, trial, sum(map(ord, pair + method))])
    draws = dict(space) | {"train.lr": LR_RANGE}
    out = list(base)
    for key, (low, high) in draws.items():
        section, _, leaf = key.partition(".")
        if getattr(getattr(cfg, section), leaf) == 0:
            continue  # e.g. l_adv for vae and source_only: the method does not use it
        out.append(f"{key}={float(np.exp(rng.uniform(np.log(low), np.log(high)))):.4g}")
    return out


def run_dir(out: Path, pair: str, method: str, trial: int, overrides: list[str]) -> Path:
    """Keyed by the resolved config and the package source (cdlm_dist/runkey.py), so a changed
    default or code starts a new run instead of reading a stale one back."""
    return out / "runs" / pair / method / f"trial{trial:03d}__{run_key(overrides)}"


def one_run(job: tuple[list[str], str]) -> str:
    """Train one trial (resuming if interrupted; nothing runs when it finished)."""
    import torch

    torch.set_num_threads(1)
    from cdlm_dist.experiment import SUMMARY_FILE, run_experiment

    overrides, directory = job
    if not (Path(directory) / SUMMARY_FILE).exists():
        run_experiment([*overrides, f"run_dir={directory}"], log=lambda *_: None)
    return directory


def checkpoint_rows(directory: Path, labels: dict[str, object]) -> list[dict]:
    """One row per evaluation in a run's metrics.jsonl that recorded the validators."""
    from cdlm_dist.evaluation.plots import read_metrics_log

    if not (directory / "metrics.jsonl").exists():
        return []  # not started, or made by other code (its key differs): nothing to read
    series = read_metrics_log(directory / "metrics.jsonl")
    target = series.get(EVAL_PREFIX + TARGET, {})
    rows = []
    for step, acc in sorted(target.items()):
        row = {**labels, "run": str(directory), "step": step, TARGET: acc}
        for name in VALIDATORS:
            row[name] = series.get(f"{EVAL_PREFIX}{KEY_PREFIX}{name}", {}).get(step, math.nan)
        if not all(math.isnan(row[name]) for name in VALIDATORS):
            rows.append(row)
    return rows


def extra_run_labels(directory: Path) -> dict[str, object] | None:
    """Pair and method of a finished run directory from its config.yaml (None if it has none)."""
    from omegaconf import OmegaConf

    config = directory / "config.yaml"
    if not config.exists():
        return None
    cfg = OmegaConf.load(config)
    return {"pair": cfg.data.preset, "method": cfg.method, "trial": -1}


def weighted_ranks(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Ranks where each item counts its weight (ties share their group's mean position)."""
    from scipy.stats import rankdata

    _, inverse, counts = np.unique(rankdata(x), return_inverse=True, return_counts=True)
    group_weight = np.bincount(inverse, w)
    return ((np.cumsum(group_weight) - group_weight)[inverse]
            + ((counts + 1) / 2 * (group_weight / counts))[inverse])


def weighted_spearman(scores: np.ndarray, accuracy: np.ndarray,
                      power: float = WEIGHT_POWER) -> float:
    """The study's weighted Spearman correlation; a non-finite score ranks lowest."""
    from scipy.stats import rankdata

    scores = np.where(np.isfinite(scores), scores, -np.inf)
    if len(scores) < 3 or np.all(scores == scores[0]):
        return math.nan
    finite_min = np.min(scores[np.isfinite(scores)]) if np.isfinite(scores).any() else 0.0
    scores = np.where(np.isfinite(scores), scores, finite_min)
    ranks = rankdata(scores, method="dense").astype(float)
    w = (ranks / ranks.max()) ** power
    x, y = weighted_ranks(scores, w), weighted_ranks(accuracy, w)
    mx, my = np.average(x, weights=w), np.average(y, weights=w)
    cov = np.average((x - mx) * (y - my), weights=w)
    var = np.average((x - mx) ** 2, weights=w) * np.average((y - my) ** 2, weights=w)
    return float(cov / np.sqrt(var)) if var > 0 else math.nan


def picked(frame: pd.DataFrame, name: str) -> float:
    """Target accuracy of the checkpoint ``name`` scores highest (the first on ties)."""
    scores = frame[name].to_numpy(dtype=float)
    if not np.isfinite(scores).any():
        return math.nan
    return float(frame[TARGET].iloc[int(np.nanargmax(scores))])


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """Per pair and validator: weighted Spearman, picked and oracle target accuracy, counts."""
    rows = []
    for pair, g in frame.groupby("pair", sort=True):
        for name in VALIDATORS:
            rows.append({"pair": pair, "validator": name,
                         "weighted_spearman": weighted_spearman(g[name].to_numpy(float),
                                                                g[TARGET].to_numpy(float)),
                         "picked": picked(g, name), "oracle": float(g[TARGET].max()),
                         "checkpoints": len(g), "runs": g["run"].nunique()})
    return pd.DataFrame(rows)


def to_markdown(summary: pd.DataFrame, frame: pd.DataFrame, command: str) -> str:
    pairs = sorted(summary["pair"].unique())
    lines = [f"Command: `{command}`", "",
             "Weighted Spearman correlation of each validator with target accuracy over every "
             f"evaluated checkpoint (weights (validator rank / top rank)^{WEIGHT_POWER}), and "
             "the target accuracy of the checkpoint it picks (oracle: the best any checkpoint "
             "reached, chosen with target labels).", "",
             "| validator | " + " | ".join(f"{p}: w-Spearman | {p}: picked" for p in pairs)
             + " |", "|---|" + "---|---|" * len(pairs)]
    for name in VALIDATORS:
        cells = []
        for p in pairs:
            r = summary[(summary["pair"] == p) & (summary["validator"] == name)].iloc[0]
            cells += [f"{r['weighted_spearman']:.3f}", f"{r['picked']:.3f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    oracle = [summary[summary["pair"] == p].iloc[0] for p in pairs]
    lines.append("| oracle (target labels) | " + " | ".join(f"- | {r['oracle']:.3f}"
                                                            for r in oracle) + " |")
    counts = ", ".join(f"{p}: {r['runs']} runs, {r['checkpoints']} checkpoints"
                       for p, r in zip(pairs, oracle))
    methods = ", ".join(sorted(frame["method"].astype(str).unique()))
    return "\n".join(lines + ["", f"Points: {counts}; methods: {methods}.", ""])


def plot(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(VALIDATORS)
    cols = 3
    fig, axes = plt.subplots(-(-len(names) // cols), cols, figsize=(4 * cols, 3.3 * 2),
                             squeeze=False)
    for ax, name in zip(axes.flat, names):
        for pair, g in frame.groupby("pair", sort=True):
            ax.scatter(g[name], g[TARGET], s=8, alpha=0.6, label=pair)
        ax.set_xlabel(f"{name} (label-free)")
        ax.set_ylabel("target accuracy (oracle)")
    axes.flat[0].legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    common = [f"train.steps={a.steps}", f"train.eval_every={a.eval_every}",
              f"train.seed={a.seed}", *CHEAP_FINAL_EVAL, *a.extra]
    if a.data_root:
        common.append(f"data.root={a.data_root}")
    space = sweep_space()
    labels, jobs = {}, []
    for pair in a.pairs:
        for method in a.methods:
            for trial in range(a.trials):
                overrides = [*trial_overrides(pair, method, trial, a.seed, space), *common,
                             f"name=val_{pair}_{method}_{trial}"]
                directory = run_dir(out, pair, method, trial, overrides)
                labels[str(directory)] = {"pair": pair, "method": method, "trial": trial}
                jobs.append((overrides, str(directory)))
    if not a.report_only:
        start = time.time()
        if a.jobs == 1:
            for i, job in enumerate(jobs):
                one_run(job)
                print(f"[{i + 1}/{len(jobs)}] {job[1]} ({time.time() - start:.0f} s)", flush=True)
        else:
            os.environ.setdefault("OMP_NUM_THREADS", "1")
            with ProcessPoolExecutor(a.jobs, mp_context=get_context("spawn")) as pool:
                for i, directory in enumerate(pool.map(one_run, jobs)):
                    print(f"[{i + 1}/{len(jobs)}] {directory} ({time.time() - start:.0f} s)",
                          flush=True)
    rows = [r for d, lab in labels.items() for r in checkpoint_rows(Path(d), lab)]
    for pattern in a.extra_runs:
        for directory in map(Path, sorted(glob.glob(pattern))):
            lab = extra_run_labels(directory)
            if lab is not None:
                rows += checkpoint_rows(directory, lab)
    if not rows:
        print("no finished evaluations with validator scores yet", file=sys.stderr)
        return 1
    frame = pd.DataFrame(rows)
    suffix = ""
    if a.min_src_acc > 0:  # label-free filter: drops the collapsed and diverged checkpoints
        frame = frame[frame["src_acc"] >= a.min_src_acc].reset_index(drop=True)
        suffix = f"_src_acc_min{a.min_src_acc:g}"  # beside, not over, the unfiltered files
    frame.to_parquet(out / f"checkpoints{suffix}.parquet", index=False)
    summary = summarise(frame)
    command = "python benchmarks/validators.py " + " ".join(argv if argv is not None
                                                            else sys.argv[1:])
    (out / f"validators{suffix}.md").write_text(to_markdown(summary, frame, command.strip()))
    plot(frame, out / f"validators{suffix}.png")
    print((out / f"validators{suffix}.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
