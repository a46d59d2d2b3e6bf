"""Run the one training loop on Ray Train workers (``TorchTrainer``, Train V2 API).

The runner only wires :func:`cdlm_dist.training.loop.fit` to Ray: each worker builds the same
:class:`~cdlm_dist.training.context.RunContext` as a local run, with its rank from the process
group Ray Train set up and a :class:`~cdlm_dist.runners.session.SessionStore` for checkpoints;
:func:`run_ray` checks the cluster can host the workers, starts the trainer and rebuilds the
:class:`TrainResult` from the final checkpoint.

Where things live:
- checkpoints: ``<runner.storage_path>/<name>/checkpoint_*/state.pt`` (storage_path "" =
  ``<run_dir>/ray``; any pyarrow URI such as ``s3://bucket/prefix``). Ray restores its checkpoint
  list from there, so starting the same run again (same name and storage path) resumes from the
  latest one.
- data: every worker loads the domains itself (embedded ones are built deterministically;
  file-backed ones read ``data.root``, which must exist on every node). With
  ``data.loader=ray_data`` the train splits come instead from one Ray Data pipeline per domain
  (``datasets=``), each worker streaming its shard (:mod:`cdlm_dist.data.ray_stream`).
- results: the final checkpoint carries the weights, the selection, the evaluation history and
  every logged row, and Ray moves it to the driver through the storage path. So the driver writes
  a complete run directory whatever node rank 0 ran on; rank 0 mirrors metrics.jsonl live only
  when it shares the driver's node.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from cdlm_dist.config import Config, ConfigError
from cdlm_dist.data.domains import DomainData, load_domains
from cdlm_dist.runners.cluster import check_resources, connect_ray
from cdlm_dist.runners.session import SessionStore, read_state
from cdlm_dist.training.checkpoint import CheckpointError
from cdlm_dist.training.context import RunContext, ddp_backend, pin_rank_cpus, set_threads
from cdlm_dist.training.loop import TrainResult, fit

log = logging.getLogger(__name__)

RAY_SUBDIR = "ray"  # runner.storage_path "" means <run_dir>/ray


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


def preflight(cfg: Config) -> str:
    """Check the backend, connect to Ray and check the cluster can host the workers; returns
    the DDP backend. Runs before anything is written (and again in :func:`run_ray`: cheap)."""
    import ray

    runner = cfg.runner
    backend = resolve_backend(runner)
    # the dashboard serves the state API that Ray Train's placement-group cleaner polls every
    # second; without it a local run prints a warning per second ("State API may be unavailable")
    connect_ray(runner, need_cpus=runner.num_workers * runner.cpus_per_worker, dashboard=True)
    check_resources(runner, ray.cluster_resources())
    return backend


# ---- the worker side --------------------------------------------------------------------------
def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def train_worker(config: dict[str, Any]) -> None:
    """Body of each Ray Train worker: rebuild the typed config, load data, run the loop."""
    import ray.train.torch

    cfg = OmegaConf.merge(OmegaConf.structured(Config), config["cfg"])
    set_threads(cfg.train.num_threads, cfg.runner.cpus_per_worker)
    device = ray.train.torch.get_device() if cfg.runner.use_gpu else torch.device("cpu")
    if cfg.runner.pin_cpus and device.type == "cpu":
        cpus = pin_rank_cpus(ray.train.get_context().get_local_rank(), cfg.runner.cpus_per_worker)
        log.info("worker pinned to CPUs %s (runner.pin_cpus)", sorted(cpus))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    on_driver_node = config.get("driver_node") in (None, _node_id())
    # made before any data loads: its start RSS is the base of the worker's logged growth
    ctx = RunContext(Path(config["run_dir"]), device, store=SessionStore("train"),
                     live_log=on_driver_node)
    domains = load_domains(cfg.data, cfg.train.seed)
    if ctx.is_main and not on_driver_node:
        log.info("rank 0 runs on another node than the driver: the driver writes metrics.jsonl "
                 "from the final checkpoint")
    stream = None  # data.loader=memory: the loop draws from the domains it was given
    if cfg.data.loader == "ray_data":
        from cdlm_dist.data.ray_stream import worker_stream

        stream = worker_stream(cfg, ctx.rank, ctx.world_size)
    fit(cfg, domains, ctx, progress=cfg.train.progress, stream=stream)


# ---- the driver side --------------------------------------------------------------------------
def run_ray(cfg: Config, domains: list[DomainData], run_dir: Path, trial: Any = None
            ) -> TrainResult:
    """Train on ``runner.num_workers`` Ray Train workers; resumes a run of the same name.

    ``trial`` (a :class:`cdlm_dist.runners.TuneTrial`): the run is a sweep trial, and rank 0's
    reports go on to Tune through Ray's own ``TuneReportCallback`` (the loop already reports the
    metrics Tune's scheduler and searcher read).
    """
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
    backend = preflight(cfg)
    storage = resolve_storage(runner, run_dir)
    resources = {"CPU": runner.cpus_per_worker} | ({"GPU": 1} if runner.use_gpu else {})
    callbacks = []
    if trial is not None:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    streamed = {}
    if cfg.data.loader == "ray_data":  # each worker gets its shard of every domain's pipeline
        from cdlm_dist.data.ray_stream import build_datasets, ingest_options

        streamed = {"datasets": build_datasets(cfg), "dataset_config": ingest_options(cfg.data)}
    trainer = TorchTrainer(
        train_worker,
        **streamed,
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
        # the worker's error is the last line of Ray's snippet (the first is a generic header)
        reason = ([ln.strip() for ln in str(exc).splitlines() if ln.strip()]
                  or [type(exc).__name__])[-1]
        raise RayRunError(
            f"Ray Train run {cfg.name!r} failed after runner.max_failures={runner.max_failures} "
            f"retries ({reason}); start the same command again to resume from the latest "
            f"checkpoint in {storage}/{cfg.name}") from exc
    if result.checkpoint is None:
        raise CheckpointError(f"Ray Train run {cfg.name!r} finished without a checkpoint in "
                              f"{storage}/{cfg.name}")
    return TrainResult.from_state(read_state(result.checkpoint))
