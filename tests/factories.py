"""Test factories: domain objects built in one place, so a new constructor argument is one edit.

Tests and benchmarks build aggregates here rather than calling ``Cluster(...)`` or
``Backup(...)`` with every argument spelled out; a test names only what it is about."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

from managed_backups.contracts.commands import TakeBackup
from managed_backups.shared.dataplane.manifest import (
    DatabaseBackup,
    DatabaseLocale,
    DatabaseProperties,
    PgSnapshot,
)
from managed_backups.shared.domain.backup import Backup
from managed_backups.shared.domain.cluster import Cluster

AT = datetime(2026, 3, 1, tzinfo=UTC)


def new_cluster(
    cluster_id: str,
    *,
    name: str | None = None,
    tier: str = "STANDARD",
    organization: str = "acme",
    regions: tuple[str, ...] = ("us-east-1",),
    version: str = "15",
    connection_ref: str = "postgresql://u@h/postgres",
    frequency_minutes: int = 60,
    retention_days: int = 7,
    at: datetime = AT,
    by: str = "test",
) -> Cluster:
    """A registered cluster (not saved): backups enabled, its first region the backup region."""
    return Cluster(
        cluster_id=cluster_id,
        name=name or cluster_id,
        organization=organization,
        tier=tier,
        regions=list(regions),
        engine="postgres",
        database_version=version,
        connection_ref=connection_ref,
        backup_region=regions[0],
        enabled=True,
        frequency_minutes=frequency_minutes,
        retention_days=retention_days,
        command_id=None,
        at=at,
        by=by,
    )


def new_backup(
    cluster_id: str,
    backup_id: UUID | None = None,
    *,
    backup_type: str = "FULL",
    chain_id: UUID | None = None,
    reason: str = "MANUAL",
    region: str = "r1",
    retention_days: int = 7,
    scheduled_for: datetime | None = None,
    executor: str = "test",
    lease_until: datetime | None = None,
    command_id: UUID | None = None,
    at: datetime = AT,
) -> Backup:
    """A started backup (not saved), its own chain's full unless ``chain_id`` says otherwise;
    its lease runs an hour from ``at`` unless ``lease_until`` is given."""
    backup_id = backup_id or uuid4()
    return Backup(
        backup_id=backup_id,
        cluster_id=cluster_id,
        backup_type=backup_type,
        chain_id=chain_id or backup_id,
        reason=reason,
        region=region,
        retention_days=retention_days,
        scheduled_for=scheduled_for,
        executor=executor,
        lease_until=lease_until or at + timedelta(hours=1),
        command_id=command_id,
        at=at,
        by=executor,
    )


def backup_taken(
    command: TakeBackup, at: datetime, *, executor: str, region: str, failed: bool = False
) -> Backup:
    """What the backup-executor's bookkeeping records for ``command`` (not saved), without
    touching a database: started and completed at ``at`` (one byte, no database), or failed."""
    retention_days = command.retention_days or 30
    backup = new_backup(
        command.cluster_id,
        command.backup_id,
        backup_type=command.backup_type.value,
        chain_id=command.chain_id,
        reason=command.reason.value,
        region=region,
        retention_days=retention_days,
        scheduled_for=command.scheduled_for,
        executor=executor,
        command_id=command.command_id,
        at=at,
    )
    if failed:
        backup.fail("TEST_FAILURE", "failed on purpose", executor, at, executor)
    else:
        backup.complete(
            as_of_time=at,
            size_bytes=1,
            database_count=0,
            catalog=[],
            manifest_key=executor,
            expires_at=at + timedelta(days=retention_days),
            at=at,
            by=executor,
        )
    return backup


def database_backup(
    name: str = "shop",
    *,
    locale: DatabaseLocale | None = None,
    properties: DatabaseProperties | None = None,
    ctype: str = "C",
) -> DatabaseBackup:
    """A manifest's entry of a database without tables (UTF8, ``LC_COLLATE`` C)."""
    snapshot = PgSnapshot(snapshot_id="s", xmin=1, xmax=1, xip=[], text="1:1:", taken_at=AT)
    return DatabaseBackup(
        name=name,
        encoding="UTF8",
        collate="C",
        ctype=ctype,
        size_bytes=0,
        snapshot=snapshot,
        schema_archive=[],
        schema_archive_size=0,
        tables=[],
        oid=5,
        properties=properties,
        locale=locale,
    )
