"""The loop: reproducible from a seed, exact resume after a crash, safe checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cdlm_dist.config import compose
from cdlm_dist.data import load_domains
from cdlm_dist.training.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from cdlm_dist.training.context import RunContext
from cdlm_dist.training.loop import InjectedFault, fit
from cdlm_dist.training.memory import (
    LOADED_RSS,
    PEAK_RSS,
    START_RSS,
    SYSTEM_PREFIX,
    memory_summary,
    rank_key,
)

STEPS = ["train.steps=12", "train.checkpoint_every=4", "train.eval_every=4", "train.log_every=2"]


@pytest.fixture(scope="module")
def setup():
    from tests.conftest import TINY

    cfg = compose(TINY + STEPS)
    return cfg, load_domains(cfg.data, cfg.train.seed)


@pytest.fixture(scope="module")
def straight(setup, tmp_path_factory):
    """One uninterrupted 12-step run that keeps its last 2 checkpoints, shared by the tests that
    compare with it or read its checkpoints (a fit costs seconds); its context and result."""
    cfg, domains = setup
    ctx = RunContext(tmp_path_factory.mktemp("straight"), torch.device("cpu"), keep_checkpoints=2)
    return ctx, fit(cfg, domains, ctx, progress=False)


def test_same_seed_same_weights(setup, straight, tmp_path):
    cfg, domains = setup
    _, a = straight
    b = fit(cfg, domains, RunContext(tmp_path / "b", torch.device("cpu")), progress=False)
    assert all(torch.equal(v, b.final_state[k]) for k, v in a.final_state.items())
    train = [r for r in a.log if "loss/total" in r]  # each carries this rank's memory
    assert all(r[rank_key(START_RSS, 0)] > 0 and r[rank_key(LOADED_RSS, 0)] > 0
               and r[PEAK_RSS] == r[rank_key(PEAK_RSS, 0)] for r in train)
    assert memory_summary(a.log)[PEAK_RSS] == max(r[PEAK_RSS] for r in train)


def test_resume_after_a_crash_is_exact(setup, straight, tmp_path):
    cfg, domains = setup
    _, uninterrupted = straight

    crash_cfg = cfg.copy()
    crash_cfg.train.fail_at_step = 6  # after the checkpoint at step 4
    ctx = RunContext(tmp_path / "crash", torch.device("cpu"))
    with pytest.raises(InjectedFault):
        fit(crash_cfg, domains, ctx, progress=False)
    assert [p.name for p in list_checkpoints(ctx.checkpoint_dir)] == ["step_0000004.pt"]
    resumed = fit(crash_cfg, domains, ctx, progress=False)  # fault fires once only

    for k, v in uninterrupted.final_state.items():
        assert torch.equal(v, resumed.final_state[k]), k
    assert [h["step"] for h in resumed.history] == [4, 8, 12]
    steps = [json.loads(ln)["step"] for ln in (ctx.run_dir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [s for s in steps if s % 2 == 0]
    assert sorted(set(train_steps)) == list(range(2, 13, 2))
    # lines logged after the checkpoint and before the crash were dropped, not repeated
    first = [json.loads(ln) for ln in (ctx.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in first if "loss/total" in r and r["step"] == 6]) == 1
    # the result carries the whole log (from the checkpoint, then the redone steps), so a driver
    # on another node than rank 0 gets the same rows as the live file
    def values(rows):  # what two runs share: not their times or their processes' memory
        return [{k: v for k, v in r.items()
                 if k != "wall_time" and not k.startswith(SYSTEM_PREFIX)} for r in rows]

    assert resumed.log == first
    assert values(resumed.log) == values(uninterrupted.log)


def test_checkpoint_is_weights_only_and_keeps_the_last_n(straight):
    ctx, _ = straight
    found = list_checkpoints(ctx.checkpoint_dir)
    assert [p.name for p in found] == ["step_0000008.pt", "step_0000012.pt"]
    state = torch.load(found[-1], weights_only=True)
    assert state["step"] == 12 and "mnist5k" in state["config_yaml"]
    assert state["best"]["step"] in (4, 8, 12)


def test_corrupt_checkpoint_error_names_the_file(tmp_path: Path):
    bad = tmp_path / "step_0000004.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="step_0000004.pt"):
        load_checkpoint(bad)
