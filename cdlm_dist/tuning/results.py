"""A sweep's results, read from the study (so every driver run of a resumed sweep is included).

Files in the sweep directory:
- ``trials.parquet``: one row per Optuna trial (any state): score, oracle target accuracy,
  epochs reached, parameters, and the Tune trial that ran it. A driver killed mid-sweep leaves
  its running trials behind; the next run marks them FAIL and reruns their parameters. Their rows
  stay, with ``orphaned_by_driver_kill`` true and ``note`` naming the trial that reran them
  (``resumed_from_trial`` of that trial points back); they never count as finished.
- ``leaderboard.md``: finished trials by label-free score, and the command to retrain the best.
- ``experiment/best.yaml``: the best trial's complete training config as a Hydra config, with
  the settings the trial took from its machine pinned (``train.num_threads``). Run in the sweep
  directory, ``cdlm-train 'hydra.searchpath=[file://.]' +experiment=best`` retrains it as is
  into ``best_run/`` (every key is set, so it does not depend on the defaults cdlm-train would
  otherwise compose).
- ``importance.png`` and ``objective_plane.png`` (see :mod:`cdlm_dist.tuning.plots`).
- ``summary.json``: counts, the selected trial and the files above.

Paths in these files are relative to the sweep directory, so they stay true wherever the
directory is copied (``cdlm-submit fetch`` brings a cluster sweep's back from the head).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from cdlm_dist.evaluation.validators import describe
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
RETRAIN_COMMAND = f"cdlm-train 'hydra.searchpath=[file://.]' +{BEST_GROUP}={BEST_OPTION}"


def trials_frame(study, params: list[Param], epochs: int) -> pd.DataFrame:
    """Every trial of the study as a row; ``finished`` ones count towards num_samples."""
    trials = study.get_trials(deepcopy=False)
    reruns = {t.user_attrs[ATTR_RESUMED_FROM]: t.number for t in trials
              if ATTR_RESUMED_FROM in t.user_attrs}
    rows = []
    for t in trials:
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
            "note": orphan_note(t.number, reruns) if attrs.get(ATTR_ORPHANED) else "",
            "tune_experiment": attrs.get("tune_experiment", ""),
            "tune_trial_id": attrs.get("tune_trial_id", ""),
            "duration_s": (end - t.datetime_start).total_seconds()
            if end and t.datetime_start else float("nan"),
            **{p.key: t.params.get(p.key) for p in params},
        })
    return pd.DataFrame(rows)


def orphan_note(number: int, reruns: dict[int, int]) -> str:
    """Why an orphan's FAIL row is there: it did not fail, its driver was killed."""
    rerun = reruns.get(number)
    return ("orphaned: its driver was killed while it ran; "
            + (f"rerun as trial {rerun}" if rerun is not None else "requeued, not rerun yet"))


def best_row(frame: pd.DataFrame) -> pd.Series | None:
    """Highest label-free score among trials that ran the whole budget (ASHA-stopped trials'
    scores come from fewer steps, and retraining would run all of them); earliest on ties."""
    done = frame[frame["finished"]]
    pool = done[done["full_budget"]] if done["full_budget"].any() else done
    if pool.empty:
        return None
    return pool.sort_values(["score", "number"], ascending=[False, True]).iloc[0]


def export_best(study, number: int, cfg: DictConfig, train_cfg: DictConfig,
                directory: Path) -> Path:
    """Write the best trial's full training config as ``experiment/best.yaml``."""
    best = apply_params(train_cfg, study.trials[number].params | trial_settings(cfg, train_cfg))
    best.name = f"{directory.name}_best"
    best.run_dir = BEST_RUN_DIR  # relative: the retrain command runs in the sweep directory
    path = directory / BEST_GROUP / f"{BEST_OPTION}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# @package _global_\n# Best trial {number} of sweep {directory.name} (selected "
              f"by the label-free score). Retrain it, in this sweep's directory, with:\n"
              f"#   {RETRAIN_COMMAND}\n")
    path.write_text(header + OmegaConf.to_yaml(best, resolve=True))
    return path


def trial_settings(cfg: DictConfig, train_cfg: DictConfig) -> dict[str, Any]:
    """What a trial's result depends on that its config left to the machine, as the trial
    set it (tuning/trainable.py run_trial; runners/ray_train.py train_worker for runner=ray):
    torch's thread count changes the float summation order, so a retrain with another count
    scores differently."""
    threads = train_cfg.train.num_threads or (
        train_cfg.runner.cpus_per_worker if train_cfg.runner.name == "ray"
        else max(1, int(cfg.sweep.trial_cpus)))
    return {"train.num_threads": int(threads)}


def retrain_overrides(directory: Path) -> list[str]:
    """:data:`RETRAIN_COMMAND` from any working directory, as overrides for compose() or
    run_experiment(): the sweep directory by its path, and the run into its ``best_run``."""
    return [f"hydra.searchpath=[file://{directory}]", f"+{BEST_GROUP}={BEST_OPTION}",
            f"run_dir={directory / BEST_RUN_DIR}"]


def leaderboard(frame: pd.DataFrame, params: list[Param], cfg: DictConfig,
                best: pd.Series | None) -> str:
    s = cfg.sweep
    done = frame[frame["finished"]].sort_values(["score", "number"], ascending=[False, True])
    lines = [
        f"# Sweep `{s.study_name}`", "",
        f"{len(done)} finished trials of {s.num_samples} requested "
        f"({int((~done['full_budget']).sum())} stopped early by ASHA); sampler `{s.sampler}`, "
        f"scheduler `{s.scheduler}`, pair `{cfg.data.preset}`, {cfg.train.steps} steps.", "",
        f"Ranked by `{s.metric}`: the trial's best `{cfg.train.select_by}` "
        f"({describe(cfg.train.select_by)}). `oracle target acc` is the target test accuracy of those same weights; it "
        "uses target labels and is shown for analysis only, never used to select.", "",
        "| rank | trial | score | oracle target acc | epochs | stopped early | "
        + " | ".join(p.key for p in params) + " |",
        "|" + "---|" * (6 + len(params)),
    ]
    for rank, (_, r) in enumerate(done.iterrows(), start=1):
        values = " | ".join(_fmt(r[p.key]) for p in params)
        lines.append(f"| {rank} | {r['number']} | {r['score']:.4f} | {r[ORACLE]:.4f} | "
                     f"{r[EPOCH]} | {'yes' if not r['full_budget'] else ''} | {values} |")
    orphans = frame[frame[ATTR_ORPHANED]]
    if not orphans.empty:
        lines += ["", f"{len(orphans)} trial(s) ({', '.join(map(str, orphans['number']))}) were "
                  "running when a driver was killed: FAIL rows in trials.parquet whose `note` "
                  "names the trial that reran them."]
    if best is not None:
        lines += ["", f"Selected: trial {best['number']} (score {best['score']:.4f}, oracle "
                  f"target acc {best[ORACLE]:.4f}). Retrain it, in this directory, with:", "",
                  f"    {RETRAIN_COMMAND}"]
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
                    "score_name": train_cfg.train.select_by,
                    "best_oracle_target_acc": float(best[ORACLE]),
                    "best_params": {p.key: _plain(best[p.key]) for p in params},
                    "best_config": str(export_best(study, int(best["number"]), cfg, train_cfg,
                                                   directory)),
                    "retrain_command": RETRAIN_COMMAND}
    (directory / LEADERBOARD_FILE).write_text(leaderboard(frame, params, cfg, best))
    importance, method = param_importance(frame, study, params, cfg.sweep.importance_min_trials,
                                          cfg.sweep.seed)
    summary["importance"] = {"method": method, **importance}
    summary["plots"] = [str(p) for p in (
        plot_importance(importance, method, directory / IMPORTANCE_PNG),
        plot_plane(frame, params, summary.get("best_trial"), directory / PLANE_PNG,
                   describe(train_cfg.train.select_by))) if p]
    (directory / SUMMARY_JSON).write_text(
        json.dumps(relative_paths(summary, directory), indent=2, default=str))
    return summary


def relative_paths(value: Any, directory: Path) -> Any:
    """``value`` with every path inside ``directory`` written relative to it (the returned
    summary keeps absolute ones for the CLI on this machine; the files travel)."""
    if isinstance(value, dict):
        return {k: relative_paths(v, directory) for k, v in value.items()}
    if isinstance(value, list):
        return [relative_paths(v, directory) for v in value]
    if isinstance(value, str) and (value == str(directory)
                                   or value.startswith(f"{directory}{os.sep}")):
        return os.path.relpath(value, directory)
    return value


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
