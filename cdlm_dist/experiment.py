"""One experiment end to end: compose, check, load, train, select, evaluate, summarise.

The CLI (`cdlm-train`), the benchmarks and cluster jobs all call :func:`run_experiment`, so a
number in a benchmark table was produced exactly as a user's run would produce it. Everything it
writes comes from the runner's :class:`TrainResult` (the final checkpoint's contents), never from
files a remote rank 0 wrote, and nothing is written before every check has passed.
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
from cdlm_dist.runners import get_runner, preflight
from cdlm_dist.tracking import RunTracking
from cdlm_dist.training.context import METRICS_LOG, resolve_device, write_log
from cdlm_dist.training.loop import TrainResult
from cdlm_dist.training.memory import PEAK_RSS, memory_summary
from cdlm_dist.training.selection import selection_summary

SUMMARY_FILE = "summary.json"
BASELINE_OVERRIDES = ["method=source_only", "eval.baseline=false", "eval.plots=false",
                      "eval.a_distance=false", "eval.domain_kl=false", "runner=local"]


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


def run_experiment(overrides: list[str], with_baseline: bool | None = None,
                   log=print) -> dict[str, Any]:
    """Train and evaluate the run described by Hydra ``overrides``; return its summary."""
    cfg = compose(overrides)
    run_dir = Path(cfg.run_dir)
    domains = load_domains(cfg.data, cfg.train.seed)  # fails fast on a missing dataset
    preflight(cfg)  # the cluster can host the workers, the device exists: before any write
    save_config(cfg, run_dir)
    tracking = RunTracking.start(cfg, run_dir)  # MLflow: the run and its params (tracking.py)
    log(f"run {cfg.name}: {' -> '.join(d.name for d in domains)} "
        f"(train sizes {[len(d.train) or 'streamed' for d in domains]}), "
        f"runner={cfg.runner.name}, "
        f"run_dir={run_dir}")
    start = time.time()
    try:
        result = get_runner(cfg.runner.name)(cfg, domains, run_dir)
    except BaseException:
        tracking.fail()
        raise
    train_seconds = time.time() - start
    write_log(run_dir / METRICS_LOG, result.log)  # the complete series, whatever node logged
    summary = {"name": cfg.name, "method": cfg.method, "preset": cfg.data.preset,
               "seed": cfg.train.seed, "steps": cfg.train.steps, "select_by": cfg.train.select_by,
               "train_seconds": round(train_seconds, 1)}
    summary |= selection_summary(result.history)
    summary |= memory_summary(result.log)  # each rank's peak RSS and growth (sys/ keys)
    gap = adversarial_gap(result.log, len(domains), cfg.loss.adv_reduction)
    if not math.isnan(gap):  # summary.json stays strict JSON: no NaN
        summary["adv_gap"] = round(gap, 4)
    summary |= evaluate_selected(cfg, domains, result, run_dir)

    if with_baseline if with_baseline is not None else (cfg.eval.baseline
                                                        and cfg.method != "source_only"):
        summary |= source_only_baseline(overrides, log)
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    write_metrics_parquet(result.log, run_dir)
    tracking.finish(result, summary)
    return summary


def source_only_baseline(overrides: list[str], log=print) -> dict[str, Any]:
    """The same pair, budget and seed with method=source_only, trained once and then reused.

    Baselines live in ``eval.baseline_dir/<key>``, keyed by their resolved config and the package
    source (:mod:`cdlm_dist.runkey`), so every run of a pair and budget shares one, and a changed
    default or code trains a new one.
    """
    from cdlm_dist.runkey import config_key

    base = compose(overrides + BASELINE_OVERRIDES)
    root = Path(base.eval.baseline_dir or Path(base.run_dir).parent / "baselines")
    folder = root / f"source_only_{base.data.preset}_{config_key(base)}"
    found = folder / SUMMARY_FILE
    reused = found.exists()
    if reused:
        log(f"baseline: reusing the finished source-only run in {folder}")
        target = json.loads(found.read_text())["target_acc_selected"]
    else:
        log(f"baseline: the same pair and budget with method=source_only, in {folder}")
        target = run_experiment(overrides + BASELINE_OVERRIDES + [f"run_dir={folder}"],
                                with_baseline=False, log=log)["target_acc_selected"]
    return {"baseline_source_only_target_acc_selected": target,
            "baseline_source_only_run": str(folder), "baseline_source_only_reused": reused}


def evaluate_selected(cfg: Config, domains: list[DomainData], result: TrainResult,
                      run_dir: Path) -> dict[str, float]:
    """Final metrics (accuracies, A-distance, domain KL, plots) of the selected weights."""
    from cdlm_dist.evaluation.metrics import final_evaluation

    model = build_model(cfg, len(domains), domains[0].num_classes)  # the driver's only build
    model.load_state_dict(result.selected_state)
    model.to(resolve_device(cfg.train.device))
    metrics = final_evaluation(model, domains, cfg, run_dir)
    return {f"final/{k}": v for k, v in metrics.items()
            if isinstance(v, (int, float)) and not math.isnan(v)}


def adversarial_gap(rows: list[dict[str, Any]], num_domains: int, reduction: str = "sum"
                   ) -> float:
    """Label-free health of the adversarial game: the mean |logged domain loss - chance| over the
    second half of training (NaN without a discriminator). Near 0 the discriminator is held at
    chance, as domain-adversarial training intends; large values mean it wins (domains stay
    apart) or is flipped each step by an encoder that overpowers it (an unstable game)."""
    from cdlm_dist.losses import adversarial_chance

    adv = [(r["step"], r["loss/adv"]) for r in rows if "loss/adv" in r]
    if not adv:
        return math.nan
    half = adv[-1][0] / 2
    late = [v for step, v in adv if step > half] or [adv[-1][1]]
    chance = adversarial_chance(num_domains, reduction)
    return sum(abs(v - chance) for v in late) / len(late)


def write_metrics_parquet(rows: list[dict[str, Any]], run_dir: Path) -> None:
    """The logged rows as metrics.parquet (one row per logged step; columns are metric names)."""
    if not rows:
        return
    import pandas as pd

    pd.DataFrame(rows).groupby("step", as_index=False).first().to_parquet(
        run_dir / "metrics.parquet", index=False)


def format_summary(summary: dict[str, Any]) -> str:
    """A short table for the end of a run."""
    score_name = summary["select_by"]
    rows = [("run", summary["name"]), ("pair", summary["preset"]),
            ("steps", summary["steps"]), ("train time (s)", summary["train_seconds"]),
            (f"selected at step (best {score_name})", summary.get("selected_step")),
            (f"{score_name} (selection score)", summary.get("selected_score")),
            ("TARGET ACC (selected, label-free)", summary.get("target_acc_selected")),
            ("target acc (last step)", summary.get("target_acc_last")),
            ("target acc (oracle: best by target labels)", summary.get("target_acc_oracle"))]
    if PEAK_RSS in summary:
        rows.append(("peak RSS of the largest rank (MB)", summary[PEAK_RSS]))
    if "adv_gap" in summary:
        rows.append(("adversarial gap (|domain loss - chance|, label-free)", summary["adv_gap"]))
    if "baseline_source_only_target_acc_selected" in summary:
        base = summary["baseline_source_only_target_acc_selected"]
        rows.append(("source-only target acc (same budget)", base))
        rows.append(("gain over source-only", summary["target_acc_selected"] - base))
        rows.append(("source-only run" + (" (reused)" if summary.get(
            "baseline_source_only_reused") else ""), summary.get("baseline_source_only_run")))
    for k, v in summary.items():  # every domain's test accuracy, then the pairwise metrics
        if k.startswith("final/test_acc/"):
            rows.append((f"test acc {k.removeprefix('final/test_acc/')}", v))
    for k, v in summary.items():
        if k.startswith("final/a_distance") or k.startswith("final/domain_kl"):
            rows.append((k.removeprefix("final/"), v))
    width = max(len(r[0]) for r in rows)
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    return "\n".join(f"  {k.ljust(width)}  {fmt(v)}" for k, v in rows)
