"""Cache keys of finished runs: a hash of the resolved config and of the package source.

A benchmark (and a run's source-only baseline, ``eval.baseline``) reads a finished run back
instead of retraining it only when both are unchanged, so a changed default or a code change can
never leave stale rows in a table: the old runs keep their directories, under a different key,
and are simply not found.
"""

from __future__ import annotations

import copy
import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

# Keys that say where a run lives or how it prints, not what it computes.
IGNORED = {"run_dir": "-", "name": "-", "data.root": "-", "data.download": False,
           "train.progress": False, "resume": True}


@lru_cache(maxsize=1)
def source_digest() -> str:
    """sha256 of every .py file of the installed ``cdlm_dist`` package (path and bytes)."""
    import cdlm_dist

    root = Path(cdlm_dist.__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def config_key(cfg: Any, length: int = 12) -> str:
    """Hash of a composed config (location keys ignored) + the package source."""
    from omegaconf import OmegaConf, open_dict

    cfg = copy.deepcopy(cfg)
    for key, value in IGNORED.items():
        OmegaConf.update(cfg, key, value, merge=False)
    with open_dict(cfg):
        cfg.pop("tracking", None)  # where curves are sent changes nothing a run computes
    text = OmegaConf.to_yaml(cfg, resolve=True)
    return hashlib.sha256((text + source_digest()).encode()).hexdigest()[:length]


def run_key(overrides: list[str], length: int = 12) -> str:
    """:func:`config_key` of the config that ``overrides`` resolve to."""
    from cdlm_dist.config import compose

    return config_key(compose(overrides), length)
