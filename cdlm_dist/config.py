"""Typed configuration: the one place every option and its default lives.

Hydra composes YAML from ``configs/`` on top of these dataclasses (registered as the
structured schema in :func:`register_configs`), so an unknown key or a wrong type fails at
composition time, before any data is loaded. Options marked [ours] in the docstrings are our
reading of the CDLM papers (see ARCHITECTURE.md), kept here so they change in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING


@dataclass
class DomainConfig:
    """One domain of a transfer task: a registered dataset name and whether its labels train."""

    name: str = MISSING
    labelled: bool = False


@dataclass
class DataConfig:
    """Which domains to train on and how to batch them."""

    preset: str = "custom"  # a human-readable name of the task, e.g. "mnist5k->ucidigits"
    domains: list[DomainConfig] = field(default_factory=list)
    root: str = "~/.cache/cdlm_dist/data"  # where file-backed datasets (mnist, usps, ...) live
    download: bool = False  # let torchvision download missing files (needs the network)
    image_size: int = 28  # every domain is resized to image_size x image_size
    channels: int = 1  # 1 = grey, 3 = RGB; domains are converted (grey is replicated)
    batch_size: int = 64  # per domain and global: summed over Ray workers
    val_fraction: float = 0.1  # held out of each labelled domain's train split for selection
    eval_batch_size: int = 512
    max_train_per_domain: int = 0  # 0 = all; >0 subsamples (fast tests, quick looks)
    max_test_per_domain: int = 0
    # Where training batches come from: "memory" (every worker holds every domain as uint8 and
    # draws the deterministic streams) or "ray_data" (runner=ray only: each worker streams its
    # shard of `cdlm-data prepare --sharded` output through Ray Data; ARCHITECTURE.md).
    loader: str = "memory"
    # What one worker may hold in memory, estimated as N x C x S x S bytes before anything loads
    # (loader=memory: every split; ray_data: the validation and test splits); also Ray Data's
    # object-store budget for streaming. A domain over it fails and suggests data.loader=ray_data.
    max_in_memory_gb: float = 32.0
    prepared: str = ""  # loader=ray_data: the folder `cdlm-data prepare --sharded --out` wrote;
    #                     "" = <data.root>/prepared
    augment: str = "none"  # loader=ray_data train batches: "none" (whole image resized, as in
    #                        memory) or "imagenet" (random resized crop + horizontal flip)
    shuffle_buffer: int = 1024  # loader=ray_data: rows of the per-epoch seeded shuffle buffer


@dataclass
class ModelConfig:
    """CDLM network shapes and the [ours] choices of docs/method.md section 2."""

    encoder: str = "digits"  # "digits" (conv net + BatchNorm), "lenet" (the literature's) or "resnet50"
    pretrained: bool = False  # resnet50: load ImageNet weights (needs the network or a cache)
    latent_dim: int = 64
    hidden_dim: int = 256  # the encoder's last hidden layer and the classifier's hidden layer
    dropout: float = 0.5  # lenet's dropout (after conv 50 and fc 500)
    decoder_arch: str = "conv"  # "conv" (transposed convolutions) or "mlp" (one hidden layer)
    decoder_width: int = 64  # conv: channels of the first feature map (halved per upsampling);
    #                          mlp: width of the hidden layer
    variational: bool = True  # False: z = mu (source-only and DANN use this)
    decoder: str = "per_domain"  # "per_domain", "shared" (+ domain embedding) or "none"
    # [ours] how the partner's standardised representation hbar enters z = mu + sigma * eps + shift:
    # "swap" eps = hbar; "whiten" eps = hbar decorrelated over the batch; "mix" eps =
    # sqrt(1 - a^2) n + a hbar, n ~ N(0, I), a = modulation_alpha; "additive" eps = n + a hbar;
    # "shift" shift = a hbar; "none" eps = n (the plain VAE).
    modulation: str = "swap"
    modulation_alpha: float = 1.0  # a of "mix" (in [0, 1]), "additive" and "shift"
    modulation_grad: bool = True  # gradients flow through the modulating representation
    pairing: str = "all_pairs"  # "all_pairs" | "random_partner" | "mean_of_others" [ours]
    classify_on: str = "z"  # [ours] the classifier trains on "z" (sampled) or "mu"; tests use mu
    logvar_init: float = 0.0  # [ours] initial bias of the log-variance head (sigma = e^(b/2))
    sigma_max: float = 0.0  # [ours] soft cap on sigma (logvar = c - softplus(c - raw)); 0 = none
    grl_on: str = "h"  # [ours] the discriminator sees GRL("h") or GRL("mu")
    discriminator_hidden: int = 256
    discriminator_layers: int = 1  # hidden layers of the domain discriminator
    discriminator_norm: bool = False  # BatchNorm in the discriminator (TLlib's DANN has it)
    use_discriminator: bool = True


@dataclass
class LossConfig:
    """Weights of the loss terms (docs/method.md section 3) and the consistency variant."""

    l_rec: float = 1.0
    beta: float = 1.0  # KL weight after warm-up
    beta_warmup_steps: int = 500
    l_cls: float = 1.0
    # Adversarial weight (searched by sweeps). 0.1, not 1: at 1 the logged domain loss swings far
    # from chance (the encoder keeps flipping the discriminator); see ARCHITECTURE.md, "l_adv".
    l_adv: float = 0.1
    l_con: float = 1.0  # consistency weight (searched by sweeps)
    # "sum" of the K per-domain cross-entropies scaled by 2/K (docs/method.md section 3), or their
    # "mean" (1/K; the common DANN form, half the sum at K = 2)
    adv_reduction: str = "sum"
    consistency: str = "recon_vs_prior"  # "recon_vs_prior" | "semantic" | "cycle" | "none"
    pseudo_label_threshold: float = 0.9  # "semantic": confidence needed for a target pseudo-label
    grl_gamma: float = 10.0  # GRL coefficient 2 / (1 + exp(-gamma * p)) - 1
    grl_max: float = 1.0
    grl_horizon: int = 0  # p = step / grl_horizon (TLlib: 1000, uncapped); 0: p = step / train.steps


@dataclass
class TrainConfig:
    """The optimisation budget and the cadence of evaluation, logging and checkpoints."""

    steps: int = 600  # `make train`'s budget: minutes on 2 CPU cores (benchmarks use train=long)
    lr: float = 1e-3
    # "dann": lr / (1 + alpha p)^beta over progress p = step / steps (Ganin et al.); "inv": lr /
    # (1 + gamma step)^beta, a function of the step alone (TLlib, Caffe); or "constant"
    lr_schedule: str = "dann"
    lr_decay_alpha: float = 10.0
    lr_decay_beta: float = 0.75
    lr_decay_gamma: float = 0.001  # "inv"
    optimizer: str = "adam"  # "adam" or "sgd" (momentum, nesterov below)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    seed: int = 0
    log_every: int = 25
    eval_every: int = 250
    # The label-free validator that picks the checkpoint (its score is each evaluation's
    # eval_score): src_acc | entropy | im | snd | dev | acc_im (cdlm_dist/evaluation/validators.py)
    select_by: str = "src_acc"
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    amp: bool = False  # bf16 autocast on CUDA
    sync_batchnorm: bool = False  # Ray runner: convert BatchNorm to SyncBatchNorm
    # Which BatchNorm layers sync (model/sync_norm.py): "all", so W workers compute what one
    # worker computes, or "encoder": the decoders' and discriminator's layers keep rank-local
    # statistics (fewer collectives; no longer the one-worker model). hbar syncs under both.
    sync_batchnorm_scope: str = "all"
    # DistributedDataParallel's options (RunContext.wrap_model; several workers only)
    ddp_bucket_cap_mb: float = 0.0  # gradient bucket size; 0 = torch's default (25 MiB)
    ddp_gradient_as_bucket_view: bool = False  # gradients as views into the buckets
    # rank 0's buffers to all ranks at every forward; synchronised statistics are equal on
    # every rank already, rank-local ones are not (and evaluation is sharded over the ranks)
    ddp_broadcast_buffers: bool = True
    ddp_batched_grad_copy: bool = False  # one copy per bucket (only where torch's DDP has it)
    progress: bool = True
    num_threads: int = 0  # 0 = leave torch's default
    fail_at_step: int = -1  # fault injection for tests: raise once when this step is reached


@dataclass
class EvalConfig:
    """What the final evaluation computes (each costs time)."""

    a_distance: bool = True
    domain_kl: bool = True
    plots: bool = True
    tsne_points: int = 600
    grid_rows: int = 8
    baseline: bool = True  # also train source-only with the same budget for the summary
    baseline_dir: str = ""  # finished baselines, reused by key; "" = <run_dir's parent>/baselines


@dataclass
class RunnerConfig:
    """Where the loop runs: in this process, or across Ray Train workers."""

    name: str = "local"  # "local" | "ray"
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: int = 1
    address: str = "local"  # which cluster (the one key): "local", "auto", ray://host:port
    num_cpus: int = 0  # logical CPUs of a local instance; 0 = the machine's (or the workers' need)
    storage_path: str = ""  # "" = <run_dir>/ray; any pyarrow filesystem URI works
    max_failures: int = 0
    backend: str = "auto"  # "auto" (nccl on GPU, gloo on CPU), "gloo", "nccl"
    # CPU workers: pin every thread of local rank r to its own cpus_per_worker CPUs of the node
    # (training/context.py pin_rank_cpus). Measured on 2 vCPUs: the synchronised step 9 % faster
    # (docs/scaling.md, part 4). Off by default: two jobs pinning on one node would share cores.
    pin_cpus: bool = False


@dataclass
class TrackingConfig:
    """Where a run's curves, images and config go besides its run directory (tracking.py).

    TensorBoard events (run_dir/tb) are written whenever the package is installed, unless
    backend=none; backend=mlflow also logs to an MLflow tracking server."""

    backend: str = "tensorboard"  # "tensorboard" | "mlflow" (+ TensorBoard) | "none"
    uri: str = ""  # MLflow tracking URI (http://host:5000, file:./mlruns); "" = MLflow's default
    experiment: str = ""  # MLflow experiment; "" = "cdlm" (cdlm-train) or the sweep's study name
    image_rows: int = 4  # images per domain in the grid logged at each evaluation; 0 = none
    checkpoint: bool = True  # mlflow: log the selected weights (selected.pt) as an artifact


@dataclass
class Config:
    """Everything one training run needs; saved as config.yaml in its run directory."""

    name: str = "cdlm"
    method: str = "cdlm"  # informative label: cdlm | vae | dann | source_only
    run_dir: str = "runs/${name}"
    resume: bool = True  # continue from run_dir's latest checkpoint when one exists
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "model.encoder": ("digits", "lenet", "resnet50"),
    "model.decoder_arch": ("conv", "mlp"),
    "model.classify_on": ("z", "mu"),
    "model.grl_on": ("h", "mu"),
    "loss.adv_reduction": ("sum", "mean"),
    "train.optimizer": ("adam", "sgd"),
    "model.decoder": ("per_domain", "shared", "none"),
    "model.modulation": ("swap", "whiten", "mix", "additive", "shift", "none"),
    "model.pairing": ("all_pairs", "random_partner", "mean_of_others"),
    "loss.consistency": ("recon_vs_prior", "semantic", "cycle", "none"),
    "runner.name": ("local", "ray"),
    "train.lr_schedule": ("dann", "inv", "constant"),
    "runner.backend": ("auto", "gloo", "nccl"),
    "data.loader": ("memory", "ray_data"),
    "data.augment": ("none", "imagenet"),
    "tracking.backend": ("tensorboard", "mlflow", "none"),
    "train.sync_batchnorm_scope": ("all", "encoder"),
}


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key and the fix."""


def _get(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def validate(cfg: Any) -> None:
    """Check cross-field rules that a schema cannot express, before any expensive work."""
    for key, allowed in CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {list(allowed)}")
    domains = list(cfg.data.domains)
    if len(domains) < 2:
        raise ConfigError(
            f"data.domains lists {len(domains)} domain(s); a transfer task needs at least 2. "
            "Pick a preset, e.g. data=mnist5k_to_ucidigits"
        )
    names = [d.name for d in domains]
    if len(set(names)) != len(names):
        raise ConfigError(f"data.domains repeats a domain: {names}")
    if not any(d.labelled for d in domains):
        raise ConfigError("data.domains has no labelled domain: mark the source with labelled: true")
    if cfg.data.channels not in (1, 3):
        raise ConfigError(f"data.channels={cfg.data.channels} must be 1 or 3")
    if cfg.model.encoder == "digits" and cfg.data.image_size not in (28, 32):
        raise ConfigError(
            f"data.image_size={cfg.data.image_size} does not fit model.encoder=digits "
            "(it takes 28 or 32 pixels); set data.image_size=28 or use model.encoder=resnet50"
        )
    if cfg.model.encoder == "lenet" and cfg.data.image_size < 16:
        raise ConfigError(
            f"data.image_size={cfg.data.image_size} is too small for model.encoder=lenet "
            "(two 5x5 convolutions and two poolings need at least 16 pixels; digits use 28)"
        )
    if cfg.model.modulation == "mix" and not 0.0 <= cfg.model.modulation_alpha <= 1.0:
        raise ConfigError(
            f"model.modulation_alpha={cfg.model.modulation_alpha} must be in [0, 1] for "
            "model.modulation=mix (eps = sqrt(1 - a^2) n + a hbar keeps unit variance)"
        )
    if cfg.model.encoder == "resnet50" and cfg.data.image_size < 64:
        raise ConfigError(
            f"data.image_size={cfg.data.image_size} is too small for model.encoder=resnet50 "
            "(use 224, or at least 64)"
        )
    for key in ("data.batch_size", "train.steps", "train.log_every", "train.eval_every",
                "train.checkpoint_every", "runner.num_workers", "runner.cpus_per_worker",
                "model.discriminator_layers"):
        if _get(cfg, key) < 1:
            raise ConfigError(f"{key}={_get(cfg, key)} must be at least 1")
    if cfg.data.batch_size % cfg.runner.num_workers:
        raise ConfigError(
            f"data.batch_size={cfg.data.batch_size} (global) is not divisible by "
            f"runner.num_workers={cfg.runner.num_workers}; each worker takes an equal share"
        )
    if cfg.model.modulation != "none" and not cfg.model.variational:
        raise ConfigError("model.modulation needs model.variational=true (it reparameterises z)")
    needs_decoder = cfg.loss.l_rec > 0 or (cfg.loss.l_con > 0 and cfg.loss.consistency != "none")
    if needs_decoder and cfg.model.decoder == "none":
        raise ConfigError(
            "loss.l_rec or loss.l_con > 0 needs a decoder: set model.decoder=per_domain or the "
            "weights to 0"
        )
    if cfg.loss.l_adv > 0 and not cfg.model.use_discriminator:
        raise ConfigError("loss.l_adv > 0 needs model.use_discriminator=true")
    for key in ("loss.l_rec", "loss.beta", "loss.l_cls", "loss.l_adv", "loss.l_con"):
        if _get(cfg, key) < 0:
            raise ConfigError(f"{key}={_get(cfg, key)} must be >= 0")
    if not 0.0 <= cfg.data.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction={cfg.data.val_fraction} must be in [0, 1)")
    if cfg.data.loader == "ray_data" and cfg.runner.name != "ray":
        raise ConfigError("data.loader=ray_data streams to Ray Train workers: add runner=ray "
                          "(or use data.loader=memory)")
    if cfg.data.augment != "none" and cfg.data.loader != "ray_data":
        raise ConfigError(f"data.augment={cfg.data.augment} runs in Ray Data's workers: set "
                          "data.loader=ray_data runner=ray (the in-memory path does not augment)")
    if not (cfg.train.ddp_broadcast_buffers or cfg.train.sync_batchnorm):
        raise ConfigError("train.ddp_broadcast_buffers=false needs train.sync_batchnorm=true: "
                          "rank-local BatchNorm statistics differ between ranks, and evaluation "
                          "is sharded over them")
    if cfg.train.ddp_bucket_cap_mb < 0:
        raise ConfigError(f"train.ddp_bucket_cap_mb={cfg.train.ddp_bucket_cap_mb} must be >= 0 "
                          "(0 keeps torch's default bucket size)")
    if cfg.data.max_in_memory_gb <= 0:
        raise ConfigError(f"data.max_in_memory_gb={cfg.data.max_in_memory_gb} must be > 0")
    if cfg.data.shuffle_buffer < 1:
        raise ConfigError(f"data.shuffle_buffer={cfg.data.shuffle_buffer} must be at least 1")
    from cdlm_dist.evaluation.validators import VALIDATORS  # torch: imported only to validate

    if cfg.train.select_by not in VALIDATORS:
        raise ConfigError(f"train.select_by={cfg.train.select_by!r} is not a label-free "
                          f"validator; choose one of {list(VALIDATORS)} (target accuracy is "
                          "only reported)")


def register_configs() -> None:
    """Register the schema so Hydra type-checks every YAML against it."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="cdlm_schema", node=Config)


CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # a link to the repository's configs/


def unknown_choice(missing: str, options: list[str]) -> str:
    """The error for a group option that does not exist: Hydra's first line names only the file."""
    group, _, choice = missing.rpartition("/")
    return (f"{group}={choice} is not an option of config group '{group}'; choose one of: "
            f"{', '.join(options)} (the files in configs/{group}/)")


def compose(overrides: list[str] | None = None, config_name: str = "train") -> Any:
    """Compose ``configs/<config_name>.yaml`` with Hydra overrides into a typed, validated config.

    The one entry point for the CLI, the runners, benchmarks and tests, so a config means the
    same thing everywhere. Errors name the key at fault.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    from cdlm_dist.overrides import (
        check_data_overrides,
        check_preset_label,
        explain_composition_error,
        label_changed_domains,
    )

    register_configs()
    check_data_overrides(list(overrides or []))  # a wrong data.domains form: one line, the right one
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides or []))
    except (HydraException, OmegaConfBaseException) as exc:
        message = explain_composition_error(exc) or str(exc).split("\n")[0]
        if isinstance(exc, MissingConfigException) and exc.options:  # e.g. runner=rays
            message = unknown_choice(exc.missing_cfg_file, exc.options)
        if message.startswith("Could not override"):
            key = message.split("'")[1]
            message = (f"unknown config key '{key}' (check the spelling; "
                       f"`cdlm-{config_name} --cfg` prints every key)")  # cdlm-train|sweep
        raise ConfigError(f"invalid configuration: {message}") from exc
    if config_name == "train":
        validate(cfg)
    check_preset_label(cfg, list(overrides or []))
    label_changed_domains(cfg)  # its own run directory, never the preset's
    return cfg
