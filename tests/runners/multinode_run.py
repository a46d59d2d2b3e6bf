"""One tiny 2-worker Ray Train experiment, on a simulated multi-node cluster or on one node.

Run as ``python -m tests.runners.multinode_run OUT LAYOUT`` (a subprocess of
test_multinode.py: a process joins one Ray cluster only, and the test session has its own).
``multi``: ``ray.cluster_utils.Cluster`` with a head that has no CPUs (the driver's node) and two
one-CPU nodes, so both ranks, rank 0 included, run on nodes other than the driver's; the storage
path is a folder every node sees. ``single``: a private local instance.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from tests.conftest import TINY

MULTI, SINGLE = "multi", "single"
LAYOUTS = (MULTI, SINGLE)


def overrides(out: Path, layout: str) -> list[str]:
    return [*TINY, "runner=ray", "runner.num_workers=2", "train.steps=6", "train.eval_every=3",
            "train.checkpoint_every=3", "train.log_every=2", "eval.plots=true",
            "name=multinode", f"run_dir={out / layout}",
            f"runner.storage_path={out / 'shared_storage' / layout}"]


def main(out: Path, layout: str) -> None:
    import ray

    from cdlm_dist.experiment import run_experiment

    torch.set_num_threads(1)
    cluster = None
    if layout == MULTI:
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        driver_node = ray.get_runtime_context().get_node_id()
        cpus = {n["NodeID"]: n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]}
        assert len(cpus) == 3 and cpus[driver_node] == 0, cpus  # no rank can run beside us
    else:
        ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        run_experiment(overrides(out, layout), log=lambda *_: None)
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
