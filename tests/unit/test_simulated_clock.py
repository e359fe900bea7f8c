"""The simulated clock's follower outlives a failed read of the shared database (a restart of
the event store's PostgreSQL): sleepers are woken by the next move of the clock."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from managed_backups.shared.clock import SimulatedClock
from managed_backups.shared.sqldb import SqlDatabase

START = datetime(2026, 3, 1, tzinfo=UTC)


async def test_the_clock_follower_survives_failed_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = SqlDatabase(f"sqlite:///{tmp_path / 'clock.sqlite'}")
    clock = SimulatedClock(db, START, poll=0.01)
    read = clock._read
    failures = 3

    def flaky() -> datetime:
        nonlocal failures
        if failures:
            failures -= 1
            raise OSError("the database system is shutting down")
        return read()

    monkeypatch.setattr(clock, "_read", flaky)
    await clock.start()
    try:

        async def every_failure_met() -> None:
            while failures:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(every_failure_met(), timeout=10)
        other = SimulatedClock(db, START)  # another process moves the shared clock
        moved = other.advance(3600)
        await asyncio.wait_for(clock.sleep_until(moved, max_real_seconds=30), timeout=10)
        assert clock._task is not None and not clock._task.done()
        assert clock._now == moved
    finally:
        await clock.stop()
        db.close()
