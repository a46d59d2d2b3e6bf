"""Our SyncBatchNorm is BatchNorm: on one rank it is torch's, and 2 gloo ranks with half a batch
each compute what 1 rank computes on the whole batch (outputs, gradients, running statistics).

CPU only, no Ray: two processes via torch.multiprocessing. Checked in float64, where agreement
to ~1e-12 means the merged moments are the single-process moments, not an approximation.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from cdlm_dist.model.sync_norm import SyncBatchNorm, batch_moments, convert_sync_batchnorm

WORLD = 2
BATCH, CHANNELS, SIDE = 8, 3, 4
DTYPE = torch.float64
TOL = {"atol": 1e-12, "rtol": 1e-10}


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """An input with channel-specific offsets and scales, and a fixed upstream gradient."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, CHANNELS, SIDE, SIDE, generator=g, dtype=DTYPE)
    x = x * torch.arange(1, CHANNELS + 1, dtype=DTYPE).view(1, -1, 1, 1) + 5.0
    return x, torch.randn(x.shape, generator=g, dtype=DTYPE)


def _norm(cls: type[nn.Module]) -> nn.Module:
    """A BatchNorm layer with non-trivial affine parameters (the same for every class)."""
    layer = cls(CHANNELS, momentum=0.3).to(DTYPE)
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(0.5, 2.0, CHANNELS, dtype=DTYPE))
        layer.bias.copy_(torch.linspace(-1.0, 1.0, CHANNELS, dtype=DTYPE))
    return layer


def _step(layer: nn.Module, x: torch.Tensor, upstream: torch.Tensor, steps: int = 2
          ) -> dict[str, torch.Tensor]:
    """Forward/backward ``steps`` times (running statistics see each); what one rank ends with."""
    x = x.clone().requires_grad_(True)
    for _ in range(steps):
        y = layer(x)
        (y * upstream).sum().backward()
    return {"y": y.detach(), "x_grad": x.grad, "weight_grad": layer.weight.grad,
            "bias_grad": layer.bias.grad, "running_mean": layer.running_mean.clone(),
            "running_var": layer.running_var.clone()}


@pytest.mark.parametrize("shape, dims", [((BATCH, CHANNELS, SIDE, SIDE), [0, 2, 3]),
                                         ((BATCH, CHANNELS), [0])])
def test_batch_moments_are_batchnorms_statistics(shape: tuple[int, ...], dims: list[int]) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=DTYPE) * 3 + 2
    mean, var, count = batch_moments(x, dims, sync=True)  # no process group: this rank's
    eps = 1e-5
    expected = nn.functional.batch_norm(x, None, None, training=True, eps=eps)
    shaped = [1 if d in dims else n for d, n in enumerate(shape)]
    torch.testing.assert_close((x - mean.view(shaped)) / torch.sqrt(var.view(shaped) + eps),
                               expected, **TOL)
    assert float(count) == x.numel() / CHANNELS


def test_one_rank_is_torchs_batchnorm() -> None:
    x, upstream = _batch()
    ours, theirs = _step(_norm(SyncBatchNorm), x, upstream), _step(_norm(nn.BatchNorm2d), x, upstream)
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], **TOL, msg=key)


def test_convert_shares_parameters_and_buffers() -> None:
    model = nn.Sequential(nn.Conv2d(CHANNELS, CHANNELS, 1), _norm(nn.BatchNorm2d)).eval()
    bn = model[1]
    converted = convert_sync_batchnorm(model)
    assert isinstance(converted[1], SyncBatchNorm) and not converted[1].training
    assert converted[1].weight is bn.weight and converted[1].running_var is bn.running_var
    assert list(converted.state_dict()) == list(nn.Sequential(
        nn.Conv2d(CHANNELS, CHANNELS, 1), nn.BatchNorm2d(CHANNELS)).state_dict())


def _rank(rank: int, init_file: str, out_dir: str) -> None:
    """One rank: its half of the batch through SyncBatchNorm; parameter gradients summed over
    ranks (as DDP does, up to its 1 / world size) so they compare with the one-rank gradient."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        x, upstream = _batch()
        half = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        result = _step(_norm(SyncBatchNorm), x[half], upstream[half])
        for key in ("weight_grad", "bias_grad"):
            dist.all_reduce(result[key])
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_with_half_batches_match_one_rank_with_the_whole(tmp_path: Path) -> None:
    mp.spawn(_rank, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    x, upstream = _batch()
    one = _step(_norm(nn.BatchNorm2d), x, upstream)
    for key in ("y", "x_grad"):  # each rank holds its half of the batch
        torch.testing.assert_close(torch.cat([r[key] for r in ranks]), one[key], **TOL, msg=key)
    for key in ("weight_grad", "bias_grad", "running_mean", "running_var"):
        for r in ranks:
            torch.testing.assert_close(r[key], one[key], **TOL, msg=key)
