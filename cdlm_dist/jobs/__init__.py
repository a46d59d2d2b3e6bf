"""Ray Jobs support for ``cdlm-submit``: what runs on the cluster and how results come back.

The client (``cdlm_dist.jobs.client``) submits ``python -m cdlm_dist.jobs.remote run ...`` as
the job's entrypoint; that wrapper runs ``cdlm-train`` or ``cdlm-sweep`` in a directory of its
own under the results storage, so two jobs never share a run directory, and ``fetch`` knows
where to look. Kept free of torch and Ray imports so the export job and ``--help`` start fast.
"""

from __future__ import annotations

# The commands a job may run, by their console-script name (pyproject [project.scripts]).
# The wrapper calls the function in-process, importing it from the uploaded working directory,
# so the code that runs is the code that was submitted, not whatever the cluster image holds.
COMMANDS: dict[str, str] = {
    "cdlm-train": "cdlm_dist.cli.train:main",
    "cdlm-sweep": "cdlm_dist.cli.sweep:main",
}

# The short names `cdlm-submit train|sweep` use.
SHORT_NAMES: dict[str, str] = {"train": "cdlm-train", "sweep": "cdlm-sweep"}
