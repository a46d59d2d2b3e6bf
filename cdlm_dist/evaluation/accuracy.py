"""Predictions of C(mu) on a split: accuracy, and a label-free score of the same pass.

The label-free score is the *information maximisation* (IM) validator of unsupervised domain
adaptation (Gomes et al. 2010; Musgrave et al. 2022, "Three New Validators"): H(mean_x p(y|x)) -
mean_x H(p(y|x)), in nats, between 0 and log(num_classes). It is high when predictions are
confident per image and spread over the classes, and needs no labels, so it may rank target-domain
models where source validation accuracy cannot see the target at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from cdlm_dist.config import DomainConfig
from cdlm_dist.data.domains import DomainData, Split
from cdlm_dist.data.streams import iterate_split
from cdlm_dist.model.cdlm import CDLM


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each row of a probability matrix."""
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1)


@torch.no_grad()
def prediction_stats(model: CDLM, split: Split, batch_size: int, device: torch.device,
                     rank: int = 0, world_size: int = 1,
                     all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
                     ) -> dict[str, float]:
    """{"acc", "im"} of argmax / softmax C(mu(x)) over ``split`` (sharded over ranks, summed).

    "acc" uses the labels; "im" does not. The model is left in eval mode.
    """
    model.eval()
    sums = None  # [correct, count, sum of per-image entropy, sum of p over classes...]
    for x, y in iterate_split(split, batch_size, rank, world_size):
        _, mu = model.encode(x.to(device))
        p = torch.softmax(model.classify(mu).float(), 1)
        part = torch.cat([torch.stack([(p.argmax(1).cpu() == y).sum().to(p),
                                       torch.tensor(float(len(y)), device=p.device),
                                       entropy(p).sum()]), p.sum(0)])
        sums = part if sums is None else sums + part
    if sums is None:  # this rank's shard is empty: contribute zeros of the right length
        sums = torch.zeros(3 + model.num_classes, device=device)
    sums = all_reduce_sum(sums)
    n = sums[1].clamp_min(1)
    im = entropy(sums[3:] / n) - sums[2] / n
    return {"acc": float(sums[0] / n), "im": float(im)}


def test_stats(model: CDLM, domains: Sequence[DomainData], specs: Sequence[DomainConfig],
               batch_size: int, device: torch.device, rank: int = 0, world_size: int = 1,
               all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
               ) -> dict[str, float]:
    """Every domain's ``test_acc/<name>``, each unlabelled domain's ``target_im/<name>``, and
    their means over the unlabelled domains, ``target_acc`` and ``target_im`` (NaN if none).

    One pass per test split; the loop's evaluations and the final evaluation both call this.
    """
    out: dict[str, float] = {}
    targets = [d.name for d, spec in zip(domains, specs) if not spec.labelled]
    for d in domains:
        stats = prediction_stats(model, d.test, batch_size, device, rank, world_size,
                                 all_reduce_sum)
        out[f"test_acc/{d.name}"] = stats["acc"]
        if d.name in targets:
            out[f"target_im/{d.name}"] = stats["im"]
    mean = lambda key: (sum(out[f"{key}/{n}"] for n in targets) / len(targets)  # noqa: E731
                        if targets else math.nan)
    out["target_acc"], out["target_im"] = mean("test_acc"), mean("target_im")
    return out
