"""Run the one training loop on Ray Train workers (``TorchTrainer``, Train V2 API).

The runner only wires :func:`cdlm_dist.training.loop.fit` to Ray: :class:`RayTrainContext` gives
the loop its rank, device, DDP wrapper, reductions and checkpoints; :func:`run_ray` checks the
cluster can host the workers, starts the trainer and rebuilds a :class:`TrainResult` from the
final checkpoint.

Where things live:
- checkpoints: ``<runner.storage_path>/<name>/checkpoint_*`` (storage_path "" = ``<run_dir>/ray``;
  any pyarrow URI such as ``s3://bucket/prefix``). Ray restores its checkpoint list from there,
  so starting the same run again (same name and storage path) resumes from the latest one.
- data: every worker loads the domains itself (embedded ones are built deterministically;
  file-backed ones read ``data.root``, which must exist on every node).
- metrics.jsonl and the fault-injection marker: rank 0 writes them under the driver's run_dir
  path. On one machine (or with run_dir on a shared filesystem) that is the driver's folder; on
  another node it is the same path on that node (a warning says so); the evaluation history
  travels in the checkpoints either way.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from cdlm_dist.config import Config, ConfigError
from cdlm_dist.data.domains import DomainData, load_domains
from cdlm_dist.model.cdlm import build_model
from cdlm_dist.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from cdlm_dist.training.context import DistributedContext, ddp_backend
from cdlm_dist.training.loop import TrainResult, fit

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"  # the loop's checkpoint dict inside a Ray checkpoint directory
RAY_SUBDIR = "ray"  # runner.storage_path "" means <run_dir>/ray
LOCAL_ADDRESS = "local"


class RayRunError(RuntimeError):
    """Ray Train gave up (failures beyond runner.max_failures); the message says how to resume."""


# ---- checks that run before anything starts ----------------------------------------------------
def resolve_backend(runner: Any) -> str:
    """runner.backend, with "auto" = nccl for GPU workers and gloo for CPU workers."""
    backend = ddp_backend(runner.backend, torch.device("cuda" if runner.use_gpu else "cpu"))
    if backend == "nccl" and not runner.use_gpu:
        raise ConfigError("runner.backend=nccl needs runner.use_gpu=true (nccl is GPU only); "
                          "use runner.backend=gloo or auto for CPU workers")
    return backend


def resolve_storage(runner: Any, run_dir: Path) -> str:
    """runner.storage_path as Ray needs it: a URI unchanged, a local path absolute."""
    path = runner.storage_path or str(Path(run_dir) / RAY_SUBDIR)
    return path if "://" in path else str(Path(path).expanduser().resolve())


def check_resources(runner: Any, resources: dict[str, float]) -> None:
    """Fail with the keys to change when the cluster cannot host the requested workers."""
    need_cpu = runner.num_workers * runner.cpus_per_worker
    have_cpu = resources.get("CPU", 0.0)
    if need_cpu > have_cpu:
        raise ConfigError(
            f"runner.num_workers={runner.num_workers} x runner.cpus_per_worker="
            f"{runner.cpus_per_worker} needs {need_cpu} CPUs but the Ray cluster "
            f"(runner.address={runner.address}) has {have_cpu:g}; lower runner.num_workers or "
            "runner.cpus_per_worker")
    have_gpu = resources.get("GPU", 0.0)
    if runner.use_gpu and runner.num_workers > have_gpu:
        raise ConfigError(
            f"runner.use_gpu=true needs one GPU per worker (runner.num_workers="
            f"{runner.num_workers}) but the Ray cluster (runner.address={runner.address}) has "
            f"{have_gpu:g}; set runner.use_gpu=false or lower runner.num_workers")


def connect(runner: Any) -> None:
    """Start or join Ray: "local" reuses a running local instance or starts one with enough CPUs
    for the workers; anything else ("auto", "ray://host:10001", "host:6379") joins a cluster."""
    import ray

    if ray.is_initialized():
        return
    if runner.address == LOCAL_ADDRESS:
        need = runner.num_workers * runner.cpus_per_worker
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, need), include_dashboard=False)
    else:
        ray.init(address=runner.address)


# ---- the worker side --------------------------------------------------------------------------
class RayTrainContext(DistributedContext):
    """The loop's context on a Ray Train worker: ranks from Ray, checkpoints through Ray."""

    def __init__(self, run_dir: Path, keep_checkpoints: int, use_gpu: bool,
                 driver_node: str | None = None) -> None:
        import ray.train
        import ray.train.torch

        device = ray.train.torch.get_device() if use_gpu else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        ctx = ray.train.get_context()
        super().__init__(run_dir, device, keep_checkpoints, rank=ctx.get_world_rank(),
                         world_size=ctx.get_world_size())
        if self.is_main and driver_node and driver_node != _node_id():
            log.warning("rank 0 runs on another node than the driver: metrics.jsonl goes to %s "
                        "on that node (put run_dir on a shared filesystem to see it)", run_dir)

    def latest_state(self) -> dict[str, Any] | None:
        """The latest checkpoint Ray restored (after a failure, or a restart of the same run)."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as directory:
            return load_checkpoint(Path(directory) / STATE_FILE, map_location=self.device)

    def report(self, step: int, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        """Every rank reports (Ray's barrier); rank 0 alone attaches the checkpoint."""
        import ray.train

        metrics = {**{k: v for k, v in metrics.items() if k != "step"}, "step": step}
        if state is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="cdlm_ckpt_") as directory:
            save_checkpoint(state, Path(directory) / STATE_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def train_worker(config: dict[str, Any]) -> None:
    """Body of each Ray Train worker: rebuild the typed config, load data, run the loop."""
    cfg = OmegaConf.merge(OmegaConf.structured(Config), config["cfg"])
    torch.set_num_threads(cfg.train.num_threads or cfg.runner.cpus_per_worker)
    domains = load_domains(cfg.data, cfg.train.seed)
    ctx = RayTrainContext(Path(config["run_dir"]), cfg.train.keep_checkpoints,
                          cfg.runner.use_gpu, config.get("driver_node"))
    fit(cfg, domains, ctx, progress=cfg.train.progress)


# ---- the driver side --------------------------------------------------------------------------
def run_ray(cfg: Config, domains: list[DomainData], run_dir: Path,
            callbacks: list[Any] | None = None) -> TrainResult:
    """Train on ``runner.num_workers`` Ray Train workers; resumes a run of the same name.

    ``callbacks``: Ray Train V2 ``UserCallback``s (e.g. a sweep forwarding reports to Tune).
    """
    import ray
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        RunConfig,
        ScalingConfig,
        TrainingFailedError,
    )
    from ray.train.torch import TorchConfig, TorchTrainer

    runner = cfg.runner
    run_dir = Path(run_dir).expanduser().resolve()
    backend = resolve_backend(runner)
    connect(runner)
    check_resources(runner, ray.cluster_resources())
    storage = resolve_storage(runner, run_dir)
    resources = {"CPU": runner.cpus_per_worker} | ({"GPU": 1} if runner.use_gpu else {})
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"cfg": OmegaConf.to_container(cfg, resolve=True),
                           "run_dir": str(run_dir), "driver_node": _node_id()},
        torch_config=TorchConfig(backend=backend),
        scaling_config=ScalingConfig(num_workers=runner.num_workers, use_gpu=runner.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=cfg.name, storage_path=storage, callbacks=callbacks,
            failure_config=FailureConfig(max_failures=runner.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints or None)),
    )
    try:
        result = trainer.fit()
    except TrainingFailedError as exc:
        raise RayRunError(
            f"Ray Train run {cfg.name!r} failed after runner.max_failures={runner.max_failures} "
            f"retries: {exc}\nStart the same command again to resume from the latest checkpoint "
            f"in {storage}/{cfg.name}") from exc
    if result.checkpoint is None:
        raise CheckpointError(f"Ray Train run {cfg.name!r} finished without a checkpoint in "
                              f"{storage}/{cfg.name}")
    return result_from_checkpoint(cfg, domains, result.checkpoint)


def result_from_checkpoint(cfg: Config, domains: list[DomainData], checkpoint: Any
                           ) -> TrainResult:
    """The driver's TrainResult: final weights, history and the best label-free selection."""
    with checkpoint.as_directory() as directory:
        state = load_checkpoint(Path(directory) / STATE_FILE)
    model = build_model(cfg, len(domains), domains[0].num_classes)
    model.load_state_dict(state["model"])
    best = state["best"]
    return TrainResult(model=model, selected_state=best["model"] if best else state["model"],
                       history=list(state["history"]), step=state["step"])

