"""What one CDLM step of each backbone moves and computes, counted on the model itself rather
than estimated: parameters (hence DDP's buckets), the synced statistics' collectives, FLOPs and
dispatched ops. Built from the package's own config on the meta device and a fake process group,
so no weights, no download and no network."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cost_inputs import BACKBONES, MIB, NUM_DOMAINS  # noqa: E402


@dataclass
class Facts:
    """What one CDLM step of a backbone moves and computes, counted on the model."""

    backbone: str
    params: int
    buckets: list[int]  # DDP bucket sizes (bytes), in launch order
    collectives: list[tuple[str, int]]  # the step's synced-statistics collectives: (op, bytes in)
    flops_per_image: float  # forward + backward
    backward_share: float  # backward FLOPs / (forward + backward)
    ops_per_step: int  # ops dispatched by forward + backward (each ~ one GPU kernel)

    @property
    def syncs(self) -> int:
        return len(self.collectives)


def ddp_buckets(grad_bytes: int, cap: int = 25 * MIB, first: int = MIB) -> list[int]:
    """DDP's bucket sizes: the first bucket is capped at 1 MiB, the rest at bucket_cap_mb."""
    sizes, left = [], grad_bytes
    while left > 0:
        size = min(left, first if not sizes else cap)
        sizes.append(size)
        left -= size
    return sizes


def _forward_loss(model, cfg, device: str):
    """A training forward of 2 images per domain; a scalar that every output feeds (its
    backward is the backward of the step, up to the loss arithmetic)."""
    import torch

    shape = (2, cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
    out = model([torch.rand(shape, device=device) for _ in range(NUM_DOMAINS)],
                [True] + [False] * (NUM_DOMAINS - 1))
    outputs = [*out.h, *out.mu, *out.domain_logits,
               *[t for p in out.pairs for t in (p.rec_logits, p.cls_logits) if t is not None],
               *[t for t in out.prior_rec_logits if t is not None]]
    return sum(t.float().mean() for t in outputs)


# c10d ops under the names of their functional twins, and which argument is the input
C10D_COLLECTIVES = {"_allgather_base_": ("all_gather_into_tensor", 1),
                    "allreduce_": ("all_reduce", 0), "broadcast_": ("broadcast", 0),
                    "_reduce_scatter_base_": ("reduce_scatter_tensor", 1)}


def _collective(namespace: str, name: str, args: tuple) -> tuple[str, int] | None:
    """(functional name, input bytes) if the op is a collective, else None. sync_norm calls
    c10d ops (their input is an argument, or the first of a list), batch_moments functional
    ones (their input comes first)."""
    if namespace == "c10d" and name in C10D_COLLECTIVES:
        name, index = C10D_COLLECTIVES[name]
    elif namespace == "_c10d_functional" and any(
            k in name for k in ("gather", "reduce", "scatter", "broadcast")):
        index = 0
    else:
        return None
    t = args[index][0] if isinstance(args[index], (list, tuple)) else args[index]
    return name, t.numel() * t.element_size()


def collective_counter():
    """A dispatch mode counting ops, and the collectives among them as (op name, bytes in)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops = 0
            self.collectives: list[tuple[str, int]] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops += 1
            found = _collective(func.namespace, func.overloadpacket.__name__, args)
            if found is not None:
                self.collectives.append(found)
            return func(*args, **(kwargs or {}))

    return Counter()


def model_facts(backbone: str, overrides: list[str]) -> Facts:
    """The backbone's CDLM composed as runner=ray composes it (train.sync_batchnorm on), then:
    on the meta device (no weights, no download), FLOPs and dispatched ops of one forward and
    backward; on the CPU in a fake 2-rank process group (torch's testing backend: collectives
    return at once), the loop's own convert_sync_batchnorm and the collectives that one
    forward and backward dispatch, i.e. the synced statistics of the code as it is."""
    import torch
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore
    from torch.utils.flop_counter import FlopCounterMode

    from cdlm_dist.config import compose
    from cdlm_dist.model import build_model
    from cdlm_dist.model.sync_norm import convert_sync_batchnorm

    cfg = compose(["method=cdlm", "runner=ray", *BACKBONES[backbone]["overrides"], *overrides])
    with torch.device("meta"):
        model = build_model(cfg, NUM_DOMAINS, 10).train()
    counter = collective_counter()
    with FlopCounterMode(display=False) as flops, counter:
        loss = _forward_loss(model, cfg, "meta")
        forward = flops.get_total_flops()
        loss.backward()
    total = flops.get_total_flops()
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    cap = getattr(cfg.train, "ddp_bucket_cap_mb", 0) or 25  # 0: torch's default

    collectives: list[tuple[str, int]] = []
    if cfg.train.sync_batchnorm:
        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
        try:
            model = build_model(cfg, NUM_DOMAINS, 10).train()
            scope = getattr(cfg.train, "sync_batchnorm_scope", None)  # as the loop converts
            model = convert_sync_batchnorm(model, scope) if scope else \
                convert_sync_batchnorm(model)
            synced = collective_counter()
            with synced:
                _forward_loss(model, cfg, "cpu").backward()
            collectives = synced.collectives
        finally:
            dist.destroy_process_group()
    return Facts(backbone, params, ddp_buckets(4 * params, int(cap * MIB)), collectives,
                 total / (NUM_DOMAINS * 2), 1 - forward / total, counter.ops)


def reference_resnet50() -> tuple[float, int]:
    """(FLOPs of one training image, forward + backward, at 224 px; parameters) of the plain
    torchvision ResNet-50 that the published throughput is for."""
    import torch
    import torchvision
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        net = torchvision.models.resnet50(weights=None)
    x = torch.rand(2, 3, 224, 224, device="meta")
    with FlopCounterMode(display=False) as flops:
        net(x).float().mean().backward()
    return flops.get_total_flops() / 2, sum(p.numel() for p in net.parameters())
