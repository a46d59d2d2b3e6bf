"""The Ray Train runner end to end on 2 local CPU workers (gloo): interrupted runs resume, an
injected worker failure is survived. Three TorchTrainer.fit calls in all (about 40 s each).

Evidence of "resumed, not retrained": metrics.jsonl lines carry the wall time they were written;
lines up to the restored checkpoint keep their first-attempt times, later ones are rewritten.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cdlm_dist.config import compose
from cdlm_dist.data.domains import DomainData
from cdlm_dist.experiment import run_experiment
from cdlm_dist.runners.ray_train import RayRunError, run_ray
from cdlm_dist.training.loop import FAULT_MARKER

pytestmark = pytest.mark.ray

STEPS, FAIL_AT, CHECKPOINT_EVERY, LOG_EVERY = 6, 4, 3, 2  # fault after the checkpoint at 3
RAY_2_WORKERS = ["runner=ray", "runner.num_workers=2", f"train.steps={STEPS}",
                 f"train.checkpoint_every={CHECKPOINT_EVERY}", f"train.log_every={LOG_EVERY}",
                 f"train.fail_at_step={FAIL_AT}"]


def _train_lines(run_dir: Path) -> list[dict]:
    """The training-metric lines of metrics.jsonl (evaluation lines are separate)."""
    lines = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [ln for ln in lines if "loss/total" in ln]


def _assert_steps_once_and_redone_after(run_dir: Path, restart_time: float) -> None:
    """Each log step appears once; those after the checkpoint were written after the restart,
    those up to it before (kept, not retrained): at most one checkpoint interval is redone."""
    lines = _train_lines(run_dir)
    assert [ln["step"] for ln in lines] == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    for ln in lines:
        redone = ln["step"] > CHECKPOINT_EVERY
        assert (ln["wall_time"] > restart_time) == redone, (ln["step"], ln["wall_time"],
                                                            restart_time)


def test_an_interrupted_run_resumes_from_its_latest_checkpoint_when_started_again(
        ray_local, tmp_path: Path, tiny_overrides: list[str]) -> None:
    run_dir = tmp_path / "run"
    overrides = tiny_overrides + RAY_2_WORKERS + ["name=ray_resume", "runner.max_failures=0"]
    with pytest.raises(RayRunError, match="Start the same command again"):
        run_experiment(overrides, log=lambda *_: None)
    checkpoints = [p for p in (run_dir / "ray" / "ray_resume").glob("checkpoint_*") if p.is_dir()]
    assert len(checkpoints) == 1, "the interrupted run checkpoints at step 3 only"
    restart = time.time()

    summary = run_experiment(overrides, log=lambda *_: None)

    assert summary["steps"] == STEPS
    _assert_steps_once_and_redone_after(run_dir, restart)
    evals = [json.loads(ln)["step"] for ln in (run_dir / "metrics.jsonl").read_text().splitlines()
             if "eval/score" in ln]
    assert evals == [3, STEPS]  # the step-3 evaluation came back from the checkpoint
    assert summary["selected_step"] in evals


def test_a_worker_failure_is_survived_from_the_last_checkpoint(
        ray_local, tmp_path: Path, tiny_overrides: list[str],
        tiny_domains: list[DomainData]) -> None:
    cfg = compose(tiny_overrides + RAY_2_WORKERS + ["name=ray_fault", "runner.max_failures=1"])
    run_dir = Path(cfg.run_dir)

    result = run_ray(cfg, tiny_domains, run_dir)

    marker = run_dir / FAULT_MARKER
    assert marker.exists(), "the fault was injected"
    assert result.step == STEPS
    assert [h["step"] for h in result.history] == [3, STEPS]
    _assert_steps_once_and_redone_after(run_dir, marker.stat().st_mtime)
