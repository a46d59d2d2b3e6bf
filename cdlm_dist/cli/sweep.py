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
(SQLite by default), trials.parquet, leaderboard.md, experiment/best.yaml and PNG plots; paths in
them are relative to it, and the retrain command runs in it.
Starting the same command again resumes: finished trials are kept, the rest are run.
"""

from __future__ import annotations

import sys

from cdlm_dist.cli.common import EXIT_BAD_INPUT, run_command

EXIT_INCOMPLETE = 1

__all__ = ["EXIT_BAD_INPUT", "EXIT_INCOMPLETE", "format_summary", "main"]


def _compose(args: list[str]):
    from cdlm_dist.tuning.config import compose_sweep

    return compose_sweep(args)


def _sweep(args: list[str]) -> int:
    from cdlm_dist.tuning.driver import run_sweep

    summary = run_sweep(_compose(args))
    print(format_summary(summary))
    return 0 if summary["finished"] >= summary["requested"] else EXIT_INCOMPLETE


def main(argv: list[str] | None = None) -> int:
    return run_command("cdlm-sweep", __doc__, argv, _compose, _sweep)


def format_summary(summary: dict) -> str:
    """A few lines for the end of a sweep: counts, the selected trial, where the files are."""
    lines = [f"\nsweep {summary['study_name']}: {summary['finished']}/{summary['requested']} "
             f"trials finished ({summary['ran_now']} run now, {summary['wall_seconds']} s)"]
    if "best_trial" in summary:
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in summary["best_params"].items())
        lines += [f"  selected trial {summary['best_trial']}: score ({summary['score_name']}) "
                  f"{summary['best_score']:.4f}, oracle target acc "
                  f"{summary['best_oracle_target_acc']:.4f}; {params}",
                  f"  retrain (in {summary['directory']}): {summary['retrain_command']}"]
    lines += [f"  leaderboard: {summary['leaderboard']}", f"  trials: {summary['trials_file']}"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
