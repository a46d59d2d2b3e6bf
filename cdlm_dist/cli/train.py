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

from omegaconf import OmegaConf

from cdlm_dist.config import ConfigError, compose
from cdlm_dist.training.checkpoint import CheckpointError

EXIT_BAD_INPUT = 2


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0
    try:
        if "--cfg" in args:
            print(OmegaConf.to_yaml(compose([a for a in args if a != "--cfg"])))
            return 0
        from cdlm_dist.experiment import format_summary, run_experiment

        summary = run_experiment(args)
    except (ConfigError, CheckpointError) as exc:
        print(f"cdlm-train: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print("\nsummary\n" + format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
