"""This process's memory, for the loop's rows: peak and current resident set size (RSS).

The loop logs, at every log row, each rank's peak RSS and its RSS when its
:class:`~cdlm_dist.training.context.RunContext` was made (a Ray worker makes it before it loads
any data), gathered to the main rank, under :data:`SYSTEM_PREFIX`. Their difference is what a
rank grew by during the run: on the streamed path it must stay well under the data's size, or
the worker is holding the data it was meant to stream (``tests/runners/test_ray_data.py``).

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
PEAK_RSS = "sys/peak_rss_mb"  # the largest rank's peak; per rank: PEAK_RSS/rank_<r>
START_RSS = "sys/start_rss_mb"  # per rank: START_RSS/rank_<r>, when its context was made
RSS_GROWTH = "sys/rss_growth_mb"  # summary only, per rank: the peak minus the start
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


def memory_row(peaks: list[float], starts: list[float]) -> dict[str, float]:
    """The ``sys/`` entries of a log row from every rank's peak and start RSS."""
    row = {PEAK_RSS: round(max(peaks), 1)}
    for r, (peak, start) in enumerate(zip(peaks, starts)):
        row[rank_key(PEAK_RSS, r)] = round(peak, 1)
        row[rank_key(START_RSS, r)] = round(start, 1)
    return row


def memory_summary(rows: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """The run's memory for summary.json: the largest peak, each rank's peak and each rank's
    largest growth over the rows (the rows of one process share its start; a restarted worker
    is a new process with its own)."""
    out: dict[str, float] = {}

    def keep_max(key: str, value: float) -> None:
        out[key] = round(max(out.get(key, value), value), 1)

    for row in rows:
        for key, value in row.items():
            if key.split("/rank_")[0] == PEAK_RSS:
                keep_max(key, value)
            elif key.startswith(START_RSS):
                rank = key.removeprefix(START_RSS)
                keep_max(RSS_GROWTH + rank, row[PEAK_RSS + rank] - value)
    return out
