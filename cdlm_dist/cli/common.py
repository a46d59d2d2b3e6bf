"""What every config-driven command shares: --help, --cfg, and errors as one line + an exit code."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from omegaconf import OmegaConf

from cdlm_dist.config import ConfigError
from cdlm_dist.training.checkpoint import CheckpointError

EXIT_RUN_FAILED = 1  # the run started and failed; starting the same command again resumes it
EXIT_BAD_INPUT = 2


def run_command(prog: str, doc: str | None, argv: list[str] | None,
                compose: Callable[[list[str]], Any], run: Callable[[list[str]], int]) -> int:
    """Parse ``argv`` as Hydra overrides; ``--cfg`` prints the composed config; ``run`` does the
    work. Configuration and checkpoint errors print one line naming the problem, exit code 2; a
    Ray Train run that used up runner.max_failures prints one line saying how to resume, exit 1."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(doc)
        return 0
    try:
        if "--cfg" in args:
            print(OmegaConf.to_yaml(compose([a for a in args if a != "--cfg"])))
            return 0
        return run(args)
    except (ConfigError, CheckpointError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:
        message = gave_up_message(exc)
        if message is None:
            raise  # a bug: its traceback is what a report needs
        print(f"{prog}: error: {message}", file=sys.stderr)
        return EXIT_RUN_FAILED


def gave_up_message(exc: BaseException) -> str | None:
    """One line for Ray Train giving up (``RayRunError``), else None.

    Its message embeds Ray's report, with every worker's traceback; the user needs what failed,
    each worker's own error and how to resume (the message's last line), not the tracebacks.
    """
    from cdlm_dist.runners.ray_train import RayRunError  # only here: keeps --help fast

    if not isinstance(exc, RayRunError):
        return None
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    causes = "; ".join(_cause_lines(exc.__cause__))
    parts = [lines[0].rstrip(":"), causes, lines[-1] if len(lines) > 1 else ""]
    return " ".join(p.rstrip(".") + "." for p in parts if p)


def _cause_lines(cause: BaseException | None) -> list[str]:
    """``rank R: Type: first line`` for each failed worker (Train V2's ``WorkerGroupError``),
    or the controller's error; nothing for other causes (their text is in the message)."""
    failures = getattr(cause, "worker_failures", None)
    if failures:
        return [f"rank {rank}: {_first_line(error)}" for rank, error in sorted(failures.items())]
    controller = getattr(cause, "controller_failure", None)
    return [f"controller: {_first_line(controller)}"] if controller is not None else []


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")
