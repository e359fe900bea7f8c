"""Leases of running backups: a backup whose executor died is failed within a bounded time.

A running backup renews its lease (a row in the shared database, not an event: renewals are not
history) every third of the lease; every executor instance reaps expired leases, recording
``BackupFailed`` (``LEASE_EXPIRED``) and deleting the chain's objects no manifest references, so
nothing half-written is ever listed or left behind. Optimistic concurrency on the Backup stream
settles a race between a late completion and the reaper: exactly one of them is recorded.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

from managed_backups.shared.sqldb import SqlDatabase

TABLE = "mb_backup_leases"


def ensure_lease_table(db: SqlDatabase) -> None:
    db.execute(
        f"CREATE TABLE IF NOT EXISTS {TABLE} (backup_id TEXT PRIMARY KEY, cluster_id TEXT NOT NULL, "
        "chain_id TEXT NOT NULL, region TEXT NOT NULL, executor TEXT NOT NULL, "
        "lease_until TEXT NOT NULL)"
    )


def _ts(value: datetime) -> str:
    return value.isoformat()


def take(
    db: SqlDatabase,
    backup_id: UUID,
    cluster_id: str,
    chain_id: UUID,
    region: str,
    executor: str,
    until: datetime,
) -> None:
    db.execute(
        f"INSERT INTO {TABLE} (backup_id, cluster_id, chain_id, region, executor, lease_until) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (backup_id) DO UPDATE SET "
        "executor = excluded.executor, lease_until = excluded.lease_until",
        (str(backup_id), cluster_id, str(chain_id), region, executor, _ts(until)),
    )


def renew(db: SqlDatabase, backup_id: UUID, until: datetime) -> None:
    db.execute(
        f"UPDATE {TABLE} SET lease_until = ? WHERE backup_id = ?", (_ts(until), str(backup_id))
    )


def release(db: SqlDatabase, backup_id: UUID) -> None:
    db.execute(f"DELETE FROM {TABLE} WHERE backup_id = ?", (str(backup_id),))


def expired(db: SqlDatabase, now: datetime) -> list[tuple[UUID, str, UUID, str]]:
    """(backup id, cluster id, chain id, region) of every lease that ran out."""
    rows = db.query(f"SELECT backup_id, cluster_id, chain_id, region, lease_until FROM {TABLE}")
    return [
        (UUID(b), c, UUID(ch), r)
        for b, c, ch, r, until in rows
        if datetime.fromisoformat(until) < now
    ]


def lease_until(now: datetime, seconds: float) -> datetime:
    return now + timedelta(seconds=seconds)
