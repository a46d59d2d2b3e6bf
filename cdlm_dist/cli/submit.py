"""cdlm-submit: run cdlm-train or cdlm-sweep on a Ray cluster from this checkout, one command.

Usage:
    cdlm-submit train [OVERRIDES...] [--follow] [--address URL] [--storage PATH|URI]
    cdlm-submit sweep [OVERRIDES...] [--follow] ...
    cdlm-submit train [OVERRIDES...] --resume JOB_ID   # continue a stopped/failed job
    cdlm-submit status JOB_ID | logs JOB_ID [--follow] | stop JOB_ID | list
    cdlm-submit fetch JOB_ID --to DIR [--via auto|direct|job] [--no-checkpoints]

The address is the cluster's job server (its dashboard port): --address, else
RAY_API_SERVER_ADDRESS or RAY_ADDRESS, else http://127.0.0.1:8265, which is where
`ray dashboard cluster/aws.yaml` or `kubectl port-forward svc/cdlm-cluster-head-svc 8265:8265`
put it. The checkout is uploaded as the job's
working_dir (no .venv, runs, .git, caches); the cluster image provides the dependencies.
Each job runs in <storage>/<job_id>/ on the head node; `fetch` brings back what it wrote there
(runs/<name>/ with summary.json, metrics, checkpoints, plots). Overrides are cdlm-train's or
cdlm-sweep's Hydra overrides; put any that start with '-' after a `--`. They are composed and
validated here first (with this checkout's code), so a bad key or value fails before any upload.

A cluster with Ray token authentication (the specs in cluster/ turn it on) needs its token:
RAY_AUTH_TOKEN, or a file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token with
RAY_AUTH_MODE=token.

Exit codes: 0 ok, 1 job failed/stopped, 2 bad usage, 3 cluster unreachable, 4 not found,
5 authentication refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cdlm_dist.jobs import SHORT_NAMES
from cdlm_dist.jobs.client import (
    EXIT_JOB_FAILED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    META_RESULTS,
    META_STORAGE,
    SubmitError,
    connect,
    ensure_succeeded,
    fetch,
    find_project_root,
    follow,
    job_info,
    resolve_address,
    submit,
    wait,
    with_cluster_defaults,
)
from cdlm_dist.jobs.results import DEFAULT_STORAGE, join

ACTIONS = ("train", "sweep", "status", "logs", "stop", "fetch", "list")
EXIT_INTERRUPTED = 130


def _parser(action: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"cdlm-submit {action}")
    p.add_argument("--address", help="job server URL (default: $RAY_API_SERVER_ADDRESS, "
                                     "$RAY_ADDRESS or http://127.0.0.1:8265)")
    if action in SHORT_NAMES:
        p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. train.steps=500")
        p.add_argument("--follow", action="store_true", help="stream the log until the job ends")
        p.add_argument("--timeout", type=float, help="with --follow: give up after SECONDS")
        p.add_argument("--storage", default=DEFAULT_STORAGE,
                       help="where the job runs and keeps results: a cluster path or a URI")
        p.add_argument("--working-dir", type=Path, help="checkout to upload (default: this one)")
        p.add_argument("--python", default="python", help="interpreter on the cluster")
        p.add_argument("--pip", action="append", help="extra pip package for the job (repeat)")
        p.add_argument("--num-cpus", type=float, help="CPUs reserved for the driver")
        p.add_argument("--num-gpus", type=float, help="GPUs reserved for the driver "
                                                      "(runner=local on a GPU node)")
        p.add_argument("--job-id", help="submission id (default: cdlm-<cmd>-<time>-<random>)")
        p.add_argument("--resume", metavar="JOB_ID",
                       help="run in that finished job's directory: continue its run or sweep")
    elif action != "list":
        p.add_argument("job_id")
    if action == "logs":
        p.add_argument("--follow", action="store_true")
    if action == "stop":
        p.add_argument("--wait", action="store_true", help="return once the job has stopped")
    if action == "fetch":
        p.add_argument("--to", type=Path, required=True, help="local folder for the results")
        p.add_argument("--via", choices=("auto", "direct", "job"), default="auto",
                       help="direct: read the storage from here; job: stream through an "
                            "export job's log; auto: direct when readable here")
        p.add_argument("--no-checkpoints", action="store_true",
                       help="leave checkpoints/ behind (much smaller)")
        p.add_argument("--working-dir", type=Path)
        p.add_argument("--python", default="python")
    return p


def check_config(command: str, overrides: list[str]) -> None:
    """Compose the job's config as the job will (cluster defaults included): a bad key or value
    fails here in a second, with the command's own one-line message, not after an upload."""
    from cdlm_dist.config import ConfigError, compose
    from cdlm_dist.tuning.config import compose_sweep

    composers = {"cdlm-train": compose, "cdlm-sweep": compose_sweep}
    try:
        composers[command](with_cluster_defaults(command, overrides))
    except ConfigError as exc:
        raise SubmitError(f"{command}: {exc}", EXIT_USAGE) from exc


def _submit(client, args: argparse.Namespace, action: str, address: str) -> int:
    command = SHORT_NAMES[action]
    root = args.working_dir.resolve() if args.working_dir else find_project_root()
    job_id = submit(client, command, args.overrides, storage=args.storage, root=root,
                    python=args.python, pip=args.pip, num_cpus=args.num_cpus,
                    num_gpus=args.num_gpus, job_id=args.job_id, resume=args.resume)
    resumed = f", resuming {args.resume}" if args.resume else ""
    print(f"cdlm-submit: submitted {command} job {job_id} to {address}{resumed}", flush=True)
    if not args.follow:
        print(f"  status:  cdlm-submit status {job_id}\n"
              f"  logs:    cdlm-submit logs {job_id} --follow\n"
              f"  results: cdlm-submit fetch {job_id} --to results/{job_id}")
        return 0
    status = follow(client, job_id, sys.stdout, args.timeout)
    ensure_succeeded(client, job_id, status, log_shown=True)
    print(f"cdlm-submit: job {job_id} SUCCEEDED; results: "
          f"cdlm-submit fetch {job_id} --to results/{job_id}")
    return 0


def _status(client, job_id: str) -> int:
    info = job_info(client, job_id)
    meta = info.metadata or {}
    results = (join(meta[META_STORAGE], meta.get(META_RESULTS, job_id))
               if META_STORAGE in meta else "-")
    rows = [("job", job_id), ("status", info.status), ("message", info.message),
            ("entrypoint", info.entrypoint), ("results", results)]
    for key, value in rows:
        print(f"{key:<11}{value}")
    return 0 if str(info.status) in ("SUCCEEDED", "RUNNING", "PENDING") else EXIT_JOB_FAILED


def _list(client) -> int:
    for job in sorted(client.list_jobs(), key=lambda j: j.start_time or 0):
        if job.submission_id:
            print(f"{job.submission_id:<40}{str(job.status):<11}{job.entrypoint[:60]}")
    return 0


def run(action: str, argv: list[str]) -> int:
    """Parse ``argv`` for ``action`` and do it; raises SubmitError on failures."""
    overrides_after_dashdash: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, overrides_after_dashdash = argv[:cut], argv[cut + 1:]
    args = _parser(action).parse_intermixed_args(argv)
    if action in SHORT_NAMES:
        args.overrides += overrides_after_dashdash
    elif overrides_after_dashdash:
        raise SubmitError(f"cdlm-submit {action} takes no overrides")
    if action in SHORT_NAMES and args.working_dir is None:  # other code: its own config rules
        check_config(SHORT_NAMES[action], args.overrides)
    address = resolve_address(args.address)
    client = connect(address)
    if action in SHORT_NAMES:
        return _submit(client, args, action, address)
    if action == "status":
        return _status(client, args.job_id)
    if action == "list":
        return _list(client)
    if action == "logs":
        if args.follow:
            follow(client, args.job_id, sys.stdout)
        else:
            job_info(client, args.job_id)
            print(client.get_job_logs(args.job_id), end="")
        return 0
    if action == "stop":
        job_info(client, args.job_id)
        stopped = client.stop_job(args.job_id)
        status = wait(client, args.job_id) if args.wait else job_info(client, args.job_id).status
        print(f"cdlm-submit: job {args.job_id} {'stop requested' if stopped else 'was not running'}"
              f"; now {status}")
        return 0
    root = args.working_dir.resolve() if args.working_dir else None
    names = fetch(client, args.job_id, args.to, via=args.via,
                  with_checkpoints=not args.no_checkpoints,
                  root=root or _optional_root(), python=args.python)
    print(f"cdlm-submit: fetched {', '.join(names) or 'nothing'} of job {args.job_id} "
          f"into {args.to}")
    return 0


def _optional_root() -> Path | None:
    """The checkout for an export job's code, if there is one (else the cluster image's)."""
    try:
        return find_project_root()
    except SubmitError:
        return None


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else EXIT_USAGE
    action, rest = args[0], args[1:]
    if action not in ACTIONS:
        print(f"cdlm-submit: error: unknown action {action!r}; one of {', '.join(ACTIONS)}",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        return run(action, rest)
    except SubmitError as exc:
        print(f"cdlm-submit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if type(exc).__module__.startswith(("requests", "urllib3")):  # the cluster went away
            print(f"cdlm-submit: error: lost the job server: {exc}", file=sys.stderr)
            return EXIT_UNREACHABLE
        print(f"cdlm-submit: error: {exc}", file=sys.stderr)  # e.g. --to is not writable
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\ncdlm-submit: detached; the job keeps running (`cdlm-submit stop JOB_ID` "
              "stops it)", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
