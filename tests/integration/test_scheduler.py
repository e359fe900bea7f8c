"""Backup settings, tiers and the scheduler on the simulated clock, on a real broker and store."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from contracts import topics
from contracts.commands import TakeBackup
from shared.domain.ids import scheduled_backup_id
from tests.harness import System
from tests.standin_executor import StandInExecutor

pytestmark = pytest.mark.integration
T0 = datetime.fromisoformat("2026-01-05T00:00:00+00:00")
FREQUENCIES = (5, 10, 15, 30, 60, 240, 1440)


@pytest.fixture
async def scheduled(tmp_path: Path, postgres_store_url: str, kafka: str) -> AsyncIterator[tuple[System, StandInExecutor]]:
    system = await System.start(
        tmp_path,
        postgres_store_url,
        kafka,
        services=("projections", "scheduler"),
        simulated_clock=True,
        poll_interval_seconds=0.01,
    )
    executor = StandInExecutor(kafka)
    await system.start_service("standin", executor.run)
    yield system, executor
    await system.close()


async def settle(
    system: System,
    executor: StandInExecutor,
    expected: dict[str, int],
    timeout: float = 30,
    ignore: frozenset[UUID] = frozenset(),
) -> None:
    """Wait until the scheduler reached the clock's time and each cluster got ``expected``
    (counted by ``count``)."""
    now = system.clock.now()
    try:
        await _settle(system, executor, expected, now, timeout, ignore)
    except TimeoutError:
        counts = Counter(c.cluster_id for c in executor.received)
        assert system.http is not None
        for cluster_id, n in expected.items():
            if counts[cluster_id] < n:
                events = (await system.http.get(f"/api/v1/clusters/{cluster_id}/events")).json()
                for e in events["events"]:
                    print(e["position"], e["type"], e.get("backup_id"), e.get("slot"), e.get("generation"), e["occurred_at"])
        raise AssertionError(
            f"at {now}: scheduler reached {system.clock.reached()}, expected {expected}, "
            f"got {dict(counts)}, answered {executor.answered}/{len(executor.received)}"
        ) from None


async def _settle(
    system: System,
    executor: StandInExecutor,
    expected: dict[str, int],
    now: datetime,
    timeout: float,
    ignore: frozenset[UUID],
) -> None:
    async with asyncio.timeout(timeout):
        while True:
            reached = system.clock.reached().get("scheduler")
            counts = Counter(c.cluster_id for c in executor.received if c.backup_id not in ignore)
            if (
                reached is not None
                and reached >= now
                and all(counts[k] >= v for k, v in expected.items())
                and executor.answered == len(executor.received)
            ):
                return
            await asyncio.sleep(0.005)


def after_settings(executor: StandInExecutor, cluster_id: str, frequency: int) -> list[TakeBackup]:
    """A cluster's TakeBackups, without the registration's full (generation 0), which is only
    taken if the scheduler saw the registration before the frequency change."""
    registration_full = scheduled_backup_id(cluster_id, 0, T0)
    return [
        c
        for c in executor.by_cluster(cluster_id)
        if frequency == 60 or c.backup_id != registration_full
    ]


def expected_sequence(frequency: int, start: datetime, end: datetime) -> list[tuple[datetime, str]]:
    """Independent statement of PRODUCT.md's cadence for a cluster registered at ``start``."""
    every_full = timedelta(days=1) if frequency <= 60 else timedelta(days=7)
    out = []
    slot, full_at = start, start
    while slot <= end:
        if slot == start or slot - full_at >= every_full:
            full_at = slot
            out.append((slot, "FULL"))
        else:
            out.append((slot, "INCREMENTAL"))
        slot += timedelta(minutes=frequency)
    return out


async def test_exact_sequences_for_every_frequency_over_8_days(
    scheduled: tuple[System, StandInExecutor],
) -> None:
    system, executor = scheduled
    start = system.clock.now()
    assert start == T0
    clusters = {f: f"f{f}-{uuid4().hex[:6]}" for f in FREQUENCIES}
    for frequency, cluster_id in clusters.items():
        assert (await system.register(cluster_id)).code == 200
        if frequency != 60:
            result = await system.command(
                topics.CLUSTER_COMMANDS,
                {"type": "UpdateBackupSettings", "cluster_id": cluster_id, "frequency_minutes": frequency},
            )
            assert result.code == 200, result
    ignore = frozenset(
        scheduled_backup_id(c, 0, T0) for f, c in clusters.items() if f != 60
    )
    # The settings change's immediate full (and maybe the registration's, ignored).
    await settle(system, executor, {c: 1 for c in clusters.values()}, ignore=ignore)

    end = start + timedelta(days=8)
    step = timedelta(minutes=5)
    while system.clock.now() < end:
        system.clock.advance(step.total_seconds())
        now = system.clock.now()
        expected = {
            cluster_id: len(expected_sequence(f, start, now)) for f, cluster_id in clusters.items()
        }
        await settle(system, executor, expected, ignore=ignore)

    for frequency, cluster_id in clusters.items():
        received = after_settings(executor, cluster_id, frequency)
        got = [(c.scheduled_for, c.backup_type.value) for c in received]
        assert got == expected_sequence(frequency, start, end), frequency
        assert len({c.backup_id for c in received}) == len(received)
        fulls = [c for c in received if c.backup_type.value == "FULL"]
        for command in received:
            if command.backup_type.value == "INCREMENTAL":
                base = [f for f in fulls if f.scheduled_for <= command.scheduled_for][-1]  # type: ignore[operator]
                assert command.chain_id == base.backup_id
    total = sum(len(expected_sequence(f, start, end)) for f in FREQUENCIES)
    assert len([c for c in executor.received if c.backup_id not in ignore]) == total
