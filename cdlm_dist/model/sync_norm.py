"""Batch statistics over every rank's batch, on any device (CPU/gloo included).

``torch.nn.SyncBatchNorm`` refuses CPU tensors, so CPU workers (gloo) would silently train with
per-rank BatchNorm statistics and drift from the single-process model. :class:`SyncBatchNorm`
here merges every rank's batch statistics with a differentiable all-gather (whose backward sums
the gradient over ranks), so N ranks with B/N images each normalise, update running statistics
and back-propagate exactly as one rank with B images (checked in float64 to 1e-12). It is used
on every device so CPU and GPU runs take the same code path.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

LOW_PRECISION = (torch.float16, torch.bfloat16)  # statistics of these are taken in float32


def distributed_active() -> bool:
    """True inside a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def batch_moments(x: torch.Tensor, dims: list[int], sync: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, biased variance, count) of ``x`` over ``dims``; over all ranks when ``sync``.

    Each rank's (count, mean, variance) travel in one all-gather and are merged with Chan's
    parallel formula: one collective per call (as torch's SyncBatchNorm), and no E[x^2] - E[x]^2
    cancellation, so the merged variance matches the single-process one to float rounding.
    """
    mean, var = x.mean(dims), x.var(dims, unbiased=False)
    count = x.new_tensor(float(x.numel() // mean.numel()))
    if not (sync and distributed_active()):
        return mean, var, count
    per_rank = _gather_rows(torch.cat([mean.flatten(), var.flatten(), count.view(1)]))
    counts = per_rank[:, -1:].detach()
    means, variances = per_rank[:, :mean.numel()], per_rank[:, mean.numel():-1]
    total = counts.sum()
    merged_mean = (counts * means).sum(0) / total
    merged_var = (counts * (variances + (means - merged_mean) ** 2)).sum(0) / total
    return merged_mean.view_as(mean), merged_var.view_as(var), total


def _gather_rows(row: torch.Tensor) -> torch.Tensor:
    """(world size, len(row)): every rank's ``row``, differentiable (backward sums over ranks)."""
    try:
        from torch.distributed._functional_collectives import all_gather_single_autograd
    except ImportError:  # older torch: the (now deprecated) autograd collectives
        from torch.distributed.nn.functional import all_gather

        return torch.stack(all_gather(row))
    return all_gather_single_autograd(row.unsqueeze(0), 0, dist.group.WORLD)


def _expand(stat: torch.Tensor, x: torch.Tensor, dims: list[int]) -> torch.Tensor:
    """A per-channel statistic reshaped to broadcast against ``x``."""
    shape = [1 if d in dims else x.shape[d] for d in range(x.dim())]
    return stat.view(shape)


class SyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics span all ranks (falls back to plain BatchNorm)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and distributed_active()):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0] + list(range(2, x.dim()))
        xf = x.float() if x.dtype in LOW_PRECISION else x  # as F.batch_norm under autocast
        mean, var, count = batch_moments(xf, dims, sync=True)
        if self.track_running_stats:
            self._update_running(mean.detach(), var.detach(), count)
        y = (xf - _expand(mean, xf, dims)) * torch.rsqrt(_expand(var, xf, dims) + self.eps)
        if self.affine:
            y = y * _expand(self.weight, xf, dims) + _expand(self.bias, xf, dims)
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
        """Running mean and unbiased running variance, with the momentum rules of BatchNorm."""
        self.num_batches_tracked.add_(1)
        factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                  else self.momentum)
        unbiased = var * count / (count - 1).clamp_min(1)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer by :class:`SyncBatchNorm`, sharing parameters and buffers
    (so an optimiser built before or after sees the same tensors, and state dict keys hold)."""
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
