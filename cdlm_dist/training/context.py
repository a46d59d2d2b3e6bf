"""What the loop needs from whoever runs it: device, ranks, reductions, checkpoints, a live log.

The loop (:mod:`cdlm_dist.training.loop`) is written once against :class:`RunContext`. Every
runner builds the same class; they differ only in the :class:`CheckpointStore` they plug in:

- :class:`FileStore`: ``run_dir/checkpoints/step_*.pt`` (runner=local, torchrun, tests);
- :class:`cdlm_dist.runners.session.SessionStore`: Ray Train's or Ray Tune's checkpoints
  (runner=ray workers, and trials of a sweep).

Ranks come from ``torch.distributed`` when a process group is up (Ray Train, torchrun), so one
class serves one process and N. Every rank calls :meth:`report` at the same steps (Ray Train
requires it); only the main rank passes a state to persist.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

from cdlm_dist.config import TrainConfig
from cdlm_dist.training.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from cdlm_dist.training.memory import rss_mb

METRICS_LOG = "metrics.jsonl"  # the live log; the complete series also travels in checkpoints


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def set_threads(num_threads: int, fallback: float = 0) -> None:
    """torch's CPU threads: train.num_threads, else the process's CPU share (Ray workers and
    trials), else torch's default. The one place every runner sets them."""
    threads = num_threads or int(fallback)
    if threads > 0:
        torch.set_num_threads(threads)


def rank_cpus(local_rank: int, per_rank: int, allowed: list[int]) -> set[int]:
    """The CPUs of ``local_rank`` when each local rank takes ``per_rank`` of ``allowed`` in
    order; a clear error if the node has too few (two ranks must never share a pinned core)."""
    first = local_rank * per_rank
    if per_rank < 1 or first + per_rank > len(allowed):
        raise ValueError(
            f"runner.pin_cpus: local rank {local_rank} needs CPUs {first}-{first + per_rank - 1}"
            f" of this node's {len(allowed)} usable CPUs ({per_rank} per worker); use fewer "
            "workers per node, a smaller runner.cpus_per_worker, or runner.pin_cpus=false")
    return set(allowed[first:first + per_rank])


def pin_threads(cpus: set[int]) -> None:
    """Every thread of this process (torch's, gloo's, Ray's) onto ``cpus``. Linux only (a no-op
    elsewhere); threads started later inherit the setting."""
    if not hasattr(os, "sched_setaffinity"):
        return
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:  # the thread ended meanwhile
            pass


def usable_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity where the OS has one)."""
    return (os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity")
            else set(range(os.cpu_count() or 1)))


def pin_rank_cpus(local_rank: int, per_rank: int) -> set[int]:
    """runner.pin_cpus: this process's threads onto its own CPUs (the ones it may use, split
    over the node's local ranks in order); returns them."""
    cpus = rank_cpus(local_rank, per_rank, sorted(usable_cpus()))
    pin_threads(cpus)
    return cpus


def ddp_options(train: TrainConfig) -> dict[str, Any]:
    """DistributedDataParallel's keyword arguments from ``train.ddp_*``. Defaults are torch's
    own, so unset keys leave DDP as it was; an option the installed torch's DDP lacks fails
    here, by name, rather than being dropped."""
    from torch.nn.parallel import DistributedDataParallel

    accepted = inspect.signature(DistributedDataParallel.__init__).parameters
    # torch 2.13 renamed broadcast_buffers (which also skipped buffers at the initial sync)
    buffers = "forward_sync_buffers" if "forward_sync_buffers" in accepted else "broadcast_buffers"
    options: dict[str, Any] = {"gradient_as_bucket_view": train.ddp_gradient_as_bucket_view,
                               buffers: train.ddp_broadcast_buffers}
    if train.ddp_bucket_cap_mb > 0:
        options["bucket_cap_mb"] = train.ddp_bucket_cap_mb
    if train.ddp_batched_grad_copy:
        if "batched_grad_copy" not in accepted:
            raise ValueError(f"train.ddp_batched_grad_copy=true needs a torch whose DDP has "
                             f"batched_grad_copy (this is {torch.__version__})")
        options["batched_grad_copy"] = True
    return options


def ddp_backend(backend: str, device: torch.device) -> str:
    """runner.backend resolved: "auto" is nccl for CUDA devices and gloo otherwise."""
    if backend != "auto":
        return backend
    return "nccl" if device.type == "cuda" else "gloo"


class CheckpointStore(Protocol):
    """Where a run's loop states go and come back from."""

    def latest(self, device: torch.device) -> dict[str, Any] | None:
        """The newest state to resume from, or None for a fresh start."""

    def save(self, step: int, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        """Called by every rank at a checkpoint step; ``state`` is None except on rank 0."""


class FileStore:
    """Step checkpoints in a folder, the newest ``keep`` kept (0 keeps all)."""

    def __init__(self, directory: Path, keep: int = 2) -> None:
        self.directory = Path(directory)
        self.keep = keep

    def latest(self, device: torch.device) -> dict[str, Any] | None:
        found = list_checkpoints(self.directory)
        return load_checkpoint(found[-1], map_location=device) if found else None

    def save(self, step: int, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        if state is not None:
            save_checkpoint(state, self.directory / f"step_{step:07d}.pt")
            prune_checkpoints(self.directory, self.keep)


class RunContext:
    """One rank of a run: its device, its place among the ranks, and its checkpoint store."""

    def __init__(self, run_dir: Path, device: torch.device, keep_checkpoints: int = 2,
                 store: CheckpointStore | None = None, rank: int | None = None,
                 world_size: int | None = None, live_log: bool = True) -> None:
        """``store`` defaults to a :class:`FileStore` in ``run_dir/checkpoints``; ``rank`` and
        ``world_size`` to the process group's (0 and 1 without one). ``live_log=False`` keeps
        rank 0 from writing metrics.jsonl where the driver cannot see it (another node).
        ``start_rss_mb``: this process's RSS now, the base of its logged memory growth (a Ray
        worker makes its context before it loads data)."""
        self.start_rss_mb = rss_mb()
        self.run_dir = Path(run_dir)
        self.device = device
        self.store = store or FileStore(self.checkpoint_dir, keep_checkpoints)
        group = dist.is_available() and dist.is_initialized()
        self.rank = rank if rank is not None else dist.get_rank() if group else 0
        self.world_size = (world_size if world_size is not None
                           else dist.get_world_size() if group else 1)
        self.live_log = live_log

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def wrap_model(self, model: nn.Module, train: TrainConfig | None = None) -> nn.Module:
        """DDP across ranks, with ``train``'s ``ddp_*`` options (torch's defaults without it);
        the bare model on one rank (DDP would only add per-step cost)."""
        if self.world_size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device] if self.device.type == "cuda" else None
        options = ddp_options(train) if train is not None else {}
        return DistributedDataParallel(model, device_ids=ids, **options)

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return t
        out = t.clone()
        dist.all_reduce(out)
        return out

    def latest_state(self) -> dict[str, Any] | None:
        return self.store.latest(self.device)

    def report(self, step: int, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        """Persist ``state`` (main rank; None elsewhere) and report ``metrics`` at a checkpoint."""
        self.store.save(step, metrics, state)

    def log(self, row: dict[str, Any]) -> None:
        """Append one row to the live metrics.jsonl (main rank), for watching a run."""
        if self.is_main and self.live_log:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.run_dir / METRICS_LOG, "a") as f:
                f.write(json.dumps(row) + "\n")

    def restart_log(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite the live log from a resumed state's rows (drops lines logged after the
        checkpoint, before a crash: they are about to be redone)."""
        if self.is_main and self.live_log:
            write_log(self.run_dir / METRICS_LOG, rows)


def write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
