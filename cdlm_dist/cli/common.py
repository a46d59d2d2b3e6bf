"""What every config-driven command shares: --help, --cfg, and bad input as one line + exit 2."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from omegaconf import OmegaConf

from cdlm_dist.config import ConfigError
from cdlm_dist.training.checkpoint import CheckpointError

EXIT_BAD_INPUT = 2


def run_command(prog: str, doc: str | None, argv: list[str] | None,
                compose: Callable[[list[str]], Any], run: Callable[[list[str]], int]) -> int:
    """Parse ``argv`` as Hydra overrides; ``--cfg`` prints the composed config; ``run`` does the
    work. Configuration and checkpoint errors print one line naming the problem, exit code 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(doc)
        return 0
    try:
        if "--cfg" in args:
            print(OmegaConf.to_yaml(compose([a for a in args if a != "--cfg"])))
            return 0
        return run(args)
    except (ConfigError, CheckpointError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
