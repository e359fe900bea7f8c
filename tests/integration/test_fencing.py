"""Fencing of backup workers, on a real PostgreSQL source and broker: an incremental builds only on
a COMPLETE backup, a TakeBackup naming an expired chain is refused (a scheduled one final for its
slot), and a worker whose lease was reaped stops and writes neither its manifest nor its end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import psycopg
import pytest

from managed_backups.contracts import topics
from managed_backups.services.executor.leases import backup_leases
from managed_backups.shared.dataplane.manifest import manifest_key, read_manifest, save_manifest
from managed_backups.shared.domain.backup import Backup
from managed_backups.shared.eventstore import open_event_store
from managed_backups.shared.sqldb import SqlDatabase
from tests.harness import System
from tests.infra.postgres import LocalPostgres
from tests.integration.test_executor import (
    executor_system,
    find_backup,
    register_source,
    take,
    wait_terminal,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def source() -> Iterator[LocalPostgres]:
    """A cluster with one small database and one big enough for a backup to take seconds."""
    with LocalPostgres() as pg:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE shop")
        with psycopg.connect(pg.url_for("shop"), autocommit=True) as conn:
            conn.execute("CREATE TABLE orders (id bigint PRIMARY KEY, amount numeric)")
            conn.execute("INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1, 2000) g")
        yield pg


@pytest.fixture
async def system(tmp_path: Path, kafka: str, source: LocalPostgres) -> AsyncIterator[System]:
    system = await executor_system(tmp_path, kafka, backup_lease_seconds=3.0)
    yield system
    await system.close()


def events_of(system: System, backup_id: UUID) -> list[str]:
    store = open_event_store(system.settings.store_url)
    try:
        backup = find_backup(store, backup_id)
        assert backup is not None
        return [type(e).__name__ for e in store.events.get(backup.id)]  # type: ignore[attr-defined]
    finally:
        store.close()


async def test_an_incremental_builds_on_the_newest_complete_backup_not_on_a_failed_ones_manifest(
    system: System, source: LocalPostgres
) -> None:
    """A reaped backup's worker may have written its manifest before it learnt it lost its lease:
    that manifest is newer than the chain's last COMPLETE one, and must never become a parent."""
    cluster_id = await register_source(system, "parent", source)
    full_id = await take(system, cluster_id)
    assert (await wait_terminal(system, full_id)).status == "COMPLETE"
    first_id = await take(system, cluster_id, "INCREMENTAL", chain_id=str(full_id))
    first = await wait_terminal(system, first_id)
    assert first.status == "COMPLETE", first.error

    # A backup recorded FAILED (reaped) whose manifest, newer than every other, is in the store.
    reaped_id = uuid4()
    store = open_event_store(system.settings.store_url)
    object_store = system.sealed_store(cluster_id, first.region)
    manifest = read_manifest(object_store, cluster_id, str(full_id), str(first_id))
    save_manifest(
        object_store,
        manifest.model_copy(
            update={
                "backup_id": str(reaped_id),
                "parent_id": str(first_id),
                "data_from": manifest.data_from + timedelta(seconds=1),
            }
        ),
    )
    reaped = Backup(
        backup_id=reaped_id,
        cluster_id=cluster_id,
        backup_type="INCREMENTAL",
        chain_id=full_id,
        reason="MANUAL",
        region=first.region,
        retention_days=first.retention_days,
        scheduled_for=None,
        executor="executor-gone",
        lease_until=datetime.now(UTC),
        command_id=uuid4(),
        at=datetime.now(UTC),
        by="test",
    )
    reaped.fail("LEASE_EXPIRED", "reaped", "executor lease", datetime.now(UTC), "test")
    store.save_all(reaped)
    store.close()

    second_id = await take(system, cluster_id, "INCREMENTAL", chain_id=str(full_id))
    second = await wait_terminal(system, second_id)
    assert second.status == "COMPLETE", second.error
    written = read_manifest(object_store, cluster_id, str(full_id), str(second_id))
    assert written.parent_id == str(first_id)


async def test_a_take_backup_naming_an_expired_chain_is_refused_and_final_for_its_slot(
    system: System, source: LocalPostgres
) -> None:
    cluster_id = await register_source(system, "expired", source)
    full_id = await take(system, cluster_id)
    full = await wait_terminal(system, full_id)
    assert full.status == "COMPLETE"
    store = open_event_store(system.settings.store_url)
    now = datetime.now(UTC)
    full.expire("retention", now, now, "retention")
    store.save_all(full)
    store.close()

    # On demand: refused, nothing recorded for the backup.
    manual_id = uuid4()
    refused = await system.command(
        topics.BACKUP_COMMANDS,
        {
            "type": "TakeBackup",
            "cluster_id": cluster_id,
            "backup_id": str(manual_id),
            "backup_type": "INCREMENTAL",
            "chain_id": str(full_id),
        },
    )
    assert refused.code == 409 and "has expired" in (refused.reason or ""), refused

    # Scheduled: refused by recording the slot's backup FAILED (CHAIN_EXPIRED), without running;
    # the same TakeBackup sent again (the scheduler's resend) finds it and does nothing.
    slot = now.replace(microsecond=0)
    scheduled: dict[str, object] = {
        "type": "TakeBackup",
        "cluster_id": cluster_id,
        "backup_id": str(uuid4()),
        "backup_type": "INCREMENTAL",
        "chain_id": str(full_id),
        "reason": "SCHEDULED",
        "scheduled_for": slot.isoformat(),
    }
    for _ in range(2):
        assert (await system.command(topics.BACKUP_COMMANDS, scheduled)).code == 200
    backup = await wait_terminal(system, UUID(str(scheduled["backup_id"])))
    assert backup.status == "FAILED" and backup.error is not None
    assert backup.error["code"] == "CHAIN_EXPIRED"
    assert events_of(system, backup.backup_id) == ["BackupStarted", "BackupFailed"]
    store = open_event_store(system.settings.store_url)
    assert find_backup(store, manual_id) is None
    store.close()


async def test_a_worker_whose_lease_was_reaped_stops_and_writes_nothing(
    system: System, source: LocalPostgres
) -> None:
    """Another instance reaped the backup while its worker was still writing chunks (as after a
    pause longer than the lease): the worker's next renewal finds its fencing token stale, it
    stops, and neither its manifest nor a second end of the backup is written."""
    with psycopg.connect(source.url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS big")
        conn.execute("CREATE DATABASE big")
    with psycopg.connect(source.url_for("big"), autocommit=True) as conn:
        conn.execute("CREATE TABLE wide (id bigint PRIMARY KEY, payload text)")
        conn.execute(
            "INSERT INTO wide SELECT g, md5(g::text) || repeat(md5((g*7)::text), 12) "
            "FROM generate_series(1, 400000) g"
        )
    try:
        cluster_id = await register_source(system, "fenced", source)
        backup_id = await take(system, cluster_id)
        region_dir = system.settings.data_dir / "objects"
        async with asyncio.timeout(60):  # the fault happens mid-backup: chunks are being written
            while not any(p.is_file() for p in region_dir.rglob(f"{cluster_id}/**/chunks/*/*")):
                await asyncio.sleep(0.05)

        # The reaper of another instance: record the backup FAILED, then release its lease.
        store = open_event_store(system.settings.store_url)
        backup = find_backup(store, backup_id)
        assert backup is not None and backup.status == "IN_PROGRESS"
        backup.fail("LEASE_EXPIRED", "reaped by another instance", "executor lease",
                    datetime.now(UTC), "executor-other")  # fmt: skip
        store.save_all(backup)
        db = SqlDatabase(system.settings.store_url)
        backup_leases(db).release(backup.id)
        db.close()

        # The stale worker stops: the executor accepts a new backup of the cluster only once it
        # no longer runs one.
        async with asyncio.timeout(60):
            while True:
                again = await system.command(
                    topics.BACKUP_COMMANDS,
                    {
                        "type": "TakeBackup",
                        "cluster_id": cluster_id,
                        "backup_id": str(uuid4()),
                        "backup_type": "FULL",
                    },
                )
                if again.code == 200:
                    break
                assert again.code == 409, again
                await asyncio.sleep(0.1)
        object_store = system.sealed_store(cluster_id, backup.region)
        key = manifest_key(cluster_id, str(backup_id), str(backup_id))
        assert not object_store.exists(key)
        assert events_of(system, backup_id) == ["BackupStarted", "BackupFailed"]
        store.close()
    finally:
        with psycopg.connect(source.url, autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS big WITH (FORCE)")
