"""Sweep benchmark: TPE + ASHA against random search (no early stopping) at the same trial budget,
on the default embedded pair, through the same driver as cdlm-sweep.

    python benchmarks/sweep.py                                   # 8 trials x 300 steps each
    python benchmarks/sweep.py --trials 16 --steps 1500 --epoch-steps 250 --concurrent 2
    python benchmarks/sweep.py --trials 6 --steps 120 --epoch-steps 30   # a quick look

Both strategies search loss.l_adv x loss.l_con (log-uniform) and select by the label-free score
(best source validation accuracy); the selected trial's target accuracy is the oracle column,
reported, never used. "trained steps" sums the steps every trial ran, so ASHA's savings show
next to the wall time. Sweeps are resumable: a strategy whose sweep finished earlier is read back
(its wall time from then). Writes <out>/results.parquet and <out>/results.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import pandas as pd

STRATEGIES = {"tpe+asha": ["sweep.sampler=tpe", "sweep.scheduler=asha"],
              "random": ["sweep.sampler=random", "sweep.scheduler=fifo"]}
BENCH_FILE = "bench.json"
WALL = "wall time (s)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pair", default="mnist5k_to_ucidigits", help="a configs/data preset")
    p.add_argument("--trials", type=int, default=8, help="sweep.num_samples per strategy")
    p.add_argument("--steps", type=int, default=300, help="train.steps of every trial")
    p.add_argument("--epoch-steps", type=int, default=50,
                   help="train.eval_every = train.checkpoint_every (one report to Tune)")
    # unset: the config's default (sweep.max_concurrent_trials, runner.num_cpus, sweep.seed)
    p.add_argument("--concurrent", type=int, help="sweep.max_concurrent_trials")
    p.add_argument("--cpus", type=int, help="runner.num_cpus: local Ray CPUs (0 = the machine's)")
    p.add_argument("--seed", type=int, help="sweep.seed (the samplers' seed)")
    p.add_argument("--out", default="bench_results/sweep")
    p.add_argument("extra", nargs="*", help="more Hydra overrides for both sweeps")
    return p.parse_args(argv)


def cached_row(name: str, args: argparse.Namespace, out: Path) -> dict | None:
    """The row of a strategy whose sweep finished in an earlier run of this benchmark."""
    cached = out / study_name(name) / BENCH_FILE
    if cached.exists():
        row = json.loads(cached.read_text())
        if row["finished trials"] >= args.trials:
            return row
    return None


def study_name(strategy: str) -> str:
    return strategy.replace("+", "_")


def run_strategy(name: str, args: argparse.Namespace, out: Path) -> dict:
    """One sweep: the selected trial and what the search cost."""
    from cdlm_dist.tuning.config import compose_sweep
    from cdlm_dist.tuning.driver import run_sweep

    study = study_name(name)
    chosen = {"runner.num_cpus": args.cpus, "sweep.max_concurrent_trials": args.concurrent,
              "sweep.seed": args.seed}
    overrides = [f"data={args.pair}", *(f"{k}={v}" for k, v in chosen.items() if v is not None),
                 f"train.steps={args.steps}",
                 f"train.eval_every={args.epoch_steps}",
                 f"train.checkpoint_every={args.epoch_steps}", "train.progress=false",
                 f"sweep.num_samples={args.trials}", f"sweep.output_dir={out}",
                 f"sweep.study_name={study}",
                 "sweep.verbose=0", *STRATEGIES[name], *args.extra]
    start = time.time()
    summary = run_sweep(compose_sweep(overrides), log=print)
    wall = time.time() - start
    trials = pd.read_parquet(summary["trials_file"])
    done = trials[trials["finished"]]
    row = {"strategy": name, "finished trials": int(len(done)),
           "stopped early": int((~done["full_budget"]).sum()),
           "trained steps": int(done["step"].sum()),
           "best score (source val)": summary.get("best_score"),
           "its target acc (oracle)": summary.get("best_oracle_target_acc"),
           "best target acc of any trial (oracle-tuned, for reference)":
               float(done["oracle_target_acc"].max()),
           WALL: round(wall, 1),
           "selected params": json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                          for k, v in summary.get("best_params", {}).items()})}
    (out / study / BENCH_FILE).write_text(json.dumps(row, indent=2))
    return row


def to_markdown(frame: pd.DataFrame, args: argparse.Namespace, command: str) -> str:
    cols = list(frame.columns)
    def fmt(column: str, value: object) -> str:
        if not isinstance(value, float):
            return str(value)
        return f"{value:.1f}" if column == WALL else f"{value:.4f}"

    lines = [f"# Sweep benchmark: {args.pair}, {args.trials} trials per strategy, "
             f"{args.steps} steps per trial (reports every {args.epoch_steps})", "",
             f"Command: `{command}`", "",
             "Selection is by the label-free score; target accuracy is the oracle column.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(c, r[c]) for c in cols) + " |" for _, r in frame.iterrows()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    import ray

    try:
        frame = pd.DataFrame([cached_row(name, args, out) or run_strategy(name, args, out)
                              for name in STRATEGIES])
    finally:
        ray.shutdown()
    command = "python benchmarks/sweep.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    frame.to_parquet(out / "results.parquet", index=False)
    (out / "results.md").write_text(to_markdown(frame, args, command.strip()))
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
