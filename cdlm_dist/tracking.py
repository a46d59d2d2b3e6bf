"""Experiment tracking: TensorBoard for every run, MLflow as an option (``tracking.backend``).

Why this shape. The rows the loop logs already carry everything a tracker shows (losses,
evaluations, label-free scores, wall times), and they reach the driver in the final checkpoint
(:class:`~cdlm_dist.training.loop.TrainResult`). So tracking has two halves:

- **live** (:class:`LiveTracking`): the main rank sends each row to the trackers as it is logged,
  and a small translation grid at each evaluation, but only where it shares the driver's
  filesystem (``RunContext.live_log``, the rule of the live metrics.jsonl). It records the last
  step it sent in ``run_dir/tracking.json``.
- **at the end** (:meth:`RunTracking.finish`, on the driver): the rows after that step (all of
  them when rank 0 ran on another node), the summary, the hparams and the artifacts.

A run's MLflow id lives in ``run_dir/tracking.json``, so the live half, a resumed run and the
driver all log into the same MLflow run. An unreachable server is a :class:`ConfigError` before
anything is written (:func:`preflight`); a server that goes away later costs one warning, never
the training: every later call to it is skipped and the run directory keeps everything.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cdlm_dist.config import ConfigError

log = logging.getLogger(__name__)

TB_SUBDIR = "tb"  # run_dir/tb: one TensorBoard run per training run or sweep trial
STATE_FILE = "tracking.json"  # {"uri", "run_id", "live_step"}: the MLflow run and live progress
GRID_TAG = "translation_grid"
# The hparams view's metric columns (TensorBoard reads their values from the scalars).
HPARAM_METRICS = ("eval/eval_score", "eval/target_acc", "summary/target_acc_selected",
                  "summary/selected_score")
MLFLOW_PARENT_TAG = "mlflow.parentRunId"
DEFAULT_EXPERIMENT = "cdlm"
HEALTH_TIMEOUT_S = 5.0
# MLflow retries a failed request 7 times with backoff (minutes against a dead server); a run
# must notice a dead server in seconds, warn and go on. The user's own settings win.
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                        "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


class Tracker(Protocol):
    """One tracking backend's view of one run."""

    def log_scalars(self, metrics: Mapping[str, float], step: int,
                    wall_time: float | None = None) -> None: ...

    def log_image(self, tag: str, image: np.ndarray, step: int) -> None:
        """``image``: (H, W, C) uint8."""

    def log_hparams(self, params: Mapping[str, Any], metrics: tuple[str, ...]) -> None:
        """The resolved config and the names of the metrics to compare runs by."""

    def log_artifacts(self, files: Mapping[Path, str]) -> None:
        """Copies of local files: each file -> its folder among the run's artifacts ("" = top)."""

    def close(self, status: str = "FINISHED") -> None: ...


# ---- TensorBoard -------------------------------------------------------------------------------
class TensorBoardTracker:
    """Event files in one folder (one TensorBoard run). ``purge_step``: a resumed writer's first
    step; TensorBoard hides the earlier attempt's events from there on."""

    def __init__(self, directory: Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(directory), purge_step=purge_step)

    def log_scalars(self, metrics: Mapping[str, float], step: int,
                    wall_time: float | None = None) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, step, walltime=wall_time)

    def log_image(self, tag: str, image: np.ndarray, step: int) -> None:
        self.writer.add_image(tag, image, step, dataformats="HWC")

    def log_hparams(self, params: Mapping[str, Any], metrics: tuple[str, ...]) -> None:
        """Into this run's own folder (torch's ``add_hparams`` would open a new run)."""
        from torch.utils.tensorboard.summary import hparams

        for summary in hparams(dict(params), dict.fromkeys(metrics, math.nan)):
            self.writer.file_writer.add_summary(summary)

    def log_artifacts(self, files: Mapping[Path, str]) -> None:
        pass  # the files are already beside the events, in the run directory

    def close(self, status: str = "FINISHED") -> None:
        self.writer.close()


def tensorboard_available() -> bool:
    try:
        import torch.utils.tensorboard  # noqa: F401  (needs the tensorboard package)
    except ImportError:
        return False
    return True


# ---- MLflow ------------------------------------------------------------------------------------
_WARNED: set[str] = set()  # servers already warned about, once per process


def warn_once(uri: str, what: str, exc: BaseException) -> None:
    """One line per server and process: what failed and that the run goes on."""
    if uri in _WARNED:
        return
    _WARNED.add(uri)
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    log.warning(f"warning: MLflow at {uri} failed while logging {what} "
                f"({type(exc).__name__}: {first}); training goes on without it, the run "
                "directory keeps every metric and file")


def _mlflow_client(uri: str):
    for key, value in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def metric_key(key: str) -> str:
    """A key MLflow accepts (domain names such as ``imagefolder:/data/x`` hold other marks)."""
    return re.sub(r"[^\w\-./ ]", "_", key)


class MlflowTracker:
    """One MLflow run through ``MlflowClient`` (no global active run, so it is safe in any
    process). The first failed call warns once and turns every later call into a no-op."""

    def __init__(self, uri: str, run_id: str) -> None:
        self.uri, self.run_id = uri, run_id
        self.client = _mlflow_client(uri)
        self.broken = False

    def _guard(self, what: str, call: Callable[[], Any]) -> None:
        if self.broken:
            return
        try:
            call()
        except Exception as exc:  # a tracking server must never stop the training
            self.broken = True
            warn_once(self.uri, what, exc)

    def log_scalars(self, metrics: Mapping[str, float], step: int,
                    wall_time: float | None = None) -> None:
        from mlflow.entities import Metric

        stamp = int((wall_time if wall_time is not None else 0) * 1000)
        batch = [Metric(metric_key(k), float(v), stamp, step) for k, v in metrics.items()
                 if isinstance(v, (int, float))]
        for i in range(0, len(batch), 1000):  # MLflow's limit per request
            self._guard("metrics", lambda b=batch[i:i + 1000]: self.client.log_batch(
                self.run_id, metrics=b))

    def log_image(self, tag: str, image: np.ndarray, step: int) -> None:
        self._guard("an image", lambda: self.client.log_image(
            self.run_id, image, artifact_file=f"{tag}/step_{step:07d}.png"))

    def log_hparams(self, params: Mapping[str, Any], metrics: tuple[str, ...]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:500]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's limit per request
            self._guard("params", lambda b=items[i:i + 100]: self.client.log_batch(
                self.run_id, params=b))

    def log_artifacts(self, files: Mapping[Path, str]) -> None:
        for path, folder in files.items():
            if Path(path).exists():
                self._guard(f"artifact {Path(path).name}", lambda p=path, f=folder:
                            self.client.log_artifact(self.run_id, str(p), f or None))

    def close(self, status: str = "FINISHED") -> None:
        if status != "RUNNING":  # the live half leaves the status to the driver
            self._guard("the run's status",
                        lambda: self.client.set_terminated(self.run_id, status))


def _check_server(uri: str) -> None:
    """One quick request; a ConfigError (exit 2) naming the URI when nothing answers."""
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=HEALTH_TIMEOUT_S):
                return
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConfigError(f"tracking.uri={uri}: no MLflow server answers there ({reason}); "
                              "start one (mlflow server --host 127.0.0.1 --port 5000) or fix "
                              "tracking.uri") from None
    try:
        _mlflow_client(uri).search_experiments(max_results=1)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"tracking.uri={uri}: MLflow cannot open it ({first}); fix "
                          "tracking.uri") from None


def resolved_uri(cfg: Any) -> str:
    """tracking.uri, or MLflow's own default ($MLFLOW_TRACKING_URI, else its local store)."""
    if cfg.tracking.uri:
        return cfg.tracking.uri
    import mlflow

    return mlflow.get_tracking_uri()


def preflight(cfg: Any) -> None:
    """Before anything is written: with backend=mlflow, the package is there and the server
    answers. Raises :class:`ConfigError` (one line, exit 2)."""
    if cfg.tracking.backend != "mlflow":
        return
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ConfigError("tracking=mlflow needs the mlflow package: pip install "
                          "'cdlm-dist[mlflow]' (or use tracking=tensorboard)") from None
    _check_server(resolved_uri(cfg))


def _experiment_id(client: Any, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    # MLflow 3's UI opens an experiment on its GenAI pages unless it is marked as training
    return client.create_experiment(name, tags={"mlflow.experimentKind":
                                                "custom_model_development"})


# ---- the registry ------------------------------------------------------------------------------
def _open_tensorboard(cfg: Any, run_dir: Path, state: dict[str, Any],
                      purge_step: int | None) -> Tracker | None:
    if not tensorboard_available():
        return None
    return TensorBoardTracker(Path(run_dir) / TB_SUBDIR, purge_step)


def _open_mlflow(cfg: Any, run_dir: Path, state: dict[str, Any],
                 purge_step: int | None) -> Tracker | None:
    if not state.get("run_id"):
        return None  # the driver could not create the run: it has warned already
    return MlflowTracker(state["uri"], state["run_id"])


TRACKERS: dict[str, Callable[..., Tracker | None]] = {
    "tensorboard": _open_tensorboard,
    "mlflow": _open_mlflow,
}
# tracking.backend -> the trackers it opens: TensorBoard stays on beside MLflow.
BACKENDS: dict[str, tuple[str, ...]] = {
    "tensorboard": ("tensorboard",),
    "mlflow": ("tensorboard", "mlflow"),
    "none": (),
}


def open_trackers(cfg: Any, run_dir: Path, purge_step: int | None = None) -> list[Tracker]:
    state = read_state(run_dir)
    opened = [TRACKERS[name](cfg, run_dir, state, purge_step)
              for name in BACKENDS[cfg.tracking.backend]]
    return [t for t in opened if t is not None]


# ---- run state ---------------------------------------------------------------------------------
def read_state(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def write_state(run_dir: Path, **values: Any) -> None:
    """Update tracking.json atomically (the live half and the driver both read it)."""
    state = read_state(run_dir) | values
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    tmp = Path(run_dir) / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state))
    tmp.replace(Path(run_dir) / STATE_FILE)


def flat_params(node: Any, prefix: str = "") -> dict[str, Any]:
    """A resolved config as dotted keys with scalar values (lists as JSON), for hparams."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=True)
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out |= flat_params(value, f"{prefix}{key}.")
        return out
    value = node if isinstance(node, (bool, int, float, str)) else json.dumps(node)
    return {prefix.rstrip("."): value}


# ---- the live half (main rank) -----------------------------------------------------------------
class LiveTracking:
    """What the main rank sends while it trains: rows as they are logged, a grid per evaluation.

    Only built where rank 0 shares the driver's filesystem (see :func:`open_live`)."""

    def __init__(self, cfg: Any, run_dir: Path, start_step: int) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.trackers = open_trackers(cfg, run_dir, purge_step=start_step or None)
        self._grid_inputs: list | None = None
        if start_step == 0:
            for tracker in self.trackers:
                tracker.log_hparams(flat_params(cfg), HPARAM_METRICS)

    def row(self, row: Mapping[str, Any]) -> None:
        metrics = {k: v for k, v in row.items() if k not in ("step", "wall_time")}
        for tracker in self.trackers:
            tracker.log_scalars(metrics, row["step"], row.get("wall_time"))
        write_state(self.run_dir, live_step=row["step"])

    def grid(self, model: Any, domains: list, step: int) -> None:
        """The translation grid of ``cfg.tracking.image_rows`` test images per domain. Runs at
        evaluations only, in eval mode and without random draws, so training is unchanged."""
        rows = self.cfg.tracking.image_rows
        if rows < 1 or not self.trackers or len(model.decoders) == 0:
            return
        from cdlm_dist.evaluation.metrics import evenly_spaced
        from cdlm_dist.evaluation.plots import translation_grid

        param = next(model.parameters())  # the model's device and dtype (float64 in tests)
        if self._grid_inputs is None:
            self._grid_inputs = [
                (d.test.images[evenly_spaced(len(d.test), rows)].float() / 255.0).to(
                    device=param.device, dtype=param.dtype)
                for d in domains]
        image = _grid_array(lambda path: translation_grid(model, self._grid_inputs, path))
        for tracker in self.trackers:
            tracker.log_image(GRID_TAG, image, step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close("RUNNING")  # the driver sets the final status


def _grid_array(draw: Callable[[Path], Path]) -> np.ndarray:
    """(H, W, C) uint8 of a PNG that ``draw`` writes (plots.py draws only to files)."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        path = draw(Path(tmp) / "grid.png")
        arr = np.asarray(Image.open(path).convert("RGB"))
    return arr


def open_live(cfg: Any, run_dir: Path, start_step: int, is_main: bool, live: bool
              ) -> LiveTracking | None:
    """The main rank's live tracking, or None (other ranks, another node, backend=none)."""
    if not (is_main and live) or cfg.tracking.backend == "none":
        return None
    tracking = LiveTracking(cfg, run_dir, start_step)
    return tracking if tracking.trackers else None


# ---- the driver's half -------------------------------------------------------------------------
class RunTracking:
    """The driver's handle on one run (a cdlm-train run or a sweep trial)."""

    def __init__(self, cfg: Any, run_dir: Path) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)

    @classmethod
    def start(cls, cfg: Any, run_dir: Path, parent: Mapping[str, str] | None = None,
              run_name: str | None = None) -> RunTracking:
        """Create (or, on resume, reopen) the MLflow run and log the config as its params.
        ``parent``: a sweep's :meth:`SweepTracking.child_spec`; the run is then its child."""
        self = cls(cfg, run_dir)
        if cfg.tracking.backend == "mlflow":
            self._start_mlflow(parent, run_name or cfg.name)
        return self

    def _start_mlflow(self, parent: Mapping[str, str] | None, run_name: str) -> None:
        uri = parent["uri"] if parent else resolved_uri(self.cfg)
        state = read_state(self.run_dir)
        try:
            client = _mlflow_client(uri)
            if state.get("run_id") and state.get("uri") == uri:
                client.update_run(state["run_id"], status="RUNNING")  # a resumed run
                return
            if parent:
                run_id = _child_run(self.cfg, parent, run_name)
            else:
                experiment = _experiment_id(client, self.cfg.tracking.experiment
                                            or DEFAULT_EXPERIMENT)
                run_id = client.create_run(experiment, run_name=run_name, tags={
                    "cdlm.run_dir": str(self.run_dir.resolve())}).info.run_id
                MlflowTracker(uri, run_id).log_hparams(flat_params(self.cfg), ())
        except Exception as exc:  # checked in preflight; gone since: warn, train anyway
            warn_once(uri, "the run's start", exc)
            return
        write_state(self.run_dir, uri=uri, run_id=run_id)

    def finish(self, result: Any, summary: Mapping[str, Any], files: bool = True) -> None:
        """Send what the live half did not: the rows after its last step (all when rank 0 ran
        on another node; then also the final grid), the summary and, with ``files``, the run
        directory's files and the selected weights as artifacts."""
        if self.cfg.tracking.backend == "none":
            return
        with tempfile.TemporaryDirectory() as scratch:
            artifacts = (run_artifacts(self.run_dir, result.selected_state,
                                       self.cfg.tracking.checkpoint, Path(scratch))
                         if files and self.cfg.tracking.backend == "mlflow" else {})
            self._finish(result, summary, artifacts)

    def _finish(self, result: Any, summary: Mapping[str, Any],
                artifacts: Mapping[Path, str]) -> None:
        state = read_state(self.run_dir)
        live_step = state.get("live_step")
        trackers = open_trackers(self.cfg, self.run_dir, purge_step=None)
        scalars = {f"summary/{k}": v for k, v in summary.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and not math.isnan(v)}
        grid = self.run_dir / "translation_grid.png"
        for tracker in trackers:
            if live_step is None and isinstance(tracker, TensorBoardTracker):
                tracker.log_hparams(flat_params(self.cfg), HPARAM_METRICS)
            for row in result.log:
                if row["step"] > (live_step or 0):
                    tracker.log_scalars({k: v for k, v in row.items()
                                         if k not in ("step", "wall_time")},
                                        row["step"], row.get("wall_time"))
            tracker.log_scalars(scalars, result.step)
            if live_step is None and grid.exists():
                tracker.log_image(GRID_TAG, _grid_array(lambda _: grid), result.step)
            tracker.log_artifacts(artifacts)
            tracker.close("FINISHED")
        write_state(self.run_dir, live_step=result.step)

    def fail(self) -> None:
        """Mark the MLflow run failed (the run can be resumed; it is reopened then)."""
        state = read_state(self.run_dir)
        if self.cfg.tracking.backend == "mlflow" and state.get("run_id"):
            MlflowTracker(state["uri"], state["run_id"]).close("FAILED")


def _child_run(cfg: Any, parent: Mapping[str, str], run_name: str) -> str:
    """A sweep trial's MLflow run, created with Ray's ``setup_mlflow`` (in the trial process)
    as a child of the sweep's run; returns its id."""
    import mlflow
    from ray.air.integrations.mlflow import setup_mlflow

    if mlflow.active_run() is not None:  # a reused actor's earlier trial, stopped early
        mlflow.end_run("KILLED")
    setup_mlflow(flat_params(cfg), tracking_uri=parent["uri"],
                 experiment_id=parent["experiment_id"], run_name=run_name,
                 tags={MLFLOW_PARENT_TAG: parent["run_id"]})
    run_id = mlflow.active_run().info.run_id
    mlflow.end_run("RUNNING")  # from here on through MlflowClient, by id, like every run
    return run_id


def run_artifacts(run_dir: Path, selected_state: Mapping[str, Any] | None, checkpoint: bool,
                  scratch: Path) -> dict[Path, str]:
    """A finished run's files for MLflow (file -> artifact folder): config, summary, metrics,
    plots and, with ``checkpoint``, the selected weights (written to ``scratch``)."""
    run_dir = Path(run_dir)
    files = {run_dir / "config.yaml": "", run_dir / "summary.json": "",
             run_dir / "metrics.parquet": "metrics"}
    files |= dict.fromkeys(sorted(run_dir.glob("*.png")), "plots")
    if checkpoint and selected_state is not None:
        import torch

        path = Path(scratch) / "selected.pt"
        torch.save(dict(selected_state), path)
        files[path] = "checkpoint"
    return files


# ---- sweeps ------------------------------------------------------------------------------------
class SweepTracking:
    """A sweep's MLflow parent run (its id in the sweep directory's tracking.json, so a resumed
    sweep keeps logging into it); trials become its children. TensorBoard needs nothing here:
    every trial's events are in its own folder under the sweep directory."""

    def __init__(self, cfg: Any, directory: Path) -> None:
        self.cfg, self.directory = cfg, Path(directory)
        self.spec: dict[str, str] | None = None

    @classmethod
    def start(cls, cfg: Any, directory: Path) -> SweepTracking:
        self = cls(cfg, directory)
        if cfg.tracking.backend != "mlflow":
            return self
        uri = resolved_uri(cfg)
        state = read_state(self.directory)
        try:
            client = _mlflow_client(uri)
            experiment = _experiment_id(client, cfg.tracking.experiment
                                        or cfg.sweep.study_name)
            run_id = state.get("run_id") if state.get("uri") == uri else None
            if run_id:
                client.update_run(run_id, status="RUNNING")
            else:
                run_id = client.create_run(experiment, run_name=cfg.sweep.study_name, tags={
                    "cdlm.sweep_dir": str(self.directory)}).info.run_id
                params = {k: v for k, v in flat_params(cfg).items() if k.startswith("sweep.")}
                MlflowTracker(uri, run_id).log_hparams(params, ())
        except Exception as exc:
            warn_once(uri, "the sweep's start", exc)
            return self
        write_state(self.directory, uri=uri, run_id=run_id)
        self.spec = {"uri": uri, "experiment_id": experiment, "run_id": run_id}
        return self

    def child_spec(self) -> dict[str, str] | None:
        """What a trial needs to create its child run (None: no MLflow)."""
        return self.spec

    def finish(self, summary: Mapping[str, Any]) -> None:
        """The sweep's results on the parent run: best score, counts and the exported files."""
        if self.spec is None:
            return
        tracker = MlflowTracker(self.spec["uri"], self.spec["run_id"])
        tracker.log_scalars({k: v for k, v in summary.items() if k in (
            "best_score", "best_oracle_target_acc", "finished", "failed", "best_trial")
            and isinstance(v, (int, float))}, 0)
        found = [p for pattern in ("*.md", "*.parquet", "*.png", "experiment/*.yaml")
                 for p in sorted(self.directory.glob(pattern))]
        tracker.log_artifacts(dict.fromkeys(found, "results"))
        tracker.close("FINISHED")
