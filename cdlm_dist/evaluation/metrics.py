"""Final evaluation of a trained CDLM (docs/method.md section 5): accuracy, A-distance, domain KL, plots.

Everything here is measured on the test splits' latents mu = mu(E(x)) (the classifier's input at
test time), so a number describes the representation the model actually classifies.

Keys returned by :func:`final_evaluation` (stable; other tools parse them):

- ``test_acc/<domain>``: accuracy of argmax C(mu) on each domain's test split
- ``target_acc``: mean test accuracy over the unlabelled (target) domains; NaN if there are none
- ``target_im/<domain>``, ``target_im``: the label-free information-maximisation score of C(mu) on
  each unlabelled domain's test images, and its mean (see :mod:`cdlm_dist.evaluation.accuracy`)
- ``hbar_pr/<domain>``: participation ratio (effective rank, 1 to latent_dim) of the correlation
  matrix of h, i.e. of the standardised representation hbar that modulates the other domains
- ``sigma_mean/<domain>``: mean posterior standard deviation exp(logvar / 2) (variational models)
- ``a_distance/<a>__<b>``: proxy A-distance between the test latents of domains a and b
- ``domain_kl/<a>__<b>``: KL(N_a || N_b) of diagonal Gaussians fitted to those latents
- ``plot/<name>``: path (a string) of each PNG written, ``<name>`` in :data:`PLOT_FILES`

``<a>__<b>`` runs over every pair of domains with a before b in ``cfg.data.domains`` (for a
two-domain task the single pair source__target).
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from cdlm_dist.config import Config
from cdlm_dist.data.domains import DomainData, Split
from cdlm_dist.data.streams import iterate_split
from cdlm_dist.evaluation.accuracy import test_stats
from cdlm_dist.evaluation.plots import training_curves, translation_grid, tsne_plot
from cdlm_dist.model.cdlm import CDLM, participation_ratio

# Test latents per domain for the A-distance and the KL: enough for a stable linear classifier
# and Gaussian fit, bounded so that a large test split does not make evaluation slow.
MAX_METRIC_POINTS = 2000
HELD_OUT_FRACTION = 0.5  # of the balanced domain-classification set, scored for the A-distance
MIN_POINTS_PER_DOMAIN = 4  # each half of the split needs both domains
LOGREG_MAX_ITER = 1000
A_DISTANCE_MAX = 2.0
VAR_FLOOR = 1e-6  # added to fitted variances: a collapsed latent dimension keeps the KL finite

PLOT_FILES = {"translation_grid": "translation_grid.png", "tsne": "tsne.png",
              "training_curves": "training_curves.png"}
METRICS_LOG = "metrics.jsonl"  # written by the training loop into the run directory


def evenly_spaced(n: int, limit: int | None) -> torch.Tensor:
    """Indices of at most ``limit`` items spread over range(n): deterministic and seed-free."""
    if limit is None or n <= limit:
        return torch.arange(n)
    return torch.linspace(0, n - 1, limit).round().long()


@torch.no_grad()
def latents(model: CDLM, split: Split, batch_size: int, device: torch.device,
            max_points: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu on the CPU, labels) of ``split`` (at most ``max_points``, evenly spaced); eval mode."""
    model.eval()
    split = split.subset(evenly_spaced(len(split), max_points))
    mus = [model.encode(x.to(device))[1].float().cpu()
           for x, _ in iterate_split(split, batch_size)]
    return torch.cat(mus), split.labels


@torch.no_grad()
def latent_diagnostics(model: CDLM, split: Split, batch_size: int, device: torch.device,
                       max_points: int | None = None) -> dict[str, float]:
    """Label-free shape of the latent space on ``split``: ``hbar_pr`` (how many directions the
    modulating representation really spans) and ``sigma_mean`` (how much noise z carries)."""
    model.eval()
    split = split.subset(evenly_spaced(len(split), max_points))
    hs, sigmas = [], []
    for x, _ in iterate_split(split, batch_size):
        h, _, logvar = model.posterior(x.to(device))
        hs.append(h.float().cpu())
        if logvar is not None:
            sigmas.append(torch.exp(0.5 * logvar.float()).mean(1).cpu())
    out = {"hbar_pr": participation_ratio(torch.cat(hs))}
    if sigmas:
        out["sigma_mean"] = float(torch.cat(sigmas).mean())
    return out


def _as_array(features: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    return np.asarray(features, dtype=np.float64)


def a_distance(features_a: torch.Tensor | np.ndarray, features_b: torch.Tensor | np.ndarray,
               seed: int = 0) -> float:
    """Proxy A-distance d_A = 2 (1 - 2 err), clipped to [0, 2] (Ben-David et al.).

    err is the held-out error of a linear domain classifier (standardised logistic regression)
    trained on a seeded, stratified half of the points. The larger domain is subsampled to the
    smaller one's size first, so chance level is exactly err = 0.5 (d_A = 0).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    a, b = _as_array(features_a), _as_array(features_b)
    n = min(len(a), len(b))
    if n < MIN_POINTS_PER_DOMAIN:
        raise ValueError(f"a_distance needs at least {MIN_POINTS_PER_DOMAIN} points per domain, "
                         f"got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    a = a[rng.choice(len(a), n, replace=False)]
    b = b[rng.choice(len(b), n, replace=False)]
    x = np.concatenate([a, b])
    y = np.concatenate([np.zeros(n, dtype=np.int64), np.ones(n, dtype=np.int64)])
    x_fit, x_held, y_fit, y_held = train_test_split(x, y, test_size=HELD_OUT_FRACTION,
                                                    random_state=seed, stratify=y)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=LOGREG_MAX_ITER))
    err = 1.0 - clf.fit(x_fit, y_fit).score(x_held, y_held)
    return float(np.clip(2.0 * (1.0 - 2.0 * err), 0.0, A_DISTANCE_MAX))


def fit_diagonal_gaussian(features: torch.Tensor | np.ndarray
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, variance) per dimension, float64; variance is the ML estimate plus VAR_FLOOR."""
    x = torch.from_numpy(_as_array(features))
    return x.mean(0), x.var(0, unbiased=False) + VAR_FLOOR


def gaussian_kl(features_a: torch.Tensor | np.ndarray,
                features_b: torch.Tensor | np.ndarray) -> float:
    """KL(N_a || N_b) in nats between diagonal Gaussians fitted to each domain's latents.

    Direction: the expectation is under domain a (in :func:`final_evaluation`, the domain listed
    first, usually the source). Closed form, summed over dimensions:
    0.5 * sum(var_a / var_b + (mean_b - mean_a)^2 / var_b - 1 + log var_b - log var_a).
    """
    mean_a, var_a = fit_diagonal_gaussian(features_a)
    mean_b, var_b = fit_diagonal_gaussian(features_b)
    kl = 0.5 * (var_a / var_b + (mean_b - mean_a) ** 2 / var_b - 1.0
                + torch.log(var_b) - torch.log(var_a))
    return float(kl.sum())


def symmetric_gaussian_kl(features_a: torch.Tensor | np.ndarray,
                          features_b: torch.Tensor | np.ndarray) -> float:
    """0.5 * (KL(a || b) + KL(b || a)): an order-free variant of :func:`gaussian_kl`."""
    return 0.5 * (gaussian_kl(features_a, features_b) + gaussian_kl(features_b, features_a))


def pair_key(metric: str, a: DomainData, b: DomainData) -> str:
    """The documented key of a pairwise metric: ``<metric>/<a>__<b>``."""
    return f"{metric}/{a.name}__{b.name}"


def final_evaluation(model: CDLM, domains: list[DomainData], cfg: Config,
                     out_dir: Path) -> dict[str, float | str]:
    """Metrics of ``model``'s current (selected) weights, and the plots of ``cfg.eval.plots``.

    ``domains`` are in the order of ``cfg.data.domains``. Returns the keys listed in this
    module's docstring: floats, plus ``plot/<name>`` -> PNG path (str) for each plot written
    under ``out_dir``. Runs on the device the model's parameters are on; leaves it in eval mode.
    """
    device = next(model.parameters()).device
    batch_size = cfg.data.eval_batch_size
    out: dict[str, float | str] = dict(test_stats(model, domains, cfg.data.domains, batch_size,
                                                  device))
    for d in domains:
        for key, value in latent_diagnostics(model, d.test, batch_size, device,
                                             MAX_METRIC_POINTS).items():
            out[f"{key}/{d.name}"] = value

    ev = cfg.eval
    if not (ev.a_distance or ev.domain_kl or ev.plots):
        return out
    feats = [latents(model, d.test, batch_size, device, MAX_METRIC_POINTS) for d in domains]
    for (i, a), (j, b) in combinations(enumerate(domains), 2):
        if ev.a_distance:
            out[pair_key("a_distance", a, b)] = a_distance(feats[i][0], feats[j][0],
                                                           cfg.train.seed)
        if ev.domain_kl:
            out[pair_key("domain_kl", a, b)] = gaussian_kl(feats[i][0], feats[j][0])
    if ev.plots:
        out |= {f"plot/{name}": str(path)
                for name, path in write_plots(model, domains, cfg, feats, Path(out_dir)).items()}
    return out


def write_plots(model: CDLM, domains: list[DomainData], cfg: Config,
                feats: list[tuple[torch.Tensor, torch.Tensor]], out_dir: Path
                ) -> dict[str, Path]:
    """Write the PNGs of :data:`PLOT_FILES` that apply; returns name -> path of those written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if len(model.decoders) > 0:
        device = next(model.parameters()).device
        images = [d.test.images[evenly_spaced(len(d.test), cfg.eval.grid_rows)].float() / 255.0
                  for d in domains]
        written["translation_grid"] = translation_grid(
            model, [x.to(device) for x in images], out_dir / PLOT_FILES["translation_grid"])
    per_domain = max(cfg.eval.tsne_points // len(domains), 1)
    picks = [evenly_spaced(len(mu), per_domain) for mu, _ in feats]
    written["tsne"] = tsne_plot([mu[p].numpy() for (mu, _), p in zip(feats, picks)],
                                [y[p].numpy() for (_, y), p in zip(feats, picks)],
                                [d.name for d in domains], out_dir / PLOT_FILES["tsne"],
                                cfg.train.seed)
    curves = training_curves(out_dir / METRICS_LOG, out_dir / PLOT_FILES["training_curves"])
    if curves is not None:
        written["training_curves"] = curves
    return written
