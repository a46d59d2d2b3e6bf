"""Data loading at image scale: in-memory domains vs Ray Data streaming (data.loader=ray_data).

On a generated tree of real JPEG files (Office-Home layout, ``--size`` px), prepared as shards:

- loader images/s: ``memory`` decodes every image into uint8 tensors once (``load``), then
  draws batches from memory (``draw``); ``ray_data`` streams one epoch through the pipeline
  the trainer gets (decode and resize in Ray Data's tasks), consumed by W consumers of an equal
  ``streaming_split`` (the W training workers' share; warm pass, after one to start workers);
- step images/s: CDLM's ``train_step`` with ``--model`` on batches of the same data;
- peak RSS of the process that holds the training side (each mode in its own process);
- per-worker RSS under Ray Train: ``--train-steps`` steps of a real run (source-only, ``--model``,
  ``--train-workers`` workers) with each loader, read from the run's own ``sys/`` metrics
  (cdlm_dist.training.memory): each worker's peak, and what loading its data grew it by. The
  streamed run has ``data.max_in_memory_gb`` at a quarter of the images decoded, a size the
  in-memory path refuses (the table says so, with its error).

    python benchmarks/data.py                                   # 2 domains x 256 images, 224 px
    python benchmarks/data.py --images 2048 --workers 1 2 4     # larger
Writes <out>/data.json and <out>/results.md (a Markdown table).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from cdlm_dist.training.memory import LOAD_GROWTH, PEAK_RSS, peak_rss_mb, rank_key

DOMAINS = ("Art", "Clipart")
CLASSES = 8
CAP_OF_DECODED = 4  # the streamed Ray Train run's memory cap: the images decoded, over this


def write_tree(root: Path, per_domain: int, size: int) -> None:
    """Real JPEGs of ``size`` px, a colour per class plus noise (what the tests generate)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for d, domain in enumerate(DOMAINS):
        for i in range(per_domain):
            c = i % CLASSES
            folder = root / "OfficeHome" / domain / f"class_{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            colour = np.array([(c * 97 + d * 31) % 256, (c * 53) % 256, (255 - c * 41) % 256])
            pixels = np.clip(colour + rng.integers(-40, 40, size=(size, size, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:06d}.jpg", quality=90)


def overrides(root: Path, args: argparse.Namespace, *extra: str, batch: int = 0) -> list[str]:
    """The benchmark's task; ``batch`` (global, per domain) 0 is ``--batch``."""
    spec = ", ".join(f"{{name: 'imagefolder:OfficeHome/{d}', labelled: {str(i == 0).lower()}}}"
                     for i, d in enumerate(DOMAINS))
    return [f"data.domains=[{spec}]", f"data.root={root}", f"data.image_size={args.size}",
            "data.channels=3", f"model={args.model}", f"data.batch_size={batch or args.batch}",
            f"data.prepared={root / 'prepared'}", *extra]


def measure_memory(root: Path, args: argparse.Namespace) -> dict:
    from cdlm_dist.config import compose
    from cdlm_dist.data.domains import load_domains
    from cdlm_dist.data.streams import MultiDomainStream

    cfg = compose(overrides(root, args))
    start = time.perf_counter()
    domains = load_domains(cfg.data)
    load = time.perf_counter() - start
    images = sum(len(d.train) + len(d.test) + (len(d.val) if d.val else 0) for d in domains)
    stream = MultiDomainStream([d.train for d in domains], args.batch, 0)
    steps = min(len(d.train) for d in domains) // args.batch
    start = time.perf_counter()
    for step in range(steps):
        stream.batch(step)
    draw = time.perf_counter() - start
    return {"mode": "memory", "workers": 1, "load_images_s": images / load,
            "loader_images_s": steps * args.batch * len(domains) / draw,
            "peak_rss_mb": peak_rss_mb()}


def measure_ray_data(root: Path, args: argparse.Namespace, workers: int) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    import ray

    from cdlm_dist.config import compose
    from cdlm_dist.data.ray_stream import RayDataStream, all_domain_rows, build_datasets

    ray.init(address="local", num_cpus=args.ray_cpus, include_dashboard=False)
    cfg = compose(overrides(root, args, "runner=ray", f"runner.num_workers={workers}",
                            "data.loader=ray_data"))
    rows = [len(r.train) for r in all_domain_rows(cfg.data, 0)]
    splits = [ds.streaming_split(workers, equal=True) for ds in build_datasets(cfg).values()]
    streams = [RayDataStream([s[r] for s in splits], rows, args.batch, 0,
                             cfg.data.shuffle_buffer, r, workers) for r in range(workers)]
    steps = min(streams[0].batches_per_epoch)

    def epoch(rank: int, number: int) -> None:
        for step in range(number * steps, (number + 1) * steps):
            streams[rank].batch(step)

    with ThreadPoolExecutor(workers) as pool:  # W consumers iterate their shards together
        list(pool.map(lambda r: epoch(r, 0), range(workers)))  # starts Ray Data's workers
        start = time.perf_counter()
        list(pool.map(lambda r: epoch(r, 1), range(workers)))
        seconds = time.perf_counter() - start
    return {"mode": "ray_data", "workers": workers,
            "loader_images_s": steps * args.batch * len(rows) / seconds,
            "peak_rss_mb": peak_rss_mb()}


def measure_step(root: Path, args: argparse.Namespace) -> dict:
    import torch

    from cdlm_dist.config import compose
    from cdlm_dist.data.domains import load_domains
    from cdlm_dist.data.streams import MultiDomainStream
    from cdlm_dist.model.cdlm import build_model
    from cdlm_dist.training.step import build_optimizer, train_step

    cfg = compose(overrides(root, args))
    domains = load_domains(cfg.data)
    model = build_model(cfg, len(domains), domains[0].num_classes)
    optimizer = build_optimizer(model, cfg)
    stream = MultiDomainStream([d.train for d in domains], args.batch, 0)
    seconds = []
    for step in range(args.steps + 1):  # the first is a warm-up
        start = time.perf_counter()
        train_step(model, optimizer, stream.batch(step), step, cfg,
                   torch.Generator().manual_seed(step), torch.Generator().manual_seed(step))
        seconds.append(time.perf_counter() - start)
    return {"mode": "step", "model": args.model,
            "step_images_s": args.batch * len(domains) / (sum(seconds[1:]) / args.steps),
            "peak_rss_mb": peak_rss_mb()}


def measure_train(root: Path, args: argparse.Namespace, loader: str) -> dict:
    """Per-worker RSS of a Ray Train run with ``loader``, from its summary (the loop's ``sys/``
    metrics); streamed, under a cap the in-memory path refuses, which is tried first."""
    from cdlm_dist.config import ConfigError
    from cdlm_dist.experiment import run_experiment

    run = args.out / "runs" / f"train_{loader}"
    steps = args.train_steps
    common = overrides(root, args, "method=source_only", "runner=ray",
                       f"runner.num_workers={args.train_workers}",
                       f"runner.num_cpus={args.ray_cpus}", "data.val_fraction=0.05",
                       "data.max_test_per_domain=4", f"train.steps={steps}", "train.log_every=1",
                       f"train.eval_every={steps}", f"train.checkpoint_every={steps}",
                       "train.progress=false", "eval.plots=false", "eval.a_distance=false",
                       "eval.domain_kl=false", "eval.baseline=false", batch=args.train_batch)
    out = {"mode": f"train_{loader}", "workers": args.train_workers}
    if loader == "ray_data":
        out["cap_gb"] = len(DOMAINS) * args.images * 3 * args.size ** 2 / CAP_OF_DECODED / 1e9
        common.append(f"data.max_in_memory_gb={out['cap_gb']}")
        try:
            run_experiment([*common, "name=refused", f"run_dir={run}_refused"],
                           log=lambda *_: None)
        except ConfigError as exc:
            out["refused"] = str(exc).split(";")[0]
        common.append("data.loader=ray_data")
    summary = run_experiment([*common, f"name=train_{loader}", f"run_dir={run}"],
                             log=lambda *_: None)
    ranks = range(args.train_workers)
    return out | {"peak_rss_mb": [summary[rank_key(PEAK_RSS, r)] for r in ranks],
                  "load_growth_mb": [summary[rank_key(LOAD_GROWTH, r)] for r in ranks]}


def _child(mode: str, root: Path, args: argparse.Namespace, workers: int = 1) -> dict:
    """One measurement in a fresh process, so its peak RSS is its own."""
    cmd = [sys.executable, __file__, "--measure", mode, "--measure-workers", str(workers),
           "--root", str(root), "--size", str(args.size), "--batch", str(args.batch),
           "--model", args.model, "--steps", str(args.steps), "--ray-cpus", str(args.ray_cpus),
           "--images", str(args.images), "--out", str(args.out),
           "--train-workers", str(args.train_workers), "--train-batch", str(args.train_batch),
           "--train-steps", str(args.train_steps)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def table(results: list[dict], args: argparse.Namespace) -> list[str]:
    lines = [f"Generated JPEGs at {args.size} px, {len(DOMAINS)} domains x {args.images} images, "
             f"batch {args.batch} per domain (Ray Train runs: {args.train_batch}, "
             f"{args.train_steps} steps, source-only):", "",
             "| measurement | workers | images/s | peak RSS (MB) | loading grew it by (MB) |",
             "|---|---|---|---|---|"]
    for r in results:
        if r["mode"] == "memory":
            lines.append(f"| in-memory: decode and load | 1 | {r['load_images_s']:.0f} | "
                         f"{r['peak_rss_mb']:.0f} | |")
            lines.append(f"| in-memory: draw batches | 1 | {r['loader_images_s']:.0f} | | |")
        elif r["mode"] == "ray_data":
            lines.append(f"| Ray Data: stream (decode in Ray Data tasks) | {r['workers']} | "
                         f"{r['loader_images_s']:.0f} | {r['peak_rss_mb']:.0f} (all consumers) "
                         "| |")
        elif r["mode"] == "step":
            lines.append(f"| training step ({r['model']}) | 1 | {r['step_images_s']:.1f} | "
                         f"{r['peak_rss_mb']:.0f} | |")
        else:
            lines += _train_rows(r)
    return lines


def _train_rows(r: dict) -> list[str]:
    """A Ray Train run's row (each worker's numbers, rank 0 first) and, streamed, the refusal."""
    per_worker = lambda key: ", ".join(f"{v:.0f}" for v in r[key])  # noqa: E731
    loader = "in memory" if r["mode"] == "train_memory" else "Ray Data"
    cap = f", data.max_in_memory_gb={r['cap_gb']:.3f}" if "cap_gb" in r else ""
    rows = [f"| Ray Train, {loader}{cap}: each worker | {r['workers']} | | "
            f"{per_worker('peak_rss_mb')} | {per_worker('load_growth_mb')} |"]
    if cap:
        rows.append(f"| Ray Train, in memory{cap} | {r['workers']} | "
                    f"{r.get('refused', 'NOT refused')} | | |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256, help="images per domain")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16, help="global batch per domain")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--model", default="resnet50", help="the training step's encoder")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps")
    parser.add_argument("--ray-cpus", type=int, default=4, help="logical CPUs of local Ray")
    parser.add_argument("--train-workers", type=int, default=2, help="Ray Train runs' workers")
    parser.add_argument("--train-batch", type=int, default=4,
                        help="Ray Train runs' global batch per domain")
    parser.add_argument("--train-steps", type=int, default=2, help="Ray Train runs' steps")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_data"))
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--measure-workers", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure = {"memory": lambda: measure_memory(args.root, args),
                   "ray_data": lambda: measure_ray_data(args.root, args, args.measure_workers),
                   "step": lambda: measure_step(args.root, args),
                   "train_memory": lambda: measure_train(args.root, args, "memory"),
                   "train_ray_data": lambda: measure_train(args.root, args, "ray_data")
                   }[args.measure]
        print(json.dumps(measure()))
        return
    from cdlm_dist.config import compose
    from cdlm_dist.data.shards import prepare_sharded

    root = args.out / "data"
    if not (root / "OfficeHome").exists():
        write_tree(root, args.images, args.size)
    prepare_sharded(compose(overrides(root, args)), root / "prepared")
    results = [_child("memory", root, args)]
    results += [_child("ray_data", root, args, w) for w in args.workers]
    results.append(_child("step", root, args))
    results += [_child(f"train_{loader}", root, args) for loader in ("memory", "ray_data")]
    (args.out / "data.json").write_text(json.dumps(results, indent=1))
    (args.out / "results.md").write_text("\n".join(table(results, args)) + "\n")
    print("\n".join(table(results, args)))


if __name__ == "__main__":
    main()
