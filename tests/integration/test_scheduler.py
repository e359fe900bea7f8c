"""Backup settings, tiers and the scheduler on the simulated clock, on a real broker and store."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from managed_backups.contracts import topics
from managed_backups.contracts.commands import TakeBackup
from managed_backups.shared.domain.cluster import Cluster
from managed_backups.shared.domain.ids import cluster_aggregate_id, scheduled_backup_id
from tests.harness import System
from tests.standin_executor import StandInExecutor

pytestmark = pytest.mark.integration
T0 = datetime.fromisoformat("2026-01-05T00:00:00+00:00")
FREQUENCIES = (5, 10, 15, 30, 60, 240, 1440)


@pytest.fixture
async def scheduled(
    tmp_path: Path, postgres_store_url: str, kafka: str
) -> AsyncIterator[tuple[System, StandInExecutor]]:
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
    schedulers: tuple[str, ...] = ("scheduler",),
) -> None:
    """Wait until each scheduler reached the clock's time, each cluster got at least
    ``expected`` TakeBackups (not counting ``ignore``) and the executor answered every
    TakeBackup sent until then.

    A scheduler that reached the time has followed every event recorded before the clock got
    there, decided every slot due and had its sends acknowledged; the executor's barrier then
    makes ``executor.received`` hold all of them. So after ``settle`` a count that must not have
    grown is checked against what happened, not against what has arrived so far."""
    now = system.clock.now()
    try:
        await _settle(system, executor, expected, now, timeout, ignore, schedulers)
        await executor.caught_up(timeout)
    except TimeoutError:
        counts = Counter(c.cluster_id for c in executor.received)
        assert system.http is not None
        for cluster_id, n in expected.items():
            if counts[cluster_id] < n:
                events = (await system.http.get(f"/api/v1/clusters/{cluster_id}/events")).json()
                for e in events["events"]:
                    print(
                        e["position"],
                        e["type"],
                        e.get("backup_id"),
                        e.get("slot"),
                        e.get("generation"),
                        e["occurred_at"],
                    )
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
    schedulers: tuple[str, ...],
) -> None:
    async with asyncio.timeout(timeout):
        while True:
            reached = system.clock.reached()
            counts = Counter(c.cluster_id for c in executor.received if c.backup_id not in ignore)
            if (
                all(name in reached and reached[name] >= now for name in schedulers)
                and all(counts[k] >= v for k, v in expected.items())
                and executor.answered == len(executor.received)
            ):
                return
            await asyncio.sleep(0.005)


def scheduled_in_store(system: System, cluster_id: str) -> list[Cluster.BackupScheduled]:
    """The cluster's ``BackupScheduled`` events, from its stream in the event store: what the
    scheduler decided (it records a backup there before sending its TakeBackup)."""
    assert system.api_runtime is not None
    stream = system.api_runtime.store.events.get(cluster_aggregate_id(cluster_id))
    return [e for e in stream if isinstance(e, Cluster.BackupScheduled)]


def assert_store_and_executor_agree(
    system: System, executor: StandInExecutor, cluster_id: str, count: int
) -> None:
    """After ``settle``: ``count`` backups were scheduled for the cluster, and the executor
    received exactly those, once each."""
    scheduled = [(e.backup_id, e.slot) for e in scheduled_in_store(system, cluster_id)]
    received = [(c.backup_id, c.scheduled_for) for c in executor.by_cluster(cluster_id)]
    assert len(scheduled) == count, scheduled
    assert received == scheduled


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
    """Independent statement of the cadence rule for a cluster registered at ``start``."""
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
                {
                    "type": "UpdateBackupSettings",
                    "cluster_id": cluster_id,
                    "frequency_minutes": frequency,
                },
            )
            assert result.code == 200, result
    ignore = frozenset(scheduled_backup_id(c, 0, T0) for f, c in clusters.items() if f != 60)
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


async def put_config(
    system: System, cluster_id: str, body: dict[str, object], patch: bool = False
) -> tuple[int, str]:
    assert system.http is not None
    if patch:
        response = await system.http.patch(
            f"/api/v1/clusters/{cluster_id}/backups-config", json=body
        )
    else:
        response = await system.http.put(f"/api/v1/clusters/{cluster_id}/backups/config", json=body)
    return response.status_code, response.text


async def test_settings_change_takes_a_full_immediately_and_disabling_takes_none(
    scheduled: tuple[System, StandInExecutor],
) -> None:
    system, executor = scheduled
    cluster_id = f"chg-{uuid4().hex[:6]}"
    assert (await system.register(cluster_id)).code == 200
    await settle(system, executor, {cluster_id: 1})
    for _ in range(3):  # three hourly incrementals
        system.clock.advance(3600)
        await settle(system, executor, {cluster_id: len(executor.by_cluster(cluster_id)) + 1})
    assert [c.backup_type.value for c in executor.by_cluster(cluster_id)] == [
        "FULL",
        "INCREMENTAL",
        "INCREMENTAL",
        "INCREMENTAL",
    ]
    system.clock.advance(600)  # mid-slot
    changed_at = system.clock.now()
    assert await put_config(
        system, cluster_id, {"enabled": True, "frequency_minutes": 30, "retention_days": 30}
    ) == (200, "")
    assert system.http is not None
    config = (await system.http.get(f"/api/v1/clusters/{cluster_id}/backups/config")).json()
    assert config == {"enabled": True, "frequency_minutes": 30, "retention_days": 30}
    await settle(system, executor, {cluster_id: 5})
    immediate = executor.by_cluster(cluster_id)[-1]
    assert (immediate.backup_type.value, immediate.scheduled_for) == ("FULL", changed_at)
    system.clock.advance(1800)
    await settle(system, executor, {cluster_id: 6})
    nxt = executor.by_cluster(cluster_id)[-1]
    assert (nxt.backup_type.value, nxt.scheduled_for) == (
        "INCREMENTAL",
        changed_at + timedelta(minutes=30),
    )
    assert nxt.chain_id == immediate.backup_id

    # A retention change also takes a full at once, and applies to backups taken afterwards.
    system.clock.advance(60)
    assert await put_config(system, cluster_id, {"retention_days": 7}, patch=True) == (200, "")
    await settle(system, executor, {cluster_id: 7})
    after = executor.by_cluster(cluster_id)[-1]
    assert (after.backup_type.value, after.retention_days) == ("FULL", 7)
    assert all(c.retention_days == 30 for c in executor.by_cluster(cluster_id)[:6])

    # Disabling takes no backup, and nothing is scheduled while disabled.
    assert await put_config(system, cluster_id, {"enabled": False}, patch=True) == (200, "")
    count = len(executor.by_cluster(cluster_id))
    for _ in range(4):
        system.clock.advance(1800)
        await settle(system, executor, {})
    assert_store_and_executor_agree(system, executor, cluster_id, count)
    # Re-enabling takes a full at once.
    assert await put_config(system, cluster_id, {"enabled": True}, patch=True) == (200, "")
    await settle(system, executor, {cluster_id: count + 1})
    assert executor.by_cluster(cluster_id)[-1].backup_type.value == "FULL"


async def test_refusals_carry_status_and_reason_over_http_and_topic(
    scheduled: tuple[System, StandInExecutor],
) -> None:
    system, _ = scheduled
    cluster_id = f"ref-{uuid4().hex[:6]}"
    assert (await system.register(cluster_id)).code == 200
    ok = {"enabled": True, "frequency_minutes": 60, "retention_days": 30}
    cases: list[tuple[dict[str, object], int, str]] = [
        (
            {**ok, "frequency_minutes": 45},
            400,
            "frequency_minutes 45 is not allowed; allowed values: 5, 10, 15, 30, 60, 240, 1440",
        ),
        (
            {**ok, "retention_days": 14},
            400,
            "retention_days 14 is not allowed; allowed values: 2, 7, 30, 90, 365",
        ),
    ]
    for body, status, reason in cases:
        code, text = await put_config(system, cluster_id, body)
        assert (code, text) == (status, f'{{"code":{status},"message":"{reason}"}}')
        result = await system.command(
            topics.CLUSTER_COMMANDS,
            {"type": "UpdateBackupSettings", "cluster_id": cluster_id, **body},
        )
        assert (result.code, result.reason) == (status, reason)
    assert (await put_config(system, cluster_id, {**ok, "retention_days": 90}))[0] == 200
    code, text = await put_config(system, cluster_id, {**ok, "retention_days": 365})
    assert (
        code == 409
        and "cluster already has a retention policy set, open a support ticket to change it" in text
    )
    result = await system.command(
        topics.CLUSTER_COMMANDS,
        {"type": "UpdateBackupSettings", "cluster_id": cluster_id, "retention_days": 7},
    )
    assert (result.code, result.reason) == (
        409,
        "cluster already has a retention policy set, open a support ticket to change it",
    )
    code, text = await put_config(system, "no-such-cluster", ok)
    assert code == 404 and "cluster no-such-cluster is not registered" in text
    code, text = await put_config(
        system, cluster_id, {"enabled": False, "frequency_minutes": 30, "retention_days": 90}
    )
    assert (
        code == 400 and "frequency and retention cannot be set while backups are disabled" in text
    )
    code, text = await put_config(
        system, cluster_id, {"enabled": True, "frequency_minutes": "often", "retention_days": 90}
    )
    assert code == 400 and "frequency_minutes" in text
    assert system.http is not None
    anonymous = await system.http.get(
        f"/api/v1/clusters/{cluster_id}/backups/config", headers={"Authorization": ""}
    )
    assert anonymous.status_code == 401
    wrong = await system.http.put(
        f"/api/v1/clusters/{cluster_id}/backups/config",
        json=ok,
        headers={"Authorization": "Bearer mbk_abc_def"},
    )
    assert wrong.status_code == 401
    # A Cluster Operator may view but not change settings; a Monitor may not even view it...
    from managed_backups.contracts.enums import Role

    operator = await system.issue_key("op", Role.CLUSTER_OPERATOR, f"cluster:{cluster_id}")
    monitor = await system.issue_key("mon", Role.CLUSTER_MONITOR, "org:acme")
    as_operator = {"Authorization": f"Bearer {operator}"}
    assert (
        await system.http.get(f"/api/v1/clusters/{cluster_id}/backups/config", headers=as_operator)
    ).status_code == 200
    refused = await system.http.put(
        f"/api/v1/clusters/{cluster_id}/backups/config", json=ok, headers=as_operator
    )
    assert refused.status_code == 403 and "may not change backup settings" in refused.text
    seen = await system.http.get(
        f"/api/v1/clusters/{cluster_id}", headers={"Authorization": f"Bearer {monitor}"}
    )
    # ... answered as for a cluster that does not exist: its existence is not revealed.
    assert seen.status_code == 404 and "is not registered" in seen.text
    result = await system.command(
        topics.CLUSTER_COMMANDS,
        {
            "type": "UpdateBackupSettings",
            "cluster_id": cluster_id,
            "enabled": False,
        },
        operator,
    )
    assert result.code == 403


async def test_basic_is_fixed_then_upgrade_and_downgrade(
    scheduled: tuple[System, StandInExecutor],
) -> None:
    system, executor = scheduled
    cluster_id = f"basic-{uuid4().hex[:6]}"
    start = system.clock.now()
    assert (await system.register(cluster_id, tier="BASIC")).code == 200
    await settle(system, executor, {cluster_id: 1})
    code, text = await put_config(
        system, cluster_id, {"enabled": True, "frequency_minutes": 1440, "retention_days": 30}
    )
    assert code == 400 and "backup settings of a BASIC cluster cannot be changed" in text
    assert system.http is not None
    config = (await system.http.get(f"/api/v1/clusters/{cluster_id}/backups/config")).json()
    assert config == {"enabled": True, "frequency_minutes": 1440, "retention_days": 30}
    for day in range(1, 3):  # one backup every 24 hours
        system.clock.advance(12 * 3600)
        await settle(system, executor, {cluster_id: day})
        system.clock.advance(12 * 3600)
        await settle(system, executor, {cluster_id: day + 1})
    slots = [c.scheduled_for for c in executor.by_cluster(cluster_id)]
    assert slots == [start, start + timedelta(days=1), start + timedelta(days=2)]

    # Upgrade: existing schedule stays (no immediate backup), settings become configurable.
    upgraded = await system.command(
        topics.CLUSTER_COMMANDS,
        {"type": "ChangeClusterTier", "cluster_id": cluster_id, "tier": "STANDARD"},
    )
    assert upgraded.code == 200
    system.clock.advance(3600)
    await settle(system, executor, {})
    assert_store_and_executor_agree(system, executor, cluster_id, 3)
    assert await put_config(
        system, cluster_id, {"enabled": True, "frequency_minutes": 60, "retention_days": 90}
    ) == (200, "")
    await settle(system, executor, {cluster_id: 4})
    assert executor.by_cluster(cluster_id)[-1].retention_days == 90
    system.clock.advance(3600)
    await settle(system, executor, {cluster_id: 5})

    # Downgrade: 24 hours / 30 days from then on (a full now); earlier backups keep 90 days.
    downgraded = await system.command(
        topics.CLUSTER_COMMANDS,
        {"type": "ChangeClusterTier", "cluster_id": cluster_id, "tier": "BASIC"},
    )
    assert downgraded.code == 200
    await settle(system, executor, {cluster_id: 6})
    last = executor.by_cluster(cluster_id)[-1]
    assert (last.backup_type.value, last.retention_days) == ("FULL", 30)
    assert [c.retention_days for c in executor.by_cluster(cluster_id)[3:5]] == [90, 90]
    await system.wait_projection(
        (
            await system.command(
                topics.CLUSTER_COMMANDS,
                {"type": "ChangeClusterTier", "cluster_id": cluster_id, "tier": "BASIC"},
            )
        ).position
    )
    config = (await system.http.get(f"/api/v1/clusters/{cluster_id}/backups/config")).json()
    assert config == {"enabled": True, "frequency_minutes": 1440, "retention_days": 30}
    system.clock.advance(23 * 3600)
    await settle(system, executor, {})
    assert_store_and_executor_agree(system, executor, cluster_id, 6)
    system.clock.advance(3600)
    await settle(system, executor, {cluster_id: 7})


async def test_a_failed_backup_never_stops_the_schedule(
    tmp_path: Path, postgres_store_url: str, kafka: str
) -> None:
    system = await System.start(
        tmp_path,
        postgres_store_url,
        kafka,
        services=("scheduler",),
        simulated_clock=True,
        poll_interval_seconds=0.01,
    )
    failing = {"count": 0}

    def fail_first_two(command: TakeBackup) -> bool:
        failing["count"] += 1
        return failing["count"] <= 2

    executor = StandInExecutor(kafka, fail_when=fail_first_two)
    await system.start_service("standin", executor.run)
    try:
        cluster_id = f"fail-{uuid4().hex[:6]}"
        assert (await system.register(cluster_id)).code == 200
        await settle(system, executor, {cluster_id: 1})
        for n in range(2, 6):
            system.clock.advance(3600)
            await settle(system, executor, {cluster_id: n})
        # The full failed, so the next backup is a full again (it failed too), then incrementals
        # on the first complete full.
        types = [c.backup_type.value for c in executor.by_cluster(cluster_id)]
        assert types == ["FULL", "FULL", "FULL", "INCREMENTAL", "INCREMENTAL"]
        assert (
            executor.by_cluster(cluster_id)[3].chain_id
            == executor.by_cluster(cluster_id)[2].backup_id
        )
    finally:
        await system.close()


async def test_two_scheduler_instances_at_once_never_duplicate(
    tmp_path: Path, postgres_store_url: str, kafka: str
) -> None:
    system = await System.start(
        tmp_path,
        postgres_store_url,
        kafka,
        services=(),
        simulated_clock=True,
        poll_interval_seconds=0.01,
    )
    from managed_backups.services.scheduler.service import run as run_scheduler
    from managed_backups.services.scheduler.service import serve

    await system.start_service("scheduler", run_scheduler)
    await system.start_service("scheduler-2", partial(serve, name="scheduler-2"))
    twins = ("scheduler", "scheduler-2")
    executor = StandInExecutor(kafka)
    await system.start_service("standin", executor.run)
    try:
        clusters = [f"twin{i}-{uuid4().hex[:6]}" for i in range(5)]
        for cluster_id in clusters:
            assert (await system.register(cluster_id)).code == 200
        await settle(system, executor, {c: 1 for c in clusters}, schedulers=twins)
        for hour in range(1, 25):
            system.clock.advance(3600)
            await settle(system, executor, {c: hour + 1 for c in clusters}, schedulers=twins)
        for cluster_id in clusters:
            assert_store_and_executor_agree(system, executor, cluster_id, 25)
            assert [c.scheduled_for for c in executor.by_cluster(cluster_id)] == [
                T0 + timedelta(hours=h) for h in range(25)
            ]
    finally:
        await system.close()


def start_scheduler_process(system: System, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "MANAGED_BACKUPS_DATA_DIR": str(system.settings.data_dir),
        "MANAGED_BACKUPS_EVENT_STORE_URL": system.settings.store_url,
        "MANAGED_BACKUPS_KAFKA_BOOTSTRAP_SERVERS": system.settings.kafka_bootstrap_servers,
        "MANAGED_BACKUPS_SIMULATED_CLOCK": "true",
        "MANAGED_BACKUPS_POLL_INTERVAL_SECONDS": "0.01",
        "MANAGED_BACKUPS_SCHEDULED_BACKUP_RESEND_SECONDS": "2",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "managed_backups.services.cli", "service", "scheduler"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


async def test_scheduler_killed_and_restarted_mid_day_misses_and_duplicates_nothing(
    tmp_path: Path, postgres_store_url: str, kafka: str
) -> None:
    system = await System.start(
        tmp_path, postgres_store_url, kafka, services=(), simulated_clock=True
    )
    executor = StandInExecutor(kafka)
    await system.start_service("standin", executor.run)
    scheduler = start_scheduler_process(system, tmp_path / "scheduler.log")
    try:
        clusters = [f"kill{i}-{uuid4().hex[:6]}" for i in range(3)]
        for cluster_id in clusters:
            assert (await system.register(cluster_id)).code == 200
        await settle(system, executor, {c: 1 for c in clusters})
        for hour in range(1, 13):
            system.clock.advance(3600)
            await settle(system, executor, {c: hour + 1 for c in clusters})
        scheduler.send_signal(signal.SIGKILL)
        scheduler.wait()
        system.clock.advance(3600)  # the 13:00 slot falls due while the scheduler is down
        # The process is gone: the store holds all it scheduled, and once the executor has
        # drained the topic, all it sent. Nothing was taken for 13:00.
        await executor.caught_up()
        for cluster_id in clusters:
            assert_store_and_executor_agree(system, executor, cluster_id, 13)
        scheduler = start_scheduler_process(system, tmp_path / "scheduler.log")
        await settle(system, executor, {c: 14 for c in clusters}, timeout=60)
        for hour in range(14, 25):
            system.clock.advance(3600)
            await settle(system, executor, {c: hour + 1 for c in clusters})
        for cluster_id in clusters:
            assert_store_and_executor_agree(system, executor, cluster_id, 25)
            assert [c.scheduled_for for c in executor.by_cluster(cluster_id)] == [
                T0 + timedelta(hours=h) for h in range(25)
            ]
    finally:
        scheduler.terminate()
        scheduler.wait()
        await system.close()
