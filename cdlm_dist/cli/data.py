"""``cdlm-data``: list the registered domains and presets, and prepare domains as Parquet.

    cdlm-data list
    cdlm-data prepare data=mnist_to_usps data.root=~/data --out prepared/
    cdlm-data prepare data=domainnet_real_to_sketch model=resnet50 --sharded --ray --out DIR

``prepare`` takes cdlm-train's Hydra overrides (the config is composed and validated the same
way, so office31 presets need ``model=resnet50``) and writes one file per domain of the task in
the tensor format the task asks for; each file then loads as the domain ``parquet:<path>``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cdlm_dist.config import ConfigError, compose
from cdlm_dist.overrides import PRESET_DIR

EXIT_CONFIG_ERROR = 2
DOMAINS_HEADER = ("Registered domains (data.domains[].name), at their native size; a task resizes "
                  "each whole (bilinear) to its size:")
PRESETS_HEADER = "Presets in {} (data=<name>; * = labelled; the size and colour they train at):"


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def list_domains() -> list[str]:
    """One line per registered domain: its name and the first line of its loader's docstring."""
    from cdlm_dist.data.domains import DOMAIN_FAMILIES, DOMAINS

    loaders = {**DOMAINS, **{f"{p}:<arg>": fn for p, fn in DOMAIN_FAMILIES.items()}}
    width = max(map(len, loaders))
    return [f"  {name:<{width}}  {_first_line(fn.__doc__)}" for name, fn in sorted(loaders.items())]


def list_presets() -> list[str]:
    """One line per configs/data/*.yaml: name, domains (``*`` = labelled), the size and colour
    every domain is converted to, and its comment."""
    lines = []
    presets = sorted(PRESET_DIR.glob("*.yaml"))
    width = max((len(p.stem) for p in presets), default=0)
    for path in presets:
        text = path.read_text()
        comment = next((ln.lstrip("# ").strip() for ln in text.splitlines() if ln.startswith("#")),
                       "")
        preset = OmegaConf.create(text)
        names = " ".join(d.name + ("*" if d.get("labelled", False) else "")
                         for d in preset.get("domains", []))
        lines.append(f"  {path.stem:<{width}}  {names}  {_geometry(preset)}  ({comment})")
    return lines


def _geometry(preset: Any) -> str:
    """``28 px RGB``: what a preset converts every domain to (DataConfig's default if unset)."""
    from cdlm_dist.config import DataConfig

    size = preset.get("image_size", DataConfig.image_size)
    channels = preset.get("channels", DataConfig.channels)
    return f"{size} px {'RGB' if channels == 3 else 'grey'}"


def run_prepare(overrides: list[str], out: Path, sharded: bool = False, use_ray: bool = False,
                rows_per_shard: int = 0, row_group_rows: int = 0) -> list[Path]:
    """Compose the config like cdlm-train, then write each of its domains to ``out``: one
    decoded file each, or (``sharded``) a folder of encoded shards that data.loader=ray_data
    streams. 0 for a shard size keeps the format's default."""
    cfg = compose(overrides)
    if not sharded:
        if use_ray or rows_per_shard or row_group_rows:
            raise ConfigError("--ray, --rows-per-shard and --row-group-rows apply to --sharded")
        from cdlm_dist.data.parquet import prepare

        return prepare(cfg, out)
    from cdlm_dist.data.shards import ROW_GROUP_ROWS, ROWS_PER_SHARD, prepare_sharded

    return prepare_sharded(cfg, out, rows_per_shard or ROWS_PER_SHARD,
                           row_group_rows or ROW_GROUP_ROWS, use_ray)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cdlm-data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="print the registered domains and the data presets")
    prepare = sub.add_parser(
        "prepare", help="write a task's domains as Parquet files (one per domain)",
        description="Overrides are cdlm-train's, e.g. data=mnist_to_usps data.root=~/data; "
                    "office31 presets also need model=resnet50.")
    prepare.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data=mnist_to_usps")
    prepare.add_argument("--out", type=Path, required=True, help="folder for the .parquet files")
    prepare.add_argument("--sharded", action="store_true",
                         help="write each domain as a folder of Parquet shards of encoded images "
                              "(for data.loader=ray_data; resumable: complete shards are kept)")
    prepare.add_argument("--ray", action="store_true",
                         help="--sharded: write the shards as Ray Data tasks on runner.address's "
                              "cluster (--out and data.root on storage every node sees)")
    prepare.add_argument("--rows-per-shard", type=int, default=0,
                         help="--sharded: images per file (0: the format's default)")
    prepare.add_argument("--row-group-rows", type=int, default=0,
                         help="--sharded: images per Parquet row group (0: the format's default)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # parse_known_args: overrides may come after --out, which a '*' positional cannot take.
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("-")]
    if unknown or (extra and args.command != "prepare"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "list":
            import cdlm_dist.data  # noqa: F401  (registers every loader)

            print(DOMAINS_HEADER)
            print("\n".join(list_domains()))
            print(PRESETS_HEADER.format(PRESET_DIR))
            print("\n".join(list_presets()))
            return 0
        for path in run_prepare(args.overrides + extra, args.out, args.sharded, args.ray,
                                args.rows_per_shard, args.row_group_rows):
            kind = "shards" if args.sharded else "parquet"
            print(f"wrote {path}  (use it as domain {kind}:{path.resolve()})")
        return 0
    except ConfigError as exc:
        print(f"cdlm-data: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR


if __name__ == "__main__":
    sys.exit(main())
