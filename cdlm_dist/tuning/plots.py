"""Plots of a sweep: which parameters mattered, and the score over the l_adv x l_con plane."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from cdlm_dist.tuning.space import Param

PLANE_AXES = ("loss.l_adv", "loss.l_con")
FIG_SIZE = (6.0, 4.5)
DPI = 120
POINT_SIZE, STAR_SIZE = 60, 300  # scatter marker areas (points^2): trials, the selected one


def param_importance(frame: pd.DataFrame, study, params: list[Param], min_trials: int,
                     seed: int) -> tuple[dict[str, float], str]:
    """Importance of each parameter for the label-free score, and the method used.

    fANOVA (Optuna's random-forest variance decomposition) needs enough trials to fit a forest;
    with fewer than ``min_trials`` finished trials, or if it fails (constant scores), it falls
    back to |Spearman correlation| of the (log-scaled) value with the score, or the correlation
    ratio for a categorical parameter: crude, but honest about what so few points can say.
    """
    finished = frame[frame["finished"]]
    if len(finished) >= min_trials and finished["score"].nunique() > 1:
        try:
            import optuna

            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
            found = optuna.importance.get_param_importances(
                study, evaluator=evaluator, params=[p.key for p in params])
            return {k: float(v) for k, v in found.items()}, "fANOVA"
        except (RuntimeError, ValueError):
            pass
    return {p.key: _association(finished, p) for p in params}, "|Spearman rho| (few trials)"


def _association(frame: pd.DataFrame, p: Param) -> float:
    if len(frame) < 2 or frame["score"].nunique() < 2:
        return 0.0
    score = frame["score"].astype(float)
    if p.type == "categorical":  # correlation ratio: share of score variance between groups
        groups = frame.groupby(frame[p.key].astype(str))["score"]
        between = float((groups.count() * (groups.mean() - score.mean()) ** 2).sum())
        total = float(((score - score.mean()) ** 2).sum())
        return math.sqrt(between / total) if total > 0 else 0.0
    values = frame[p.key].astype(float)
    values = np.log(values) if p.log else values
    rho = values.rank().corr(score.rank())
    return 0.0 if pd.isna(rho) else abs(float(rho))


def plot_importance(importance: dict[str, float], method: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(importance, key=importance.get)
    fig, ax = plt.subplots(figsize=FIG_SIZE)
    ax.barh(keys, [importance[k] for k in keys], color="tab:blue")
    ax.set_xlabel(f"importance for the label-free score ({method})")
    ax.set_title("parameter importance")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_plane(frame: pd.DataFrame, params: list[Param], best_number: int | None,
               path: Path, score_label: str) -> Path | None:
    """Score of each trial over l_adv x l_con (log axes when searched log-uniformly); hollow
    markers are trials ASHA stopped early, the star the selected best. None if not searched."""
    by_key = {p.key: p for p in params}
    if not all(k in by_key for k in PLANE_AXES):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = frame[frame["finished"]]
    x_key, y_key = PLANE_AXES
    fig, ax = plt.subplots(figsize=FIG_SIZE)
    full, early = done[done["full_budget"]], done[~done["full_budget"]]
    lo, hi = (done["score"].min(), done["score"].max()) if len(done) else (0.0, 1.0)
    points = ax.scatter(full[x_key], full[y_key], c=full["score"], cmap="viridis",
                        vmin=lo, vmax=hi, s=POINT_SIZE, edgecolors="k")
    if len(early):
        ax.scatter(early[x_key], early[y_key], facecolors="none", edgecolors="grey",
                   s=POINT_SIZE, label="stopped early (ASHA)")
    if best_number is not None:
        best = done[done["number"] == best_number]
        ax.scatter(best[x_key], best[y_key], marker="*", s=STAR_SIZE, c="red", label="selected")
    for p, set_scale, set_lim in ((by_key[x_key], ax.set_xscale, ax.set_xlim),
                                  (by_key[y_key], ax.set_yscale, ax.set_ylim)):
        if p.log:
            set_scale("log")
        set_lim(p.low, p.high)  # the whole searched range, so coverage shows
    ax.set_xlabel(x_key)
    ax.set_ylabel(y_key)
    fig.colorbar(points, ax=ax, label=f"score ({score_label})")
    if len(early) or best_number is not None:
        ax.legend(loc="best", fontsize="small")
    ax.set_title("objective over the adversarial x consistency weights")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
