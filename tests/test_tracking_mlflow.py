"""tracking=mlflow against a real MLflow tracking server (127.0.0.1, SQLite, a temp artifact
folder), read back through MLflow's client: a run's params, metric history and artifacts; a
sweep's parent run with one child per trial; an unreachable server at start is one line and
exit 2; a server killed mid-run costs one warning and the run still finishes."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

from cdlm_dist.cli.train import EXIT_BAD_INPUT, main  # noqa: E402
from cdlm_dist.experiment import run_experiment  # noqa: E402
from cdlm_dist.tracking import MLFLOW_PARENT_TAG, TB_SUBDIR  # noqa: E402
from cdlm_dist.training.context import METRICS_LOG, read_log  # noqa: E402
from tests.conftest import TINY  # noqa: E402

SERVER_START_S = 120  # the server's first start migrates its SQLite schema (slow on CI)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path) -> tuple[subprocess.Popen, str]:
    """``mlflow server`` on a free port with a SQLite store; returns it once /health answers."""
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
         f"sqlite:///{root / 'mlflow.db'}", "--default-artifact-root", str(root / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=open(root / "server.log", "w"),
        # its own process group: the server's uvicorn workers die with it; no job runner (7
        # task-queue processes that this test does not need, on a 2-core machine)
        start_new_session=True, env=os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + SERVER_START_S
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            return proc, uri
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.5)
    proc.kill()
    pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the group: uvicorn's workers would go on serving
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc, uri = start_server(tmp_path_factory.mktemp("mlflow"))
    yield uri
    stop(proc)


def mlflow_overrides(uri: str, run_dir: Path, *extra: str) -> list[str]:
    return [*TINY, f"run_dir={run_dir}", "tracking=mlflow", f"tracking.uri={uri}", *extra]


def test_a_run_logs_params_metrics_summary_plots_and_weights(server, tmp_path):
    run_dir = tmp_path / "run"
    run_experiment(mlflow_overrides(server, run_dir, "eval.plots=true",
                                    "tracking.experiment=tracked"), log=lambda *_: None)
    client = MlflowClient(server)
    experiment = client.get_experiment_by_name("tracked")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.steps"] == "6" and run.data.params["tracking.backend"] == "mlflow"
    history = client.get_metric_history(run.info.run_id, "loss/total")
    assert sorted(m.step for m in history) == [2, 4, 6]  # every logged row, exactly once
    logged = {r["step"]: r["loss/total"] for r in read_log(run_dir / METRICS_LOG)
              if "loss/total" in r}
    assert {m.step: m.value for m in history} == pytest.approx(logged)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/eval_score")] == [3, 6]
    assert "summary/target_acc_selected" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "summary.json", "checkpoint", "metrics", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/translation_grid.png" in plots
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")] == [
        "checkpoint/selected.pt"]
    assert any((run_dir / TB_SUBDIR).iterdir())  # TensorBoard stays on beside MLflow


def test_an_unreachable_server_is_one_line_and_exit_2(tmp_path, capsys):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    run_dir = tmp_path / "run"
    assert main(mlflow_overrides(uri, run_dir)) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"tracking.uri={uri}" in err, err
    assert not run_dir.exists()  # nothing written before the check


def test_a_server_killed_mid_run_warns_once_and_the_run_finishes(tmp_path, caplog):
    proc, uri = start_server(tmp_path / "server")
    run_dir = tmp_path / "run"

    def kill_after_first_rows() -> None:  # a row is logged every 2 steps
        deadline = time.time() + 300
        while time.time() < deadline and len(read_log(run_dir / METRICS_LOG)) < 2:
            time.sleep(0.05)
        stop(proc)

    killer = threading.Thread(target=kill_after_first_rows)
    killer.start()
    with caplog.at_level(logging.WARNING, logger="cdlm_dist.tracking"):
        summary = run_experiment(mlflow_overrides(uri, run_dir, "train.steps=16",
                                                  "train.eval_every=8",
                                                  "train.checkpoint_every=8"),
                                 log=lambda *_: None)
    killer.join()
    assert summary["steps"] == 16 and (run_dir / "summary.json").exists()
    assert max(r["step"] for r in read_log(run_dir / METRICS_LOG)) == 16
    warnings = [r.getMessage() for r in caplog.records if "MLflow" in r.getMessage()]
    assert len(warnings) == 1 and "training goes on" in warnings[0], warnings


def test_a_sweep_is_a_parent_run_with_a_child_per_trial(server, ray_local, tmp_path):
    from cdlm_dist.tuning.config import compose_sweep
    from cdlm_dist.tuning.driver import run_sweep
    from tests.tuning.conftest import sweep_overrides

    cfg = compose_sweep(sweep_overrides(tmp_path, 2, "tracking=mlflow", f"tracking.uri={server}",
                                        "sweep.scheduler=fifo"))
    summary = run_sweep(cfg, log=lambda *_: None)
    assert summary["finished"] == 2
    client = MlflowClient(server)
    experiment = client.get_experiment_by_name("t")  # the study's name
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if MLFLOW_PARENT_TAG not in r.data.tags]
    children = [r for r in runs if r.data.tags.get(MLFLOW_PARENT_TAG) == parent.info.run_id]
    assert len(children) == 2 and len(runs) == 3
    assert parent.info.status == "FINISHED" and parent.data.params["sweep.num_samples"] == "2"
    assert parent.data.metrics["best_score"] == pytest.approx(summary["best_score"])
    results = {a.path for a in client.list_artifacts(parent.info.run_id, "results")}
    assert "results/leaderboard.md" in results and "results/trials.parquet" in results
    for child in children:
        assert child.info.status == "FINISHED"
        assert {m.step for m in client.get_metric_history(child.info.run_id, "loss/total")} == {
            2, 4, 6}
        assert child.data.params["loss.l_adv"] != children[0].data.params["loss.l_adv"] or (
            child is children[0])  # the sampled values, per trial
    # TensorBoard: each trial is its own run under the sweep directory
    directory = Path(summary["directory"])
    assert len({p.parent for p in directory.glob(f"tune_*/*/{TB_SUBDIR}/events.*")}) == 2
