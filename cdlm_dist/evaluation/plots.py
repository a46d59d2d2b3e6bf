"""The PNGs of the final evaluation: translation grid, t-SNE of latents, training curves.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so plotting works without a
display and does not change any global backend state of the calling process.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from cdlm_dist.model.cdlm import CDLM

# Translation grid layout (pixels). See translation_grid for what each block shows.
TILE_PAD = 1  # between the images of one strip
BLOCK_PAD = 4  # between strips, and around the whole grid
BACKGROUND = 1.0  # white: apart from black digit backgrounds and from an untrained decoder's grey

TSNE_PERPLEXITY = 30.0  # sklearn's default, lowered for small point sets (it must be < n)
TSNE_MIN_POINTS = 8  # below this t-SNE says nothing; the plot is skipped
# One OpenMP thread: for the few hundred points plotted, thread start-up dominates, and on a
# shared machine OpenMP's busy-waiting threads made t-SNE over ten times slower.
TSNE_THREADS = 1
TSNE_MARKER_SIZE = 12
QUALITATIVE_COLOURS = 10  # tab10 up to this many classes, a continuous map beyond
DOMAIN_MARKERS = ("o", "^", "s", "D", "v", "P", "X", "*")
FIGURE_DPI = 120
TSNE_FIGSIZE = (7.0, 6.0)
CURVES_FIGSIZE = (12.0, 4.5)


def grid_size(num_domains: int, rows: int, height: int, width: int) -> tuple[int, int]:
    """(height, width) in pixels of :func:`translation_grid`'s image."""
    strip = rows * height + (rows - 1) * TILE_PAD
    return (num_domains * strip + (num_domains + 1) * BLOCK_PAD,
            (num_domains + 1) * width + (num_domains + 2) * BLOCK_PAD)


def save_image(image: torch.Tensor, path: Path) -> Path:
    """Write a (C, H, W) float image in [0, 1] (C = 1 or 3) as an 8-bit PNG at its exact size."""
    from PIL import Image

    arr = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path)
    return path


@torch.no_grad()
def translation_grid(model: CDLM, images: list[torch.Tensor], path: Path) -> Path:
    """K row blocks (one per domain i) by K + 1 column strips, written as a PNG at ``path``.

    Row block i holds the images x_i of domain i (``images[i]``, (n, C, H, W) in [0, 1], on the
    model's device), one per image row. Column 0 is x_i itself; column 1 + j is G_j(mu(x_i)),
    i.e. ``model.translate(x_i, j)``; j == i is the reconstruction. For two domains this shows
    x_s | G_s(mu_s) | G_t(mu_s) above x_t | G_s(mu_t) | G_t(mu_t). Sizes: :func:`grid_size`.
    """
    model.eval()
    k, n = len(images), min(len(x) for x in images)
    channels, height, width = images[0].shape[1:]
    canvas = torch.full((channels, *grid_size(k, n, height, width)), BACKGROUND)
    block_height = n * height + (n - 1) * TILE_PAD + BLOCK_PAD
    for i, x in enumerate(images):
        columns = [x[:n]] + [model.translate(x[:n], j) for j in range(k)]
        for col, strip in enumerate(columns):
            left = BLOCK_PAD + col * (width + BLOCK_PAD)
            for r, img in enumerate(strip.float().cpu()):
                top = BLOCK_PAD + i * block_height + r * (height + TILE_PAD)
                canvas[:, top:top + height, left:left + width] = img
    return save_image(canvas, path)


def _figure(figsize: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=FIGURE_DPI)
    FigureCanvasAgg(fig)
    return fig


def tsne_plot(features: list[np.ndarray], labels: list[np.ndarray], names: list[str],
              path: Path, seed: int) -> Path | None:
    """Seeded 2-D t-SNE of every domain's latents: colour = class, marker = domain.

    Well-aligned domains show as same-coloured clusters mixing markers. Returns None (and
    writes nothing) with fewer than TSNE_MIN_POINTS points in all.
    """
    from matplotlib.lines import Line2D
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = np.concatenate(features)
    if len(x) < TSNE_MIN_POINTS:
        return None
    perplexity = min(TSNE_PERPLEXITY, (len(x) - 1) / 3)
    with threadpool_limits(limits=TSNE_THREADS, user_api="openmp"):
        emb = TSNE(n_components=2, perplexity=perplexity, init="pca",
                   random_state=seed).fit_transform(x)
    num_classes = int(max(int(y.max()) for y in labels if len(y)) + 1)
    cmap = "tab10" if num_classes <= QUALITATIVE_COLOURS else "turbo"
    fig = _figure(TSNE_FIGSIZE)
    ax = fig.add_subplot()
    handles, start = [], 0
    for k, (f, y, name) in enumerate(zip(features, labels, names)):
        pts, start = emb[start:start + len(f)], start + len(f)
        marker = DOMAIN_MARKERS[k % len(DOMAIN_MARKERS)]
        ax.scatter(pts[:, 0], pts[:, 1], c=y, cmap=cmap, vmin=0, vmax=max(num_classes - 1, 1),
                   marker=marker, s=TSNE_MARKER_SIZE, edgecolors="none")
        handles.append(Line2D([], [], marker=marker, color="black", linestyle="", label=name))
    ax.legend(handles=handles, title="domain (colour = class)")
    ax.set_title("t-SNE of test latents mu")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.savefig(path)
    return path


def read_metrics_log(log_path: Path) -> dict[str, dict[int, float]]:
    """metrics.jsonl -> {metric: {step: value}} (a later line for a step wins)."""
    series: dict[str, dict[int, float]] = defaultdict(dict)
    for line in log_path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    series[key][int(row["step"])] = float(value)
    return dict(series)


def training_curves(log_path: Path, path: Path) -> Path | None:
    """Losses (left) and train/eval accuracies (right) over steps from the loop's metrics.jsonl.

    Returns None (and writes nothing) when the log is missing or holds no metric.
    """
    if not log_path.is_file():
        return None
    series = read_metrics_log(log_path)
    if not series:
        return None
    fig = _figure(CURVES_FIGSIZE)
    panels = {"losses": lambda k: k.startswith("loss/"),
              "accuracy and selection score": lambda k: k == "train/acc" or k.startswith("eval/")}
    for n, (title, wanted) in enumerate(panels.items(), start=1):
        ax = fig.add_subplot(1, len(panels), n)
        for key in sorted(k for k in series if wanted(k)):
            steps = sorted(series[key])
            ax.plot(steps, [series[key][s] for s in steps], label=key,
                    marker="o" if key.startswith("eval/") else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    return path
