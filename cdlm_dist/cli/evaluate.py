"""cdlm-eval: re-run the final evaluation of a saved checkpoint (accuracies, A-distance, KL, plots).

Usage:
    cdlm-eval runs/cdlm_x/checkpoints/step_0001500.pt
    cdlm-eval CKPT --out eval_dir --weights last data.root=/data/digits eval.plots=false

The config is the one saved in the checkpoint, with any ``key=value`` overrides applied on top
(e.g. a new ``data.root`` on another machine). ``--weights best`` (default) evaluates the weights
selected by the label-free score; ``last`` those of the checkpoint's step. Results are printed and
written to ``<out>/eval.json``; ``--out`` defaults to the run directory (the parent of
``checkpoints/``), where the PNGs also go. Exit code 2: unreadable checkpoint or bad config.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cdlm_dist.config import Config, ConfigError, validate
from cdlm_dist.training.checkpoint import CheckpointError, load_checkpoint

EXIT_BAD_INPUT = 2
EVAL_FILE = "eval.json"
CHECKPOINT_DIR = "checkpoints"  # the folder a run directory keeps its checkpoints in


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cdlm-eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="a step_*.pt file written by cdlm-train")
    p.add_argument("--out", type=Path, default=None,
                   help="where eval.json and the PNGs go (default: the checkpoint's run dir)")
    p.add_argument("--weights", choices=("best", "last"), default="best",
                   help="best: selected by source validation accuracy; last: the step's weights")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. data.root=/data")
    return p


def config_from_checkpoint(state: dict[str, Any], overrides: list[str]) -> Config:
    """The typed config saved in ``state``, with dotlist ``overrides``, validated."""
    import yaml

    try:
        saved = OmegaConf.merge(OmegaConf.structured(Config),
                                OmegaConf.create(str(state["config_yaml"])))
    except (OmegaConfBaseException, yaml.YAMLError) as exc:
        raise CheckpointError(f"the checkpoint's saved config does not fit this version's "
                              f"schema: {exc}") from exc
    try:
        cfg = OmegaConf.merge(saved, OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc
    validate(cfg)
    return cfg  # type: ignore[return-value]


def default_out_dir(checkpoint: Path) -> Path:
    """The run directory of ``<run_dir>/checkpoints/step_N.pt``; else the file's folder."""
    parent = checkpoint.resolve().parent
    return parent.parent if parent.name == CHECKPOINT_DIR else parent


def select_weights(state: dict[str, Any], which: str) -> tuple[dict[str, torch.Tensor], int, str]:
    """(state dict, its step, "best" | "last"); "best" falls back to "last" before any eval."""
    best = state.get("best")
    if which == "best" and best is not None:
        return best["model"], int(best["step"]), "best"
    return state["model"], int(state.get("step", 0)), "last"


def evaluate_checkpoint(checkpoint: Path, out: Path | None, which: str,
                        overrides: list[str]) -> dict[str, Any]:
    """Load, rebuild, evaluate; returns what eval.json holds (and writes it)."""
    from cdlm_dist.data import load_domains
    from cdlm_dist.evaluation.metrics import final_evaluation
    from cdlm_dist.model import build_model
    from cdlm_dist.training.context import resolve_device

    state = load_checkpoint(checkpoint)
    cfg = config_from_checkpoint(state, overrides)
    weights, step, used = select_weights(state, which)
    domains = load_domains(cfg.data, cfg.train.seed)
    model = build_model(cfg, len(domains), domains[0].num_classes)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(f"{checkpoint}: weights do not fit the model of its config "
                              f"(did an override change model.*?): {exc}") from exc
    model.to(resolve_device(cfg.train.device))
    out_dir = Path(out) if out is not None else default_out_dir(checkpoint)
    metrics = final_evaluation(model, domains, cfg, out_dir)
    result = {"checkpoint": str(checkpoint), "weights": used, "weights_step": step,
              "overrides": overrides,
              # NaN (no target domain) is not JSON: written as null
              "metrics": {k: None if isinstance(v, float) and math.isnan(v) else v
                          for k, v in metrics.items()}}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / EVAL_FILE).write_text(json.dumps(result, indent=2))
    return result


def format_table(result: dict[str, Any]) -> str:
    """Aligned ``key  value`` lines, numbers to 4 decimals."""
    rows = [("weights", f"{result['weights']} (step {result['weights_step']})")]
    rows += [(k, f"{v:.4f}" if isinstance(v, float) else str(v))
             for k, v in result["metrics"].items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    try:
        result = evaluate_checkpoint(args.checkpoint, args.out, args.weights, args.overrides)
    except (ConfigError, CheckpointError) as exc:
        print(f"cdlm-eval: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    out_dir = args.out if args.out is not None else default_out_dir(args.checkpoint)
    print(f"evaluation of {args.checkpoint}\n{format_table(result)}\n"
          f"written: {out_dir / EVAL_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
