"""cdlm-sweep: search the adversarial and consistency weights (and more) with Ray Tune + Optuna.

Usage (any Hydra override of configs/sweep.yaml, which composes the training config):
    cdlm-sweep                                          # 16 trials, TPE + ASHA, embedded pair
    cdlm-sweep sweep.num_samples=8 data=mnist5k_to_mnistm_synth
    cdlm-sweep hparams_search=adv_con_beta_lr           # + beta and the learning rate
    cdlm-sweep '+sweep.space.model.modulation={type:categorical,choices:[swap,additive]}'
    cdlm-sweep sweep.storage=postgresql://user@host/db  # any SQLAlchemy URL for the study
    cdlm-sweep --cfg                                    # print the composed config and exit

Trials are selected by a label-free score (source validation accuracy); target accuracy is only
reported (oracle column). The sweep directory (sweep.output_dir/sweep.study_name) gets the study
(SQLite by default), trials.parquet, leaderboard.md, experiment/best.yaml and PNG plots.
Starting the same command again resumes: finished trials are kept, the rest are run.
"""

from __future__ import annotations

import sys

from omegaconf import OmegaConf

from cdlm_dist.config import ConfigError
from cdlm_dist.training.checkpoint import CheckpointError

EXIT_BAD_INPUT = 2
EXIT_INCOMPLETE = 1


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0
    from cdlm_dist.tuning.config import compose_sweep

    try:
        if "--cfg" in args:
            print(OmegaConf.to_yaml(compose_sweep([a for a in args if a != "--cfg"])))
            return 0
        from cdlm_dist.tuning.driver import run_sweep

        summary = run_sweep(compose_sweep(args))
    except (ConfigError, CheckpointError) as exc:
        print(f"cdlm-sweep: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(format_summary(summary))
    return 0 if summary["finished"] >= summary["requested"] else EXIT_INCOMPLETE


def format_summary(summary: dict) -> str:
    """A few lines for the end of a sweep: counts, the selected trial, where the files are."""
    lines = [f"\nsweep {summary['study_name']}: {summary['finished']}/{summary['requested']} "
             f"trials finished ({summary['ran_now']} run now, {summary['wall_seconds']} s)"]
    if "best_trial" in summary:
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in summary["best_params"].items())
        lines += [f"  selected trial {summary['best_trial']}: score (source val acc) "
                  f"{summary['best_score']:.4f}, oracle target acc "
                  f"{summary['best_oracle_target_acc']:.4f}; {params}",
                  f"  retrain: {summary['retrain_command']}"]
    lines += [f"  leaderboard: {summary['leaderboard']}", f"  trials: {summary['trials_file']}"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
