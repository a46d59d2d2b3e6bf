"""The job side of ``cdlm-submit``: runs on the cluster as a Ray Jobs entrypoint.

    python -m cdlm_dist.jobs.remote run --job-id ID --storage S -- cdlm-train k=v ...
    python -m cdlm_dist.jobs.remote export --job-id ID --storage S [--no-checkpoints]

``run`` gives the job a directory of its own, ``<storage>/<job_id>``, with links to the
uploaded code, and runs the command there: Ray extracts identical code to one shared folder,
so without this two jobs with the default ``run_dir`` would write (and resume from) the same
``runs/<name>``. Relative data paths in overrides keep working through the links. ``export``
prints that directory as a framed archive for ``cdlm-submit fetch`` (see results.py).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from cdlm_dist.jobs import COMMANDS
from cdlm_dist.jobs.results import (
    MANIFEST,
    MAX_LOG_ARCHIVE_BYTES,
    NOT_FOUND_MARK,
    OUTPUT_NAMES,
    TOO_BIG_MARK,
    ResultsError,
    download,
    is_uri,
    join,
    local_job_dir,
    pack,
    upload,
    write_archive_text,
)

EXIT_BAD_INPUT = 2
EXIT_NOT_FOUND = 4


def prepare_job_dir(src: Path, job_dir: Path) -> None:
    """Create ``job_dir`` and link every entry of the uploaded code into it (outputs excepted)."""
    job_dir.mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        link = job_dir / entry.name
        if entry.name in OUTPUT_NAMES or link.is_symlink() or link.exists():
            continue
        link.symlink_to(entry.resolve(), target_is_directory=entry.is_dir())


def call_command(command: str, argv: list[str]) -> int:
    """Run a console-script's ``main(argv)`` in this process and return its exit code."""
    module_name, func_name = COMMANDS[command].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        print(f"cdlm-job: error: {command} is not available in the submitted code ({exc})",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        code = getattr(module, func_name)(argv)
    except SystemExit as exc:  # argparse/Hydra style exits
        code = exc.code
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def _write_manifest(job_dir: Path, record: dict) -> None:
    (job_dir / MANIFEST).write_text(json.dumps(record, indent=2))


def run(job_id: str, storage: str, command: str, argv: list[str]) -> int:
    """Run ``command argv`` in the job's own directory; publish results to a URI storage."""
    if command not in COMMANDS:
        print(f"cdlm-job: error: unknown command {command!r}; one of {sorted(COMMANDS)}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    src = Path.cwd()
    job_dir = local_job_dir(storage, job_id)
    prepare_job_dir(src, job_dir)
    _restore(job_dir, storage, job_id)
    os.chdir(job_dir)
    sys.path.insert(0, str(src))  # imports keep resolving to the uploaded code
    # storage as given (not the expanded job_dir): the manifest travels with fetched results,
    # where the head's absolute paths mean nothing
    record = {"job_id": job_id, "command": command, "args": argv, "host": socket.gethostname(),
              "storage": storage, "started": time.time()}
    _write_manifest(job_dir, record)
    print(f"cdlm-job: {command} {' '.join(argv)}\ncdlm-job: results in {job_dir}", flush=True)
    code = 1  # what the manifest says if the command raises (its traceback goes to the log)
    try:
        code = call_command(command, argv)
    finally:
        _write_manifest(job_dir, record | {"exit_code": code, "finished": time.time()})
        uploaded = _publish(job_dir, storage, job_id)
    return code or (0 if uploaded else 1)


def _restore(job_dir: Path, storage: str, job_id: str) -> None:
    """A resumed job on URI storage starts from what its earlier run uploaded (if anything)."""
    if not is_uri(storage):
        return  # the directory itself persists on the node
    try:
        names = download(join(storage, job_id), job_dir)
    except ResultsError:
        return  # a new job: nothing there yet
    print(f"cdlm-job: restored {', '.join(names)} from {join(storage, job_id)}", flush=True)


def _publish(job_dir: Path, storage: str, job_id: str) -> bool:
    """Upload the results when storage is a URI; False (and a message) if that fails."""
    if not is_uri(storage):
        return True
    target = join(storage, job_id)
    try:
        upload(job_dir, target)
    except (ResultsError, OSError) as exc:
        print(f"cdlm-job: error: uploading results to {target} failed: {exc}",
              file=sys.stderr, flush=True)
        return False
    print(f"cdlm-job: results uploaded to {target}", flush=True)
    return True


def export(job_id: str, storage: str, with_checkpoints: bool) -> int:
    """Print the job's results directory as a framed archive (or say why it cannot)."""
    job_dir = local_job_dir(storage, job_id)
    if is_uri(storage) or not job_dir.is_dir():
        where = join(storage, job_id) if is_uri(storage) else f"{job_dir} on {socket.gethostname()}"
        print(f"{NOT_FOUND_MARK} {where}", flush=True)
        return EXIT_NOT_FOUND
    data = pack(job_dir, with_checkpoints)
    if len(data) > MAX_LOG_ARCHIVE_BYTES:
        print(f"{TOO_BIG_MARK} {len(data)} {job_dir}", flush=True)
        return EXIT_BAD_INPUT
    write_archive_text(data, sys.stdout)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cdlm_dist.jobs.remote")
    sub = parser.add_subparsers(dest="action", required=True)
    for name in ("run", "export"):
        p = sub.add_parser(name)
        p.add_argument("--job-id", required=True)
        p.add_argument("--storage", required=True)
    sub.choices["run"].add_argument("command", choices=sorted(COMMANDS))
    sub.choices["run"].add_argument("args", nargs=argparse.REMAINDER)
    sub.choices["export"].add_argument("--no-checkpoints", action="store_true")
    args = parser.parse_args(argv)
    if args.action == "run":
        return run(args.job_id, args.storage, args.command, args.args)
    return export(args.job_id, args.storage, not args.no_checkpoints)


if __name__ == "__main__":
    sys.exit(main())
