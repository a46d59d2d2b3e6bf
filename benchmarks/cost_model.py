"""A cost model of CDLM data-parallel training on a GPU cluster we cannot run here (issue 15,
part 3): predicted step time and weak / strong efficiency at 1-64 GPUs.

    python benchmarks/cost_model.py                      # table + plot -> bench_results/cost_model
    python benchmarks/cost_model.py --measure-gloo       # first re-time gloo on loopback (~20 s)
    python benchmarks/cost_model.py --precision amp      # bf16 compute instead of TF32
    python benchmarks/cost_model.py --tree               # tree latency across nodes, not ring
    python benchmarks/cost_model.py --override train.sync_batchnorm_scope=encoder   # a variant
    python benchmarks/cost_model.py --gpu-result bench_results/gpu/results.json   # measured 1-GPU

The formulas are in benchmarks/cost_terms.py, every input with its source (MEASURED, PUBLISHED,
ASSUMPTION) in cost_inputs.py, what each model moves and computes in model_facts.py, gloo's
timing in gloo_timing.py and the GPU compute in gpu_compute.py; this file writes the report.
``--gpu-result`` reads benchmarks/gpu.py's results.json and replaces the assumed GPU compute
(lenet: throughput rows, cdlm, plain loop; resnet50: its ResNet-50 rows) with the measured one.
Writes <out>/cost_model.md, <out>/cost_model.csv and <out>/cost_model.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cost_inputs import (  # noqa: E402
    BACKBONES,
    GLOO_MEASURED,
    GPUS,
    GPUS_PER_NODE,
    INTER,
    LAUNCH_US,
    MIB,
    NCCL_BUSBW,
    NVLINK,
    OVERLAP,
    SOURCES,
    SYNCBN_GPU_OVERHEAD,
    T0_US,
)
from cost_terms import cpu_check, predict, resnet50_cross_check  # noqa: E402
from gloo_timing import measure_gloo  # noqa: E402
from gpu_compute import Compute, assumed_gpu_compute, measured_gpu_compute  # noqa: E402
from model_facts import Facts, model_facts, reference_resnet50  # noqa: E402
from scaling import markdown  # noqa: E402

DEFAULT_OUT = Path("bench_results/cost_model")


def pivot(rows: list[dict], mode: str, column: str = "efficiency") -> str:
    """Rows (backbone, interconnect), columns #GPUs."""
    import pandas as pd

    df = pd.DataFrame([r for r in rows if r["mode"] == mode])
    table = df.pivot_table(index=["backbone", "interconnect"], columns="gpus", values=column,
                           sort=False).reset_index()
    table.columns = [str(c) for c in table.columns]
    return markdown(table.round(3))


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backbones = list(BACKBONES)
    fig, axes = plt.subplots(1, len(backbones), figsize=(5 * len(backbones), 4.2), sharey=True)
    colours = dict(zip([i.name for i in INTER], ["tab:blue", "tab:orange", "tab:red"]))
    for ax, backbone in zip(axes, backbones):
        for inter in INTER:
            for mode, style in (("weak", "-"), ("strong", "--")):
                pts = [r for r in rows if (r["backbone"], r["interconnect"], r["mode"])
                       == (backbone, inter.name, mode)]
                ax.plot([r["gpus"] for r in pts], [r["efficiency"] for r in pts], style,
                        marker="o", ms=3, color=colours[inter.name],
                        label=f"{inter.name}, {mode}")
        ax.axvline(GPUS_PER_NODE, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_xticks(GPUS, [str(g) for g in GPUS])
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("GPUs (8 per node; dotted: one node)")
        batch = BACKBONES[backbone]
        ax.set_title(f"{backbone}: weak {batch['weak']}/GPU, strong {batch['strong']} global "
                     "(per domain)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("predicted efficiency")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- main ---------------------------------------------------------------------------------------
def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--measure-gloo", action="store_true",
                   help="time gloo collectives between 2 local processes first (~20 s)")
    p.add_argument("--gloo-json", type=Path, help="gloo costs from an earlier --measure-gloo")
    p.add_argument("--gpu-result", type=Path,
                   help="benchmarks/gpu.py's results.json: measured GPU compute replaces the "
                        "assumed one")
    p.add_argument("--precision", choices=["tf32", "amp"], default="tf32",
                   help="which published ResNet-50 throughput sets the assumed GPU compute")
    p.add_argument("--overlap", type=float, default=OVERLAP,
                   help="fraction of the backward the gradient all-reduce can hide behind")
    p.add_argument("--tree", action="store_true",
                   help="latency of a tree across nodes (log2 n steps; NCCL's choice for small\n"
                        "messages on several nodes) instead of a ring's n - 1")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every backbone (repeatable), e.g.\n"
                        "train.sync_batchnorm_scope=encoder or train.sync_batchnorm=false")
    p.add_argument("--plot-copy", type=Path, help="also write the plot here (docs/images/...)")
    return p.parse_args(argv)


def inputs_text(gloo: dict, computes: dict[str, Compute], facts: dict[str, Facts],
                args: argparse.Namespace) -> list[str]:
    lines = ["## Inputs", "",
             f"- Bus bandwidth and its all-reduce formula: nccl-tests, {NCCL_BUSBW}",
             *[f"- {link.name}: busbw {link.busbw_gbs:g} GB/s, {link.alpha_us:g} us per ring "
               f"step. {link.source}" for link in (NVLINK, *INTER)],
             f"- Per-collective launch t0 = {T0_US:g} us, launch floor {LAUNCH_US:g} us per "
             f"dispatched op, overlap f = {args.overlap:g} of the backward, GPU sync-BN "
             f"arithmetic overhead {SYNCBN_GPU_OVERHEAD:g} x compute: ASSUMPTIONS",
             f"- ResNet-50: PUBLISHED {SOURCES['resnet50']}",
             f"- gloo on loopback, 2 processes (MEASURED here, {gloo['when']}): small all-reduce "
             f"{gloo['allreduce_small_us']:.0f} us, busbw {gloo['allreduce_busbw_gbs']:.2f} GB/s,"
             f" 1 KiB all-gather {gloo['allgather_small_us']:.0f} us, reduce-scatter "
             f"{gloo['reduce_scatter_small_us']:.0f} us",
             "- CPU steps at 1 and 2 workers: MEASURED, docs/scaling.md (part 1)", "",
             "| backbone | parameters | DDP buckets (MiB) | synced-statistics collectives/step "
             "| GFLOP/image (fwd+bwd) | backward share | ops/step | GPU compute |",
             "|---|---|---|---|---|---|---|---|"]
    for name, f in facts.items():
        c = computes[name]
        ops = Counter(op for op, _ in f.collectives)
        lines.append(f"| {name} | {f.params / 1e6:.2f} M | "
                     f"{', '.join(f'{b / MIB:.1f}' for b in f.buckets)} | {f.syncs} ("
                     f"{' + '.join(f'{n} {op}' for op, n in ops.items()) or 'none'}) | "
                     f"{f.flops_per_image / 1e9:.3g} | {f.backward_share:.2f} | {f.ops_per_step} |"
                     f" {1e6 * c.t_img:.1f} us/image, floor {1000 * c.floor:.1f} ms, fixed "
                     f"{1000 * c.t_fixed:.1f} ms ({c.source}) |")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python", "benchmarks/cost_model.py",
                        *(sys.argv[1:] if argv is None else argv)])
    if args.measure_gloo:
        gloo = measure_gloo(args.out)
    elif args.gloo_json:
        gloo = json.loads(args.gloo_json.read_text())
    else:
        gloo = GLOO_MEASURED
    facts = {name: model_facts(name, args.override) for name in BACKBONES}
    ref, ref_params = reference_resnet50()
    computes = {name: assumed_gpu_compute(f, args.precision, ref) for name, f in facts.items()}
    if args.gpu_result:
        computes |= measured_gpu_compute(args.gpu_result, args.precision, facts)
    rows = predict(facts, computes, args.overlap, args.tree)
    check = cpu_check(facts, gloo)
    cross = resnet50_cross_check(ref, ref_params, args.precision, args.overlap)

    import pandas as pd

    pd.DataFrame(rows).to_csv(args.out / "cost_model.csv", index=False)
    largest: dict[tuple, dict] = {}  # the row with the most GPUs of each curve
    for r in rows:
        largest[r["backbone"], r["interconnect"], r["mode"]] = r
    cols = ["backbone", "interconnect", "mode", "gpus", "batch/GPU/domain", "compute ms",
            "syncs ms", "allreduce ms", "allreduce_exposed ms", "step ms", "efficiency",
            "efficiency no overlap", "efficiency sync BN off"]
    latency = "tree" if args.tree else "ring"
    text = [f"# CDLM data-parallel cost model ({args.precision}, {latency} latency across nodes)",
            "", f"command: `{command}`", "",
            *inputs_text(gloo, computes, facts, args), "",
            "## Predicted weak-scaling efficiency (per-GPU batch fixed)", "",
            pivot(rows, "weak"), "",
            "## Predicted strong-scaling efficiency (global batch fixed)", "",
            pivot(rows, "strong"), "",
            "## Terms at the largest GPU count (ms per step)", "",
            markdown(pd.DataFrame(list(largest.values()))[cols].round(3)), "",
            "## Check against the measured CPU points (2 gloo workers)", "",
            markdown(pd.DataFrame(check).round(3)), "",
            "## Cross-check: plain ResNet-50, 8 A100s, batch 256 (no sync BN)", "",
            f"predicted weak efficiency {cross['predicted']:.3f} (no overlap "
            f"{cross['predicted no overlap']:.3f}); published {cross['published']:.3f} "
            f"({SOURCES['resnet50']})", ""]
    (args.out / "cost_model.md").write_text("\n".join(text))
    plot(rows, args.out / "cost_model.png",
         f"CDLM DDP, predicted efficiency ({args.precision}, {latency} latency across nodes, "
         "NVLink inside a node; solid weak, dashed strong)")
    if args.plot_copy:
        args.plot_copy.write_bytes((args.out / "cost_model.png").read_bytes())
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
