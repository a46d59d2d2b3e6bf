"""Hyperparameter sweeps: Ray Tune runs the trials, Optuna (TPE) suggests them, ASHA stops the
weak ones early, and an Optuna study in an RDB storage records everything (``cdlm-sweep``).

Label-free selection. The metric Tune optimises and ASHA stops on is ``score``: the best mean
accuracy on the labelled (source) domains' held-out validation split so far, exactly the score
cdlm-train selects its checkpoint by (docs/method.md section 5). Selecting hyperparameters by target
accuracy would need target labels, which a real adaptation task does not have; a sweep tuned
on them reports an optimistic number that no user could reproduce (DomainBed's lesson). Target
test accuracy is therefore carried only as ``oracle_target_acc`` (the target accuracy of the
selected weights) for analysis, and ``sweep.metric`` rejects anything but label-free metrics.

Source validation accuracy is blind to alignment: a large ``l_adv`` can keep source accuracy
while hurting the target, so it is biased towards small adversarial weights. The label-free
validators of :mod:`cdlm_dist.evaluation.validators` (entropy, IM, SND, DEV, acc_im) look at the
target too: ``sweep.metric=<validator>`` makes every trial select its checkpoint by it
(``train.select_by``) and the sweep climb that ``best_score``. Which one tracks target accuracy
is measured by ``benchmarks/validators.py``; the default stays source validation accuracy.

Modules: config (the ``sweep`` section), space (search-space validation), trainable (one trial:
the same ``fit`` loop through a Tune context), search (study, searcher, scheduler, resume),
driver (``run_sweep``), results and plots (Parquet, Markdown leaderboard, best config, PNGs).
"""
