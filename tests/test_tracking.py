"""TensorBoard tracking, read back with TensorBoard's own event reader: a run's losses,
evaluations and label-free scores as scalars, a translation grid per evaluation, the config as
hparams; and the driver's backfill when rank 0 wrote nothing live (another node)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from cdlm_dist.config import compose  # noqa: E402
from cdlm_dist.evaluation.plots import grid_size  # noqa: E402
from cdlm_dist.experiment import run_experiment  # noqa: E402
from cdlm_dist.tracking import GRID_TAG, TB_SUBDIR, RunTracking, flat_params  # noqa: E402
from cdlm_dist.training.context import RunContext  # noqa: E402
from cdlm_dist.training.loop import fit  # noqa: E402


def read_events(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(run_dir / TB_SUBDIR),
                              size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def steps(events: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in events.Scalars(tag)]


def test_a_run_writes_its_curves_grids_and_config(tiny_overrides):
    run_dir = Path(tiny_overrides[-1].split("=", 1)[1])
    run_experiment(tiny_overrides, log=lambda *_: None)  # train=smoke: 6 steps, eval at 3 and 6
    events = read_events(run_dir)
    scalars = events.Tags()["scalars"]
    assert steps(events, "loss/total") == [2, 4, 6]  # every logged row, once
    assert steps(events, "eval/eval_score") == [3, 6]
    assert "eval/target_acc" in scalars and any(t.startswith("eval/validator/") for t in scalars)
    assert steps(events, "summary/target_acc_selected") == [6]
    grids = events.Images(GRID_TAG)
    assert [g.step for g in grids] == [3, 6]
    assert (grids[0].height, grids[0].width) == grid_size(2, 4, 28, 28)  # tracking.image_rows
    # the hparams plugin's session: every config key, e.g. the budget and the method
    hparams = events.PluginTagToContent("hparams")
    assert b"train.steps" in b"".join(hparams.values()) and b"loss.l_adv" in b"".join(
        hparams.values())


def test_tracking_none_writes_no_events(tiny_overrides):
    run_dir = Path(tiny_overrides[-1].split("=", 1)[1])
    run_experiment([*tiny_overrides, "tracking=none"], log=lambda *_: None)
    assert not (run_dir / TB_SUBDIR).exists()


def test_the_driver_writes_what_a_remote_rank_0_could_not(tiny_overrides, tiny_domains):
    """live_log=False is rank 0 on another node: the driver writes every row from the result."""
    cfg = compose(tiny_overrides)
    run_dir = Path(cfg.run_dir)
    result = fit(cfg, tiny_domains, RunContext(run_dir, "cpu", live_log=False), progress=False)
    assert not (run_dir / TB_SUBDIR).exists()
    RunTracking.start(cfg, run_dir).finish(result, {"target_acc_selected": 0.5})
    events = read_events(run_dir)
    assert steps(events, "loss/total") == [2, 4, 6] and steps(events, "eval/eval_score") == [3, 6]
    assert b"train.steps" in b"".join(events.PluginTagToContent("hparams").values())


def test_config_flattens_to_scalar_hparams():
    params = flat_params(compose([]))
    assert params["train.steps"] == 600 and params["tracking.backend"] == "tensorboard"
    assert isinstance(params["data.domains"], str)  # lists as JSON text
    assert all(isinstance(v, (bool, int, float, str)) for v in params.values())
