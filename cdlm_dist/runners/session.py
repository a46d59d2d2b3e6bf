"""Checkpoints through a Ray session: Ray Train workers and Tune trials persist the same way.

``ray.train`` and ``ray.tune`` offer the same three calls (``get_checkpoint``, ``report``,
``Checkpoint.from_directory``), so :class:`SessionStore` is the loop's checkpoint store for both;
the loop's reported metrics (:func:`cdlm_dist.training.selection.progress_metrics`) are what Tune's
scheduler and searcher read, whether a trial reports itself or through Ray Train.
"""

from __future__ import annotations

import importlib
import tempfile
from pathlib import Path
from typing import Any

import torch

from cdlm_dist.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

STATE_FILE = "state.pt"  # the loop's state inside a Ray (Train or Tune) checkpoint directory


class SessionStore:
    """The loop's states as checkpoints of the current Ray Train or Tune session.

    ``resume_from``: a folder of a killed sweep driver's trial whose newest readable checkpoint
    this trial continues from when its own session has none (see cdlm_dist/tuning/search.py).
    """

    def __init__(self, api: str, resume_from: str | None = None) -> None:
        self.api = importlib.import_module(f"ray.{api}")  # "train" or "tune"
        self.resume_from = resume_from

    def latest(self, device: torch.device) -> dict[str, Any] | None:
        checkpoint = self.api.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                return load_checkpoint(Path(directory) / STATE_FILE, map_location=device)
        if self.resume_from:
            return latest_readable_state(Path(self.resume_from), device)
        return None

    def save(self, step: int, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        """Every rank reports (Ray Train's barrier); rank 0 alone attaches the checkpoint."""
        if state is None:
            self.api.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="cdlm_ckpt_") as directory:
            save_checkpoint(state, Path(directory) / STATE_FILE)
            self.api.report(metrics, checkpoint=self.api.Checkpoint.from_directory(directory))


def read_state(checkpoint: Any) -> dict[str, Any]:
    """The loop state inside a Ray checkpoint (e.g. a finished run's ``Result.checkpoint``)."""
    with checkpoint.as_directory() as directory:
        return load_checkpoint(Path(directory) / STATE_FILE)


def latest_readable_state(folder: Path, device: torch.device) -> dict[str, Any] | None:
    """The newest readable loop state among a folder's ``checkpoint_*`` directories.

    A checkpoint being copied when a driver was killed can be truncated; older ones are tried.
    """
    for path in sorted(Path(folder).glob(f"checkpoint_*/{STATE_FILE}"), reverse=True):
        try:
            return load_checkpoint(path, map_location=device)
        except CheckpointError:
            continue
    return None
