"""One prepared GPU run: environment, correctness, throughput (plain loop vs our local runner vs
Ray Train), ResNet-50 and a full-budget accuracy table, stopping by itself at a time limit.

On the device machine (a bare copy of the working tree; torch may not be installed yet):

    python -m pip install -e . && python benchmarks/gpu.py --time-limit 480 --out $OUT/gpu

(with no package index in reach but the dependencies installed: pip install --no-deps
--no-build-isolation -e .). Run directories and checkpoints go to --runs, outside --out, so
what comes back is the tables.

Here:

    make bench-gpu                                           # the same, into bench_results/gpu
    python benchmarks/gpu.py --smoke --out /tmp/gpu_smoke    # CPU, about a minute (the test runs it)

Sections, in order; every row is written to <out>/results.json and <out>/results.md the moment
it is measured, so a run stopped by the limit (or killed) keeps what it measured:

1. environment: torch / CUDA / cuDNN versions, device name, bf16 support, the peak FLOP/s used;
2. correctness: two CDLM steps on the CPU and on the GPU from the same weights and batch give the
   same losses (within LOSS_RTOL); AMP's loss curve over 200 steps stays within AMP_BAND of fp32's;
3. throughput of CDLM and DANN on digits (model=lenet, the accuracy benchmark's backbone):
   (a) ``train_step`` called directly on one fixed batch, (b) ``run_local`` (the loop: data
   stream, logging, the final evaluation outside the timed windows), (c) ``run_ray`` with one GPU
   worker; batch 64/256/1024 per domain, fp32 and bf16 AMP, eager and ``torch.compile`` (the
   plain loop only: the runners have no compile key). Repeats are interleaved across cases.
   Reports the Ray overhead (c)/(a), peak GPU memory and the share of the device's peak FLOP/s
   (FLOPs of one step from ``torch.utils.flop_counter`` / step time);
4. ResNet-50 at 224 px (the Office-31 path; random weights, synthetic images): images/s in fp32
   and AMP, contiguous and channels-last;
5. accuracy at a full budget (10k steps, seeds 0-2, source_only/dann/vae/cdlm) as parallel
   processes on the one GPU, for as long as the limit allows (benchmarks/accuracy.py's jobs).

Data: throughput and correctness use the embedded mnist5k_to_ucidigits (inside installed
packages, so a bare copy of the repository has it); accuracy uses mnist_to_usps and
usps_to_mnist when --data-root holds MNIST/ and USPS/, else the embedded pairs. The output says
which. ``--smoke`` runs every path a CPU can (Ray Train with one CPU worker included) at tiny
sizes and records each CUDA-only measurement as "skipped: no CUDA".
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import time
import traceback
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import METHODS as ACCURACY_METHODS  # noqa: E402
from accuracy import REAL_PAIRS, Job, build_jobs, one_run  # noqa: E402
from accuracy import table as accuracy_table  # noqa: E402
from scaling import window_seconds  # noqa: E402
from step_cost import make_step, seconds_per_step  # noqa: E402

DIGITS_DATA = "mnist5k_to_ucidigits"  # embedded: a bare copy of the repository has it
EMBEDDED_PAIRS = ["mnist5k_to_ucidigits", "mnist5k_to_mnistm_synth"]
DIGITS = ["model=lenet"]  # the accuracy benchmark's backbone (accuracy.PROTOCOL)
METHODS = ["cdlm", "dann"]
NUM_DOMAINS = 2
LOSS_RTOL = 5e-3  # CPU vs GPU: cuDNN convolutions use TF32 by default (10-bit mantissa)
LOSS_ATOL = 1e-5  # terms that are 0 at step 0 (GRL and KL warm-ups)
CHECK_STEPS = 2  # the second step's losses include the first update
CHECK_BATCH = 32
AMP_BAND = 0.10  # bf16's windowed mean loss within 10 % of fp32's at every window
BAND_WINDOW = 20  # steps averaged per window of the AMP band
MIB = 2**20
TERA = 1e12
STOP_MARGIN_S = 15  # kept free at the end for writing results and shutting Ray down
POLL_S = 1.0  # how often the accuracy scheduler looks at its processes
# Dense peak TFLOP/s from NVIDIA's data sheets: (bf16 tensor cores, fp32 without tensor cores).
# The first name found in the device's name wins, so specific names come before their prefixes.
PEAK_TFLOPS = [("H100 PCIe", 756.0, 51.2), ("H200", 989.4, 66.9), ("H100", 989.4, 66.9),
               ("A100", 312.0, 19.5), ("L40S", 362.1, 91.6), ("L4", 121.0, 30.3),
               ("A10", 125.0, 31.2)]


@dataclass
class Settings:
    """Sizes of a GPU run, and of --smoke (CPU, about a minute)."""

    batches: list[int] = field(default_factory=lambda: [256, 1024, 64])  # priority order
    amps: list[bool] = field(default_factory=lambda: [False, True])
    repeats: int = 3  # plain-loop repeats, interleaved over all cases
    runner_repeats: int = 2  # (a)/(b)/(c) passes, interleaved
    ray_keys: int = 0  # measure Ray for the first N (method, batch, amp) keys; 0 = all
    compile_keys: int = 0  # torch.compile for the first N keys; 0 = all
    compile_backend: str = "inductor"
    plain_steps: int = 50
    plain_warmup: int = 10
    log_every: int = 20  # runner cases: the first window is the warm-up
    windows: int = 5
    max_test: int = 1000  # test images per domain in the runners' final evaluation
    threads: int = 4  # torch CPU threads in every case (Ray workers get as many CPUs)
    ray_cpus: int = 0  # a local Ray instance's logical CPUs; 0 = the machine's
    band_steps: int = 200
    band_batch: int = 64
    resnet_size: int = 224
    resnet_batch: int = 64
    resnet_steps: int = 20
    resnet_warmup: int = 5
    acc_steps: int = 10_000
    acc_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    acc_methods: list[str] = field(default_factory=lambda: list(ACCURACY_METHODS))
    acc_pairs: int = 0  # 0 = every pair
    acc_eval_every: int = 500
    acc_parallel: int = 12  # runs at a time on the one GPU (1 CPU thread each)
    # A first guess of each kind of measurement's cost (s) until one has been timed; then the
    # slowest one timed counts. A measurement that would not end before its phase does is skipped.
    cost_guess_s: dict[str, float] = field(default_factory=lambda: {
        "plain": 10, "compile": 120, "local": 20, "ray": 60, "resnet": 30})


GPU = Settings()
SMOKE = replace(GPU, batches=[8], amps=[False], repeats=2, runner_repeats=1, ray_keys=1,
                compile_keys=1, compile_backend="eager", plain_steps=3, plain_warmup=1,
                log_every=3, windows=2, max_test=64, threads=1, ray_cpus=4, band_steps=60,
                band_batch=16, resnet_size=64, resnet_batch=2, resnet_steps=2, resnet_warmup=1,
                acc_steps=10, acc_seeds=[0], acc_methods=["source_only", "cdlm"], acc_pairs=1,
                acc_eval_every=5, acc_parallel=2,
                cost_guess_s={"plain": 5, "compile": 20, "local": 15, "ray": 60, "resnet": 10})


class TimeLimit(BaseException):
    """The hard stop (SIGALRM): a BaseException, so no measurement's ``except`` swallows it."""


class Clock:
    """Seconds since the start, and the slowest timed cost of each kind of measurement."""

    def __init__(self, guess_s: dict[str, float]) -> None:
        self.start = time.monotonic()
        self.guess_s = guess_s
        self.cost: dict[str, float] = {}

    def now(self) -> float:
        return time.monotonic() - self.start

    def fits(self, kind: str, until: float) -> bool:
        return self.now() + self.cost.get(kind, self.guess_s[kind]) < until

    @contextmanager
    def timed(self, kind: str):
        t0 = time.monotonic()
        yield
        self.cost[kind] = max(self.cost.get(kind, 0.0), time.monotonic() - t0)


class Results:
    """Everything measured, rewritten to <out> after every row (a stopped run keeps it)."""

    def __init__(self, out: Path, meta: dict) -> None:
        self.out = out
        self.data: dict = {"meta": meta, "environment": {}, "correctness": [], "throughput": [],
                           "resnet50": [], "accuracy": [], "skipped": [], "notes": []}
        out.mkdir(parents=True, exist_ok=True)

    def add(self, section: str, row: dict) -> None:
        self.data[section].append(row)
        self.save()

    def skip(self, section: str, what: str, why: str) -> None:
        self.add("skipped", {"section": section, "what": what, "why": why})

    def save(self, plots: bool = False) -> None:
        tmp = self.out / "results.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.out / "results.json")
        (self.out / "results.md").write_text(render(self.data))
        if plots:
            plot_throughput(self.data["throughput"], self.out / "throughput.png")
            band = next((r for r in self.data["correctness"] if "curves" in r), None)
            if band:
                plot_band(band, self.out / "amp_band.png")


# ---- devices -----------------------------------------------------------------------------------
def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_mib(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / MIB if device.startswith("cuda") else None


def peak_tflops(name: str) -> tuple[float, float] | None:
    """(bf16, fp32) dense peak TFLOP/s of a known device, else None."""
    return next(((bf16, fp32) for key, bf16, fp32 in PEAK_TFLOPS if key in name), None)


def environment(device: str) -> dict:
    import ray
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__,
           "torch built with CUDA": torch.version.cuda or "none",
           "cuDNN": torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
           else "none", "ray": ray.__version__, "CPUs": os.cpu_count(), "device": device}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        peak = peak_tflops(props.name)
        env |= {"device name": props.name, "compute capability": f"{props.major}.{props.minor}",
                "memory GiB": round(props.total_memory / 2**30, 1),
                "bf16 supported": torch.cuda.is_bf16_supported(),
                "peak TFLOP/s bf16 / fp32 (dense)": f"{peak[0]} / {peak[1]}" if peak else "n/a"}
    return env


def cpu_autocast_works() -> bool:
    """Whether bf16 autocast runs on this CPU (the AMP band check's stand-in for --smoke)."""
    import torch

    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    except (RuntimeError, AssertionError):
        return False


# ---- correctness -------------------------------------------------------------------------------
def step_losses(model, cfg, batch, device: str) -> list[dict[str, float]]:
    """The loss terms of CHECK_STEPS train_steps of ``model`` on ``batch``, on ``device``."""
    import torch

    from cdlm_dist.training.step import build_optimizer, train_step

    model = copy.deepcopy(model).to(device)
    opt = build_optimizer(model, cfg)
    data = [(x.to(device), y.to(device)) for x, y in batch]
    return [{k: float(v) for k, v in train_step(model, opt, data, s, cfg,
                                                torch.Generator().manual_seed(s)).items()}
            for s in range(CHECK_STEPS)]


def check_cpu_vs_device(device: str) -> dict:
    """Same weights, same batch, dropout off (its masks come from each device's own RNG)."""
    import torch

    from cdlm_dist.config import compose
    from cdlm_dist.model import build_model

    cfg = compose([f"data={DIGITS_DATA}", *DIGITS, "method=cdlm", "model.dropout=0.0"])
    torch.manual_seed(0)
    model = build_model(cfg, NUM_DOMAINS, 10)
    g = torch.Generator().manual_seed(0)
    shape = (CHECK_BATCH, cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
    batch = [(torch.rand(shape, generator=g), torch.randint(10, (CHECK_BATCH,), generator=g))
             for _ in range(NUM_DOMAINS)]
    ref, got = step_losses(model, cfg, batch, "cpu"), step_losses(model, cfg, batch, device)
    worst = max(abs(g_[k] - r[k]) / (LOSS_ATOL + LOSS_RTOL * abs(r[k]))
                for r, g_ in zip(ref, got) for k in r if k.startswith("loss/"))
    return {"check": f"CDLM losses, cpu vs {device}, {CHECK_STEPS} steps",
            "tolerance": f"|d| <= {LOSS_ATOL} + {LOSS_RTOL} x |cpu|", "worst / tolerance": worst,
            "passed": worst <= 1.0, "cpu": ref, device: got}


def amp_band(device: str, domains, s: Settings) -> dict:
    """fp32 and bf16 training from the same start on the same batches: windowed mean losses."""
    import torch

    from cdlm_dist.config import compose
    from cdlm_dist.data.streams import MultiDomainStream
    from cdlm_dist.model import build_model
    from cdlm_dist.training.loop import seed_everything
    from cdlm_dist.training.step import build_optimizer, train_step

    base = [f"data={DIGITS_DATA}", *DIGITS, "method=cdlm", f"data.batch_size={s.band_batch}",
            f"train.steps={s.band_steps}"]
    on_cuda = device.startswith("cuda")
    # train.amp is bf16 autocast on CUDA; on a CPU this script wraps the whole step instead
    runs = {"fp32": (compose(base), nullcontext),
            "bf16": (compose([*base, "train.amp=true"]), nullcontext if on_cuda else
                     lambda: torch.autocast("cpu", dtype=torch.bfloat16))}
    curves = {}
    for name, (cfg, autocast) in runs.items():
        seed_everything(0)
        model = build_model(cfg, NUM_DOMAINS, domains[0].num_classes).to(device)
        opt = build_optimizer(model, cfg)
        stream = MultiDomainStream([d.train for d in domains], s.band_batch, 0)
        losses = []
        for step in range(s.band_steps):
            with autocast():
                losses.append(train_step(model, opt, stream.batch(step, device), step, cfg,
                                         torch.Generator().manual_seed(step))["loss/total"].float())
        curves[name] = torch.stack(losses).cpu().tolist()  # one sync, at the end
    means = {k: [statistics.fmean(v[i:i + BAND_WINDOW]) for i in range(0, len(v), BAND_WINDOW)]
             for k, v in curves.items()}
    worst = max(abs(a - b) / abs(b) for a, b in zip(means["bf16"], means["fp32"]))
    how = "train.amp=true" if on_cuda else "bf16 autocast on the CPU, applied by this script"
    return {"check": f"AMP loss curve ({how}) vs fp32, {s.band_steps} steps",
            "tolerance": f"every {BAND_WINDOW}-step mean within {AMP_BAND:.0%} of fp32's",
            "worst / tolerance": worst / AMP_BAND, "passed": worst <= AMP_BAND,
            "worst relative gap": worst, "curves": curves}


# ---- throughput --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One measured configuration of the digits step."""

    method: str
    batch: int  # per domain
    amp: bool
    compile: bool
    runner: str  # "plain" (train_step called directly), "local" (run_local) or "ray" (run_ray)

    @property
    def label(self) -> str:
        return (f"{self.method}_b{self.batch}_{'bf16' if self.amp else 'fp32'}"
                f"{'_compiled' if self.compile else ''}_{self.runner}")

    @property
    def kind(self) -> str:
        return "compile" if self.compile else self.runner

    def overrides(self) -> list[str]:
        return [f"data={DIGITS_DATA}", *DIGITS, f"method={self.method}",
                f"train.amp={str(self.amp).lower()}"]


def throughput_plan(s: Settings) -> list[tuple[Case, int]]:
    """(case, repeat) in priority order: every plain case first (cheap, and the reference of
    every ratio), then passes of plain/local/ray side by side (CDLM's batches and precisions
    before DANN's), torch.compile after the first pass."""
    keys = [(m, b, amp) for m in METHODS for b in s.batches for amp in s.amps]
    plan = [(Case(*k, False, "plain"), r) for r in range(s.repeats) for k in keys]
    for r in range(s.runner_repeats):
        for i, k in enumerate(keys):
            plan += [(Case(*k, False, "plain"), s.repeats + r), (Case(*k, False, "local"), r)]
            if not s.ray_keys or i < s.ray_keys:
                plan.append((Case(*k, False, "ray"), r))
        if r == 0:
            plan += [(Case(*k, True, "plain"), 0) for i, k in enumerate(keys)
                     if not s.compile_keys or i < s.compile_keys]
    return plan


def flops_per_step(step) -> int:
    """Model FLOPs of one training step (forward and backward), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def measure_plain(case: Case, s: Settings, device: str, flops: dict) -> dict:
    """(a): train_step called directly on one fixed batch, already on the device."""
    import torch

    reset_peak(device)
    step, _ = make_step(case.overrides(), case.batch, NUM_DOMAINS, device=device,
                        compile_backend=s.compile_backend if case.compile else "")
    row = {}
    if case.compile:
        torch.compiler.reset()  # a fresh model is a recompile; past the cache limit, eager
        t0 = time.perf_counter()
        step()  # compiles
        sync(device)
        row["compile_s"] = time.perf_counter() - t0
    elif (case.method, case.batch) not in flops:  # the same with AMP: it changes dtypes only
        flops[case.method, case.batch] = flops_per_step(step)
    sec = seconds_per_step(step, s.plain_steps, s.plain_warmup, lambda: sync(device))
    return row | {"step_ms": 1000 * sec, "peak_mib": peak_mib(device)}


def measure_runner(case: Case, repeat: int, s: Settings, device: str, domains,
                   runs: Path) -> dict:
    """(b) and (c): a whole run; seconds per step from its metrics.jsonl windows (the loop's
    logging syncs), the first window being the warm-up."""
    from cdlm_dist.config import compose
    from cdlm_dist.runners import get_runner

    steps = s.log_every * (s.windows + 1)
    run_dir = (runs / f"{case.label}_r{repeat}").resolve()
    shutil.rmtree(run_dir, ignore_errors=True)
    ov = [*case.overrides(), f"data.batch_size={case.batch}",
          f"data.max_test_per_domain={s.max_test}", f"train.steps={steps}",
          f"train.log_every={s.log_every}", f"train.eval_every={steps}",
          f"train.checkpoint_every={steps}", f"train.num_threads={s.threads}",
          "train.progress=false", "resume=false", f"name=gpu_{case.label}_r{repeat}",
          f"run_dir={run_dir}"]
    if case.runner == "ray":
        ov += ["runner=ray", "runner.num_workers=1", f"runner.cpus_per_worker={s.threads}",
               f"runner.use_gpu={str(device.startswith('cuda')).lower()}",
               f"runner.num_cpus={s.ray_cpus}"]
    else:
        ov.append(f"train.device={device}")
    cfg = compose(ov)
    reset_peak(device)
    get_runner(cfg.runner.name)(cfg, domains, run_dir)
    sec = statistics.median(window_seconds(run_dir, s.log_every))
    shutil.rmtree(run_dir, ignore_errors=True)
    # a Ray worker is another process: its memory is not this one's
    return {"step_ms": 1000 * sec, "peak_mib": peak_mib(device) if case.runner == "local"
            else None}


def run_throughput(s: Settings, device: str, domains, runs: Path, results: Results,
                   clock: Clock, until: float) -> None:
    flops: dict[tuple[str, int], int] = {}
    for case, repeat in throughput_plan(s):
        what = f"{case.label} repeat {repeat}"
        if not clock.fits(case.kind, until):
            results.skip("throughput", what, "time limit")
            continue
        print(f"[{clock.now():.0f} s] throughput: {what}", flush=True)
        row = asdict(case) | {"repeat": repeat}
        try:
            with clock.timed(case.kind):
                row |= (measure_plain(case, s, device, flops) if case.runner == "plain"
                        else measure_runner(case, repeat, s, device, domains, runs))
            row["images_per_s"] = NUM_DOMAINS * case.batch / (row["step_ms"] / 1000)
            row["flops_per_step"] = flops.get((case.method, case.batch))
        except Exception as exc:  # recorded: the GPU run is for finding what breaks
            traceback.print_exc()
            row["error"] = f"{type(exc).__name__}: {exc}"[:500]
        results.add("throughput", row)
    for amp in [a for a in GPU.amps if a not in s.amps]:
        results.skip("throughput", f"every case with amp={amp}", "no CUDA (train.amp is bf16 "
                     "autocast on CUDA only)")


def throughput_summary(rows: list[dict], peak: tuple[float, float] | None) -> list[dict]:
    """Median over repeats per case, with x plain (same method, batch, precision) and % of
    the device's peak (bf16 peak for AMP, fp32 peak otherwise)."""
    ok = [r for r in rows if "error" not in r]
    groups: dict[tuple, list[dict]] = {}
    for r in ok:
        groups.setdefault((r["method"], r["batch"], r["amp"], r["compile"], r["runner"]),
                          []).append(r)
    plain = {k[:3]: statistics.median(x["step_ms"] for x in g) for k, g in groups.items()
             if k[3:] == (False, "plain")}
    out = []
    for (method, batch, amp, compiled, runner), g in sorted(groups.items()):
        ms = statistics.median(x["step_ms"] for x in g)
        flops = g[0].get("flops_per_step")
        tflops = flops / (ms / 1000) / TERA if flops else None
        mems = [x["peak_mib"] for x in g if x.get("peak_mib") is not None]
        ref = plain.get((method, batch, amp))
        out.append({"method": method, "batch": batch, "precision": "bf16" if amp else "fp32",
                    "compile": compiled, "runner": runner, "n": len(g), "ms/step": ms,
                    "images/s": NUM_DOMAINS * batch / (ms / 1000),
                    "x plain": ms / ref if ref else None,
                    "peak MiB": max(mems) if mems else None, "TFLOP/s": tflops,
                    "% of peak": 100 * tflops / peak[0 if amp else 1] if tflops and peak
                    else None})
    return out


# ---- ResNet-50 ---------------------------------------------------------------------------------
def run_resnet(s: Settings, device: str, results: Results, clock: Clock, until: float) -> None:
    """CDLM's Office-31 path: ResNet-50 trunk, synthetic RGB images, random weights."""
    for amp in (False, True):
        for channels_last in (False, True):
            what = (f"cdlm resnet50 {s.resnet_size}px b{s.resnet_batch} "
                    f"{'bf16' if amp else 'fp32'} {'channels-last' if channels_last else 'contiguous'}")
            if amp and not device.startswith("cuda"):
                results.skip("resnet50", what, "no CUDA")
                continue
            if not clock.fits("resnet", until):
                results.skip("resnet50", what, "time limit")
                continue
            print(f"[{clock.now():.0f} s] resnet50: {what}", flush=True)
            row = {"model": "resnet50", "method": "cdlm", "image_size": s.resnet_size,
                   "batch": s.resnet_batch, "amp": amp, "channels_last": channels_last}
            try:
                with clock.timed("resnet"):
                    reset_peak(device)
                    step, _ = make_step(["model=resnet50", "method=cdlm", "data.channels=3",
                                         f"data.image_size={s.resnet_size}",
                                         f"train.amp={str(amp).lower()}"], s.resnet_batch,
                                        NUM_DOMAINS, channels_last=channels_last, device=device)
                    sec = seconds_per_step(step, s.resnet_steps, s.resnet_warmup,
                                           lambda: sync(device))
                row |= {"step_ms": 1000 * sec,
                        "images_per_s": NUM_DOMAINS * s.resnet_batch / sec,
                        "peak_mib": peak_mib(device)}
            except Exception as exc:
                traceback.print_exc()
                row["error"] = f"{type(exc).__name__}: {exc}"[:500]
            results.add("resnet50", row)


# ---- accuracy ----------------------------------------------------------------------------------
def accuracy_pairs(data_root: str) -> tuple[list[str], str]:
    """The real MNIST<->USPS pairs when ``data_root`` has their files, else the embedded ones."""
    from cdlm_dist.data.files import MNIST_FILES, USPS_FILES

    root = Path(data_root).expanduser() if data_root else None
    real = root is not None and all(
        (root / "MNIST" / "raw" / n).exists() for names in MNIST_FILES.values() for n in names
    ) and all((root / "USPS" / n).exists() for n in USPS_FILES.values())
    if real:
        return REAL_PAIRS, f"real MNIST/USPS from {root}"
    why = f"{data_root} lacks MNIST/ or USPS/" if data_root else "no --data-root"
    return EMBEDDED_PAIRS, f"embedded pairs ({why})"


def last_step(job: Job) -> int:
    """The last logged step of an unfinished run (0 if none)."""
    path = job.run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return json.loads(lines[-1])["step"] if lines else 0


def run_accuracy(s: Settings, device: str, data_root: str, runs: Path, results: Results,
                 clock: Clock, until: float) -> None:
    """Runs in parallel processes on the one device until ``until``; unfinished ones are
    recorded with the step they reached (rerunning resumes them: runs are cached by key)."""
    from multiprocessing import get_context

    pairs, source = accuracy_pairs(data_root)
    pairs = pairs[:s.acc_pairs] if s.acc_pairs else pairs
    results.data["meta"]["accuracy data"] = source
    extra = [f"train.device={device}", f"train.eval_every={s.acc_eval_every}",
             f"train.checkpoint_every={s.acc_eval_every}"]
    jobs = build_jobs(pairs, {m: [f"method={m}"] for m in s.acc_methods}, s.acc_seeds,
                      s.acc_steps, extra, str(runs / "accuracy"), data_root)
    os.environ["CDLM_BENCH_THREADS"] = "1"  # one_run's torch threads, in every child
    ctx = get_context("spawn")
    pending, running, started = list(jobs), {}, {}
    try:
        while (pending or running) and clock.now() < until:
            while pending and len(running) < s.acc_parallel:
                job = pending.pop(0)
                running[job] = ctx.Process(target=one_run, args=(job,), daemon=True)
                running[job].start()
                started[job] = time.monotonic()
            for job, proc in list(running.items()):
                if not proc.is_alive():
                    proc.join()
                    del running[job]
                    results.add("accuracy", accuracy_row(job, time.monotonic() - started[job],
                                                         proc.exitcode))
            time.sleep(POLL_S)
    finally:
        for job, proc in running.items():
            proc.terminate()
            proc.join(timeout=10)
            row = accuracy_row(job, time.monotonic() - started[job], None)
            results.add("accuracy", row | {"status": f"stopped at step {last_step(job)} of "
                                           f"{s.acc_steps} (time limit)"})
        for job in pending:
            results.skip("accuracy", f"{job.pair} {job.variant} seed {job.seed}", "time limit")


def accuracy_row(job: Job, wall_s: float, exitcode: int | None) -> dict:
    row = {"pair": job.pair, "method": job.variant, "seed": job.seed, "wall_s": wall_s,
           "run_dir": str(job.run_dir)}
    if job.finished:
        summary = json.loads((job.run_dir / "summary.json").read_text())
        return row | {"status": "finished", "summary": summary | {"variant": job.variant}}
    return row | {"status": f"failed (exit code {exitcode})"}


# ---- output ------------------------------------------------------------------------------------
def fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def pipe_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def render(data: dict) -> str:
    """results.md: one table per section, then what was skipped and why."""
    import pandas as pd

    meta, env = data["meta"], data["environment"]
    peak = peak_tflops(str(env.get("device name", "")))
    text = [f"# GPU benchmark ({meta['mode']})", "", f"Command: `{meta['command']}`", "",
            f"Device: {meta['device']}. Time limit {meta['time_limit_s']} s; "
            f"{meta.get('status', 'running')}.", "",
            f"Data: throughput and correctness on {DIGITS_DATA} (embedded); accuracy on "
            f"{meta.get('accuracy data', 'n/a (not reached)')}.", *data["notes"], "",
            "## Environment", "", pipe_table([{"key": k, "value": v} for k, v in env.items()],
                                             ["key", "value"]), "",
            "## Correctness", "", pipe_table(data["correctness"], [
                "check", "tolerance", "worst / tolerance", "passed",
                *(["error"] if any("error" in r for r in data["correctness"]) else [])]),
            "", "## Throughput (digits, model=lenet)", "",
            "(a) plain: train_step on one fixed batch on the device; (b) local: run_local (data "
            "stream, logging); (c) ray: run_ray, 1 worker. Median over repeats; images/s counts "
            "both domains. % of peak: bf16 peak for bf16 rows, fp32 (non-tensor-core) peak for "
            "fp32 rows, whose convolutions cuDNN runs in TF32 by default.", ""]
    summary = throughput_summary(data["throughput"], peak)
    text.append(pipe_table(summary, ["method", "batch", "precision", "compile", "runner", "n",
                                     "ms/step", "images/s", "x plain", "peak MiB", "TFLOP/s",
                                     "% of peak"]))
    ray = [r for r in summary if r["runner"] == "ray" and r["x plain"]]
    if ray:
        text += ["", "Ray overhead (c)/(a): " + "; ".join(
            f"{r['method']} b{r['batch']} {r['precision']} {r['x plain']:.2f}" for r in ray)]
    compiled = [r for r in data["throughput"] if "compile_s" in r]
    if compiled:
        text += ["", "torch.compile time (first step): " + "; ".join(
            f"{r['method']} b{r['batch']} {r['compile_s']:.0f} s" for r in compiled)]
    errors = [r for r in data["throughput"] + data["resnet50"] if "error" in r]
    text += ["", "## ResNet-50 (random weights, synthetic images)", "",
             pipe_table(data["resnet50"], ["method", "image_size", "batch", "amp",
                                           "channels_last", "step_ms", "images_per_s",
                                           "peak_mib"])]
    finished = [r["summary"] for r in data["accuracy"] if r["status"] == "finished"]
    text += ["", "## Accuracy", ""]
    if finished:
        text.append(accuracy_table(pd.DataFrame(finished)))
    text += [f"- {r['pair']} {r['method']} seed {r['seed']}: {r['status']}"
             for r in data["accuracy"] if r["status"] != "finished"]
    if errors:
        text += ["", "## Errors", ""] + [f"- {r.get('method')} b{r.get('batch')}: {r['error']}"
                                         for r in errors]
    text += ["", "## Skipped", "", pipe_table(data["skipped"], ["section", "what", "why"]), ""]
    return "\n".join(text)


def plot_throughput(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = throughput_summary(rows, None)
    if not summary:
        return
    fig, axes = plt.subplots(1, len(METHODS), figsize=(6 * len(METHODS), 4), squeeze=False)
    for ax, method in zip(axes[0], METHODS):
        mine = [r for r in summary if r["method"] == method]
        for r in mine:
            label = f"{r['runner']}{' compiled' if r['compile'] else ''}"
            ax.scatter(f"b{r['batch']} {r['precision']}", r["images/s"], label=label,
                       marker={"plain": "o", "local": "s", "ray": "^"}[r["runner"]],
                       color="tab:red" if r["compile"] else None)
        handles = {h.get_label(): h for h in ax.collections}
        ax.legend(handles.values(), handles.keys(), fontsize=8)
        ax.set_title(f"{method} (lenet, digits)")
        ax.set_ylabel("images / s (both domains)")
        ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_band(band: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in band["curves"].items():
        ax.plot(curve, label=name, alpha=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("loss/total")
    ax.set_title(band["check"], fontsize=8)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- main --------------------------------------------------------------------------------------
def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench_results/gpu"))
    p.add_argument("--time-limit", type=float, default=480, help="seconds, everything included")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, about a minute")
    p.add_argument("--data-root", default="", help="folder with MNIST/ and USPS/ (optional)")
    p.add_argument("--runs", type=Path, default=Path("bench_results/gpu_runs"),
                   help="run directories and checkpoints (accuracy runs resume from here)")
    p.add_argument("--throughput-until", type=float, default=0.5,
                   help="fraction of the limit at which throughput stops")
    p.add_argument("--resnet-until", type=float, default=0.6,
                   help="fraction of the limit at which ResNet-50 stops; accuracy gets the rest")
    return p.parse_args(argv)


def checked(what: str, check) -> dict:
    """A correctness check's row; one that raises is a failed check, and the run goes on."""
    try:
        return check()
    except Exception as exc:
        traceback.print_exc()
        return {"check": what, "passed": False, "error": f"{type(exc).__name__}: {exc}"[:500]}


def stop(signum, frame) -> None:
    raise TimeLimit


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    import torch

    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        print("no CUDA device: run with --smoke on a CPU", file=sys.stderr)
        return 2
    s, device = (GPU, "cuda") if cuda else (SMOKE, "cpu")
    torch.set_num_threads(s.threads)
    clock = Clock(s.cost_guess_s)
    end = args.time_limit - STOP_MARGIN_S
    signal.signal(signal.SIGALRM, stop)
    signal.alarm(max(1, int(end)))  # the hard stop, should a measurement overrun its guess
    command = " ".join(["python", "benchmarks/gpu.py", *(sys.argv[1:] if argv is None else argv)])
    results = Results(args.out, {"mode": "smoke (CPU)" if args.smoke else "GPU",
                                 "command": command, "device": device,
                                 "time_limit_s": args.time_limit, "settings": asdict(s)})
    section = "environment"
    try:
        results.data["environment"] = environment(device)
        if not cuda:
            results.skip("environment", "GPU name, bf16 support, peak FLOP/s", "no CUDA")
        results.save()
        from cdlm_dist.config import compose
        from cdlm_dist.data.domains import load_domains

        domains = load_domains(compose([f"data={DIGITS_DATA}"]).data, 0)
        section = "correctness"
        print(f"[{clock.now():.0f} s] correctness", flush=True)
        if not cuda:
            results.skip("correctness", "CDLM losses cpu vs GPU", "no CUDA (cpu vs cpu instead)")
        results.add("correctness", checked("CDLM losses, cpu vs device",
                                           lambda: check_cpu_vs_device(device)))
        if cuda or cpu_autocast_works():
            print(f"[{clock.now():.0f} s] AMP band", flush=True)
            results.add("correctness", checked("AMP loss band", lambda: amp_band(device, domains, s)))
        else:
            results.skip("correctness", "AMP loss band", "no CUDA and no CPU bf16 autocast")
        section = "throughput"
        run_throughput(s, device, domains, args.runs, results, clock,
                       args.throughput_until * end)
        import ray

        ray.shutdown()  # frees the CPUs the accuracy processes will use
        section = "resnet50"
        run_resnet(s, device, results, clock, args.resnet_until * end)
        section = "accuracy"
        print(f"[{clock.now():.0f} s] accuracy", flush=True)
        run_accuracy(s, device, args.data_root, args.runs, results, clock, end)
        results.data["meta"]["status"] = f"finished in {clock.now():.0f} s"
    except TimeLimit:
        results.data["meta"]["status"] = (f"stopped by the time limit during {section} after "
                                          f"{clock.now():.0f} s")
    finally:
        signal.alarm(0)
        results.data["meta"]["elapsed_s"] = clock.now()
        results.save(plots=True)
    print((args.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
