"""SessionStore: the loop's checkpoints through a Ray session (a fake one here, no Ray needed)."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import torch

from cdlm_dist.runners.session import STATE_FILE, SessionStore, latest_readable_state


class FakeCheckpoint:
    """What ray.train/ray.tune's Checkpoint offers the store: from_directory, as_directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def from_directory(cls, directory: str) -> FakeCheckpoint:
        kept = Path(directory + "_kept")  # Ray persists the folder; the temp one goes away
        shutil.copytree(directory, kept)
        return cls(kept)

    def as_directory(self):
        from contextlib import nullcontext

        return nullcontext(str(self.path))


def _session():
    reports = []
    api = SimpleNamespace(Checkpoint=FakeCheckpoint, get_checkpoint=lambda: None,
                          report=lambda metrics, checkpoint=None: reports.append(
                              (metrics, checkpoint)))
    return api, reports


def _state(step: int) -> dict:
    return {"model": {"w": torch.zeros(1)}, "step": step, "config_yaml": ""}


def test_rank_0_attaches_the_state_and_the_others_report_metrics_only():
    store = SessionStore("train")
    store.api, reports = _session()
    store.save(3, {"best_score": 0.5}, _state(3))
    store.save(3, {"best_score": 0.5}, None)
    (first, ckpt), (second, none) = reports
    assert first == second == {"best_score": 0.5} and none is None
    store.api.get_checkpoint = lambda: ckpt
    assert store.latest(torch.device("cpu"))["step"] == 3


def test_a_trial_without_its_own_checkpoint_continues_a_killed_drivers(tmp_path: Path):
    for step, name in ((2, "checkpoint_000000"), (4, "checkpoint_000001")):
        (tmp_path / name).mkdir()
        torch.save(_state(step), tmp_path / name / STATE_FILE)
    (tmp_path / "checkpoint_000002").mkdir()
    (tmp_path / "checkpoint_000002" / STATE_FILE).write_bytes(b"truncated by the kill")
    store = SessionStore("tune", resume_from=str(tmp_path))
    store.api, _ = _session()
    assert store.latest(torch.device("cpu"))["step"] == 4  # the newest readable one
    assert latest_readable_state(tmp_path / "nothing", torch.device("cpu")) is None
