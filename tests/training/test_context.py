"""RunContext and its checkpoint stores: what every runner hands the loop."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from cdlm_dist.config import compose
from cdlm_dist.training.checkpoint import list_checkpoints
from cdlm_dist.training.context import (
    FileStore,
    RunContext,
    pin_threads,
    rank_cpus,
    read_log,
    set_threads,
)

CPU = torch.device("cpu")


def _state(step: int) -> dict:
    return {"model": {"w": torch.full((2,), float(step))}, "step": step, "config_yaml": ""}


def test_one_process_is_rank_0_of_1_and_keeps_its_model_and_tensors_as_they_are(tmp_path: Path):
    ctx = RunContext(tmp_path, CPU)
    model = torch.nn.Linear(2, 2)
    t = torch.ones(3)
    assert (ctx.rank, ctx.world_size, ctx.is_main) == (0, 1, True)
    assert ctx.wrap_model(model) is model and ctx.all_reduce_sum(t) is t
    assert RunContext(tmp_path, CPU, rank=1, world_size=2).is_main is False


def test_file_store_resumes_from_the_newest_and_keeps_the_last_n(tmp_path: Path):
    ctx = RunContext(tmp_path, CPU, keep_checkpoints=2)
    assert ctx.latest_state() is None
    for step in (2, 4, 6):
        ctx.report(step, {"step": step}, _state(step))
    assert [p.name for p in list_checkpoints(ctx.checkpoint_dir)] == ["step_0000004.pt",
                                                                      "step_0000006.pt"]
    assert ctx.latest_state()["step"] == 6
    ctx.report(8, {"step": 8}, None)  # a non-main rank's report persists nothing
    assert ctx.latest_state()["step"] == 6


def test_a_store_is_pluggable(tmp_path: Path):
    """Ray Train and Tune plug in their session here; the context only forwards."""
    calls = []

    class Recording(FileStore):
        def save(self, step, metrics, state):
            calls.append((step, metrics, state is not None))

    ctx = RunContext(tmp_path, CPU, store=Recording(tmp_path / "x"))
    ctx.report(3, {"best_score": 0.5}, _state(3))
    assert calls == [(3, {"best_score": 0.5}, True)]
    assert not (tmp_path / "checkpoints").exists()


def test_the_live_log_is_rewritten_on_resume_and_can_be_switched_off(tmp_path: Path):
    ctx = RunContext(tmp_path, CPU)
    for step in (1, 2, 3):
        ctx.log({"step": step, "loss": float(step)})
    ctx.restart_log([{"step": 1, "loss": 1.0}])  # resumed at step 1: lines 2 and 3 are redone
    assert read_log(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": 1.0}]
    elsewhere = RunContext(tmp_path / "other", CPU, live_log=False)  # rank 0 on another node
    elsewhere.log({"step": 1})
    elsewhere.restart_log([{"step": 1}])
    assert not (tmp_path / "other").exists()
    assert not RunContext(tmp_path, CPU, rank=1, world_size=2).log({"step": 9})
    assert len(read_log(tmp_path / "metrics.jsonl")) == 1


def test_threads_follow_the_config_then_the_cpu_share(tmp_path: Path):
    before = torch.get_num_threads()
    try:
        set_threads(0, fallback=0)
        assert torch.get_num_threads() == before  # nothing asked: torch's default stays
        set_threads(0, fallback=2.0)
        assert torch.get_num_threads() == 2
        set_threads(1, fallback=2.0)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_process_group(tmp_path: Path):
    """A gloo group of one process: DDP builds on it as on several."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    yield
    dist.destroy_process_group()


def _ddp(tmp_path: Path, overrides: list[str]) -> torch.nn.Module:
    """RunContext.wrap_model's DDP (told it has 2 ranks) around a layer with BatchNorm."""
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ctx = RunContext(tmp_path, CPU, rank=0, world_size=2)
    return ctx.wrap_model(model, compose(overrides).train)


def test_ddp_options_come_from_the_config_and_default_to_torchs(tmp_path: Path,
                                                                 one_process_group) -> None:
    default = _ddp(tmp_path, [])
    plain = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))
    assert (default.bucket_bytes_cap, default.gradient_as_bucket_view,
            default.will_sync_module_buffers()) == (plain.bucket_bytes_cap, False, True)
    tuned = _ddp(tmp_path, ["train.ddp_bucket_cap_mb=1", "train.ddp_gradient_as_bucket_view=true",
                            "train.sync_batchnorm=true",
                            "train.ddp_broadcast_buffers=false"])
    assert (tuned.bucket_bytes_cap, tuned.gradient_as_bucket_view,
            tuned.will_sync_module_buffers()) == (2 ** 20, True, False)


def test_each_local_rank_gets_its_own_cpus_and_too_few_is_a_clear_error() -> None:
    allowed = [0, 1, 4, 5]  # the CPUs this process may use, not always 0..n-1
    assert [rank_cpus(r, 1, allowed) for r in range(4)] == [{0}, {1}, {4}, {5}]
    assert [rank_cpus(r, 2, allowed) for r in range(2)] == [{0, 1}, {4, 5}]
    with pytest.raises(ValueError, match=r"runner.pin_cpus: local rank 2 needs CPUs 4-5 of "
                                         r"this node's 4 usable CPUs"):
        rank_cpus(2, 2, allowed)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="thread affinity is Linux's")
def test_pinning_moves_every_thread_including_ones_already_running() -> None:
    import threading

    original = os.sched_getaffinity(0)
    seen: dict[str, set[int]] = {}
    go = threading.Event()

    def worker() -> None:  # started before the pin, asked after it
        go.wait()
        seen["thread"] = os.sched_getaffinity(0)

    t = threading.Thread(target=worker)
    t.start()
    one = {min(original)}
    try:
        pin_threads(one)
        seen["main"] = os.sched_getaffinity(0)
        go.set()
        t.join()
    finally:
        pin_threads(original)
    assert seen == {"main": one, "thread": one}
    assert os.sched_getaffinity(0) == original
