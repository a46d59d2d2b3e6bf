"""Peer benchmark: pytorch-adapt's own DANN (Musgrave et al., pytorch-adapt 0.0.83) on the same
data files and splits as ours, for a fixed number of steps and seeds.

    pip install -e '.[peer]'        # pytorch-adapt==0.0.83 + setuptools<82 (its pinned
                                    # torchmetrics 0.9.3 imports pkg_resources, gone in 82)
    python benchmarks/peer.py --data-root ../shared/data                      # 3000 steps, seeds 0 1 2
    python benchmarks/peer.py --data-root ../shared/data --steps 50 --seeds 0 --pairs mnist_to_usps

What is the library's and what is ours:

- the library's: the DANN adapter (``pytorch_adapt.adapters.DANN`` -> ``hooks.DANNHook``: its
  GradientReversal, its DomainLossHook (BCE-with-logits per domain), its MeanWeighter over
  {c_loss, src_domain_loss, target_domain_loss}, its OptimizerHook), its models (``MNISTFeatures``
  as G, ``Classifier(in_size=1200, h=256)`` as C, ``Discriminator(in_size=1200, h=256)`` as D),
  its optimizer container (Adam lr 1e-4 for G, C and D, no scheduler, GRL weight 1 constant),
  its source/target pairing (``SourceDataset``/``TargetDataset``/``CombinedSourceAndTargetDataset``:
  one shuffled pass over target, a uniformly random source image for each target image), its
  MNIST transform (resize to 32, grey -> RGB, ImageNet mean/std), batch 32 per domain. That is the
  recipe of the library's example notebooks examples/getting_started/DANNVanilla.ipynb and
  examples/notebooks/DANNForLoop.ipynb (MNIST -> MNIST-M).
- ours: the data. Domains come from ``cdlm_dist.data.domains.load_domains`` (the same files, the
  same 10 % source validation hold-out and the same seed as our runs), uint8 28 x 28, scaled to
  [0, 1] and then given the library's transform. Training uses source train (without the held-out
  validation part) and target train (no labels); "target_acc" is on the target test split,
  "source_val_acc" on the held-out source validation split (the label-free selection signal).
- not the recipe: the notebooks load G and C pre-trained on MNIST (``mnistG/mnistC(pretrained=
  True)``, downloaded weights); we train them from scratch (no network here, and for usps_to_mnist
  MNIST-trained weights would have seen the target's labels). ``--backbone lenet`` swaps G for the
  digit-adaptation literature's LeNet (as our model=lenet / TLlib's lenet), everything else unchanged.

One JSON-lines file per run under --out (one line per evaluation, the last has "final": true);
a run whose file exists is skipped, so an interrupted benchmark resumes run by run (a run that was
cut short left only a .partial file and starts over).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

PAIRS = ["mnist_to_usps", "usps_to_mnist"]
RECIPE_BATCH = 32  # per domain (DataloaderCreator(batch_size=32) in DANNVanilla.ipynb)
RECIPE_LR = 1e-4  # Adam, G, C and D (pytorch_adapt/adapters/utils.py default_optimizer_tuple)
RECIPE_SIZE = 32  # get_mnist_transform: T.Resize(32) for "mnist"


def _import_peer():
    try:
        import pytorch_adapt  # noqa: F401
        from pytorch_adapt.adapters import DANN  # noqa: F401  (fails without pkg_resources)
    except ModuleNotFoundError as exc:
        raise SystemExit(
            f"benchmarks/peer.py needs pytorch-adapt 0.0.83 ({exc}). Install it with "
            "pip install 'pytorch-adapt==0.0.83' 'setuptools<82' (its pinned torchmetrics 0.9.3 "
            "imports pkg_resources, which setuptools 82 removed).") from exc


def build_lenet(channels: int, image_size: int):
    """The literature's LeNet (ADDA, TLlib's lenet, our model=lenet): features of size 500.

    The same trunk as ``cdlm_dist.model.networks.LeNetEncoder`` without its projection to h:
    reusing that class would draw the projection's initial weights from the seeded generator
    before the library's C and D, and so change the peer runs that README "Peer DANN" reports.
    """
    import torch.nn as nn

    side = ((image_size - 4) // 2 - 4) // 2
    net = nn.Sequential(
        nn.Conv2d(channels, 20, 5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(20, 50, 5), nn.Dropout2d(0.5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten(), nn.Linear(50 * side * side, 500), nn.ReLU(), nn.Dropout(0.5),
    )
    return net, 500


def build_models(backbone: str, num_classes: int):
    from pytorch_adapt.models import Classifier, Discriminator, MNISTFeatures

    if backbone == "mnist":
        G, feat = MNISTFeatures(), 48 * 5 * 5  # 1200 at 32 px, as the recipe's in_size=1200
    else:
        G, feat = build_lenet(3, RECIPE_SIZE)
    C = Classifier(num_classes=num_classes, in_size=feat, h=256)
    D = Discriminator(in_size=feat, h=256)
    return G, C, D


def recipe_transform(images):
    """uint8 N x C x 28 x 28 -> the library's MNIST transform: resize 32, RGB, ImageNet mean/std."""
    import torch
    import torchvision.transforms.functional as TF
    from pytorch_adapt.transforms.constants import IMAGENET_MEAN, IMAGENET_STD

    x = images.float().div_(255.0)
    x = TF.resize(x, [RECIPE_SIZE, RECIPE_SIZE], antialias=True)
    if x.shape[1] == 1:
        x = torch.cat([x, x, x], dim=1)  # GrayscaleToRGB
    return TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD)


def accuracy(adapter, split, batch: int = 1000) -> float:
    import torch

    adapter.models.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(split), batch):
            logits = adapter.inference(recipe_transform(split.images[i:i + batch]))["logits"]
            correct += (logits.argmax(1) == split.labels[i:i + batch]).sum().item()
    adapter.models.train()
    return correct / max(len(split), 1)


def run_name(pair: str, seed: int, a) -> str:
    return f"{pair}__pytorch_adapt_dann__{a.backbone}__bs{a.batch_size}__steps{a.steps}__seed{seed}"


def one_run(pair: str, seed: int, a, out: Path) -> dict | None:
    import numpy as np
    import pytorch_adapt
    import torch
    from pytorch_adapt.adapters import DANN
    from pytorch_adapt.containers import Models, Optimizers
    from pytorch_adapt.datasets import CombinedSourceAndTargetDataset, SourceDataset, TargetDataset
    from torch.utils.data import DataLoader, TensorDataset

    from cdlm_dist.config import compose
    from cdlm_dist.data.domains import load_domains

    final = out / f"{run_name(pair, seed, a)}.jsonl"
    if final.exists():
        print(f"{final.name}: exists, skipped", flush=True)
        return None
    random.seed(seed)
    np.random.seed(seed)  # CombinedSourceAndTargetDataset draws source indices with np.random
    torch.manual_seed(seed)

    t0 = time.perf_counter()
    cfg = compose([f"data={pair}", f"data.root={a.data_root}"])
    src, tgt = load_domains(cfg.data, seed)
    load_s = time.perf_counter() - t0

    G, C, D = build_models(a.backbone, src.num_classes)
    adapter = DANN(models=Models({"G": G, "C": C, "D": D}),
                   optimizers=Optimizers((torch.optim.Adam, {"lr": a.lr})))
    adapter.models.train()

    train = CombinedSourceAndTargetDataset(
        SourceDataset(TensorDataset(src.train.images, src.train.labels)),
        TargetDataset(TensorDataset(tgt.train.images, tgt.train.labels)))  # supervised=False: labels dropped
    loader = DataLoader(train, batch_size=a.batch_size, shuffle=True, drop_last=True,
                        num_workers=0, generator=torch.Generator().manual_seed(seed))

    meta = {"pair": pair, "seed": seed, "library": f"pytorch-adapt {pytorch_adapt.__version__}",
            "torch": torch.__version__, "backbone": a.backbone, "batch_size": a.batch_size,
            "lr": a.lr, "steps": a.steps, "threads": torch.get_num_threads(),
            "n_source_train": len(src.train), "n_target_train": len(tgt.train),
            "n_source_val": 0 if src.val is None else len(src.val), "n_target_test": len(tgt.test),
            "data_load_s": round(load_s, 2)}
    partial = final.with_suffix(".jsonl.partial")
    sums: dict[str, float] = {}
    n_sum = 0
    train_s = 0.0
    step = 0
    with partial.open("w") as f:
        f.write(json.dumps({"meta": meta}) + "\n")
        while step < a.steps:
            mark = time.perf_counter()  # step time includes drawing the batch, not evaluations
            for batch in loader:
                batch["src_imgs"] = recipe_transform(batch["src_imgs"])
                batch["target_imgs"] = recipe_transform(batch["target_imgs"])
                losses = adapter.training_step(batch)["total_loss"]
                train_s += time.perf_counter() - mark
                step += 1
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + v
                n_sum += 1
                last = step == a.steps
                if step % a.eval_every == 0 or last:
                    row = {"step": step,
                           "target_acc": accuracy(adapter, tgt.test),
                           "source_val_acc": (None if src.val is None
                                              else accuracy(adapter, src.val)),
                           **{f"loss_{k}": s / n_sum for k, s in sums.items()},
                           "train_s": round(train_s, 3), "s_per_step": train_s / step,
                           "final": last}
                    sums, n_sum = {}, 0
                    f.write(json.dumps(row) + "\n")
                    f.flush()
                    print(f"{pair} seed {seed} step {step}: target acc {row['target_acc']:.4f} "
                          f"source val acc {row['source_val_acc']} "
                          f"({row['s_per_step']:.4f} s/step)", flush=True)
                if last:
                    break
                mark = time.perf_counter()
    os.replace(partial, final)
    return row


def report(out: Path, a) -> str:
    """Markdown: per pair, mean +- std over the finished seeds of the target accuracy at the
    evaluation with the best source validation accuracy (label-free), at the last step, and the
    oracle (best by target labels, reference only), plus seconds per step."""
    import statistics

    lines = ["| pair | library | seeds | target acc (selected by source val) | target acc (last "
             "step) | oracle target acc | s/step |", "|---|---|---|---|---|---|---|"]
    for pair in a.pairs:
        runs = []
        for seed in a.seeds:
            path = out / f"{run_name(pair, seed, a)}.jsonl"
            if path.exists():
                evals = [json.loads(x) for x in path.read_text().splitlines()[1:] if x.strip()]
                best = max(evals, key=lambda e: e["source_val_acc"])  # first maximum
                runs.append((best["target_acc"], evals[-1]["target_acc"],
                             max(e["target_acc"] for e in evals), evals[-1]["s_per_step"]))
        if not runs:
            continue
        cells = [f"{100 * statistics.mean(r[i] for r in runs):.1f} +- "
                 f"{100 * statistics.pstdev([r[i] for r in runs]):.1f}" for i in range(3)]
        lines.append(f"| {pair} | pytorch-adapt DANN ({a.backbone}) | {len(runs)} | "
                     + " | ".join(cells) + f" | {statistics.mean(r[3] for r in runs):.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pairs", nargs="*", default=PAIRS, choices=PAIRS)
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=0, help="0: as our protocol (train=long)")
    p.add_argument("--eval-every", type=int, default=0, help="0: as our protocol (train=long)")
    p.add_argument("--batch-size", type=int, default=RECIPE_BATCH,
                   help="per domain; the recipe's is 32 (ours: 64)")
    p.add_argument("--lr", type=float, default=RECIPE_LR, help="Adam lr of G, C and D")
    p.add_argument("--backbone", choices=["mnist", "lenet"], default="mnist",
                   help="mnist: the library's MNISTFeatures (the recipe); lenet: conv20/conv50/fc500")
    p.add_argument("--data-root", default="../shared/data",
                   help="folder with torchvision's MNIST/ and USPS/")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", default="bench_results/peer")
    p.add_argument("--report-only", action="store_true",
                   help="tabulate the finished runs under --out; train nothing")
    a = p.parse_args(argv)
    from cdlm_dist.config import compose

    protocol = compose(["train=long"]).train
    a.steps, a.eval_every = a.steps or protocol.steps, a.eval_every or protocol.eval_every
    if a.steps < 1 or a.eval_every < 1 or a.batch_size < 1:
        p.error("--steps, --eval-every and --batch-size must be positive")
    a.data_root = str(Path(a.data_root).expanduser().resolve())
    if a.report_only:
        print(report(Path(a.out), a))
        return 0
    import torch

    torch.set_num_threads(a.threads)
    _import_peer()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for pair in a.pairs:
        for seed in a.seeds:
            one_run(pair, seed, a, out)
    print(report(out, a))
    return 0


if __name__ == "__main__":
    sys.exit(main())
