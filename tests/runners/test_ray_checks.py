"""The Ray runner's checks that run before any worker starts (no Ray instance needed)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from cdlm_dist.config import ConfigError, RunnerConfig
from cdlm_dist.runners.cluster import check_resources
from cdlm_dist.runners.ray_train import resolve_backend, resolve_storage


def _runner(**kw) -> RunnerConfig:
    return RunnerConfig(name="ray", **kw)


def test_more_cpus_than_the_cluster_has_names_the_keys_to_change() -> None:
    with pytest.raises(ConfigError, match=r"runner\.num_workers=3 x runner\.cpus_per_worker=2"):
        check_resources(_runner(num_workers=3, cpus_per_worker=2), {"CPU": 4.0})


def test_use_gpu_on_a_cluster_without_gpus_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"runner\.use_gpu=true"):
        check_resources(_runner(num_workers=2, use_gpu=True), {"CPU": 8.0})


def test_workers_that_fit_pass() -> None:
    check_resources(_runner(num_workers=2, cpus_per_worker=2, use_gpu=True),
                    {"CPU": 4.0, "GPU": 2.0})


def test_backend_auto_follows_the_device_and_nccl_needs_gpus() -> None:
    assert resolve_backend(_runner()) == "gloo"
    assert resolve_backend(_runner(use_gpu=True)) == "nccl"
    with pytest.raises(ConfigError, match="runner.backend=nccl"):
        resolve_backend(_runner(backend="nccl"))


def test_storage_defaults_to_an_absolute_folder_in_the_run_dir_and_keeps_uris(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_storage(_runner(), Path("runs/x")) == str(tmp_path / "runs/x/ray")
    assert resolve_storage(_runner(storage_path="s3://bucket/cdlm"), Path("r")) == \
        "s3://bucket/cdlm"
    assert resolve_storage(_runner(storage_path="rel"), Path("r")) == str(tmp_path / "rel")


def test_a_private_instance_for_ray_train_gets_the_dashboard(monkeypatch) -> None:
    """Ray Train's placement-group cleaner polls the state API every second; without the
    dashboard a local run prints a warning each time."""
    import ray

    from cdlm_dist.runners.ray_train import preflight

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0})
    cfg = SimpleNamespace(runner=_runner(num_workers=2, num_cpus=0))
    assert preflight(cfg) == "gloo"
    assert calls and calls[0]["include_dashboard"] is True and calls[0]["address"] == "local"
