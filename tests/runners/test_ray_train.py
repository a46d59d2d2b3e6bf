"""The Ray Train runner end to end on 2 local CPU workers (gloo): interrupted runs resume, an
injected worker failure is survived, in a 3-domain (N-domain CDLM) run. Three TorchTrainer.fit
calls in all (about 40 s each).

Evidence of "resumed, not retrained": metrics.jsonl lines carry the wall time they were written;
lines up to the restored checkpoint keep their first-attempt times, later ones are rewritten.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cdlm_dist.config import compose
from cdlm_dist.data.domains import load_domains
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
    with pytest.raises(RayRunError, match=r"InjectedFault.*start the same command again"):
        run_experiment(overrides, log=lambda *_: None)
    checkpoints = [p for p in (run_dir / "ray" / "ray_resume").glob("checkpoint_*") if p.is_dir()]
    assert len(checkpoints) == 1, "the interrupted run checkpoints at step 3 only"
    restart = time.time()

    summary = run_experiment(overrides, log=lambda *_: None)

    assert summary["steps"] == STEPS
    _assert_steps_once_and_redone_after(run_dir, restart)
    evals = [json.loads(ln)["step"] for ln in (run_dir / "metrics.jsonl").read_text().splitlines()
             if "eval/eval_score" in ln]
    assert evals == [3, STEPS]  # the step-3 evaluation came back from the checkpoint
    assert summary["selected_step"] in evals


def test_a_three_domain_run_survives_a_worker_failure_from_the_last_checkpoint(
        ray_local, tmp_path: Path, tiny_overrides: list[str]) -> None:
    """digits3: two labelled sources and one target, all-pairs modulation, a 3-way discriminator,
    under 2 Ray workers; a worker dies once and the run finishes from its checkpoint."""
    cfg = compose(tiny_overrides + RAY_2_WORKERS + ["data=digits3", "name=ray_fault",
                                                    "runner.max_failures=1"])
    run_dir = Path(cfg.run_dir)
    domains = load_domains(cfg.data, cfg.train.seed)
    assert [d.name for d in domains] == ["mnist5k", "ucidigits", "mnistm_synth"]

    result = run_ray(cfg, domains, run_dir)

    marker = run_dir / FAULT_MARKER
    assert marker.exists(), "the fault was injected"
    assert result.step == STEPS
    assert [h["step"] for h in result.history] == [3, STEPS]
    _assert_steps_once_and_redone_after(run_dir, marker.stat().st_mtime)
    last = result.history[-1]
    for name in ("mnist5k", "ucidigits"):  # the labelled sources: validation (the score), test
        assert 0.0 <= last[f"val_acc/{name}"] <= 1.0 and 0.0 <= last[f"test_acc/{name}"] <= 1.0
    assert 0.0 <= last["test_acc/mnistm_synth"] == last["target_acc"] <= 1.0
    assert "val_acc/mnistm_synth" not in last  # the target's labels never reach selection
    trained = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()
               if "loss/adv" in ln]
    assert trained and all(ln["loss/adv"] > 0 for ln in trained)  # the 3-way discriminator trains
