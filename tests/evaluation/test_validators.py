"""Label-free validators on constructed cases whose answer is known, and against pytorch-adapt's
implementations on the same tensors when the optional peer extra is installed."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cdlm_dist.data.domains import Split
from cdlm_dist.evaluation.accuracy import Predictions, predict
from cdlm_dist.evaluation.validators import (
    VALIDATORS,
    EvalPass,
    deep_embedded_validation,
    density_ratios,
    dev_risk,
    information_maximisation,
    neg_entropy,
    score_all,
    soft_neighbourhood_density,
    source_accuracy,
    validator_key,
)

C = 4  # classes of the constructed cases


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _preds(probs: torch.Tensor, features: torch.Tensor | None = None,
           labels: torch.Tensor | None = None) -> Predictions:
    features = probs if features is None else features
    labels = probs.argmax(1) if labels is None else labels
    return Predictions.from_tensors(probs, features, labels)


def _target_only(probs: torch.Tensor) -> EvalPass:
    return EvalPass(sources=[], targets=[_preds(probs)], num_classes=probs.shape[1])


def _clustered(n: int, noise: float, seed: int = 0) -> torch.Tensor:
    """Softmax outputs near the C one-hot corners, ``noise`` = spread of the logits."""
    g = _gen(seed)
    logits = 8.0 * torch.eye(C)[torch.arange(n) % C] + noise * torch.randn(n, C, generator=g)
    return torch.softmax(logits, 1)


def test_entropy_and_im_at_their_extremes():
    uniform = torch.full((8, C), 1.0 / C)
    balanced_one_hot = torch.eye(C).repeat(2, 1)
    collapsed = torch.eye(C)[[0] * 8]
    assert neg_entropy(_target_only(uniform)) == pytest.approx(-math.log(C))
    assert information_maximisation(_target_only(uniform)) == pytest.approx(0.0, abs=1e-6)
    assert neg_entropy(_target_only(balanced_one_hot)) == pytest.approx(0.0, abs=1e-6)
    assert information_maximisation(_target_only(balanced_one_hot)) == pytest.approx(math.log(C))
    assert information_maximisation(_target_only(collapsed)) == pytest.approx(0.0, abs=1e-6)


def test_snd_is_higher_for_well_clustered_target_predictions():
    tight = soft_neighbourhood_density(_clustered(200, noise=0.1))
    scattered = soft_neighbourhood_density(torch.softmax(3 * torch.randn(200, C, generator=_gen()), 1))
    assert tight > scattered
    # each point's neighbourhood spreads almost evenly over its own cluster of 50 (self excluded)
    assert tight == pytest.approx(math.log(49), abs=0.05)


def test_snd_chunks_and_subsampling_change_nothing_below_the_cap():
    probs = _clustered(2100, noise=1.0)  # more rows than one chunk of the similarity matrix
    f = torch.nn.functional.normalize(probs, dim=1)
    sim = f @ f.T / 0.05
    sim.fill_diagonal_(-math.inf)
    p = torch.softmax(sim, 1)
    expected = float(-torch.special.xlogy(p, p).sum(1).mean())
    assert soft_neighbourhood_density(probs) == pytest.approx(expected, rel=1e-5)


def test_dev_is_the_plain_source_loss_when_domains_look_alike():
    g = _gen(1)
    feats = torch.randn(40, 5, generator=g)
    probs = torch.softmax(torch.randn(40, C, generator=g), 1)
    labels = torch.randint(0, C, (40,), generator=g)
    plain_loss = float(-torch.log(probs[torch.arange(40), labels]).mean())
    source = Predictions.from_tensors(probs, feats, labels)
    target = _preds(probs, feats.clone())  # the same feature set: nothing separates the domains
    w = density_ratios(feats, feats.clone())
    assert torch.allclose(w, torch.ones_like(w), atol=1e-6)
    ev = EvalPass(sources=[source], targets=[target], num_classes=C)
    assert deep_embedded_validation(ev) == pytest.approx(-plain_loss, abs=1e-6)
    assert dev_risk(torch.ones(40), torch.arange(40.0)) == pytest.approx(19.5)


def test_density_ratios_recover_a_known_gaussian_shift():
    """Source N(0, 1), target N(1, 1) in 1-D: p_t / p_s = exp(x - 1/2), log-linear in x, which
    a logistic-regression domain classifier can represent exactly."""
    g = _gen(2)
    source, target = torch.randn(4000, 1, generator=g), torch.randn(4000, 1, generator=g) + 1.0
    w = density_ratios(source, target)
    x = source[:, 0].double()
    inside = x.abs() < 1.5  # where both domains have data to fit on
    assert torch.allclose(w[inside].log(), x[inside] - 0.5, atol=0.15)


def test_dev_weights_the_source_points_that_look_like_the_target():
    """Source points in two clusters, the classifier wrong on cluster B only; the target lies on
    B, so DEV's risk is near B's loss while the plain source loss averages both."""
    g = _gen(3)
    a, b = torch.randn(100, 2, generator=g) - 3.0, torch.randn(100, 2, generator=g) + 3.0
    feats = torch.cat([a, b])
    labels = torch.zeros(200, dtype=torch.long)
    right, wrong = torch.tensor([0.9, 0.1 / 3, 0.1 / 3, 0.1 / 3]), torch.full((C,), 0.25)
    probs = torch.cat([right.repeat(100, 1), wrong.repeat(100, 1)])
    source = Predictions.from_tensors(probs, feats, labels)
    target = _preds(probs[:1].repeat(100, 1), torch.randn(100, 2, generator=g) + 3.0)
    risk = -deep_embedded_validation(EvalPass([source], [target], C))
    plain = (math.log(1 / 0.9) + math.log(4)) / 2
    assert risk > plain + 0.4 and risk == pytest.approx(math.log(4), abs=0.2)


def test_registry_scores_every_validator_and_src_acc_is_the_old_score():
    g = _gen(4)
    sources = [_preds(_clustered(30, 1.0, seed=s), labels=torch.randint(0, C, (30,), generator=g))
               for s in (5, 6)]
    ev = EvalPass(sources, [_preds(_clustered(30, 1.0, seed=7))], C)
    scores = score_all(ev)
    assert list(scores) == [validator_key(n) for n in VALIDATORS]
    assert all(math.isfinite(v) for v in scores.values())
    accs = [p.acc for p in sources]
    assert scores[validator_key("src_acc")] == sum(accs) / len(accs) == source_accuracy(ev)
    assert scores[validator_key("acc_im")] == pytest.approx(
        source_accuracy(ev) * information_maximisation(ev) / math.log(C))
    empty = score_all(EvalPass([], [], C))  # nothing to score: 0.0 (as before) and NaNs
    assert empty[validator_key("src_acc")] == 0.0 and math.isnan(empty[validator_key("snd")])


class TableModel(nn.Module):
    """A stand-in model: image i's logits and mu are row i of two tables (index in pixel 0)."""

    num_classes = C

    def __init__(self, logits: torch.Tensor, mu: torch.Tensor) -> None:
        super().__init__()
        self.logits, self.mu = logits, mu
        self.mu_head = nn.Linear(mu.shape[1], mu.shape[1])

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.round(x[:, 0, 0, 0] * 255).long()
        return index, self.mu[index] + 0 * index[:, None]

    def classify(self, mu: torch.Tensor) -> torch.Tensor:
        return self.logits[torch.cdist(mu, self.mu).argmin(1)]


def test_kept_tensors_gathered_over_ranks_equal_one_rank_in_split_order():
    g = _gen(8)
    n = 7
    model = TableModel(torch.randn(n, C, generator=g), torch.randn(n, 3, generator=g))
    images = torch.zeros(n, 1, 2, 2, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    split = Split(images=images, labels=torch.randint(0, C, (n,), generator=g))
    whole = predict(model, split, 2, torch.device("cpu"), keep=True)
    sent: list[list[torch.Tensor]] = [[], []]  # what each rank hands all_reduce_sum, in order
    for rank in range(2):
        predict(model, split, 2, torch.device("cpu"), rank, 2,
                lambda t, r=rank: sent[r].append(t.clone()) or t, keep=True)
    calls = iter(range(len(sent[0])))
    reduced = predict(model, split, 2, torch.device("cpu"), 0, 2,
                      lambda t: (lambda i: sent[0][i] + sent[1][i])(next(calls)), keep=True)
    assert torch.allclose(reduced.probs, whole.probs) and torch.equal(reduced.labels, split.labels)
    assert torch.allclose(reduced.features, model.mu)
    assert reduced.acc == whole.acc


# ---- the peer package: pytorch-adapt's validators on the same tensors -------------------------

def test_validators_match_pytorch_adapt():
    """Conventions (pytorch-adapt reads logits unless layer="preds", the softmax we keep): its
    EntropyValidator is -mean entropy and IMValidator is
    EntropyValidator + DiversityValidator (= H(mean p) - mean H(p)): both ours exactly. Its
    SNDValidator removes self-similarity, ours masks it to -inf: the same softmax. Its DEV
    returns -risk of get_dev_risk on its own MLP domain classifier's weights; the risk formula
    is compared on the same weights and losses (our classifier is a different, cheaper fit)."""
    validators = pytest.importorskip("pytorch_adapt.validators")
    from pytorch_adapt.validators.deep_embedded_validator import get_dev_risk

    probs = _clustered(300, noise=2.0, seed=9)
    ev = _target_only(probs)
    target = {"target_train": {"preds": probs}}
    assert neg_entropy(ev) == pytest.approx(validators.EntropyValidator(layer="preds")(**target), abs=1e-5)
    assert information_maximisation(ev) == pytest.approx(
        validators.IMValidator(layer="preds")(**target), abs=1e-5)
    assert soft_neighbourhood_density(probs) == pytest.approx(
        validators.SNDValidator()(**target), abs=1e-4)
    g = _gen(10)
    weights = torch.rand(300, 1, generator=g) * 2
    losses = torch.rand(300, 1, generator=g)
    assert dev_risk(weights[:, 0], losses[:, 0]) == pytest.approx(
        float(get_dev_risk(weights, losses, None)), rel=1e-6)  # theirs: float32
