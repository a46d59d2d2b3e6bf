"""A sweep's results, read from the study (so every driver run of a resumed sweep is included).

Files in the sweep directory:
- ``trials.parquet``: one row per Optuna trial (any state): score, oracle target accuracy,
  epochs reached, parameters, and the Tune trial that ran it.
- ``leaderboard.md``: finished trials by label-free score, and the command to retrain the best.
- ``experiment/best.yaml``: the best trial's complete training config as a Hydra config;
  ``cdlm-train 'hydra.searchpath=[file://<sweep dir>]' +experiment=best`` retrains it as is
  (every key is set, so it does not depend on the defaults cdlm-train would otherwise compose).
- ``importance.png`` and ``objective_plane.png`` (see :mod:`cdlm_dist.tuning.plots`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from cdlm_dist.tuning.config import apply_params, num_epochs
from cdlm_dist.tuning.plots import param_importance, plot_importance, plot_plane
from cdlm_dist.tuning.search import ATTR_ORPHANED, ATTR_RESUMED_FROM
from cdlm_dist.tuning.space import Param
from cdlm_dist.tuning.trainable import EPOCH, ORACLE

TRIALS_FILE = "trials.parquet"
LEADERBOARD_FILE = "leaderboard.md"
BEST_GROUP, BEST_OPTION = "experiment", "best"
SUMMARY_JSON = "summary.json"
BEST_RUN_DIR = "best_run"
IMPORTANCE_PNG = "importance.png"
PLANE_PNG = "objective_plane.png"
FINISHED_STATES = ("COMPLETE", "PRUNED")


def trials_frame(study, params: list[Param], epochs: int) -> pd.DataFrame:
    """Every trial of the study as a row; ``finished`` ones count towards num_samples."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        end = t.datetime_complete
        rows.append({
            "number": t.number, "state": t.state.name,
            "finished": t.state.name in FINISHED_STATES,
            "score": t.value if t.value is not None else float("nan"),
            "eval_score": attrs.get("eval_score", float("nan")),
            ORACLE: attrs.get(ORACLE, float("nan")),
            EPOCH: attrs.get(EPOCH, 0), "step": attrs.get("step", 0),
            "selected_step": attrs.get("selected_step", 0),
            "full_budget": attrs.get(EPOCH, 0) >= epochs,
            ATTR_RESUMED_FROM: attrs.get(ATTR_RESUMED_FROM, -1),
            ATTR_ORPHANED: bool(attrs.get(ATTR_ORPHANED, False)),
            "tune_experiment": attrs.get("tune_experiment", ""),
            "tune_trial_id": attrs.get("tune_trial_id", ""),
            "duration_s": (end - t.datetime_start).total_seconds()
            if end and t.datetime_start else float("nan"),
            **{p.key: t.params.get(p.key) for p in params},
        })
    return pd.DataFrame(rows)


def best_row(frame: pd.DataFrame) -> pd.Series | None:
    """Highest label-free score among trials that ran the whole budget (ASHA-stopped trials'
    scores come from fewer steps, and retraining would run all of them); earliest on ties."""
    done = frame[frame["finished"]]
    pool = done[done["full_budget"]] if done["full_budget"].any() else done
    if pool.empty:
        return None
    return pool.sort_values(["score", "number"], ascending=[False, True]).iloc[0]


def export_best(study, number: int, train_cfg: DictConfig, directory: Path) -> Path:
    """Write the best trial's full training config as ``experiment/best.yaml``."""
    cfg = apply_params(train_cfg, study.trials[number].params)
    cfg.name = f"{directory.name}_best"
    cfg.run_dir = str(directory / BEST_RUN_DIR)
    path = directory / BEST_GROUP / f"{BEST_OPTION}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# @package _global_\n# Best trial {number} of sweep {directory.name} (selected "
              f"by the label-free score). Retrain with:\n#   {retrain_command(directory)}\n")
    path.write_text(header + OmegaConf.to_yaml(cfg, resolve=True))
    return path


def retrain_command(directory: Path) -> str:
    return f"cdlm-train 'hydra.searchpath=[file://{directory}]' +{BEST_GROUP}={BEST_OPTION}"


def retrain_overrides(directory: Path) -> list[str]:
    """The same as :func:`retrain_command`, as overrides for compose()/run_experiment()."""
    return [f"hydra.searchpath=[file://{directory}]", f"+{BEST_GROUP}={BEST_OPTION}"]


def leaderboard(frame: pd.DataFrame, params: list[Param], cfg: DictConfig, directory: Path,
                best: pd.Series | None) -> str:
    s = cfg.sweep
    done = frame[frame["finished"]].sort_values(["score", "number"], ascending=[False, True])
    lines = [
        f"# Sweep `{s.study_name}`", "",
        f"{len(done)} finished trials of {s.num_samples} requested "
        f"({int((~done['full_budget']).sum())} stopped early by ASHA); sampler `{s.sampler}`, "
        f"scheduler `{s.scheduler}`, pair `{cfg.data.preset}`, {cfg.train.steps} steps.", "",
        f"Ranked by `{s.metric}`: the best mean source validation accuracy of the trial "
        "(label-free). `oracle target acc` is the target test accuracy of those same weights; it "
        "uses target labels and is shown for analysis only, never used to select.", "",
        "| rank | trial | score | oracle target acc | epochs | stopped early | "
        + " | ".join(p.key for p in params) + " |",
        "|" + "---|" * (6 + len(params)),
    ]
    for rank, (_, r) in enumerate(done.iterrows(), start=1):
        values = " | ".join(_fmt(r[p.key]) for p in params)
        lines.append(f"| {rank} | {r['number']} | {r['score']:.4f} | {r[ORACLE]:.4f} | "
                     f"{r[EPOCH]} | {'yes' if not r['full_budget'] else ''} | {values} |")
    if best is not None:
        lines += ["", f"Selected: trial {best['number']} (score {best['score']:.4f}, oracle "
                  f"target acc {best[ORACLE]:.4f}). Retrain it with:", "",
                  f"    {retrain_command(directory)}"]
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def export_results(study, params: list[Param], cfg: DictConfig, train_cfg: DictConfig,
                   directory: Path) -> dict[str, Any]:
    """Write every results file; return a summary for the CLI, benchmarks and tests."""
    frame = trials_frame(study, params, num_epochs(train_cfg.train))
    frame.to_parquet(directory / TRIALS_FILE, index=False)
    best = best_row(frame)
    summary: dict[str, Any] = {
        "study_name": cfg.sweep.study_name, "directory": str(directory),
        "requested": cfg.sweep.num_samples, "finished": int(frame["finished"].sum()),
        "failed": int((frame["state"] == "FAIL").sum()),
        "trials_file": str(directory / TRIALS_FILE),
        "leaderboard": str(directory / LEADERBOARD_FILE)}
    if best is not None:
        summary |= {"best_trial": int(best["number"]), "best_score": float(best["score"]),
                    "best_oracle_target_acc": float(best[ORACLE]),
                    "best_params": {p.key: _plain(best[p.key]) for p in params},
                    "best_config": str(export_best(study, int(best["number"]), train_cfg,
                                                   directory)),
                    "retrain_command": retrain_command(directory)}
    (directory / LEADERBOARD_FILE).write_text(leaderboard(frame, params, cfg, directory, best))
    importance, method = param_importance(frame, study, params, cfg.sweep.importance_min_trials,
                                          cfg.sweep.seed)
    summary["importance"] = {"method": method, **importance}
    summary["plots"] = [str(p) for p in (
        plot_importance(importance, method, directory / IMPORTANCE_PNG),
        plot_plane(frame, params, summary.get("best_trial"), directory / PLANE_PNG)) if p]
    (directory / SUMMARY_JSON).write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
