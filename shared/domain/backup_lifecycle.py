"""Named rules of a backup's life that several services apply.

- **When a backup expires** (:func:`backup_expires_at`): its data-from time plus the retention
  it was taken with.
- **Whether a backup is listed** (:func:`is_listed`, and :func:`listed_backup_sql` for the
  backups view): running or COMPLETE and not expired; an incremental only while its full is
  COMPLETE and not expired, because an incremental expires with its full (it cannot be restored
  without it). The retention service deletes what this rule no longer lists.
- **At most one backup in flight per cluster** (:func:`backup_may_start`,
  :func:`refuse_second_backup`): the scheduler holds a due slot while the cluster's last backup
  is not terminal; an executor refuses a TakeBackup for a cluster whose backup it is running.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

from managed_backups.contracts.enums import BackupStatus
from managed_backups.shared.domain.errors import Conflict

TERMINAL = frozenset(
    {BackupStatus.COMPLETE.value, BackupStatus.FAILED.value, BackupStatus.EXPIRED.value}
)
LISTED_STATUSES = (BackupStatus.IN_PROGRESS.value, BackupStatus.COMPLETE.value)


def backup_expires_at(data_from: datetime, retention_days: int) -> datetime:
    return data_from + timedelta(days=retention_days)


def _alive(expires_at: datetime | None, now: datetime) -> bool:
    return expires_at is None or expires_at > now


def is_listed(
    status: str,
    expires_at: datetime | None,
    is_full: bool,
    full_status: str | None,
    full_expires_at: datetime | None,
    now: datetime,
) -> bool:
    """Whether a user sees (and may restore) the backup at ``now``; ``full_*`` describe the
    full backup of an incremental's chain (None: unknown, so not listed)."""
    if status not in LISTED_STATUSES or not _alive(expires_at, now):
        return False
    if is_full:
        return True
    return full_status == BackupStatus.COMPLETE.value and _alive(full_expires_at, now)


def listed_backup_sql(backups: str, alias: str = "b") -> str:
    """:func:`is_listed` as a SQL condition over the backups view (``{alias}`` rows, their full
    looked up in ``backups``); takes the time (ISO text) twice as parameters."""
    statuses = ", ".join(f"'{s}'" for s in LISTED_STATUSES)
    return (
        f"{alias}.status IN ({statuses}) "
        f"AND ({alias}.expires_at IS NULL OR {alias}.expires_at > ?) "
        f"AND ({alias}.backup_type = 'FULL' OR EXISTS (SELECT 1 FROM "
        f"{backups} f WHERE f.backup_id = {alias}.chain_id AND f.status = 'COMPLETE' "
        "AND (f.expires_at IS NULL OR f.expires_at > ?)))"
    )


def backup_may_start(last_backup_status: str | None, last_backup_known: bool) -> bool:
    """Whether a cluster may start another backup: it has none yet, or the last one ended."""
    return not last_backup_known or last_backup_status in TERMINAL


def refuse_second_backup(cluster_id: str, running_backup_id: UUID | None) -> None:
    if running_backup_id is not None:
        raise Conflict(
            f"backup {running_backup_id} of cluster {cluster_id} is running; "
            "a cluster runs one backup at a time"
        )
