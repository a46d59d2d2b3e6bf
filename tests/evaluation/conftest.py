"""Fixtures of the evaluation tests: one tiny config and its two domains, loaded once."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from cdlm_dist.config import Config
from cdlm_dist.data.domains import DomainData

# The brief's tiny task, with cheap plots (few t-SNE points, a short translation grid).
EVAL_OVERRIDES = ["train=smoke", "data.max_train_per_domain=200", "data.max_test_per_domain=100",
                  "eval.tsne_points=60", "eval.grid_rows=3", "eval.baseline=false"]


@dataclass
class EvalSetup:
    cfg: Config
    domains: list[DomainData]


@pytest.fixture(scope="session")
def eval_setup() -> EvalSetup:
    """Composed config and loaded domains (loading takes seconds: share it; copy to modify)."""
    from cdlm_dist.config import compose
    from cdlm_dist.data import load_domains

    cfg = compose(EVAL_OVERRIDES)
    return EvalSetup(cfg, load_domains(cfg.data, cfg.train.seed))
