"""cdlm-eval: re-run the final evaluation of a saved checkpoint (accuracies, A-distance, KL, plots).

Usage:
    cdlm-eval runs/cdlm_x/checkpoints/step_0001500.pt
    cdlm-eval CKPT --out eval_dir --weights last data.root=/data/digits eval.plots=false

The config is the one saved in the checkpoint, with overrides applied on top as cdlm-train reads
them (e.g. a new ``data.root`` on another machine). To score the checkpoint on other domains:

    cdlm-eval CKPT data=mnist5k_to_mnistm_synth            # a preset's domains
    cdlm-eval CKPT data.domains.1.name=mnistm_synth        # one domain (counted from 0)
    cdlm-eval CKPT 'data.domains=[{name: mnist5k, labelled: true}, {name: mnistm_synth}]'

``data=<preset>`` takes the preset's domains (and name) only: image size, channels, data.root and
the caps stay the checkpoint's, because its weights were trained for that input (an RGB preset is
scored in grey by a grey model); the number of domains must stay the same. Other config groups
(``model=``, ``method=``, ...) cannot change: the model is the checkpoint's. docs/data.md has more.

``--weights best`` (default) evaluates the weights selected by the label-free score; ``last``
those of the checkpoint's step. Results are printed and written to ``<out>/eval.json``; ``--out``
defaults to the run directory (the parent of ``checkpoints/``), where the PNGs also go. Exit code
2: unreadable checkpoint or bad config.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from cdlm_dist.config import CONFIG_DIR, Config, ConfigError, validate
from cdlm_dist.overrides import (
    check_data_overrides,
    check_preset_label,
    explain_failed_override,
    invalid,
    load_preset,
)
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
    p.add_argument("overrides", nargs="*",
                   help="config overrides, e.g. data.root=/data or data=<preset>")
    return p


def config_from_checkpoint(state: dict[str, Any], overrides: list[str]) -> Config:
    """The typed config saved in ``state`` with ``overrides`` (read as cdlm-train reads them),
    validated; the domains may change, their number may not (the model has one decoder each)."""
    import yaml

    try:
        saved = OmegaConf.merge(OmegaConf.structured(Config),
                                OmegaConf.create(str(state["config_yaml"])))
    except (OmegaConfBaseException, yaml.YAMLError) as exc:
        raise CheckpointError(f"the checkpoint's saved config does not fit this version's "
                              f"schema: {exc}") from exc
    cfg = apply_overrides(saved, overrides)
    validate(cfg)
    if len(cfg.data.domains) != len(saved.data.domains):
        raise invalid(f"the checkpoint's model has {len(saved.data.domains)} domains, the "
                      f"overrides give {len(cfg.data.domains)}; choose a preset of "
                      f"{len(saved.data.domains)} domains or replace single ones, e.g. "
                      "data.domains.1.name=<domain>")
    check_preset_label(cfg, overrides)
    return cfg  # type: ignore[return-value]


def apply_overrides(saved: Any, overrides: list[str]) -> Any:
    """``saved`` with ``overrides`` applied as Hydra would: the ``data=<preset>`` choice first,
    then each ``key=value`` in order (a copy; ``saved`` is left as it is)."""
    cfg = copy.deepcopy(saved)
    parsed = check_data_overrides(overrides)
    groups = {p.name for p in CONFIG_DIR.iterdir() if p.is_dir()}
    keys = []
    for override in parsed:
        text, key = override.input_line, override.key_or_group
        if override.is_sweep_override() or override.is_delete():
            raise invalid(f"{text!r}: cdlm-eval takes one value a key and deletes none")
        if key == "data" and isinstance(override.value(), str):
            preset = load_preset(override.value())
            cfg.data.preset = preset.get("preset", override.value())
            OmegaConf.update(cfg, "data.domains", OmegaConf.to_container(preset.domains), merge=True)
        elif key in groups:
            raise invalid(f"{text!r}: the model and its training come from the checkpoint; of "
                          "the config groups only data=<preset> can change")
        else:
            keys.append(override)
    for override in keys:
        try:
            OmegaConf.update(cfg, override.key_or_group, override.value(), merge=True)
        except (OmegaConfBaseException, TypeError) as exc:
            message = explain_failed_override(override.input_line, exc) or _key_error(exc)
            raise invalid(message) from exc
    return cfg


def _key_error(exc: Exception) -> str:
    """One line for an OmegaConf refusal: an unknown key named in full, else its first line."""
    full_key = getattr(exc, "full_key", "")
    if isinstance(exc, (ConfigAttributeError, ConfigKeyError)) and full_key:
        return (f"unknown config key '{full_key}' (check the spelling; `cdlm-train --cfg` prints "
                "every key)")
    return str(getattr(exc, "msg", exc)).splitlines()[0]


def default_out_dir(checkpoint: Path) -> Path:
    """The run directory of ``<run_dir>/checkpoints/step_N.pt``; else the file's folder."""
    parent = checkpoint.resolve().parent
    return parent.parent if parent.name == CHECKPOINT_DIR else parent


def select_weights(state: dict[str, Any], which: str) -> tuple[dict[str, torch.Tensor], int, str]:
    """(state dict, its step, "best" | "last"); "best" falls back to "last" before any eval."""
    from cdlm_dist.training.selection import Selection

    best = Selection.from_checkpoint(state.get("best"))
    if which == "best" and best.state is not None:
        return best.state, best.step, "best"
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
