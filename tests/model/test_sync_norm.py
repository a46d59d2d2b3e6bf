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

from cdlm_dist.model import sync_norm
from cdlm_dist.model.sync_norm import (
    SyncBatchNorm,
    all_gather_rows,
    batch_moments,
    convert_sync_batchnorm,
    sum_over_ranks,
)

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


def test_two_gloo_ranks_with_half_batches_match_one_rank_with_the_whole(two_rank_cases) -> None:
    """Each rank put its half of the batch through SyncBatchNorm twice, parameter gradients
    summed over ranks (as DDP does, up to its 1 / world size) so they compare with the one-rank
    gradient (case "whole" of the module's one 2-rank spawn, below)."""
    ranks = [r["whole"] for r in two_rank_cases]
    x, upstream = _batch()
    one = _step(_norm(nn.BatchNorm2d), x, upstream)
    for key in ("y", "x_grad"):  # each rank holds its half of the batch
        torch.testing.assert_close(torch.cat([r[key] for r in ranks]), one[key], **TOL, msg=key)
    for key in ("weight_grad", "bias_grad", "running_mean", "running_var"):
        for r in ranks:
            torch.testing.assert_close(r[key], one[key], **TOL, msg=key)


# --- the fused path: layer shapes and options, the old formula, hbar, collectives per call ------

FLOAT32_TOL = {"atol": 1e-5, "rtol": 1e-4}  # float32 rounding of O(1) outputs and gradients
DOMAINS, LATENT = 2, 5


def _norm1d(momentum: float | None) -> nn.Module:
    """BatchNorm1d on (batch, channels) with cumulative averaging (momentum None)."""
    layer = nn.BatchNorm1d(CHANNELS, momentum=momentum).to(DTYPE)
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(0.5, 2.0, CHANNELS, dtype=DTYPE))
        layer.bias.copy_(torch.linspace(-1.0, 1.0, CHANNELS, dtype=DTYPE))
    return layer


def _plain(layer: nn.Module, x: torch.Tensor, upstream: torch.Tensor) -> dict[str, torch.Tensor]:
    """Forward/backward twice through a layer without affine parameters."""
    x = x.clone().requires_grad_(True)
    for _ in range(2):
        y = layer(x)
        (y * upstream).sum().backward()
    return {"y": y.detach(), "x_grad": x.grad, "running_mean": layer.running_mean.clone(),
            "running_var": layer.running_var.clone()}


def _old_formula(x: torch.Tensor, upstream: torch.Tensor) -> dict[str, torch.Tensor]:
    """The former SyncBatchNorm's arithmetic (batch_moments' differentiable all-gather, then
    Python ops on the activations), one forward/backward: the reference the fused path replaced."""
    layer = _norm(nn.BatchNorm2d)
    x = x.clone().requires_grad_(True)
    dims, view = [0, 2, 3], (1, CHANNELS, 1, 1)
    mean, var, _ = batch_moments(x, dims, sync=True)
    y = ((x - mean.view(view)) * torch.rsqrt(var.view(view) + layer.eps)
         * layer.weight.view(view) + layer.bias.view(view))
    (y * upstream).sum().backward()
    return {"y": y.detach(), "x_grad": x.grad, "weight_grad": layer.weight.grad,
            "bias_grad": layer.bias.grad}


def _hbar(hs: list[torch.Tensor], upstream: list[torch.Tensor], sync: bool
          ) -> dict[str, torch.Tensor]:
    """standardise_each of the domains' h, and the gradient of each h."""
    from cdlm_dist.model.cdlm import standardise_each

    hs = [h.clone().requires_grad_(True) for h in hs]
    hbar = standardise_each(hs, sync)
    sum((b * u).sum() for b, u in zip(hbar, upstream)).backward()
    return {"hbar": torch.stack([b.detach() for b in hbar]),
            "h_grad": torch.stack([h.grad for h in hs])}


def _latents(seed: int = 2) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each domain's h (batch, latent) with its own offsets and scales, and upstream grads."""
    g = torch.Generator().manual_seed(seed)
    hs = [torch.randn(BATCH, LATENT, generator=g, dtype=DTYPE) * (k + 1) + 3.0 * k
          for k in range(DOMAINS)]
    return hs, [torch.randn(BATCH, LATENT, generator=g, dtype=DTYPE) for _ in range(DOMAINS)]


def _collective_calls(fn) -> int:
    """How many collectives ``fn`` issues: c10d or functional collective ops (not their waits)
    that no other collective op called (a functional one calls its c10d op)."""
    from torch.profiler import ProfilerActivity, profile

    def collective(event) -> bool:
        return (event is not None and event.name.startswith(("c10d::", "_c10d_functional::"))
                and "wait" not in event.name)

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(collective(e) and not collective(e.cpu_parent) for e in prof.events())


def _count_collectives() -> dict[str, torch.Tensor]:
    """Collectives of one BatchNorm layer and of one hbar standardisation of all domains,
    forward and backward separately."""
    from cdlm_dist.model.cdlm import standardise_each

    x, upstream = _batch()
    layer = _norm(SyncBatchNorm)
    x = x.requires_grad_(True)
    out: dict[str, torch.Tensor] = {}
    y = []
    out["layer_forward"] = torch.tensor(_collective_calls(lambda: y.append(layer(x))))
    out["layer_backward"] = torch.tensor(_collective_calls(
        lambda: (y[0] * upstream).sum().backward()))
    hs = [h.requires_grad_(True) for h in _latents()[0]]
    hbar = []
    out["hbar_forward"] = torch.tensor(_collective_calls(
        lambda: hbar.extend(standardise_each(hs, sync=True))))
    out["hbar_backward"] = torch.tensor(_collective_calls(
        lambda: sum(b.sum() for b in hbar).backward()))
    return out


def _sums_both_ways(rank: int) -> dict[str, torch.Tensor]:
    """sum_over_ranks through its all-gather-and-sum path (gloo's) and its all-reduce path."""
    t = torch.tensor([rank + 1.0, 0.1 * (rank + 1)], dtype=DTYPE)
    gathered = sum_over_ranks(t)
    backends = sync_norm.GATHER_SUM_BACKENDS
    sync_norm.GATHER_SUM_BACKENDS = ()
    try:
        reduced = sum_over_ranks(t)
    finally:
        sync_norm.GATHER_SUM_BACKENDS = backends
    return {"input": t, "gathered": gathered, "reduced": reduced, "rows": all_gather_rows(t)}


def _cases_rank(rank: int, init_file: str, out_dir: str) -> None:
    """One rank of every two-rank case (the plain layer's and the fused path's): its half of
    every batch; results saved per case."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        half = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        x, upstream = _batch()
        x1d, up1d = x[:, :, 0, 0], upstream[:, :, 0, 0]
        hs, hup = _latents()
        cases = {
            "whole": _step(_norm(SyncBatchNorm), x[half], upstream[half]),
            "bn1d": _step(convert_sync_batchnorm(_norm1d(None)), x1d[half], up1d[half]),
            "plain": _plain(SyncBatchNorm(CHANNELS, affine=False).to(DTYPE), x[half],
                            upstream[half]),
            "float32": _step(_norm(SyncBatchNorm).float(), x[half].float(),
                             upstream[half].float()),
            "fused_once": _step(_norm(SyncBatchNorm), x[half], upstream[half], steps=1),
            "old_formula": _old_formula(x[half], upstream[half]),
            "hbar": _hbar([h[half] for h in hs], [u[half] for u in hup], sync=True),
            "collectives": _count_collectives(),
            "sums": _sums_both_ways(rank),
        }
        for case in ("whole", "bn1d", "float32", "fused_once", "old_formula"):
            for key in ("weight_grad", "bias_grad"):  # DDP sums these over ranks
                dist.all_reduce(cases[case][key])
        torch.save(cases, Path(out_dir) / f"cases{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_cases(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, dict]]:
    """Every two-rank case run once on 2 gloo ranks (one spawn for all of them: a spawn costs
    seconds)."""
    out = tmp_path_factory.mktemp("cases")
    mp.spawn(_cases_rank, args=(str(out / "store"), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"cases{r}.pt", weights_only=True) for r in range(WORLD)]


def _assert_split_matches(ranks: list[dict], one: dict, per_image: tuple[str, ...],
                          tol: dict[str, float]) -> None:
    """Per-image results concatenate over ranks to ``one``'s; the rest equal it on each rank."""
    for key in one:
        if key in per_image:
            torch.testing.assert_close(torch.cat([r[key] for r in ranks]), one[key], **tol,
                                       msg=key)
        else:
            for r in ranks:
                torch.testing.assert_close(r[key], one[key], **tol, msg=key)


def test_fused_batchnorm1d_with_cumulative_averaging_matches_one_rank(two_rank_cases) -> None:
    x, upstream = _batch()
    one = _step(_norm1d(None), x[:, :, 0, 0], upstream[:, :, 0, 0])
    _assert_split_matches([r["bn1d"] for r in two_rank_cases], one, ("y", "x_grad"), TOL)


def test_fused_batchnorm_without_affine_matches_one_rank(two_rank_cases) -> None:
    x, upstream = _batch()
    one = _plain(nn.BatchNorm2d(CHANNELS, affine=False).to(DTYPE), x, upstream)
    _assert_split_matches([r["plain"] for r in two_rank_cases], one, ("y", "x_grad"), TOL)


def test_fused_batchnorm_in_float32_stays_close_to_one_rank(two_rank_cases) -> None:
    x, upstream = _batch()
    one = _step(_norm(nn.BatchNorm2d).float(), x.float(), upstream.float())
    _assert_split_matches([r["float32"] for r in two_rank_cases], one, ("y", "x_grad"),
                          FLOAT32_TOL)


def test_fused_path_computes_the_former_formula(two_rank_cases) -> None:
    for r in two_rank_cases:
        for key, old in r["old_formula"].items():
            torch.testing.assert_close(r["fused_once"][key], old, **TOL, msg=key)


def test_synchronised_hbar_of_all_domains_at_once_is_each_domains_standardisation(
        two_rank_cases) -> None:
    hs, upstream = _latents()
    one = _hbar(hs, upstream, sync=False)  # one rank, each domain on its own (the old formula)
    for key in one:  # (domains, batch, latent): each rank holds its half of the batch
        torch.testing.assert_close(torch.cat([r["hbar"][key] for r in two_rank_cases], 1),
                                   one[key], **TOL, msg=key)


def test_one_collective_forward_and_one_backward_per_layer_and_per_hbar(two_rank_cases) -> None:
    for r in two_rank_cases:
        assert {k: int(v) for k, v in r["collectives"].items()} == {
            "layer_forward": 1, "layer_backward": 1, "hbar_forward": 1, "hbar_backward": 1}


def test_sum_over_ranks_is_the_same_sum_whether_gathered_or_all_reduced(two_rank_cases) -> None:
    expected = sum(r["sums"]["input"] for r in two_rank_cases)
    for r in two_rank_cases:
        assert not torch.equal(r["sums"]["input"], expected)  # the input is left as it was
        torch.testing.assert_close(r["sums"]["gathered"], expected, rtol=0, atol=0)
        torch.testing.assert_close(r["sums"]["reduced"], expected, rtol=0, atol=0)
        torch.testing.assert_close(r["sums"]["rows"],
                                   torch.stack([c["sums"]["input"] for c in two_rank_cases]))


def test_scope_converts_only_the_named_submodule() -> None:
    model = nn.ModuleDict({"encoder": nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)),
                           "decoder": nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))})
    converted = convert_sync_batchnorm(model, "encoder")
    assert isinstance(converted["encoder"][1], SyncBatchNorm)
    assert type(converted["decoder"][1]) is nn.BatchNorm1d
    assert isinstance(convert_sync_batchnorm(model)["decoder"][1], SyncBatchNorm)
