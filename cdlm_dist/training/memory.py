"""This process's memory, for the loop's rows: peak and current resident set size (RSS).

At every training row the loop logs three numbers per rank, gathered to the main rank (one
all-reduce), under :data:`SYSTEM_PREFIX`:

- ``start``: its RSS when its :class:`~cdlm_dist.training.context.RunContext` was made. A Ray
  worker makes it before it loads any data; the local runner after the driver has loaded it.
- ``loaded``: its peak RSS when the loop began: data loaded (and any transient of loading it,
  such as a table of encoded images read whole), model not yet built.
- ``peak``: its peak RSS so far.

``loaded - start`` is what loading its data cost a rank: on the streamed path it must stay well
under the data's size (``tests/runners/test_ray_data.py``). ``peak - loaded`` adds the model,
optimiser and the one-time costs of the first steps (lazy imports of torch's optimisers and
autograd: about 0.4 GB on CPU here, whatever the data), so it says little about the data.

Stdlib only: ``resource.getrusage`` for the peak, ``/proc/self/statm`` for the current size
(Linux; elsewhere the peak stands in for it). Values are MiB.
"""

from __future__ import annotations

import os
import resource
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

SYSTEM_PREFIX = "sys/"  # measurements of the process, not of training: equal runs differ in them
PEAK_RSS = "sys/peak_rss_mb"  # rows and summary: the largest rank's; per rank: PEAK_RSS/rank_<r>
LOADED_RSS = "sys/loaded_rss_mb"  # rows, per rank: the peak when the loop began
START_RSS = "sys/start_rss_mb"  # rows, per rank: the RSS when its context was made
LOAD_GROWTH = "sys/load_growth_mb"  # summary, per rank: loaded - start (loading its data)
RSS_GROWTH = "sys/rss_growth_mb"  # summary, per rank: peak - start (the whole run)
BYTES_PER_MB = 2 ** 20
MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
STATM = Path("/proc/self/statm")  # "size resident shared ..." in pages


def peak_rss_mb() -> float:
    """The most this process has held resident so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * MAXRSS_UNIT / BYTES_PER_MB


def rss_mb() -> float:
    """What this process holds resident now (its peak where /proc is missing)."""
    try:
        pages = int(STATM.read_text().split()[1])
    except OSError:
        return peak_rss_mb()
    return pages * os.sysconf("SC_PAGE_SIZE") / BYTES_PER_MB


def rank_key(key: str, rank: int) -> str:
    return f"{key}/rank_{rank}"


def memory_row(peaks: list[float], loaded: list[float], starts: list[float]) -> dict[str, float]:
    """The ``sys/`` entries of a training row from every rank's three numbers."""
    row = {PEAK_RSS: round(max(peaks), 1)}
    for r, values in enumerate(zip(peaks, loaded, starts)):
        for key, value in zip((PEAK_RSS, LOADED_RSS, START_RSS), values):
            row[rank_key(key, r)] = round(value, 1)
    return row


def memory_summary(rows: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """The run's memory for summary.json, the largest over its rows: the peak of the largest
    rank, and each rank's peak, load growth and whole-run growth (rows of one process share its
    start; a restarted worker is a new process, with its own)."""
    out: dict[str, float] = {}

    def keep_max(key: str, value: float) -> None:
        out[key] = round(max(out.get(key, value), value), 1)

    for row in rows:
        for key, value in row.items():
            if key.split("/rank_")[0] == PEAK_RSS:
                keep_max(key, value)
            elif key.startswith(START_RSS):
                rank = key.removeprefix(START_RSS)
                keep_max(LOAD_GROWTH + rank, row[LOADED_RSS + rank] - value)
                keep_max(RSS_GROWTH + rank, row[PEAK_RSS + rank] - value)
    return out
