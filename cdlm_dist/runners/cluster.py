"""The one place that connects to Ray and checks what the cluster can host.

``runner.address`` is the one key that says which cluster: "local" starts a private instance in
this process (``ray.init(address="local")``; a bare ``ray.init()`` would join whatever cluster
was last started on this machine), anything else ("auto", "ray://head:10001", "head:6379")
joins one. Inside a Ray job or a test that already called ``ray.init``, the running instance is
used as it is. cdlm-train, cdlm-sweep and the benchmarks all come through here.
"""

from __future__ import annotations

import os
from typing import Any

from cdlm_dist.config import ConfigError

LOCAL_ADDRESS = "local"


def connect_ray(runner: Any, need_cpus: float = 0, dashboard: bool = False) -> None:
    """Start or join Ray as ``runner.address`` says.

    A private instance gets ``runner.num_cpus`` logical CPUs (0: the machine's, or ``need_cpus``
    if more: logical CPUs only gate scheduling, and one-CPU workers must fit even on 2 cores).
    ``dashboard``: every Ray Train run wants it: Ray Train's placement-group cleaner uses its
    state API (to free a stopped trial's workers, and it warns every second without it).
    """
    import ray

    if ray.is_initialized():
        return
    if runner.address == LOCAL_ADDRESS:
        cpus = runner.num_cpus or max(os.cpu_count() or 1, need_cpus)
        ray.init(address=LOCAL_ADDRESS, num_cpus=int(cpus), include_dashboard=dashboard)
    else:
        ray.init(address=runner.address)


def check_resources(runner: Any, resources: dict[str, float], driver_cpus: float = 0,
                    driver_gpus: float = 0) -> None:
    """Fail with the keys to change when the cluster cannot host one run.

    One run is ``runner.num_workers`` Ray Train workers (runner=ray), plus, for a sweep trial,
    the trial's own process (``driver_cpus``/``driver_gpus``: sweep.trial_cpus/_gpus).
    """
    train = runner.name == "ray"
    need_cpu = driver_cpus + (runner.num_workers * runner.cpus_per_worker if train else 0)
    need_gpu = driver_gpus + (runner.num_workers if train and runner.use_gpu else 0)
    have_cpu, have_gpu = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    parts = ([f"runner.num_workers={runner.num_workers} x runner.cpus_per_worker="
              f"{runner.cpus_per_worker}"] if train else []) + (
        [f"sweep.trial_cpus={driver_cpus:g}"] if driver_cpus else [])
    if need_cpu > have_cpu:
        raise ConfigError(
            f"{' + '.join(parts)} needs {need_cpu:g} CPUs but the Ray cluster (runner.address="
            f"{runner.address}) has {have_cpu:g}; lower them (or raise runner.num_cpus of a "
            "local instance)")
    if need_gpu > have_gpu:
        raise ConfigError(
            f"one run needs {need_gpu:g} GPUs (runner.use_gpu=true: one per worker; "
            f"sweep.trial_gpus) but the Ray cluster (runner.address={runner.address}) has "
            f"{have_gpu:g}; set runner.use_gpu=false or lower runner.num_workers")
