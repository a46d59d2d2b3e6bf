"""The loop's memory numbers (cdlm_dist.training.memory): RSS that follows what a process
touches, and the run's summary of them across ranks and a restart."""

from __future__ import annotations

from cdlm_dist.training.memory import (
    LOAD_GROWTH,
    PEAK_RSS,
    RSS_GROWTH,
    memory_row,
    memory_summary,
    peak_rss_mb,
    rank_key,
    rss_mb,
)

TOUCHED_MB = 64


def test_rss_and_peak_follow_memory_the_process_touches() -> None:
    before = rss_mb()
    held = b"\x01" * (TOUCHED_MB * 2 ** 20)  # written, so resident
    assert rss_mb() - before > TOUCHED_MB / 2
    assert peak_rss_mb() >= rss_mb() - 1  # 1 MB: the kernel updates the peak lazily
    del held


def test_summary_takes_each_ranks_largest_over_rows_and_a_restarted_process() -> None:
    rows = [{"step": 2, "loss/total": 1.0},
            memory_row(peaks=[100, 120], loaded=[60, 75], starts=[50, 60]),
            memory_row(peaks=[110, 300], loaded=[60, 75], starts=[50, 60]),
            memory_row(peaks=[90, 95], loaded=[85, 80], starts=[70, 85])]  # after a restart
    assert rows[1][PEAK_RSS] == 120 and rows[1][rank_key(PEAK_RSS, 0)] == 100
    summary = memory_summary(rows)
    assert summary[PEAK_RSS] == 300
    assert [summary[rank_key(PEAK_RSS, r)] for r in (0, 1)] == [110, 300]
    assert [summary[rank_key(LOAD_GROWTH, r)] for r in (0, 1)] == [15, 15]
    assert [summary[rank_key(RSS_GROWTH, r)] for r in (0, 1)] == [60, 240]
    assert memory_summary(rows[:1]) == {}  # no memory rows (an older run): nothing
