"""Predictions of C(mu) on a split: accuracy, and a label-free score of the same pass.

The label-free score is the *information maximisation* (IM) validator of unsupervised domain
adaptation (Gomes et al. 2010; Musgrave et al. 2022, "Three New Validators"): H(mean_x p(y|x)) -
mean_x H(p(y|x)), in nats, between 0 and log(num_classes). It is high when predictions are
confident per image and spread over the classes, and needs no labels, so it may rank target-domain
models where source validation accuracy cannot see the target at all. The same pass can keep each
image's probabilities and features (:class:`Predictions`) for the other label-free validators
(:mod:`cdlm_dist.evaluation.validators`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from cdlm_dist.config import DomainConfig
from cdlm_dist.data.domains import DomainData, Split
from cdlm_dist.data.streams import iterate_split
from cdlm_dist.model.cdlm import CDLM


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each row of a probability matrix."""
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1)


@dataclass
class Predictions:
    """One split's outputs in an evaluation pass: the accuracy and IM of the pass's sums and,
    when kept, the per-image tensors the label-free validators need (on the CPU, every rank's
    rows in split order), so no validator runs a second pass over the data."""

    acc: float
    im: float
    probs: torch.Tensor | None = None  # N x C softmax of C(mu)
    features: torch.Tensor | None = None  # N x D: mu, the classifier's input
    labels: torch.Tensor | None = None  # N; only source-side validators may read them

    @classmethod
    def from_tensors(cls, probs: torch.Tensor, features: torch.Tensor,
                     labels: torch.Tensor) -> Predictions:
        """Predictions of given tensors (tests, benchmarks): acc and IM computed from them."""
        acc = float((probs.argmax(1) == labels).float().mean())
        im = float(entropy(probs.mean(0)) - entropy(probs).mean())
        return cls(acc, im, probs, features, labels)


@torch.no_grad()
def predict(model: CDLM, split: Split, batch_size: int, device: torch.device, rank: int = 0,
            world_size: int = 1,
            all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
            keep: bool = False) -> Predictions:
    """Argmax / softmax C(mu(x)) over ``split`` (sharded over ranks, summed): accuracy (labels)
    and IM (no labels); with ``keep``, also every image's probabilities, mu and label.

    The model is left in eval mode.
    """
    model.eval()
    sums = None  # [correct, count, sum of per-image entropy, sum of p over classes...]
    rows: list[tuple[int, torch.Tensor]] = []  # (first index, [p | mu | y]) of this rank's batches
    for b, (x, y) in enumerate(iterate_split(split, batch_size, rank, world_size)):
        _, mu = model.encode(x.to(device))
        p = torch.softmax(model.classify(mu).float(), 1)
        part = torch.cat([torch.stack([(p.argmax(1).cpu() == y).sum().to(p),
                                       torch.tensor(float(len(y)), device=p.device),
                                       entropy(p).sum()]), p.sum(0)])
        sums = part if sums is None else sums + part
        if keep:
            start = (b * world_size + rank) * batch_size  # iterate_split: every W-th batch
            rows.append((start, torch.cat([p, mu.float(), y.to(p).unsqueeze(1)], 1)))
    if sums is None:  # this rank's shard is empty: contribute zeros of the right length
        sums = torch.zeros(3 + model.num_classes, device=device)
    sums = all_reduce_sum(sums)
    n = sums[1].clamp_min(1)
    im = entropy(sums[3:] / n) - sums[2] / n
    out = Predictions(acc=float(sums[0] / n), im=float(im))
    if keep:
        width = model.num_classes + model.mu_head.out_features + 1
        _keep_rows(out, rows, len(split), width, model.num_classes, device, all_reduce_sum)
    return out


def _keep_rows(out: Predictions, rows: list[tuple[int, torch.Tensor]], n: int, width: int,
               num_classes: int, device: torch.device,
               all_reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Fill ``out``'s tensors with every rank's rows in split order: each rank writes its
    batches into a zero matrix and one sum gathers them (the context offers only sums)."""
    full = torch.zeros(n, width, device=device)
    for start, block in rows:
        full[start:start + len(block)] = block
    full = all_reduce_sum(full).cpu()
    out.probs = full[:, :num_classes]
    out.features = full[:, num_classes:-1]
    out.labels = full[:, -1].long()


def prediction_stats(model: CDLM, split: Split, batch_size: int, device: torch.device,
                     rank: int = 0, world_size: int = 1,
                     all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
                     ) -> dict[str, float]:
    """{"acc", "im"} of :func:`predict` ("acc" uses the labels; "im" does not)."""
    p = predict(model, split, batch_size, device, rank, world_size, all_reduce_sum)
    return {"acc": p.acc, "im": p.im}


def test_stats(model: CDLM, domains: Sequence[DomainData], specs: Sequence[DomainConfig],
               batch_size: int, device: torch.device, rank: int = 0, world_size: int = 1,
               all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
               kept: dict[str, Predictions] | None = None) -> dict[str, float]:
    """Every domain's ``test_acc/<name>``, each unlabelled domain's ``target_im/<name>``, and
    their means over the unlabelled domains, ``target_acc`` and ``target_im`` (NaN if none).

    One pass per test split; the loop's evaluations and the final evaluation both call this.
    ``kept``: filled with each unlabelled domain's :class:`Predictions` (tensors kept) for the
    label-free validators of the same pass.
    """
    out: dict[str, float] = {}
    targets = [d.name for d, spec in zip(domains, specs) if not spec.labelled]
    for d in domains:
        keep = kept is not None and d.name in targets
        stats = predict(model, d.test, batch_size, device, rank, world_size, all_reduce_sum,
                        keep=keep)
        out[f"test_acc/{d.name}"] = stats.acc
        if d.name in targets:
            out[f"target_im/{d.name}"] = stats.im
        if keep:
            kept[d.name] = stats
    mean = lambda key: (sum(out[f"{key}/{n}"] for n in targets) / len(targets)  # noqa: E731
                        if targets else math.nan)
    out["target_acc"], out["target_im"] = mean("test_acc"), mean("target_im")
    return out
