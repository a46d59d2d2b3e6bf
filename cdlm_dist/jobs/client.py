"""The submitting side of ``cdlm-submit``: Ray's ``JobSubmissionClient`` plus our conventions.

Every failure a user can cause or meet (cluster unreachable, unknown job, job failed, results
missing) becomes a :class:`SubmitError` with a message that names it and an exit code, so the
CLI prints one line (and the job's last log lines) instead of a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from cdlm_dist.jobs import COMMANDS
from cdlm_dist.jobs.results import (
    NOT_FOUND_MARK,
    TOO_BIG_MARK,
    ResultsError,
    download,
    is_uri,
    join,
    local_job_dir,
    read_archive_text,
    unpack,
)

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NOT_FOUND = 4
EXIT_AUTH = 5
LOG_TAIL_LINES = 20
RAY_LOG_COPY = ", last available logs"  # how Ray's message for a failed job goes on
POLL_SECONDS = 1.0
HTTP_NOT_FOUND = "status code 404"
# Where Ray's job client looks for an address, in its order; it lets them override its argument.
ADDRESS_ENV_VARS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")

# Never uploaded: environments, outputs, caches, VCS data (Ray also honours .gitignore).
EXCLUDES = [".git", ".venv", "venv", "runs", "outputs", "multirun", "bench_results",
            "data_cache", "shared", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache",
            ".mypy_cache", "*.pt", "*.ckpt", "*.pyc"]

# Ray's job client logs every upload, default exclude and closed log stream; we say what matters.
QUIET_LOGGERS = ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk",
                 "ray._private.runtime_env")

# The one config key that says which Ray a command's driver joins (cdlm-train and cdlm-sweep).
JOIN_CLUSTER_KEY = "runner.address"

META_COMMAND = "cdlm_command"
META_ARGS = "cdlm_args"
META_STORAGE = "cdlm_storage"
META_RESULTS = "cdlm_results_id"  # the job directory's name: the job's own id, or a resumed job's

FORWARD_HINT = ("is the cluster up and its job server port forwarded here? "
                "VM cluster: `ray dashboard cluster/aws.yaml`; KubeRay: `kubectl port-forward "
                "svc/cdlm-cluster-head-svc 8265:8265`; any head: `ssh -N -L 8265:127.0.0.1:8265 HEAD`")

AUTH_HINT = ("export RAY_AUTH_TOKEN=<the cluster's token> (KubeRay: `kubectl get secret "
             "cdlm-cluster --template={{.data.auth_token}} | base64 -d`; VM cluster: the "
             "~/.ray/auth_token that cluster/aws.yaml mounts)")


class SubmitError(Exception):
    """A failure to report as one message and an exit code (no traceback)."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def resolve_address(address: str | None) -> str:
    """``--address``, else ``RAY_API_SERVER_ADDRESS`` or ``RAY_ADDRESS``, else the local
    default; always an http(s) URL."""
    from_env = (os.environ.get(name) for name in ADDRESS_ENV_VARS)
    value = address or next((v for v in from_env if v), None) or DEFAULT_ADDRESS
    if value in ("auto", "local"):
        value = DEFAULT_ADDRESS
    if value.startswith("ray://"):
        raise SubmitError(f"{value} is a Ray Client address; cdlm-submit needs the job server "
                          "(the dashboard port), e.g. --address http://127.0.0.1:8265")
    return value if "://" in value else f"http://{value}"


def auth_token() -> str | None:
    """The cluster's Ray auth token, found where Ray looks: RAY_AUTH_TOKEN, the file named by
    RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token when RAY_AUTH_MODE=token."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:  # named explicitly: not finding it is an error
        try:
            return Path(path).expanduser().read_text().strip() or None
        except OSError as exc:
            raise SubmitError(f"cannot read the Ray auth token file {path}: {exc}") from exc
    default = Path.home() / ".ray" / "auth_token"
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" and default.is_file():
        return default.read_text().strip() or None
    return None


def connect(address: str) -> Any:
    """A ``JobSubmissionClient`` for ``address``, or a SubmitError saying why there is none.

    The token goes in an explicit header, so it is sent whatever Ray's per-process auth mode.
    """
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as exc:
        raise SubmitError(f"cdlm-submit needs Ray's job client ({exc}): "
                          "pip install 'ray[default]'") from exc
    for name in QUIET_LOGGERS:  # after importing Ray, which configures its loggers on import
        logging.getLogger(name).setLevel(logging.ERROR)
    token = auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        with _address_env_hidden():
            return JobSubmissionClient(address, headers=headers)
    except (ConnectionError, OSError) as exc:
        raise SubmitError(f"cannot reach the Ray job server at {address}: {FORWARD_HINT}",
                          EXIT_UNREACHABLE) from exc
    except RuntimeError as exc:  # answered, but not (a compatible) Ray job server
        raise SubmitError(f"{address} is not a usable Ray job server: {exc}",
                          EXIT_UNREACHABLE) from exc
    except Exception as exc:
        if type(exc).__name__ != "AuthenticationError":  # ray.exceptions, imported lazily
            raise
        problem = "rejected the token" if token else "needs a token"
        raise SubmitError(f"the Ray job server at {address} {problem}: {AUTH_HINT}",
                          EXIT_AUTH) from exc


@contextlib.contextmanager
def _address_env_hidden() -> Iterator[None]:
    """Ray's client replaces the address it is given with RAY_API_SERVER_ADDRESS or RAY_ADDRESS
    when either is set (``get_address_for_submission_client``), which would make the env win over
    --address; hide them while it resolves its address (resolve_address already read them)."""
    saved = {name: os.environ.pop(name) for name in ADDRESS_ENV_VARS if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def find_project_root(start: Path | None = None) -> Path:
    """The cdlm-dist checkout to upload: above ``start`` (the cwd), else the installed package's."""
    import cdlm_dist

    candidates = [start or Path.cwd()]
    candidates += list(candidates[0].resolve().parents)
    candidates.append(Path(cdlm_dist.__file__).resolve().parents[1])
    for path in candidates:
        if (path / "pyproject.toml").is_file() and (path / "cdlm_dist").is_dir():
            return path
    raise SubmitError("cannot find the cdlm-dist checkout to upload; run cdlm-submit inside it "
                      "or pass --working-dir")


def runtime_env(root: Path | None, pip: list[str] | None = None) -> dict[str, Any]:
    """The job's runtime env: our code as ``working_dir``; dependencies come from the image."""
    env: dict[str, Any] = {"env_vars": {"PYTHONUNBUFFERED": "1"}}
    if root is not None:
        env |= {"working_dir": str(root), "excludes": list(EXCLUDES)}
    if pip:
        env["pip"] = list(pip)
    return env


def new_job_id(command: str) -> str:
    """Readable and unique: ``cdlm-train-20250101-120000-1a2b``."""
    short = command.removeprefix("cdlm-")
    return f"cdlm-{short}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def with_cluster_defaults(command: str, overrides: list[str]) -> list[str]:
    """A submitted job joins the cluster it runs on (its "local" default would start a private
    Ray inside the driver) unless the overrides say otherwise."""
    if any(o.lstrip("+").startswith(f"{JOIN_CLUSTER_KEY}=") for o in overrides):
        return list(overrides)
    return [*overrides, f"{JOIN_CLUSTER_KEY}=auto"]


def build_entrypoint(python: str, job_id: str, storage: str, command: str,
                     overrides: list[str]) -> str:
    return shlex.join([python, "-m", "cdlm_dist.jobs.remote", "run", "--job-id", job_id,
                       "--storage", storage, "--", command, *overrides])


def submit(client: Any, command: str, overrides: list[str], *, storage: str,
           root: Path | None, python: str = "python", pip: list[str] | None = None,
           num_cpus: float | None = None, num_gpus: float | None = None,
           job_id: str | None = None, resume: str | None = None) -> str:
    """Submit ``command overrides`` as a Ray job; returns its submission id.

    ``resume``: run in that earlier job's directory (and storage), so cdlm-train continues from
    its latest checkpoint and cdlm-sweep from its study, as rerunning a command does locally.
    """
    if command not in COMMANDS:
        raise SubmitError(f"unknown command {command!r}; one of {sorted(COMMANDS)}")
    job_id = job_id or new_job_id(command)
    results_id = job_id
    if resume:
        storage, results_id = _resumable(client, resume)
    if not (is_uri(storage) or storage.startswith(("/", "~"))):
        raise SubmitError(f"--storage {storage!r} must be absolute, ~/..., or a URI (s3://...)")
    overrides = with_cluster_defaults(command, overrides)
    resources = {k: v for k, v in (("entrypoint_num_cpus", num_cpus),
                                   ("entrypoint_num_gpus", num_gpus)) if v is not None}
    try:
        return client.submit_job(
            entrypoint=build_entrypoint(python, results_id, storage, command, overrides),
            submission_id=job_id, runtime_env=runtime_env(root, pip),
            metadata={META_COMMAND: command, META_ARGS: json.dumps(overrides),
                      META_STORAGE: storage, META_RESULTS: results_id}, **resources)
    except RuntimeError as exc:
        raise SubmitError(f"the job server refused job {job_id}: {exc}") from exc


def _results_of(info: Any, job_id: str) -> tuple[str, str]:
    """(storage, directory id) of a job cdlm-submit submitted."""
    meta = info.metadata or {}
    if META_STORAGE not in meta:
        raise SubmitError(f"job {job_id} was not submitted by cdlm-submit: its metadata names no "
                          "results storage", EXIT_NOT_FOUND)
    return meta[META_STORAGE], meta.get(META_RESULTS, job_id)


def _resumable(client: Any, job_id: str) -> tuple[str, str]:
    info = job_info(client, job_id)
    if not info.status.is_terminal():
        raise SubmitError(f"job {job_id} is still {info.status}; `cdlm-submit stop {job_id}` "
                          "before resuming it")
    return _results_of(info, job_id)


def job_info(client: Any, job_id: str) -> Any:
    try:
        return client.get_job_info(job_id)
    except RuntimeError as exc:
        if HTTP_NOT_FOUND in str(exc):
            raise SubmitError(f"no job {job_id!r} on this cluster (`cdlm-submit list` shows "
                              "its jobs)", EXIT_NOT_FOUND) from exc
        raise


def wait(client: Any, job_id: str, timeout_s: float | None = None) -> Any:
    """Block until the job is terminal; returns its JobStatus."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        status = job_info(client, job_id).status
        if status.is_terminal():
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise SubmitError(f"job {job_id} is still {status} after {timeout_s:g} s (it keeps "
                              f"running; `cdlm-submit stop {job_id}` stops it)", EXIT_JOB_FAILED)
        time.sleep(POLL_SECONDS)


async def _tail(client: Any, job_id: str, out: TextIO) -> None:
    async for chunk in client.tail_job_logs(job_id):
        out.write(chunk)
        out.flush()


def _poll_logs(client: Any, job_id: str, out: TextIO) -> None:
    """Follow without aiohttp: print what the log gained since the last look."""
    seen = 0
    while True:
        terminal = job_info(client, job_id).status.is_terminal()
        logs = client.get_job_logs(job_id)
        out.write(logs[seen:])
        out.flush()
        seen = len(logs)
        if terminal:
            return
        time.sleep(POLL_SECONDS)


def follow(client: Any, job_id: str, out: TextIO = sys.stdout,
           timeout_s: float | None = None) -> Any:
    """Stream the job's log to ``out`` until it ends; returns its final JobStatus."""
    job_info(client, job_id)  # a clear "no such job" before any streaming
    try:
        import aiohttp  # noqa: F401  (tail_job_logs needs it; ray[default] brings it)

        asyncio.run(asyncio.wait_for(_tail(client, job_id, out), timeout_s))
    except ImportError:
        _poll_logs(client, job_id, out)
    except (RuntimeError, asyncio.TimeoutError):
        pass  # a dropped stream or the timeout; wait() below reports the state
    return wait(client, job_id, timeout_s)


def last_lines(client: Any, job_id: str, n: int = LOG_TAIL_LINES) -> str:
    lines = client.get_job_logs(job_id).rstrip("\n").splitlines()
    return "\n".join(lines[-n:])


def ensure_succeeded(client: Any, job_id: str, status: Any, log_shown: bool = False) -> None:
    """Raise a SubmitError with the job's message unless it succeeded, and its last log lines
    unless ``log_shown`` (--follow has just printed them: repeating them printed each twice)."""
    if str(status) == "SUCCEEDED":
        return
    tail = ("; its log is above" if log_shown else
            f"\n--- last {LOG_TAIL_LINES} log lines ---\n{last_lines(client, job_id)}")
    raise SubmitError(f"job {job_id} {status}: {_job_message(job_info(client, job_id))}{tail}",
                      EXIT_JOB_FAILED)


def _job_message(info: Any) -> str:
    """The job server's message, without the copy of the log Ray appends to it."""
    lines = (info.message or "").strip().splitlines()
    return lines[0].split(RAY_LOG_COPY)[0].rstrip(":") if lines else "no message"


def fetch(client: Any, job_id: str, to: Path, *, via: str = "auto", with_checkpoints: bool = True,
          root: Path | None = None, python: str = "python") -> list[str]:
    """Copy the job's results into ``to``; returns the top-level names copied."""
    info = job_info(client, job_id)
    storage, results_id = _results_of(info, job_id)
    if not info.status.is_terminal():
        print(f"cdlm-submit: job {job_id} is {info.status}; fetching what it wrote so far",
              file=sys.stderr)
    direct = is_uri(storage) or local_job_dir(storage, results_id).is_dir()
    if via == "direct" or (via == "auto" and direct):
        location = join(storage, results_id)
        try:
            return download(location, to)
        except ResultsError as exc:
            raise SubmitError(f"results of job {job_id} not found: {exc} (a cluster path is "
                              "only readable here on the same host; try --via job)",
                              EXIT_NOT_FOUND) from exc
    if is_uri(storage):
        raise SubmitError(f"job {job_id} stored its results in {storage}; fetch them with "
                          "--via direct (needs credentials for that storage here)")
    return _fetch_via_job(client, results_id, storage, to, with_checkpoints, root, python)


def _fetch_via_job(client: Any, job_id: str, storage: str, to: Path, with_checkpoints: bool,
                   root: Path | None, python: str) -> list[str]:
    """Run a short export job on the head node and unpack the archive it logs."""
    export_id = new_job_id("export")
    entry = [python, "-m", "cdlm_dist.jobs.remote", "export", "--job-id", job_id,
             "--storage", storage] + ([] if with_checkpoints else ["--no-checkpoints"])
    client.submit_job(entrypoint=shlex.join(entry), submission_id=export_id,
                      runtime_env=runtime_env(root), metadata={META_COMMAND: "export"})
    try:
        status = wait(client, export_id)
        lines = client.get_job_logs(export_id).splitlines()
        for line in lines:
            if line.startswith(NOT_FOUND_MARK):
                raise SubmitError(
                    f"results of job {job_id} not found: nothing at {line.split(' ', 1)[1]} "
                    "(a job submitted with --num-cpus/--num-gpus may have run on a worker node; "
                    "use a URI --storage for those)", EXIT_NOT_FOUND)
            if line.startswith(TOO_BIG_MARK):
                size = int(line.split()[1])
                raise SubmitError(f"results of job {job_id} are {size / 2**20:.0f} MiB, too big "
                                  "for the job log: add --no-checkpoints, or submit with a URI "
                                  "--storage (s3://...)", EXIT_NOT_FOUND)
        ensure_succeeded(client, export_id, status)
        try:
            return unpack(read_archive_text(lines), to)
        except ResultsError as exc:
            raise SubmitError(f"fetching job {job_id}: {exc}", EXIT_JOB_FAILED) from exc
    finally:
        try:
            client.delete_job(export_id)
        except RuntimeError:
            pass  # only bookkeeping; the export job's record stays in `cdlm-submit list`
