"""A short soak (``benchmarks/soak.py``): 5 clusters for 2 simulated days on the real stack,
two instances of every service, one killed each day, failures injected; the invariants held and
the summary's numbers real. The issue's size (1,000 clusters x 30 days) runs on demand only:
``python -m benchmarks.soak --clusters 1000 --days 30``."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.soak import SoakConfig, run

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


async def test_short_soak(tmp_path: Path) -> None:
    summary = await run(
        SoakConfig(clusters=5, days=2, fail_rate=0.2, restores_per_day=1, base=tmp_path / "soak")
    )
    print("\n" + summary.render())
    assert summary.invariants_held, summary.render()
    assert summary.invariants, "no invariant was checked"
    # Every cluster's first full and one backup per cluster and day were taken.
    assert summary.taken >= 5 * 3, summary.render()
    assert summary.complete > 0, summary.render()
    # Failures were injected and show in the log as real connection failures.
    assert summary.injected_failures >= 1 and summary.refused_connections >= 1, summary.render()
    assert summary.failed.get("CONNECTION_FAILED", 0) >= 1, summary.render()
    # One kill a day: the executor mid-backup on day 1, the restore service on day 2.
    assert len(summary.kills) == 2, summary.kills
    assert summary.kills[0].startswith("backup-executor"), summary.kills
    # Restores ran and every one that succeeded equals its source.
    assert sum(summary.restores.values()) >= 1, summary.render()
    assert not summary.restores_differing, summary.render()
    assert summary.restores_compared_equal == summary.restores.get("SUCCEEDED", 0)
    # The measurements are real numbers read from their sources.
    assert summary.slots_measured >= 5 * 2, summary.render()  # the days' slots
    assert summary.lateness_real_s_p99 >= 0, summary.render()
    assert summary.event_store_events > 0 and summary.event_store_table_bytes > 0
    assert summary.max_consumer_lag and summary.lag_samples > 0, summary.render()
    assert set(summary.peak_rss_mib) >= {"api", "scheduler", "backup-executor", "restore"}
    assert all(mib > 10 for mib in summary.peak_rss_mib.values()), summary.peak_rss_mib
