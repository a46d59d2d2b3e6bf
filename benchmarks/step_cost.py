"""Cost of one training step per method and backbone, split into encoder / decoders /
consistency / rest of the forward pass / backward / optimiser.

    python benchmarks/step_cost.py                          # every method, digits and lenet
    python benchmarks/step_cost.py --models lenet --batch 128 --channels-last

Same batch for every row (random 28 px images, ``--batch`` per domain, two domains), one torch
thread. "ms/step" is the mean wall time of ``--steps`` unprofiled ``train_step`` calls after
``--warmup``; the split comes from a separate profiled pass (``torch.profiler``) over the named
scopes that ``CDLM.forward`` and ``train_step`` open, as percentages of the profiled step, since
the profiler itself adds time. Writes <out>/step_cost.parquet and <out>/step_cost.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

METHODS = ["source_only", "dann", "vae", "cdlm"]
MODELS = ["digits", "lenet"]
SCOPES = ["encoder", "decoders", "consistency", "forward", "backward", "optimizer"]


def make_step(overrides: list[str], batch: int, num_domains: int = 2, channels_last: bool = False,
              device: str = "cpu", compile_backend: str = ""):
    """A zero-argument function running one ``train_step`` of the composed config on fixed
    random data (a new step index each call) on ``device``, and the config.
    ``compile_backend``: wrap the model in ``torch.compile`` with that backend ("" = eager)."""
    import torch

    from cdlm_dist.config import DomainConfig, compose
    from cdlm_dist.model import build_model
    from cdlm_dist.training.step import build_optimizer, train_step

    cfg = compose(overrides)
    if num_domains != len(cfg.data.domains):
        cfg.data.domains = [DomainConfig(name=f"d{k}", labelled=k == 0)
                            for k in range(num_domains)]
    model = build_model(cfg, num_domains, 10)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt)
    opt = build_optimizer(model, cfg)
    if compile_backend:
        model = torch.compile(model, backend=compile_backend)
    shape = (batch, cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
    data = [(torch.rand(shape, device=device).contiguous(memory_format=fmt),
             torch.randint(10, (batch,), device=device)) for _ in range(num_domains)]
    counter = iter(range(10**9))

    def step() -> None:
        s = next(counter)
        train_step(model, opt, data, s, cfg, torch.Generator().manual_seed(s))

    return step, cfg


def seconds_per_step(step, steps: int, warmup: int, sync=lambda: None) -> float:
    """Mean wall time of ``steps`` calls of ``step`` after ``warmup`` untimed ones; ``sync``
    waits for queued work (``torch.cuda.synchronize`` on a GPU, whose calls return early)."""
    for _ in range(warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - start) / steps


def profile_split(step, steps: int) -> dict[str, float]:
    """Share of each named scope in the profiled steps' CPU time (nested scopes overlap:
    encoder, decoders and consistency lie inside forward)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wall = time.perf_counter() - start
    totals = {e.key: e.cpu_time_total for e in prof.key_averages() if e.key in SCOPES}
    return {k: totals.get(k, 0.0) / 1e6 / wall for k in SCOPES}


def measure(model: str, method: str, batch: int, steps: int, warmup: int,
            channels_last: bool) -> dict:
    import torch

    torch.set_num_threads(1)
    step, _ = make_step([f"model={model}", f"method={method}", "data=mnist_to_usps"], batch,
                        channels_last=channels_last)
    sec = seconds_per_step(step, steps, warmup)
    share = profile_split(step, max(steps // 2, 3))
    enc, dec, con = share["encoder"], share["decoders"], share["consistency"]
    return {"model": model, "method": method, "batch": batch, "channels_last": channels_last,
            "ms_per_step": 1000 * sec, "encoder": enc, "decoders": dec, "consistency": con,
            "forward_rest": max(share["forward"] - enc - dec - con, 0.0),
            "backward": share["backward"], "optimizer": share["optimizer"]}


def table(rows) -> str:
    lines = ["| model | method | ms/step | x DANN (same model) | encoder | decoders | consistency "
             "| rest of forward | backward | optimiser |", "|---|---|---|---|" + "---|" * 6]
    dann = {(r["model"], r["channels_last"]): r["ms_per_step"] for r in rows
            if r["method"] == "dann"}
    for r in rows:
        ref = dann.get((r["model"], r["channels_last"]))
        ratio = f"{r['ms_per_step'] / ref:.2f}" if ref else "n/a"
        parts = " | ".join(f"{100 * r[k]:.0f} %" for k in
                           ("encoder", "decoders", "consistency", "forward_rest", "backward",
                            "optimizer"))
        lines.append(f"| {r['model']}{' (channels-last)' if r['channels_last'] else ''} "
                     f"| {r['method']} | {r['ms_per_step']:.1f} | {ratio} | {parts} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="*", default=MODELS)
    p.add_argument("--methods", nargs="*", default=METHODS)
    p.add_argument("--batch", type=int, default=64, help="images per domain")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--channels-last", action="store_true", help="also time channels-last")
    p.add_argument("--out", default="bench_results/step_cost")
    a = p.parse_args(argv)
    formats = [False, True] if a.channels_last else [False]
    rows = [measure(m, meth, a.batch, a.steps, a.warmup, cl)
            for m in a.models for cl in formats for meth in a.methods]
    import pandas as pd

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(out / "step_cost.parquet", index=False)
    cmd = " ".join(sys.argv[1:] if argv is None else argv)
    md = (f"Command: `python benchmarks/step_cost.py {cmd}`\n\n"
          f"Batch {a.batch} per domain (2 domains), 28 px, 1 torch thread, mean of {a.steps} "
          "steps; the split is each scope's share of a profiled step.\n\n" + table(rows) + "\n")
    (out / "step_cost.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
