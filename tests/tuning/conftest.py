"""Sweep test helpers: the TINY training config plus a small, quiet sweep section."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import TINY


def sweep_overrides(out: Path, num_samples: int, *extra: str) -> list[str]:
    """A sweep of ``num_samples`` 6-step trials (2 epochs of 3 steps) writing under ``out``."""
    return [*TINY, f"sweep.output_dir={out}", f"sweep.num_samples={num_samples}",
            "sweep.study_name=t", "sweep.verbose=0", "sweep.trial_cpus=1", *extra]


@pytest.fixture(scope="module")
def sweep_cfg(tmp_path_factory):
    """One composed sweep config for the tests that only need to read or copy one."""
    from cdlm_dist.tuning.config import compose_sweep

    return compose_sweep(sweep_overrides(tmp_path_factory.mktemp("sweeps"), 4))
