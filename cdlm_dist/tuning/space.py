"""Search-space parsing and validation: every mistake fails before Ray or any trial starts.

``sweep.space`` mirrors the training config's nesting; a mapping with a ``type`` key is one
parameter, named by its dotted path (``loss.l_adv``), which must be a real key of the composed
training config. Each parameter's bounds (or choices) are also applied to the training config and
validated as cdlm-train would, so a range that makes some trial's config invalid (a negative
loss weight, a modulation without a VAE) is reported up front with the key, not as a failed trial.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cdlm_dist.config import ConfigError, validate
from cdlm_dist.tuning.config import apply_params

LOG_TYPES = ("loguniform", "logint")
NUMERIC_TYPES = ("loguniform", "uniform", "int", "logint")
TYPES = (*NUMERIC_TYPES, "categorical")
LEAF_FIELDS = {"type", "low", "high", "choices"}

# Keys a sweep may not search, with the reason. Data keys change which examples are loaded (and
# so what the score measures); the step cadence defines the epochs ASHA compares across trials.
SEARCHABLE_DATA_KEYS = ("data.batch_size",)
NOT_SEARCHABLE: dict[str, str] = {
    "data.": "it changes which examples are loaded; sweep one data preset at a time",
    "train.seed": "it changes the data split; keep it fixed and sweep seeds afterwards",
    "train.steps": "it defines the epochs that ASHA compares; set it for the whole sweep",
    "train.eval_every": "it defines the epochs that ASHA compares; set it for the whole sweep",
    "train.checkpoint_every": "it defines the epochs; set it for the whole sweep",
    "runner.": "it sets where trials run; configure it for the whole sweep",
    "eval.": "the final evaluation is not part of a trial",
    "name": "a run label", "run_dir": "a path", "method": "a label", "resume": "a switch",
}


@dataclass(frozen=True)
class Param:
    """One searched key and its distribution."""

    key: str
    type: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()

    @property
    def log(self) -> bool:
        return self.type in LOG_TYPES

    def distribution(self):
        """The Optuna distribution (OptunaSearch takes these directly)."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.type == "categorical":
            return CategoricalDistribution(list(self.choices))
        if self.type in ("int", "logint"):
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        return FloatDistribution(float(self.low), float(self.high), log=self.log)

    def corners(self) -> list[Any]:
        """Values that bound what a trial can get: each is validated before the sweep."""
        if self.type == "categorical":
            return list(self.choices)
        cast = int if self.type in ("int", "logint") else float
        return [cast(self.low), cast(self.high)]


def flatten_space(space: Mapping, prefix: str = "") -> dict[str, Mapping]:
    """{dotted key: leaf mapping}; a leaf is a mapping that has a ``type``."""
    out: dict[str, Mapping] = {}
    for name, node in space.items():
        key = f"{prefix}{name}"
        if not isinstance(node, Mapping):
            raise ConfigError(f"sweep.space.{key}={node!r} must be a mapping such as "
                              "{type: loguniform, low: 0.01, high: 10}")
        if "type" in node:
            out[key] = node
        else:
            out |= flatten_space(node, f"{key}.")
    return out


def parse_space(space: Mapping | DictConfig, train_cfg: DictConfig) -> list[Param]:
    """Parse and validate ``sweep.space`` against the composed training config."""
    if isinstance(space, DictConfig):
        space = OmegaConf.to_container(space, resolve=True)
    params = [_parse_leaf(key, leaf, train_cfg) for key, leaf in flatten_space(space).items()]
    if not params:
        raise ConfigError("sweep.space is empty: give at least one parameter, e.g. "
                          "hparams_search=adv_con")
    for p in params:
        for value in p.corners():
            try:
                validate(apply_params(train_cfg, {p.key: value}))
            except ConfigError as exc:
                raise ConfigError(f"sweep.space.{p.key}: a trial with {p.key}={value!r} would "
                                  f"be invalid: {exc}") from exc
    return params


def _parse_leaf(key: str, leaf: Mapping, train_cfg: DictConfig) -> Param:
    where = f"sweep.space.{key}"
    _check_key(key, train_cfg)
    unknown = set(leaf) - LEAF_FIELDS
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; a parameter has "
                          f"{sorted(LEAF_FIELDS)}")
    kind = leaf["type"]
    if kind not in TYPES:
        raise ConfigError(f"{where}.type={kind!r} is not a distribution type; use one of "
                          f"{list(TYPES)}")
    if kind == "categorical":
        choices = leaf.get("choices")
        if not isinstance(choices, (list, tuple)) or not choices:
            raise ConfigError(f"{where}: categorical needs a non-empty list of choices")
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"{where}: choices {list(choices)} repeat a value")
        return Param(key, kind, choices=tuple(choices))
    low, high = leaf.get("low"), leaf.get("high")
    for name, bound in (("low", low), ("high", high)):
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or \
                not math.isfinite(bound):
            raise ConfigError(f"{where}.{name}={bound!r} must be a finite number")
    if kind in ("int", "logint") and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"{where}: {kind} needs whole-number bounds, got [{low}, {high}]")
    if low >= high:
        raise ConfigError(f"{where}: low={low} must be below high={high}")
    if kind in LOG_TYPES and low <= 0:
        raise ConfigError(f"{where}: low={low} must be > 0 on a log scale ({kind})")
    return Param(key, kind, low=low, high=high)


def _check_key(key: str, train_cfg: DictConfig) -> None:
    where = f"sweep.space.{key}"
    missing = object()
    value = OmegaConf.select(train_cfg, key, default=missing)
    if value is missing:
        raise ConfigError(f"{where}: unknown parameter {key!r}: not a key of the training config "
                          "(`cdlm-sweep --cfg` prints every key)")
    if isinstance(value, (DictConfig, list)) or OmegaConf.is_list(value):
        raise ConfigError(f"{where}: {key!r} is a section, not a single value")
    if key in SEARCHABLE_DATA_KEYS:
        return
    for prefix, why in NOT_SEARCHABLE.items():
        if key == prefix or (prefix.endswith(".") and key.startswith(prefix)):
            raise ConfigError(f"{where}: {key!r} cannot be searched: {why}")


def optuna_space(params: list[Param]) -> dict[str, Any]:
    """{key: Optuna distribution} for OptunaSearch (flat dotted keys, no Tune domains)."""
    return {p.key: p.distribution() for p in params}
