"""How data is chosen on the command line: presets, single domains, and one-line errors.

cdlm-train composes with Hydra, cdlm-eval applies overrides to a checkpoint's saved config; both
read an override with Hydra's own parser (``OverridesParser``, the public grammar of every Hydra
command line), so ``data.domains=[{name:mnist}]`` means the same to both. The ``data`` keys are
the ones users get wrong, and OmegaConf's answer to a wrong one is a merge error about
``DomainConfig``; here each wrong form fails before composition with one line showing the right
one.
"""

from __future__ import annotations

import re
from dataclasses import fields
from typing import Any

from omegaconf import OmegaConf

from cdlm_dist.config import CONFIG_DIR, ConfigError, DomainConfig

PRESET_DIR = CONFIG_DIR / "data"
DOMAINS_KEY = "data.domains"
PRESET_KEY = "data.preset"
DOMAIN_FIELDS = tuple(f.name for f in fields(DomainConfig))  # ("name", "labelled")
FORMS = ("write data=<preset>, data.domains.<i>.name=<domain> (i counts from 0), or the whole "
         "list quoted for the shell: 'data.domains=[{name: mnist, labelled: true}, {name: usps}]'")
MERGE_FAILURE = "Error merging override "  # how Hydra starts the message of a failed override


def preset_names() -> list[str]:
    """The data presets: the files of configs/data/."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name: str) -> Any:
    """configs/data/<name>.yaml as a DictConfig; an unknown name lists the presets."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise invalid(f"no data preset {name!r}; presets: {', '.join(preset_names())} "
                          "(`cdlm-data list` describes them)")
    return OmegaConf.load(path)


def invalid(message: str) -> ConfigError:
    """The error of a configuration that cannot run, worded as compose() words its own."""
    return ConfigError(f"invalid configuration: {message}")


def parse_overrides(overrides: list[str]) -> list[Any]:
    """Hydra's reading of each override (``Override`` objects); one it cannot read fails with a
    line that shows the right form."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        try:
            parsed.append(parser.parse_override(text))
        except HydraException as exc:
            raise invalid(_unreadable(text, str(exc).split("\n")[0])) from exc
    return parsed


def _unreadable(text: str, reason: str) -> str:
    key = text.split("=", 1)[0]
    dotted = re.sub(r"\[(\d+)\]", r".\1", key)
    if dotted != key:  # data.domains[1].name: OmegaConf's path syntax, not an override's
        return f"cannot read {text!r}: list items take a dot, write {dotted}={text.split('=', 1)[1]}"
    hint = f"; {FORMS}" if key.lstrip("+~").startswith(DOMAINS_KEY) else ""
    return f"cannot read {text!r} ({reason}){hint}"


def check_data_overrides(overrides: list[str]) -> list[Any]:
    """Raise a one-line ConfigError for a ``data.domains`` override of the wrong shape; returns
    every override parsed (see :func:`parse_overrides`)."""
    parsed = parse_overrides(overrides)
    for override in parsed:
        key, text = override.key_or_group, override.input_line
        if override.is_delete() or override.is_sweep_override() or not key.startswith(DOMAINS_KEY):
            continue
        if key == DOMAINS_KEY:
            _check_domain_list(override.value(), text)
            continue
        index, _, field = key.removeprefix(DOMAINS_KEY + ".").partition(".")
        if not index.isdigit():
            raise invalid(f"{text!r}: domains are numbered from 0, e.g. "
                              f"{DOMAINS_KEY}.1.name=<domain> names the second one")
        if not field:
            _check_domain(override.value(), text, f"{DOMAINS_KEY}.{index}")
        elif field not in DOMAIN_FIELDS:
            raise invalid(f"{text!r}: a domain has the keys {' and '.join(DOMAIN_FIELDS)}, "
                              f"not {field!r}; e.g. {DOMAINS_KEY}.{index}.name=<domain>")
    return parsed


def _example_list(names: list[str]) -> str:
    items = [f"{{name: {n}{', labelled: true' if i == 0 else ''}}}" for i, n in enumerate(names)]
    return f"'{DOMAINS_KEY}=[{', '.join(items)}]'"


def _check_domain_list(value: Any, text: str) -> None:
    if not isinstance(value, list):
        raise invalid(f"{text!r}: {DOMAINS_KEY} is a list; {FORMS}")
    if any(not isinstance(item, dict) for item in value):
        names = [str(item.get("name", "?") if isinstance(item, dict) else item) for item in value]
        raise invalid(f"{text!r}: each domain is {{name: <domain>, labelled: true|false}}, "
                          f"e.g. {_example_list(names)}")
    for item in value:
        _check_fields(item, text)


def _check_domain(value: Any, text: str, where: str) -> None:
    if not isinstance(value, dict):
        raise invalid(f"{text!r}: a domain is {{name: {value}, labelled: false}}; to change "
                          f"only its name write {where}.name={value}")
    _check_fields(value, text)


def _check_fields(item: dict, text: str) -> None:
    unknown = sorted(set(item) - set(DOMAIN_FIELDS))
    if unknown:
        raise invalid(f"{text!r}: a domain has the keys {' and '.join(DOMAIN_FIELDS)}, "
                          f"not {', '.join(map(repr, unknown))}")


def explain_failed_override(text: str, exc: BaseException) -> str | None:
    """One line for an override of ``data.domains`` that OmegaConf refused (``exc`` or one of its
    causes names the key); None for any other failure."""
    while exc is not None:
        full_key = str(getattr(exc, "full_key", "") or "")
        item = re.fullmatch(r"data\.domains\[(\d+)\]", full_key)
        if item:  # past the end: OmegaConf would create an empty DomainConfig there
            return (f"{text!r}: there is no domain {item.group(1)} (data.domains counts from 0); "
                    f"to add a domain, list them all: {_example_list(['a', 'b', 'c'])}")
        if full_key.startswith(DOMAINS_KEY):  # a field's value, e.g. labelled=maybe
            return f"{text!r}: {str(getattr(exc, 'msg', exc)).splitlines()[0]}"
        exc = exc.__cause__
    return None


def explain_composition_error(exc: BaseException) -> str | None:
    """:func:`explain_failed_override` for Hydra's "Error merging override <text>"."""
    message = str(exc).split("\n")[0]
    if not message.startswith(MERGE_FAILURE):
        return None
    return explain_failed_override(message.removeprefix(MERGE_FAILURE), exc)


def check_preset_label(cfg: Any, overrides: list[str]) -> None:
    """``data.preset=X`` only labels a run; naming a preset whose domains are not the run's would
    silently train (or score) something else under its name, so it fails saying ``data=X``."""
    labels = [str(o.value()) for o in parse_overrides(overrides)
              if o.key_or_group == PRESET_KEY and not o.is_sweep_override() and not o.is_delete()]
    if not labels or labels[-1] not in preset_names() or "data" not in cfg:
        return
    label = labels[-1]
    if domain_pairs(load_preset(label).domains) != domain_pairs(cfg.data.domains):
        names = ", ".join(n + ("*" if lab else "") for n, lab in domain_pairs(cfg.data.domains))
        raise invalid(f"data.preset={label} only labels the run (its domains stay {names}); "
                          f"to select the preset write data={label}")


def label_changed_domains(cfg: Any) -> None:
    """A run whose domains were overridden one by one gets a label of its own domains.

    The run's name (``${method}_${data.preset}``), hence its run directory, comes from the label;
    kept as the preset's, ``data.domains.1.name=x`` would share the preset's folder and resume its
    checkpoint. An explicit ``data.preset=<label>`` that is not a preset is left as it is.
    """
    if "data" not in cfg or cfg.data.preset not in preset_names():
        return
    pairs = domain_pairs(cfg.data.domains)
    if domain_pairs(load_preset(cfg.data.preset).domains) == pairs:
        return
    label = "_to_".join(name for name, _ in pairs)
    # a preset's own name would still share that preset's folder (with its other data settings)
    cfg.data.preset = f"{label}_custom" if label in preset_names() else label


def domain_pairs(domains: Any) -> list[tuple[str, bool]]:
    """(name, labelled) of each domain, to compare domain lists from any source."""
    return [(str(d.name), bool(d.get("labelled", False))) for d in domains]
