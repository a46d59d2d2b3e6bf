"""Shared test fixtures: tiny configs and domains that train in seconds on a CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Small enough that a few training steps take about a second on one core.
TINY = ["train=smoke", "data.max_train_per_domain=256", "data.max_test_per_domain=128",
        "data.batch_size=32", "eval.plots=false", "eval.a_distance=false",
        "eval.domain_kl=false", "eval.baseline=false"]


# One torch thread in every test (session fixtures included): bitwise-reproducible results within
# a test, and no oversubscription when the 2 cores are shared with Ray workers.
torch.set_num_threads(1)


@pytest.fixture
def tiny_overrides(tmp_path: Path) -> list[str]:
    return TINY + [f"run_dir={tmp_path / 'run'}"]


@pytest.fixture(scope="session")
def tiny_domains():
    """The TINY config's domains, loaded once per session (loading takes seconds)."""
    from cdlm_dist.config import compose
    from cdlm_dist.data.domains import load_domains

    return load_domains(compose(TINY).data, 0)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance shared by every Ray test of the session (starting one costs
    seconds); 4 logical CPUs, so 2 one-CPU workers fit even on a 2-core machine (Train V2's
    controller takes none)."""
    ray = pytest.importorskip("ray")
    # address="local": a private instance, never a cluster some other test or user started
    ray.init(address="local", num_cpus=4, include_dashboard=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


def write_jpeg_tree(root: Path, domains: list[str], classes: int, per_class: int,
                    size: tuple[int, int] = (40, 32), seed: int = 0) -> Path:
    """An image-folder tree in the Office-Home / DomainNet layout, ``<root>/<domain>/<class>/
    *.jpg``: real JPEG files whose colour says the class (learnable) plus noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = size
    for d, domain in enumerate(domains):
        for c in range(classes):
            folder = root / domain / f"class_{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            colour = np.array([(c * 97 + d * 31) % 256, (c * 53) % 256, (255 - c * 41) % 256])
            for i in range(per_class):
                noise = rng.integers(-30, 30, size=(height, width, 3))
                pixels = np.clip(colour + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)
    return root


@pytest.fixture
def jpeg_tree():
    """``write_jpeg_tree`` for a test to call with its own layout."""
    return write_jpeg_tree


RAY_FIXTURES = {"ray_local", "ray_head"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that uses a Ray fixture is a `ray` test, so `make test-fast` (-m "not ray")
    never starts Ray even when a new test forgets the marker."""
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ray)
