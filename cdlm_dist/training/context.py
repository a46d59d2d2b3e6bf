"""What the loop needs from whoever runs it: devices, ranks, reductions, checkpoints, logging.

The loop (:mod:`cdlm_dist.training.loop`) is written once against :class:`RunContext`; the local
runner and the Ray Train runner each provide one. Every rank calls :meth:`report` at the same
steps (Ray Train requires it); only the main rank's state is persisted.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from cdlm_dist.training.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class RunContext:
    """Single-process context: the local runner's, and the base of the Ray one."""

    rank: int = 0
    world_size: int = 1

    def __init__(self, run_dir: Path, device: torch.device, keep_checkpoints: int = 2) -> None:
        self.run_dir = Path(run_dir)
        self.device = device
        self.keep = keep_checkpoints

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """DDP for distributed contexts; the model itself here."""
        return model

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def latest_state(self) -> dict[str, Any] | None:
        found = list_checkpoints(self.checkpoint_dir)
        return load_checkpoint(found[-1], map_location=self.device) if found else None

    def report(self, step: int, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        """Persist ``state`` (main rank only; None elsewhere) at a checkpoint step."""
        if state is not None:
            save_checkpoint(state, self.checkpoint_dir / f"step_{step:07d}.pt")
            prune_checkpoints(self.checkpoint_dir, self.keep)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Append one JSON line of metrics (main rank)."""
        if not self.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "metrics.jsonl", "a") as f:  # wall_time: per-step timing
            f.write(json.dumps({"step": step, "wall_time": time.time(), **metrics}) + "\n")

    def truncate_log(self, step: int) -> None:
        """Drop metric lines written after ``step`` (logged before a crash, now to be redone)."""
        path = self.run_dir / "metrics.jsonl"
        if not self.is_main or not path.exists():
            return
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        path.write_text("".join(ln + "\n" for ln in lines if json.loads(ln)["step"] <= step))


def ddp_backend(backend: str, device: torch.device) -> str:
    """runner.backend resolved: "auto" is nccl for CUDA devices and gloo otherwise."""
    if backend != "auto":
        return backend
    return "nccl" if device.type == "cuda" else "gloo"


class DistributedContext(RunContext):
    """A rank of an initialised ``torch.distributed`` process group (torchrun, Ray Train, tests).

    Checkpoints go to ``run_dir/checkpoints`` from rank 0 and are read by every rank, so
    ``run_dir`` must be shared by all ranks (one machine, or a shared filesystem).
    """

    def __init__(self, run_dir: Path, device: torch.device, keep_checkpoints: int = 2,
                 rank: int | None = None, world_size: int | None = None) -> None:
        """``rank``/``world_size`` default to the process group's (a launcher may know them)."""
        super().__init__(run_dir, device, keep_checkpoints)
        self.rank = dist.get_rank() if rank is None else rank
        self.world_size = dist.get_world_size() if world_size is None else world_size

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """DDP across ranks; the bare model on one rank (DDP would only add per-step cost)."""
        if self.world_size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return t
        out = t.clone()
        dist.all_reduce(out)
        return out
