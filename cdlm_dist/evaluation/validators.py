"""Label-free validators: scores that rank checkpoints and sweep trials without target labels.

Every validator is a function of one :class:`EvalPass`, what an evaluation of the loop already
computed (the labelled domains' validation predictions with their labels, each unlabelled
domain's test predictions without them), to one float where **higher is better**; none runs a
second pass over the data. ``train.select_by`` picks the checkpoint by one of them and
``sweep.metric`` the trial (docs/method.md section 5). With several unlabelled domains a target
score is the mean over them.

| name | score | paper |
|---|---|---|
| ``src_acc`` | mean source validation accuracy (the default, ``eval_score`` before validators) | DomainBed |
| ``entropy`` | -mean_x H(p(y\\|x)) on the target | Grandvalet & Bengio 2004; Morerio et al. 2018 |
| ``im`` | H(mean_x p(y\\|x)) - mean_x H(p(y\\|x)) on the target (``target_im``) | Gomes et al. 2010 |
| ``snd`` | mean entropy of each target point's softmax(cosine similarity / 0.05) over the others | Saito et al. 2021 |
| ``dev`` | -(importance-weighted source validation cross-entropy, control-variate form) | You et al. 2019 |
| ``acc_im`` | ``src_acc`` x ``im`` / log(#classes) [ours] | - |

``acc_im`` is our combination: source accuracy saturates near 1 on every digit pair, so alone it
cannot tell candidates apart; IM alone also rewards a classifier that is confident and balanced on
the target while it has forgotten the labels. The product (both in [0, 1], no weight to tune) is
high only when the classifier is still right on the source *and* decisive and diverse on the
target. (A gate on a balanced adversarial game was the other candidate; it needs the training
log, not the evaluation pass, and does not exist for methods without a discriminator.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cdlm_dist.evaluation.accuracy import Predictions, entropy
from cdlm_dist.evaluation.metrics import evenly_spaced

SND_TEMPERATURE = 0.05  # Saito et al. 2021's temperature of the neighbourhood softmax
SND_MAX_POINTS = 4000  # SND is quadratic: at most this many evenly spaced target images
SND_CHUNK = 1024  # rows of the similarity matrix held at once
DEV_FOLDS = 2  # cross-fitting folds of the domain classifier (see density_ratios)
DEV_L2 = 1e-3  # ridge penalty of the logistic-regression domain classifier (standardised mu)
DEV_MAX_ITER = 100  # L-BFGS iterations of the domain classifier
DEV_PROB_FLOOR = 1e-6  # domain probabilities are kept in [floor, 1 - floor]: finite weights
STD_FLOOR = 1e-6  # a constant feature is standardised by this instead of 0
VAR_FLOOR = 1e-12  # weights this close to constant leave the control variate nothing to fit


@dataclass
class EvalPass:
    """The outputs of one evaluation that validators read (tensors kept, on the CPU)."""

    sources: list[Predictions]  # the labelled domains' validation splits, labels used
    targets: list[Predictions]  # the unlabelled domains' test splits, labels never read
    num_classes: int


Validator = Callable[[EvalPass], float]


def source_accuracy(ev: EvalPass) -> float:
    """Mean validation accuracy of the labelled domains (0.0 without validation data, as the
    loop's score always was)."""
    accs = [p.acc for p in ev.sources]
    return sum(accs) / len(accs) if accs else 0.0


def _target_mean(ev: EvalPass, score: Callable[[Predictions], float]) -> float:
    values = [score(p) for p in ev.targets]
    return sum(values) / len(values) if values else math.nan


def neg_entropy(ev: EvalPass) -> float:
    """-mean_x H(p(y|x)) on the target, nats: 0 for one-hot predictions, -log C for uniform."""
    return _target_mean(ev, lambda p: -float(entropy(p.probs).mean()))


def information_maximisation(ev: EvalPass) -> float:
    """IM in nats, as the pass's sums computed it (the recorded ``target_im``)."""
    return _target_mean(ev, lambda p: p.im)


def soft_neighbourhood_density(probs: torch.Tensor, temperature: float = SND_TEMPERATURE,
                               max_points: int = SND_MAX_POINTS) -> float:
    """SND (Saito et al. 2021): L2-normalised softmax outputs, cosine similarities to every
    other point (self excluded), a softmax over them at ``temperature``, and the mean entropy
    of those neighbourhood distributions. Dense clusters spread a point's neighbourhood over
    many similar points (high entropy); scattered predictions put it on one (low)."""
    x = probs[evenly_spaced(len(probs), max_points)].float()
    n = len(x)
    if n < 2:
        return math.nan
    f = F.normalize(x, dim=1)
    total = 0.0
    for start in range(0, n, SND_CHUNK):
        sim = f[start:start + SND_CHUNK] @ f.T / temperature
        rows = torch.arange(len(sim))
        sim[rows, rows + start] = -math.inf  # a point is not its own neighbour
        p = torch.softmax(sim, dim=1)
        total += float(-torch.special.xlogy(p, p).sum())
    return total / n


def snd(ev: EvalPass) -> float:
    return _target_mean(ev, lambda p: soft_neighbourhood_density(p.probs))


def _fit_domain_classifier(source: torch.Tensor, target: torch.Tensor
                           ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Logit of P(target | x) from an L2-regularised logistic regression on standardised
    features, fitted by L-BFGS (deterministic, no random state touched)."""
    x = torch.cat([source, target]).double()
    y = torch.cat([torch.zeros(len(source)), torch.ones(len(target))]).double()
    mean, std = x.mean(0), x.std(0).clamp_min(STD_FLOOR)
    z = (x - mean) / std
    w = torch.zeros(z.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=DEV_MAX_ITER, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = z @ w[:-1] + w[-1]
        loss = (F.binary_cross_entropy_with_logits(logits, y)
                + 0.5 * DEV_L2 * w[:-1].square().sum())
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    coef, bias = w[:-1].detach(), w[-1].detach()
    return lambda f: ((f.double() - mean) / std) @ coef + bias


def density_ratios(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """w(x) = p_t(x) / p_s(x) at each source point: (n_s / n_t) P(t|x) / P(s|x) of a domain
    classifier (You et al. 2019, eq. 6).

    The paper fits the classifier on source *training* features, which the evaluation pass does
    not compute; here [ours] the source validation points are cross-fitted: the weights of one
    fold come from a classifier fitted on the other folds (and the matching target folds), so no
    weight comes from a classifier that saw its own point.
    """
    w = torch.empty(len(source), dtype=torch.float64)
    s_fold = torch.arange(len(source)) % DEV_FOLDS
    t_fold = torch.arange(len(target)) % DEV_FOLDS
    limit = math.log((1 - DEV_PROB_FLOOR) / DEV_PROB_FLOOR)
    for k in range(DEV_FOLDS):
        fit_s, fit_t = source[s_fold != k], target[t_fold != k]
        logit = _fit_domain_classifier(fit_s, fit_t)(source[s_fold == k])
        w[s_fold == k] = torch.exp(logit.clamp(-limit, limit)) * len(fit_s) / len(fit_t)
    return w


def dev_risk(weights: torch.Tensor, losses: torch.Tensor) -> float:
    """DEV's control-variate risk (You et al. 2019, eq. 9): mean(w l) + eta mean(w) - eta,
    eta = -Cov(w l, w) / Var(w) (unbiased, as the paper's code). E[w] = 1, so the variate
    only removes variance; with constant weights eta = 0 and the risk is the plain mean loss."""
    w, wl = weights.double(), weights.double() * losses.double()
    var_w = float(w.var()) if len(w) > 1 else 0.0
    eta = 0.0 if var_w < VAR_FLOOR else -float(torch.cov(torch.stack([wl, w]))[0, 1]) / var_w
    return float(wl.mean()) + eta * float(w.mean()) - eta


def deep_embedded_validation(ev: EvalPass) -> float:
    """-DEV risk of the per-image source validation cross-entropy, weighted towards each
    target domain in the classifier's input space (mu); higher is better."""
    if not ev.sources or any(p.features is None or len(p.features) < DEV_FOLDS
                             for p in ev.sources):
        return math.nan
    feats = torch.cat([p.features for p in ev.sources])
    probs = torch.cat([p.probs for p in ev.sources])
    labels = torch.cat([p.labels for p in ev.sources])
    losses = -torch.log(probs.gather(1, labels[:, None]).squeeze(1).double().clamp_min(
        torch.finfo(torch.float64).tiny))

    def one(target: Predictions) -> float:
        if len(target.features) < DEV_FOLDS:
            return math.nan
        return -dev_risk(density_ratios(feats, target.features), losses)

    return _target_mean(ev, one)


def accuracy_times_im(ev: EvalPass) -> float:
    """``src_acc`` x IM / log(#classes): both in [0, 1] (see the module docstring for why)."""
    return source_accuracy(ev) * information_maximisation(ev) / math.log(ev.num_classes)


VALIDATORS: dict[str, Validator] = {
    "src_acc": source_accuracy,
    "entropy": neg_entropy,
    "im": information_maximisation,
    "snd": snd,
    "dev": deep_embedded_validation,
    "acc_im": accuracy_times_im,
}
DESCRIPTIONS = {  # what each score is, for tables, logs and plot labels
    "src_acc": "mean source validation accuracy",
    "entropy": "negative mean target entropy",
    "im": "target information maximisation",
    "snd": "target soft neighbourhood density",
    "dev": "negative deep-embedded-validation risk",
    "acc_im": "source accuracy x normalised target IM",
}
DEFAULT_VALIDATOR = "src_acc"  # today's selection score: train.select_by's default
KEY_PREFIX = "validator/"  # history and log key of each score: validator/<name>


def validator_key(name: str) -> str:
    """Where an evaluation records validator ``name``'s score."""
    return f"{KEY_PREFIX}{name}"


def describe(name: str) -> str:
    """``name (what it scores, label-free)``, e.g. for the score column of a sweep's table."""
    return f"{name}: {DESCRIPTIONS[name]}, label-free"


def score_all(ev: EvalPass) -> dict[str, float]:
    """Every registered validator's score of one evaluation pass, by key."""
    return {validator_key(name): fn(ev) for name, fn in VALIDATORS.items()}
