"""One experiment end to end: compose, check, load, train, select, evaluate, summarise.

The CLI (`cdlm-train`), the benchmarks and cluster jobs all call :func:`run_experiment`, so a
number in a benchmark table was produced exactly as a user's run would produce it.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cdlm_dist.config import Config, compose
from cdlm_dist.data.domains import DomainData, load_domains
from cdlm_dist.model.cdlm import build_model
from cdlm_dist.runners import get_runner
from cdlm_dist.training.context import resolve_device
from cdlm_dist.training.loop import TrainResult

SUMMARY_FILE = "summary.json"


def save_config(cfg: Config, run_dir: Path) -> None:
    """Write the resolved config; an earlier, different one is kept as config.<n>.yaml."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    text = OmegaConf.to_yaml(cfg, resolve=True)
    if path.exists() and path.read_text() != text:
        n = 1
        while (run_dir / f"config.{n}.yaml").exists():
            n += 1
        shutil.copy(path, run_dir / f"config.{n}.yaml")
    path.write_text(text)


def selection_summary(history: list[dict[str, float]]) -> dict[str, float]:
    """Target accuracy under each named selection rule (docs/method.md section 5).

    - ``selected``: at the evaluation with the best label-free score (source validation accuracy)
    - ``last``: at the final step
    - ``oracle``: the best at any evaluation; it peeks at target labels, so it is only reported
    """
    if not history:
        return {}
    best = max(history, key=lambda h: h["score"])  # first maximum: earliest on ties
    return {
        "selected_step": best["step"],
        "selected_score": best["score"],
        "target_acc_selected": best["target_acc"],
        "target_acc_last": history[-1]["target_acc"],
        "target_acc_oracle": max(h["target_acc"] for h in history),
        "target_im_selected": best.get("target_im", math.nan),  # label-free, for comparing runs
        "target_im_last": history[-1].get("target_im", math.nan),
    }


def run_experiment(overrides: list[str], with_baseline: bool | None = None,
                   log=print) -> dict[str, Any]:
    """Train and evaluate the run described by Hydra ``overrides``; return its summary."""
    cfg = compose(overrides)
    run_dir = Path(cfg.run_dir)
    domains = load_domains(cfg.data, cfg.train.seed)  # fails fast on a missing dataset
    save_config(cfg, run_dir)
    log(f"run {cfg.name}: {' -> '.join(d.name for d in domains)} "
        f"(train sizes {[len(d.train) for d in domains]}), runner={cfg.runner.name}, "
        f"run_dir={run_dir}")
    start = time.time()
    result = get_runner(cfg.runner.name)(cfg, domains, run_dir)
    train_seconds = time.time() - start
    summary = {"name": cfg.name, "method": cfg.method, "preset": cfg.data.preset,
               "seed": cfg.train.seed, "steps": cfg.train.steps,
               "train_seconds": round(train_seconds, 1)}
    summary |= selection_summary(result.history)
    gap = adversarial_gap(run_dir / "metrics.jsonl", len(domains), cfg.loss.adv_reduction)
    if not math.isnan(gap):  # summary.json stays strict JSON: no NaN
        summary["adv_gap"] = round(gap, 4)
    summary |= evaluate_selected(cfg, domains, result, run_dir)

    if with_baseline if with_baseline is not None else (cfg.eval.baseline
                                                        and cfg.method != "source_only"):
        log("baseline: the same pair and budget with method=source_only")
        base = run_experiment(overrides + ["method=source_only", "eval.baseline=false",
                                           "eval.plots=false", "eval.a_distance=false",
                                           "eval.domain_kl=false", "runner=local",
                                           f"run_dir={run_dir / 'baseline_source_only'}"],
                              with_baseline=False, log=log)
        summary["baseline_source_only_target_acc_selected"] = base["target_acc_selected"]
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    write_metrics_parquet(run_dir)
    return summary


def evaluate_selected(cfg: Config, domains: list[DomainData], result: TrainResult,
                      run_dir: Path) -> dict[str, float]:
    """Final metrics (accuracies, A-distance, domain KL, plots) of the selected weights."""
    from cdlm_dist.evaluation.metrics import final_evaluation

    model = build_model(cfg, len(domains), domains[0].num_classes)
    model.load_state_dict(result.selected_state)
    model.to(resolve_device(cfg.train.device))
    metrics = final_evaluation(model, domains, cfg, run_dir)
    return {f"final/{k}": v for k, v in metrics.items()
            if isinstance(v, (int, float)) and not math.isnan(v)}


def adversarial_gap(metrics_file: Path, num_domains: int, reduction: str = "sum") -> float:
    """Label-free health of the adversarial game: the mean |logged domain loss - chance| over the
    second half of training (NaN without a discriminator). Near 0 the discriminator is held at
    chance, as domain-adversarial training intends; large values mean it wins (domains stay
    apart) or is flipped each step by an encoder that overpowers it (an unstable game)."""
    from cdlm_dist.losses import adversarial_chance

    if not metrics_file.exists():
        return math.nan
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    adv = [(r["step"], r["loss/adv"]) for r in rows if "loss/adv" in r]
    if not adv:
        return math.nan
    half = adv[-1][0] / 2
    late = [v for step, v in adv if step > half] or [adv[-1][1]]
    chance = adversarial_chance(num_domains, reduction)
    return sum(abs(v - chance) for v in late) / len(late)


def write_metrics_parquet(run_dir: Path) -> None:
    """metrics.jsonl -> metrics.parquet (one row per logged step; columns are metric names)."""
    src = run_dir / "metrics.jsonl"
    if not src.exists():
        return
    import pandas as pd

    rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    pd.DataFrame(rows).groupby("step", as_index=False).first().to_parquet(
        run_dir / "metrics.parquet", index=False)


def format_summary(summary: dict[str, Any]) -> str:
    """A short table for the end of a run."""
    rows = [("run", summary["name"]), ("pair", summary["preset"]),
            ("steps", summary["steps"]), ("train time (s)", summary["train_seconds"]),
            ("selected at step (best source val acc)", summary.get("selected_step")),
            ("source val acc (selection score)", summary.get("selected_score")),
            ("TARGET ACC (selected, label-free)", summary.get("target_acc_selected")),
            ("target acc (last step)", summary.get("target_acc_last")),
            ("target acc (oracle: best by target labels)", summary.get("target_acc_oracle"))]
    if "adv_gap" in summary:
        rows.append(("adversarial gap (|domain loss - chance|, label-free)", summary["adv_gap"]))
    if "baseline_source_only_target_acc_selected" in summary:
        base = summary["baseline_source_only_target_acc_selected"]
        rows.append(("source-only target acc (same budget)", base))
        rows.append(("gain over source-only", summary["target_acc_selected"] - base))
    for k, v in summary.items():  # every domain's test accuracy, then the pairwise metrics
        if k.startswith("final/test_acc/"):
            rows.append((f"test acc {k.removeprefix('final/test_acc/')}", v))
    for k, v in summary.items():
        if k.startswith("final/a_distance") or k.startswith("final/domain_kl"):
            rows.append((k.removeprefix("final/"), v))
    width = max(len(r[0]) for r in rows)
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    return "\n".join(f"  {k.ljust(width)}  {fmt(v)}" for k, v in rows)
