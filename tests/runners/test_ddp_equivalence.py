"""DDP is the single-process loop, split: 2 gloo ranks with half the batch each end where 1 rank
with the full batch ends. No Ray: two processes via torch.multiprocessing on one machine.

Checked in float64, where the two runs agree to ~1e-13 if and only if the distributed maths is
the single-process maths. In float32 Adam turns rounding noise of near-zero gradient coordinates
into steps of size lr, so a float32 comparison could only bound drift, not show correctness.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from cdlm_dist.config import compose
from cdlm_dist.data.domains import DomainData
from cdlm_dist.training.checkpoint import list_checkpoints, load_checkpoint
from cdlm_dist.training.context import RunContext
from cdlm_dist.training.loop import fit
from tests.conftest import TINY

STEPS = 4
WORLD = 2
DTYPE = torch.float64
ATOL, RTOL = 1e-9, 1e-7  # float64 rounding through 4 Adam steps stays below 1e-11


# DDP's options that leave the maths alone: small buckets, gradients as bucket views, no buffer
# broadcast (synchronised running statistics are already equal on every rank), one gradient
# copy per bucket where this torch has it
TUNED_DDP = ["train.ddp_bucket_cap_mb=0.05", "train.ddp_gradient_as_bucket_view=true",
             "train.ddp_broadcast_buffers=false"] + (
    ["train.ddp_batched_grad_copy=true"]
    if "batched_grad_copy" in inspect.signature(DistributedDataParallel.__init__).parameters
    else [])


# The cases: (train.sync_batchnorm, extra overrides, whether the two runs must end equal).
CASES = {"sync_bn": (True, (), True),
         "sync_bn_tuned_ddp": (True, tuple(TUNED_DDP), True),
         "rank_local_bn": (False, (), False),
         "sync_encoder_bn_only": (True, ("train.sync_batchnorm_scope=encoder",), False)}


def _cfg(run_dir: Path, sync: bool, extra: tuple[str, ...] = ()):
    return compose(TINY + [f"run_dir={run_dir}", f"train.steps={STEPS}", "train.log_every=2",
                           f"train.eval_every={STEPS}", f"train.checkpoint_every={STEPS}",
                           f"train.sync_batchnorm={str(sync).lower()}", *extra])


def _rank(rank: int, out: str, cfgs: dict, domains: list[DomainData],
          dtype: torch.dtype = DTYPE) -> None:
    """One rank of every case's 2-rank run, each case in a process group of its own."""
    torch.set_num_threads(1)
    torch.set_default_dtype(dtype)
    for name, cfg in cfgs.items():
        dist.init_process_group("gloo", init_method=f"file://{out}/{name}.store", rank=rank,
                                world_size=WORLD)
        try:
            fit(cfg, domains, RunContext(Path(cfg.run_dir), torch.device("cpu")), progress=False)
        finally:
            dist.destroy_process_group()


def _final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(list_checkpoints(run_dir / "checkpoints")[-1])["model"]


def _diffs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    """Largest |a - b| of each floating-point tensor (parameters and buffers) beyond tolerance."""
    return {k: float((a[k] - b[k]).abs().max()) for k in a
            if a[k].is_floating_point() and not torch.allclose(a[k], b[k], atol=ATOL, rtol=RTOL)}


@pytest.fixture(scope="module")
def runs(tiny_domains: list[DomainData], tmp_path_factory: pytest.TempPathFactory
         ) -> dict[str, tuple[dict, dict]]:
    """Every case trained in float64 by 1 rank (here) and by 2 ranks (one spawn for all the
    cases: starting the 2 processes costs seconds); {case: (one rank's, two ranks' final
    model state)}."""
    out = tmp_path_factory.mktemp("ddp")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(DTYPE)
    try:
        for name, (sync, extra, _) in CASES.items():
            one_dir = out / name / "one"
            fit(_cfg(one_dir, sync, extra), tiny_domains, RunContext(one_dir, torch.device("cpu")),
                progress=False)
    finally:
        torch.set_default_dtype(previous)
    two = {name: _cfg(out / name / "two", sync, extra) for name, (sync, extra, _) in CASES.items()}
    mp.spawn(_rank, args=(str(out), two, tiny_domains), nprocs=WORLD, join=True)
    return {name: (_final_state(out / name / "one"), _final_state(out / name / "two"))
            for name in CASES}


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_with_half_batches_match_one_rank_with_the_full_batch(
        runs: dict[str, tuple[dict, dict]], case: str) -> None:
    one, two = runs[case]
    equal = CASES[case][2]
    assert one.keys() == two.keys()
    assert one["encoder.features.0.weight"].dtype == DTYPE
    diffs = _diffs(one, two)
    if equal:
        assert not diffs, f"parameters/buffers differ beyond atol={ATOL}: {diffs}"
    else:  # rank-local statistics (all, or the decoders') make a different model
        assert any(k.startswith("decoders.") for k in diffs), diffs
