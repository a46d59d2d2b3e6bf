"""Classification accuracy of C(mu) on a split, sharded over ranks and summed."""

from __future__ import annotations

from collections.abc import Callable

import torch

from cdlm_dist.data.domains import Split
from cdlm_dist.data.streams import iterate_split
from cdlm_dist.model.cdlm import CDLM


@torch.no_grad()
def accuracy(model: CDLM, split: Split, batch_size: int, device: torch.device, rank: int = 0,
             world_size: int = 1,
             all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> float:
    """Fraction of ``split`` where argmax C(mu(x)) equals the label (model left in eval mode)."""
    model.eval()
    counts = torch.zeros(2, device=device)
    for x, y in iterate_split(split, batch_size, rank, world_size):
        _, mu = model.encode(x.to(device))
        counts[0] += (model.classify(mu).argmax(1).cpu() == y).sum().item()
        counts[1] += len(y)
    counts = all_reduce_sum(counts)
    return float(counts[0] / counts[1].clamp_min(1))
