"""The backup-executor's leases: :class:`managed_backups.shared.jobs.JobLeases` of kind
``backup``, whose detail names the chain and the region the backup writes to (what retention's
leftover sweep waits for: it never deletes in a chain a backup lease names).

Leases taken by version 0.1 (table ``mb_backup_leases``) are adopted once, so a backup running
during the upgrade is still reaped if its executor never comes back.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from managed_backups.shared.jobs import BACKUP, JobLeases
from managed_backups.shared.sqldb import SqlDatabase

KIND = BACKUP
LEGACY_TABLE = "mb_backup_leases"


def backup_leases(db: SqlDatabase) -> JobLeases:
    leases = JobLeases(db, KIND)
    adopt_legacy_leases(db, leases)
    return leases


def adopt_legacy_leases(db: SqlDatabase, leases: JobLeases) -> None:
    if not db.table_exists(LEGACY_TABLE):
        return
    rows = db.query(
        f"SELECT backup_id, cluster_id, chain_id, region, executor, lease_until FROM {LEGACY_TABLE}"
    )
    for backup_id, cluster_id, chain_id, region, executor, until in rows:
        leases.take(
            UUID(backup_id),
            cluster_id,
            executor,
            datetime.fromisoformat(until),
            {"chain_id": chain_id, "region": region},
        )
    db.execute(f"DROP TABLE IF EXISTS {LEGACY_TABLE}")
