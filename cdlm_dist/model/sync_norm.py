"""Batch statistics over every rank's batch, on any device (CPU/gloo included).

``torch.nn.SyncBatchNorm`` refuses CPU tensors, so CPU workers (gloo) would silently train with
per-rank BatchNorm statistics and drift from the single-process model. :class:`SyncBatchNorm`
here merges every rank's batch statistics, so N ranks with B/N images each normalise, update
running statistics and back-propagate exactly as one rank with B images (checked in float64 to
1e-12). It is used on every device so CPU and GPU runs take the same code path.

The layer is one autograd function (:func:`sync_batch_norm`), like torch's own SyncBatchNorm:
forward takes each rank's per-channel (count, mean, var) in one fused pass, all-gathers them in
ONE collective and merges them (Chan's formula), then normalises with one fused per-channel
scale and shift; backward takes the per-channel sums of dy and dy * xhat in one fused pass,
sums them over the ranks in ONE collective and forms the input gradient in two fused passes.
Written in Python ops on full activations instead, the same maths cost more than its
collectives (docs/scaling.md).

The two collectives are plain c10d calls inside the autograd function (as torch's SyncBatchNorm
does), not functional collectives, which add their own dispatch and wait to each call. On gloo
the backward sum is an all-gather and a local sum: gloo's all-reduce of a few hundred floats
costs several times its all-gather (docs/scaling.md, "Part 4"), and the gathered rows summed in
rank order give every rank the same sum. Each collective runs inside a named profiler scope
(``SYNC_SCOPES``), which the scaling benchmarks count.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.profiler import record_function

LOW_PRECISION = (torch.float16, torch.bfloat16)  # statistics of these are taken in float32


def distributed_active() -> bool:
    """True inside a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


SYNC_GATHER, SYNC_SUM = "sync_norm::all_gather", "sync_norm::sum_over_ranks"
SYNC_SCOPES = (SYNC_GATHER, SYNC_SUM)
GATHER_SUM_BACKENDS = ("gloo",)  # backends whose sum over ranks is an all-gather and a local sum
# all-gather into one (world * n) tensor; renamed in newer torch, the old name deprecated
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def all_gather_rows(row: torch.Tensor, scope: str = SYNC_GATHER) -> torch.Tensor:
    """(world size, len(row)): every rank's 1-D ``row``, in rank order (no gradient); the
    collective runs in the profiler scope ``scope``."""
    out = row.new_empty(dist.get_world_size() * row.numel())
    with record_function(scope):
        _all_gather(out, row.contiguous())
    return out.view(-1, row.numel())


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """The sum of every rank's 1-D ``t`` (no gradient), the same on every rank."""
    if dist.get_backend() in GATHER_SUM_BACKENDS:
        return all_gather_rows(t, SYNC_SUM).sum(0)
    t = t.clone()
    with record_function(SYNC_SUM):
        dist.all_reduce(t)
    return t


def _merge_moments(counts: torch.Tensor, means: torch.Tensor, variances: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, biased variance, count) of the union of W groups, from each group's (rows of
    ``counts`` (W, 1), ``means`` and ``variances`` (W, C)): Chan's parallel formula, so no
    E[x^2] - E[x]^2 cancellation and the merge matches the single-process moments to rounding."""
    total = counts.sum()
    mean = (counts * means).sum(0) / total
    var = (counts * (variances + (means - mean) ** 2)).sum(0) / total
    return mean, var, total


def batch_moments(x: torch.Tensor, dims: list[int], sync: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, biased variance, count) of ``x`` over ``dims``; over all ranks when ``sync``.

    Differentiable through the statistics (whitening uses the mean). Each rank's (count, mean,
    variance) travel in one differentiable all-gather and are merged by :func:`_merge_moments`:
    one collective per call forward and one backward.
    """
    mean, var = x.mean(dims), x.var(dims, unbiased=False)
    count = x.new_tensor(float(x.numel() // mean.numel()))
    if not (sync and distributed_active()):
        return mean, var, count
    per_rank = _gather_rows(torch.cat([mean.flatten(), var.flatten(), count.view(1)]))
    merged_mean, merged_var, total = _merge_moments(
        per_rank[:, -1:].detach(), per_rank[:, :mean.numel()], per_rank[:, mean.numel():-1])
    return merged_mean.view_as(mean), merged_var.view_as(var), total


def _gather_rows(row: torch.Tensor) -> torch.Tensor:
    """(world size, len(row)): every rank's ``row``, differentiable (backward sums over ranks)."""
    try:
        from torch.distributed._functional_collectives import all_gather_single_autograd
    except ImportError:  # older torch: the (now deprecated) autograd collectives
        from torch.distributed.nn.functional import all_gather

        return torch.stack(all_gather(row))
    return all_gather_single_autograd(row.unsqueeze(0), 0, dist.group.WORLD)


def _channel_affine(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``x * scale + shift`` per channel (dim 1), in one fused pass: the eval-mode batch-norm
    kernel with mean 0, variance 1 and eps 0 is exactly that map, and on CPU it is faster than
    a broadcast ``addcmul`` on conv activations."""
    zeros, ones = torch.zeros_like(scale), torch.ones_like(scale)
    return F.batch_norm(x, zeros, ones, scale, shift, training=False, momentum=0.0, eps=0.0)


def _channel_view(stat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-channel statistic shaped to broadcast against ``x`` (channels on dim 1)."""
    return stat.view([1, -1] + [1] * (x.dim() - 2))


class _SyncBatchNormFunction(torch.autograd.Function):
    """Batch normalisation over all ranks' batches: one collective forward, one backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None,
                bias: torch.Tensor | None, eps: float
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        xf = x.float() if x.dtype in LOW_PRECISION else x  # as F.batch_norm under autocast
        channels = xf.shape[1]
        # this rank's per-channel mean and biased variance: torch's own one-pass BN kernel
        mean, var = torch.batch_norm_update_stats(xf, None, None, 0.0)
        count = mean.new_full((1,), float(xf.numel() // channels))
        per_rank = all_gather_rows(torch.cat([count, mean, var]))
        mean, var, total = _merge_moments(per_rank[:, :1], per_rank[:, 1:1 + channels],
                                          per_rank[:, 1 + channels:])
        invstd = torch.rsqrt(var + eps)
        scale = invstd if weight is None else weight.to(xf.dtype) * invstd
        shift = -mean * scale if bias is None else bias.to(xf.dtype) - mean * scale
        y = _channel_affine(xf, scale, shift).to(x.dtype)
        ctx.save_for_backward(xf, weight, mean, invstd, total)
        ctx.eps = eps
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.mark_non_differentiable(mean, var, total)
        return y, mean, var, total

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor, *_: Any
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, None]:
        xf, weight, mean, invstd, total = ctx.saved_tensors
        dyf = dy.to(xf.dtype)
        # this rank's sum(dy * xhat) and sum(dy) per channel in one pass (torch's BN backward
        # reduction, given the merged mean and invstd); they are the local weight and bias grads
        _, sum_dy_xhat, sum_dy = torch.ops.aten.native_batch_norm_backward(
            dyf, xf, None, None, None, mean, invstd, True, ctx.eps, [False, True, True])
        grad_x = None
        if ctx.needs_input_grad[0]:
            sums = sum_over_ranks(torch.cat([sum_dy, sum_dy_xhat]))
            mean_dy, mean_dy_xhat = (sums / total).chunk(2)
            # dx = w invstd (dy - mean(dy) - xhat mean(dy xhat)) = a dy + b x + c per channel
            a = invstd if weight is None else weight.to(xf.dtype) * invstd
            b = -a * invstd * mean_dy_xhat
            c = -a * mean_dy - b * mean
            grad_x = _channel_affine(xf, b, c).addcmul_(dyf, _channel_view(a, xf)).to(dy.dtype)
        grad_w = sum_dy_xhat.to(weight.dtype) if ctx.needs_input_grad[1] else None
        grad_b = sum_dy.to(ctx.bias_dtype) if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None


def sync_batch_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                    eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training-mode batch norm of ``x`` (channels on dim 1) with statistics over every rank's
    batch: (y, merged mean, merged biased variance, total count); the last three carry no
    gradient. Parameter gradients are this rank's share (DDP sums them over ranks). Needs a
    process group (on one rank use ``F.batch_norm``)."""
    return _SyncBatchNormFunction.apply(x, weight, bias, eps)


class SyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics span all ranks (falls back to plain BatchNorm)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and distributed_active()):
            return super().forward(x)
        self._check_input_dim(x)
        y, mean, var, count = sync_batch_norm(x, self.weight, self.bias, self.eps)
        if self.track_running_stats:
            self._update_running(mean, var, count)
        return y

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
        """Running mean and unbiased running variance, with the momentum rules of BatchNorm."""
        self.num_batches_tracked.add_(1)
        factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                  else self.momentum)
        unbiased = var * count / (count - 1).clamp_min(1)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)


def convert_sync_batchnorm(module: nn.Module, scope: str = "all") -> nn.Module:
    """Replace BatchNorm layers by :class:`SyncBatchNorm`, sharing parameters and buffers (so an
    optimiser built before or after sees the same tensors, and state dict keys hold).

    ``scope`` "all" converts every layer; any other value names the submodule whose layers are
    converted (``"encoder"``), and the layers outside it keep rank-local statistics."""
    if scope != "all":
        parent, _, name = scope.rpartition(".")
        owner = module.get_submodule(parent) if parent else module
        owner.add_module(name, convert_sync_batchnorm(owner.get_submodule(name)))
        return module
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
        out = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        if module.track_running_stats:
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
        return out
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child))
    return module
