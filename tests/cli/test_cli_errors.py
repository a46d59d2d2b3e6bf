"""Errors of the config-driven commands are one line that says what to do (no Ray started)."""

from __future__ import annotations

import pytest

from cdlm_dist.cli import sweep, train
from cdlm_dist.cli.common import EXIT_BAD_INPUT, EXIT_RUN_FAILED, run_command
from cdlm_dist.runners.ray_train import RayRunError


def test_sweep_unknown_key_points_to_cdlm_sweep(capsys) -> None:
    assert sweep.main(["sweep.num_samplez=3"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "unknown config key 'sweep.num_samplez'" in err and "`cdlm-sweep --cfg`" in err
    assert "cdlm-train" not in err


def test_train_unknown_key_points_to_cdlm_train(capsys) -> None:
    assert train.main(["train.stepz=3"]) == EXIT_BAD_INPUT
    assert "`cdlm-train --cfg`" in capsys.readouterr().err


def _gave_up(worker_error: Exception) -> RayRunError:
    """RayRunError as run_ray raises it from Train V2's WorkerGroupError, whose text carries
    every worker's traceback."""
    from ray.train import WorkerGroupError

    snippet = ("[Rank 0 Error Snippet]:\nTraceback (most recent call last):\n  File \"loop.py\", "
               f"line 1, in fit\n{type(worker_error).__name__}: {worker_error}")
    cause = WorkerGroupError(snippet, {0: worker_error})
    try:
        try:
            raise cause
        except WorkerGroupError as exc:
            raise RayRunError(
                f"Ray Train run 'r' failed after runner.max_failures=1 retries: {exc}\nStart the "
                "same command again to resume from the latest checkpoint in /runs/r/ray/r") from exc
    except RayRunError as exc:
        return exc


def test_exhausted_max_failures_is_one_line_with_the_cause_and_the_way_on(capsys) -> None:
    pytest.importorskip("ray.train")
    error = _gave_up(RuntimeError("injected fault at step 3"))

    def run(_: list[str]) -> int:
        raise error

    assert run_command("cdlm-train", "", [], lambda _: None, run) == EXIT_RUN_FAILED
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("cdlm-train: error: Ray Train run 'r' failed after "
                          "runner.max_failures=1 retries")
    assert "rank 0: RuntimeError: injected fault at step 3" in err
    assert "Start the same command again to resume from the latest checkpoint" in err


def test_other_exceptions_keep_their_traceback() -> None:
    def run(_: list[str]) -> int:
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        run_command("cdlm-train", "", [], lambda _: None, run)
