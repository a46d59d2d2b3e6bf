"""Checkpoints that load with ``torch.load(weights_only=True)``: tensors, numbers, strings,
lists and dicts only (the config travels as YAML text)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

CKPT_PATTERN = re.compile(r"step_(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message names the file."""


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write atomically (tmp file then rename) so a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt, truncated or not a torch file
        reason = str(exc).strip().splitlines()[0][:200]
        raise CheckpointError(f"cannot read checkpoint {path}: the file is corrupt, truncated or "
                              f"not a cdlm-dist checkpoint ({reason}). To resume training, delete "
                              "it and the run continues from the previous checkpoint.") from exc
    if not isinstance(state, dict) or "model" not in state or "config_yaml" not in state:
        raise CheckpointError(f"{path} is not a cdlm-dist checkpoint (no 'model'/'config_yaml')")
    return state


def list_checkpoints(directory: Path) -> list[Path]:
    """Step checkpoints in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := CKPT_PATTERN.search(p.name))]
    return [p for _, p in sorted(found)]


def prune_checkpoints(directory: Path, keep: int) -> None:
    for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
