"""The Ray Train runner end to end on 2 local CPU workers (gloo), in a 3-domain (N-domain CDLM)
run: an interrupted run resumes when started again, and an injected worker failure is survived
within a fit. Two TorchTrainer.fit calls in all (about 40 s each), one of them restarting its
workers.

Evidence of "resumed, not retrained": metrics.jsonl lines carry the wall time they were written;
lines up to the restored checkpoint keep their first attempt's times, later ones are rewritten.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from cdlm_dist.config import compose
from cdlm_dist.data.domains import load_domains
from cdlm_dist.experiment import run_experiment
from cdlm_dist.runners.ray_train import RAY_SUBDIR, RayRunError
from cdlm_dist.runners.session import latest_readable_state
from cdlm_dist.training.loop import FAULT_MARKER, TrainResult

pytestmark = pytest.mark.ray

STEPS, FAIL_AT, CHECKPOINT_EVERY, LOG_EVERY = 6, 4, 3, 2  # fault after the checkpoint at 3
RAY_2_WORKERS = ["runner=ray", "runner.num_workers=2", f"train.steps={STEPS}",
                 f"train.checkpoint_every={CHECKPOINT_EVERY}", f"train.log_every={LOG_EVERY}",
                 f"train.fail_at_step={FAIL_AT}"]


def _train_lines(run_dir: Path) -> list[dict]:
    """The training-metric lines of metrics.jsonl (evaluation lines are separate)."""
    lines = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [ln for ln in lines if "loss/total" in ln]


def _assert_steps_once_kept_before_and_redone_after(run_dir: Path, kept_before: float,
                                                    redone_after: float) -> None:
    """Each log step appears once; those up to the checkpoint were written before
    ``kept_before`` (kept, not retrained), those after it after ``redone_after``: at most one
    checkpoint interval is redone."""
    lines = _train_lines(run_dir)
    assert [ln["step"] for ln in lines] == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    for ln in lines:
        if ln["step"] > CHECKPOINT_EVERY:
            assert ln["wall_time"] > redone_after, (ln["step"], ln["wall_time"], redone_after)
        else:
            assert ln["wall_time"] < kept_before, (ln["step"], ln["wall_time"], kept_before)


def test_an_interrupted_three_domain_run_resumes_and_then_survives_a_worker_failure(
        ray_local, tmp_path: Path, tiny_overrides: list[str]) -> None:
    """digits3: two labelled sources and one target, all-pairs modulation, a 3-way discriminator,
    under 2 Ray workers. With runner.max_failures=0 the injected fault at step 4 ends the run
    with the hint to start it again; started again with runner.max_failures=1 and the fault
    re-armed (its once-per-run-directory marker removed), it resumes from the step-3 checkpoint,
    a worker dies at step 4 once more and the run finishes from that checkpoint in the same fit.
    """
    run_dir = tmp_path / "run"
    overrides = tiny_overrides + RAY_2_WORKERS + ["data=digits3", "name=ray_recover"]
    cfg = compose(overrides)
    domains = load_domains(cfg.data, cfg.train.seed)
    assert [d.name for d in domains] == ["mnist5k", "ucidigits", "mnistm_synth"]
    with pytest.raises(RayRunError, match=r"InjectedFault.*start the same command again"):
        run_experiment(overrides + ["runner.max_failures=0"], log=lambda *_: None)
    storage = run_dir / RAY_SUBDIR / "ray_recover"
    checkpoints = [p for p in storage.glob("checkpoint_*") if p.is_dir()]
    assert len(checkpoints) == 1, "the interrupted run checkpoints at step 3 only"
    marker = run_dir / FAULT_MARKER
    assert marker.exists(), "the fault was injected"
    marker.unlink()  # re-armed: the resumed run loses a worker at step 4 too
    restart = time.time()

    summary = run_experiment(overrides + ["runner.max_failures=1"], log=lambda *_: None)

    assert marker.exists() and marker.stat().st_mtime > restart, "the fault was injected again"
    assert summary["steps"] == STEPS
    _assert_steps_once_kept_before_and_redone_after(run_dir, restart, marker.stat().st_mtime)
    evals = [json.loads(ln)["step"] for ln in (run_dir / "metrics.jsonl").read_text().splitlines()
             if "eval/eval_score" in ln]
    assert evals == [3, STEPS]  # the step-3 evaluation came back from the checkpoint
    assert summary["selected_step"] in evals
    # the result run_ray returned: the final checkpoint's state, as run_ray reads it
    result = TrainResult.from_state(latest_readable_state(storage, torch.device("cpu")))
    assert result.step == STEPS
    assert [h["step"] for h in result.history] == [3, STEPS]
    last = result.history[-1]
    for name in ("mnist5k", "ucidigits"):  # the labelled sources: validation (the score), test
        assert 0.0 <= last[f"val_acc/{name}"] <= 1.0 and 0.0 <= last[f"test_acc/{name}"] <= 1.0
    assert 0.0 <= last["test_acc/mnistm_synth"] == last["target_acc"] <= 1.0
    assert "val_acc/mnistm_synth" not in last  # the target's labels never reach selection
    trained = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()
               if "loss/adv" in ln]
    assert trained and all(ln["loss/adv"] > 0 for ln in trained)  # the 3-way discriminator trains
