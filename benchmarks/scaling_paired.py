"""Paired scaling measurement: 1 worker against 2, in rounds a few seconds long, so that the
machine's drift cancels out of every ratio (issue 15).

    python benchmarks/scaling_paired.py --rounds 30 --out bench_results/scaling_paired
    python benchmarks/scaling_paired.py --rounds 30 --override model=lenet --out ...

Single runs of ``benchmarks/scaling.py`` could not rank options on this 2-vCPU machine: the same
configuration's 1-worker step measured 138-196 ms between runs minutes apart. Here two processes
(a gloo group) stay up and take turns at a set of **blocks**, a few steps each, in a shuffled
order every round; each round yields one ratio per block against the round's own ``solo`` block,
and the report gives the median and spread of those ratios over the rounds.

Blocks (B = ``--batch`` images per domain; every block runs the loop's ``train_step``):

- ``solo``: rank 0 trains the plain model on B; rank 1 waits in a barrier (its CPU time is
  recorded, to show it is idle). The 1-worker reference.
- ``pair``: both ranks train their own plain model on B, no communication. Two workers' share
  of the machine: the ceiling of weak-scaling efficiency that no software change can lift.
- ``lockstep``: as ``pair`` plus one 4-byte all-reduce after every step: what keeping two
  ranks in step costs (one latency and the wait for the slower rank), nothing more.
- ``weak_nosync``: DDP with per-rank BatchNorm (``train.sync_batchnorm=false``), B per rank.
- ``weak``: DDP as ``runner=ray`` composes it (synchronised BatchNorm), B per rank.
- ``weak_encoder``: ``train.sync_batchnorm_scope=encoder``, B per rank.
- ``weak_nobroadcast``: ``train.ddp_broadcast_buffers=false`` (no broadcast of rank 0's
  BatchNorm buffers before each forward), B per rank.
- ``weak_pinned``: ``weak`` with every thread of rank r (gloo's included) pinned to CPU r, so
  the scheduler cannot move them between the cores.
- ``strong``, ``strong_nosync``: global batch B (B/2 per rank).
- ``comm_syncs``: no compute, only the synced-statistics collectives a ``weak`` step makes (as
  many all-gathers and all-reduces, of the same sizes, counted from one step): their floor.
- ``comm_grads``: no compute, an all-reduce of each DDP gradient bucket's size: its floor.

The weak step's growth over ``solo`` splits into four differences of paired blocks: machine
share (pair - solo), lockstep (lockstep - pair), gradient all-reduce (weak_nosync - lockstep)
and synchronised statistics (weak - weak_nosync). Writes <out>/paired.md, <out>/rounds.json.
CPU only (gloo): a GPU has no co-tenancy question of this kind.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_facts import collective_counter, ddp_buckets  # noqa: E402

DEFAULT_OUT = Path("bench_results/scaling_paired")
FLOAT_BYTES = 4


@dataclass(frozen=True)
class Block:
    """One thing both ranks take turns at; ``per_rank`` is a fraction of ``--batch``."""

    name: str
    kind: str  # "solo", "pair", "lockstep", "ddp" or "comm"
    per_rank: float = 1.0
    overrides: tuple[str, ...] = ()
    pinned: bool = False  # every thread of rank r on CPU r for the block (Linux)


BLOCKS = [
    Block("solo", "solo", 1.0, ("train.sync_batchnorm=false",)),  # one rank syncs nothing
    Block("pair", "pair"),
    Block("lockstep", "lockstep"),
    Block("weak_nosync", "ddp", 1.0, ("train.sync_batchnorm=false",)),
    Block("weak", "ddp"),
    Block("weak_encoder", "ddp", 1.0, ("train.sync_batchnorm_scope=encoder",)),
    Block("weak_nobroadcast", "ddp", 1.0, ("train.ddp_broadcast_buffers=false",)),
    Block("weak_pinned", "ddp", pinned=True),
    Block("strong", "ddp", 0.5),
    Block("strong_nosync", "ddp", 0.5, ("train.sync_batchnorm=false",)),
    Block("comm_syncs", "comm"),
    Block("comm_grads", "comm"),
]
# (block, what solo's step time over the block's step time is)
RATIOS = [("pair", "machine share per worker (weak ceiling)"),
          ("lockstep", "lockstep only"),
          ("weak_nosync", "weak efficiency, sync_batchnorm=false"),
          ("weak", "weak efficiency, default"),
          ("weak_encoder", "weak efficiency, sync_batchnorm_scope=encoder"),
          ("weak_nobroadcast", "weak efficiency, ddp_broadcast_buffers=false"),
          ("weak_pinned", "weak efficiency, each rank's threads pinned to its own CPU"),
          ("strong", "strong speed-up, default"),
          ("strong_nosync", "strong speed-up, sync_batchnorm=false")]
WEAK_PARTS = [("machine share", "pair", "solo"), ("lockstep", "lockstep", "pair"),
              ("gradient all-reduce", "weak_nosync", "lockstep"),
              ("synchronised statistics", "weak", "weak_nosync")]


def compose_block(args: argparse.Namespace, block: Block, world: int):
    """The config a block trains with, composed as ``runner=ray`` composes it."""
    from cdlm_dist.config import compose

    global_batch = round(args.batch * block.per_rank) * world
    return compose(["runner=ray", f"data={args.data}", f"data.batch_size={global_batch}",
                    f"data.max_train_per_domain={args.max_train}",
                    f"train.num_threads={args.threads}", *args.override, *block.overrides])


class Trainer:
    """A model, its optimiser and batch stream on one rank, stepping on from where it stopped."""

    def __init__(self, cfg, domains, rank: int, world: int, out: Path) -> None:
        import torch

        from cdlm_dist.data.streams import MultiDomainStream
        from cdlm_dist.training.context import RunContext
        from cdlm_dist.training.loop import build_for_rank

        ctx = RunContext(out, torch.device("cpu"), rank=rank, world_size=world, live_log=False)
        model, self.optimizer = build_for_rank(cfg, domains, ctx)
        self.model = ctx.wrap_model(model, cfg.train)
        self.stream = MultiDomainStream([d.train for d in domains], cfg.data.batch_size,
                                        cfg.train.seed, rank, world)
        self.cfg, self.rank, self.step_index = cfg, rank, 0

    def step(self) -> None:
        from cdlm_dist.training.step import step_generators, train_step

        s = self.step_index
        train_step(self.model, self.optimizer, self.stream.batch(s), s, self.cfg,
                   *step_generators(s, self.cfg, self.rank))
        self.step_index += 1


SYNC_KINDS = ("all_gather_into_tensor", "all_reduce")  # DDP's buffer broadcast is not one


def sync_collectives(trainer: Trainer) -> list[tuple[str, int]]:
    """(op, numel) of every synced-statistics collective one step of ``trainer`` (a DDP model)
    makes, counted by dispatch as the cost model counts them; no_sync keeps DDP's own
    gradient all-reduce out of the count."""
    counter = collective_counter()
    with trainer.model.no_sync(), counter:
        trainer.step()
    return [(op, nbytes // FLOAT_BYTES) for op, nbytes in counter.collectives
            if op in SYNC_KINDS]


def comm_syncs(syncs: list[tuple[str, int]]) -> None:
    """The same collectives as a step's synchronised statistics, through the same functions,
    with no compute around them."""
    import torch

    from cdlm_dist.model.sync_norm import all_gather_rows, sum_over_ranks

    for op, n in syncs:
        (all_gather_rows if op == "all_gather_into_tensor" else sum_over_ranks)(torch.zeros(n))


def _rank(rank: int, world: int, store: str, args: argparse.Namespace, out: str) -> None:
    import torch
    import torch.distributed as dist

    from cdlm_dist.data.domains import load_domains
    from cdlm_dist.training.context import pin_rank_cpus, pin_threads, usable_cpus

    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        cfg0 = compose_block(args, BLOCKS[0], 1)
        domains = load_domains(cfg0.data, cfg0.train.seed)
        run = Path(out) / f"rank{rank}"
        alone = Trainer(cfg0, domains, 0, 1, run)  # solo, pair and lockstep: no DDP, no sync
        ddp = {b.name: Trainer(compose_block(args, b, world), domains, rank, world, run)
               for b in BLOCKS if b.kind == "ddp"}
        syncs = sync_collectives(ddp["weak"])
        grad_numel = [p.numel() for p in ddp["weak"].model.parameters() if p.requires_grad]
        buckets = [b // FLOAT_BYTES for b in ddp_buckets(FLOAT_BYTES * sum(grad_numel))]
        tick = torch.zeros(1)
        usable = usable_cpus()  # restored after each pinned block

        def run_block(block: Block) -> None:
            if block.kind == "solo":
                if rank == 0:
                    alone.step()
            elif block.kind in ("pair", "lockstep"):
                alone.step()
                if block.kind == "lockstep":
                    dist.all_reduce(tick)
            elif block.kind == "ddp":
                ddp[block.name].step()
            elif block.name == "comm_syncs":
                comm_syncs(syncs)
            else:
                for n in buckets:
                    dist.all_reduce(torch.zeros(n))

        order = random.Random(args.seed)
        rounds = []
        for r in range(args.rounds):
            blocks = BLOCKS[:]
            order.shuffle(blocks)
            row = {}
            for block in blocks:
                if block.pinned:
                    pin_rank_cpus(rank, 1)  # as runner.pin_cpus pins a Ray worker
                for _ in range(args.warm_steps):
                    run_block(block)
                dist.barrier()
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(args.block_steps):
                    run_block(block)
                if block.kind == "solo":  # rank 1 waits here while rank 0 trains
                    dist.barrier()
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                if block.kind == "pair":  # each rank's own time, then meet
                    dist.barrier()
                if block.pinned:
                    pin_threads(usable)
                row[block.name] = {"ms": 1000 * wall / args.block_steps,
                                   "cpu_ms": 1000 * cpu / args.block_steps}
            rounds.append(row)
            if rank == 0:
                print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                    f"{k} {v['ms']:.0f}" for k, v in row.items()), flush=True)
        facts = {"syncs": syncs, "buckets": buckets, "parameters": sum(grad_numel)}
        (Path(out) / f"rank{rank}.json").write_text(json.dumps({"rounds": rounds, **facts}))
    finally:
        dist.destroy_process_group()


def quantiles(values: list[float]) -> tuple[float, float, float]:
    """Median and the 25th and 75th percentiles."""
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[1], q[0], q[2]


def paired_stats(ranks: list[dict]) -> dict:
    """Per-block step ms, the paired ratios and the weak step's split, each as (median, 25th,
    75th percentile) over the rounds; ratios also carry (min, max). A block's step is the mean
    of the ranks' (each rank times its own steps); ``solo``'s is rank 0's, the one training."""
    rounds = range(len(ranks[0]["rounds"]))

    def ms(name: str, r: int) -> float:
        values = [rk["rounds"][r][name]["ms"] for rk in ranks]
        return values[0] if name == "solo" else statistics.fmean(values)

    ratios = {}
    for name, _ in RATIOS:
        values = [ms("solo", r) / ms(name, r) for r in rounds]
        ratios[name] = (*quantiles(values), min(values), max(values))
    return {
        "step_ms": {b.name: quantiles([ms(b.name, r) for r in rounds]) for b in BLOCKS},
        "cpu_ms": {b.name: [quantiles([rk["rounds"][r][b.name]["cpu_ms"] for r in rounds])
                            for rk in ranks] for b in BLOCKS},
        "ratios": ratios,
        "weak_parts": {part: quantiles([ms(a, r) - ms(b, r) for r in rounds])
                       for part, a, b in WEAK_PARTS},
        "weak_growth": quantiles([ms("weak", r) - ms("solo", r) for r in rounds]),
    }


def report(ranks: list[dict], args: argparse.Namespace, command: str) -> str:
    """paired.md: per-block medians, the paired ratios and the weak step's split."""
    stats = paired_stats(ranks)

    def fmt(q: tuple[float, ...], digits: int = 2) -> str:
        return f"{q[0]:.{digits}f} ({q[1]:.{digits}f}-{q[2]:.{digits}f})"

    lines = [f"# Paired scaling: {args.data}, {' '.join(args.override) or 'defaults'}", "",
             f"command: `{command}`", "",
             f"{len(ranks[0]['rounds'])} rounds; every round runs each block once, in a shuffled"
             f" order: {args.warm_steps} untimed step(s), then {args.block_steps} timed. Values"
             " are the median over rounds (25th-75th percentile in brackets). B ="
             f" {args.batch} images per domain. CPU ms: the rank's process CPU time (all its"
             " threads); below the step ms, the rank was waiting or not scheduled.", "",
             "| block | step ms | CPU ms per step, rank 0 | CPU ms per step, rank 1 |",
             "|---|---|---|---|"]
    for b in BLOCKS:
        cpu = stats["cpu_ms"][b.name]
        lines.append(f"| {b.name} | {fmt(stats['step_ms'][b.name], 1)} | {fmt(cpu[0], 1)} | "
                     f"{fmt(cpu[1], 1)} |")
    lines += ["", "| ratio (solo step / block step, paired per round) | median (25th-75th) |"
              " min-max |", "|---|---|---|"]
    for name, what in RATIOS:
        q = stats["ratios"][name]
        lines.append(f"| {what} (`{name}`) | {fmt(q)} | {q[3]:.2f}-{q[4]:.2f} |")
    lines += ["", "Where the weak step's growth over `solo` goes (ms per step, paired "
              "differences):", "", "| part | blocks | ms (25th-75th) | floor without compute |",
              "|---|---|---|---|"]
    floors = {"gradient all-reduce": "comm_grads", "synchronised statistics": "comm_syncs"}
    for part, a, b in WEAK_PARTS:
        floor = floors.get(part)
        floor_text = f"{fmt(stats['step_ms'][floor], 1)} (`{floor}`)" if floor else ""
        lines.append(f"| {part} | {a} - {b} | {fmt(stats['weak_parts'][part], 1)} | "
                     f"{floor_text} |")
    syncs = ranks[0]["syncs"]
    lines += [f"| total | weak - solo | {fmt(stats['weak_growth'], 1)} | |", "",
              f"Parameters {ranks[0]['parameters']:,}; DDP buckets (floats) {ranks[0]['buckets']};"
              f" synced-statistics collectives per weak step: {len(syncs)} "
              f"({sum(op == 'all_gather_into_tensor' for op, _ in syncs)} all-gathers, "
              f"{sum(op == 'all_reduce' for op, _ in syncs)} all-reduces, "
              f"{max((n for _, n in syncs), default=0)} floats at most)."]
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default="mnist5k_to_ucidigits", help="a data preset")
    p.add_argument("--batch", type=int, default=32, help="B: images per domain per worker (weak)")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--block-steps", type=int, default=4, help="timed steps per block")
    p.add_argument("--warm-steps", type=int, default=1, help="untimed steps before each block")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--max-train", type=int, default=1024, help="images per domain")
    p.add_argument("--seed", type=int, default=0, help="seeds the block order")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override added to every block (repeatable)")
    args = p.parse_args(argv)
    if args.rounds < 2 or args.block_steps < 1 or args.batch < 2:
        p.error("need --rounds >= 2, --block-steps >= 1 and --batch >= 2")
    return args


def main(argv: list[str] | None = None) -> int:
    import torch.multiprocessing as mp

    args = parse(argv)
    command = " ".join(["python", "benchmarks/scaling_paired.py",
                        *(sys.argv[1:] if argv is None else argv)])
    args.out.mkdir(parents=True, exist_ok=True)
    compose_block(args, BLOCKS[0], 1)  # a wrong override fails here, before any process starts
    store = args.out.resolve() / "store"
    store.unlink(missing_ok=True)
    mp.spawn(_rank, args=(2, str(store), args, str(args.out.resolve())), nprocs=2, join=True)
    ranks = [json.loads((args.out / f"rank{r}.json").read_text()) for r in range(2)]
    (args.out / "rounds.json").write_text(json.dumps({"command": command, "ranks": ranks}))
    text = report(ranks, args, command)
    (args.out / "paired.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
