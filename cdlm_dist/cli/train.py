"""cdlm-train: train CDLM (or a baseline) on a domain pair and write a run directory.

Usage (any Hydra override of configs/train.yaml):
    cdlm-train                                         # mnist5k -> ucidigits, local, CPU ok
    cdlm-train data=mnist5k_to_mnistm_synth method=dann train.steps=500
    cdlm-train runner=ray runner.num_workers=2         # Ray Train DDP (gloo on CPU, nccl on GPU)
    cdlm-train --cfg                                   # print the composed config and exit

The run directory (``run_dir``, default runs/<method>_<preset>) gets config.yaml, metrics.jsonl
and metrics.parquet, checkpoints/, summary.json and PNG plots. Starting the same command again
resumes from the latest checkpoint.
"""

from __future__ import annotations

import sys

from cdlm_dist.cli.common import EXIT_BAD_INPUT, run_command
from cdlm_dist.config import compose

__all__ = ["EXIT_BAD_INPUT", "main"]


def _train(args: list[str]) -> int:
    from cdlm_dist.experiment import format_summary, run_experiment

    print("\nsummary\n" + format_summary(run_experiment(args)))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command("cdlm-train", __doc__, argv, compose, _train)


if __name__ == "__main__":
    sys.exit(main())
