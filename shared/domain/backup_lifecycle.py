"""Named rules of a backup's life that several services apply.

- **When a backup expires** (:func:`backup_expires_at`): its data-from time plus the retention
  it was taken with (a later retention change applies only to later backups).
- **When a chain expires** (:func:`chain_expires_at`): a chain is a full backup and the
  incrementals that depend on it; it expires when its full does, with these exceptions:
  **a live cluster never loses its newest restorable chain** (:func:`newest_restorable_chain`,
  the chain of its newest COMPLETE full) while no newer full is complete, however old it is; and
  **a deleted cluster's backups are kept for its configured retention, then deleted**
  (:func:`deleted_cluster_until`): its newest chain until then, older chains until their own
  expiry or then, whichever is first.
- **Whether a backup is listed** (:func:`is_listed`, and :func:`listed_backup_sql` for the
  backups view): running or COMPLETE, and its chain not expired; an incremental only while its
  full is COMPLETE, because an incremental expires with its full (it cannot be restored without
  it). The retention service expires and deletes what this rule no longer lists.
- **An incremental builds only on a COMPLETE backup** (:func:`incremental_parent`): the newest
  COMPLETE backup of its chain, never a manifest a failed or reaped backup left behind.
- **No backup into an expired chain** (:func:`chain_has_expired`,
  :func:`refuse_backup_on_expired_chain`): a TakeBackup naming a chain whose full has expired is
  refused; a scheduled one is recorded as FAILED (``CHAIN_EXPIRED``), final for its slot.
- **At most one backup in flight per cluster** (:func:`backup_may_start`,
  :func:`refuse_second_backup`): the scheduler holds a due slot while the cluster's last backup
  is not terminal; an executor refuses a TakeBackup for a cluster whose backup it is running.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from uuid import UUID

from managed_backups.contracts.enums import BackupStatus
from managed_backups.shared.domain.errors import Conflict

TERMINAL = frozenset(
    {BackupStatus.COMPLETE.value, BackupStatus.FAILED.value, BackupStatus.EXPIRED.value}
)

STATUS_AFTER = {
    "BackupStarted": BackupStatus.IN_PROGRESS.value,
    "BackupCompleted": BackupStatus.COMPLETE.value,
    "BackupFailed": BackupStatus.FAILED.value,
    "BackupExpired": BackupStatus.EXPIRED.value,
}
"""A backup's status after each of its events that changes it (by event class name)."""
LISTED_STATUSES = (BackupStatus.IN_PROGRESS.value, BackupStatus.COMPLETE.value)


def backup_expires_at(data_from: datetime, retention_days: int) -> datetime:
    return data_from + timedelta(days=retention_days)


def deleted_cluster_until(deleted_at: datetime, retention_days: int) -> datetime:
    """Until when a deleted cluster's backups are kept: its configured retention after deletion."""
    return backup_expires_at(deleted_at, retention_days)


def newest_restorable_chain(fulls: Iterable[tuple[str, str, datetime | None]]) -> str | None:
    """The chain id of the newest COMPLETE full among ``(chain id, status, data from)``."""
    complete = [
        (data_from, chain_id)
        for chain_id, status, data_from in fulls
        if status == BackupStatus.COMPLETE.value and data_from is not None
    ]
    return max(complete)[1] if complete else None


def chain_expires_at(
    full_expires_at: datetime | None, kept: bool, deleted_until: datetime | None
) -> datetime | None:
    """When a chain expires (None: not while things stay as they are). ``full_expires_at`` is its
    full's own expiry (None while it runs), ``kept`` whether it is the cluster's newest
    restorable chain, ``deleted_until`` the deleted cluster's :func:`deleted_cluster_until`."""
    if deleted_until is not None:
        if kept or full_expires_at is None:
            return deleted_until
        return min(full_expires_at, deleted_until)
    return None if kept else full_expires_at


def kept_past_retention(full_expires_at: datetime | None, kept: bool, now: datetime) -> bool:
    """Whether a listed chain is only there because it is the cluster's newest restorable one
    (its own retention has passed): the listing says so."""
    return kept and full_expires_at is not None and full_expires_at <= now


def _alive(expires_at: datetime | None, now: datetime) -> bool:
    return expires_at is None or expires_at > now


def is_listed(
    status: str,
    expires_at: datetime | None,
    is_full: bool,
    full_status: str | None,
    full_expires_at: datetime | None,
    now: datetime,
    *,
    kept: bool = False,
    deleted_until: datetime | None = None,
) -> bool:
    """Whether a user sees (and may restore) the backup at ``now``; ``full_*`` describe the
    full backup of an incremental's chain (None: unknown, so not listed); ``kept`` and
    ``deleted_until`` as for :func:`chain_expires_at`. An incremental's own ``expires_at`` does
    not count: it expires with its full."""
    if status not in LISTED_STATUSES:
        return False
    if is_full:
        full_status, full_expires_at = status, expires_at
    elif full_status != BackupStatus.COMPLETE.value:
        return False
    return _alive(chain_expires_at(full_expires_at, kept, deleted_until), now)


def listed_backup_sql(backups: str, alias: str = "b", retention: str | None = None) -> str:
    """:func:`is_listed` as a SQL condition over the backups view (``{alias}`` rows, their full
    looked up in ``backups``; ``retention``: a table with one row per cluster, ``cluster_id``,
    ``kept_chain_id`` and ``deleted_until``); takes the time (ISO text) twice as parameters."""
    statuses = ", ".join(f"'{s}'" for s in LISTED_STATUSES)
    if retention is None:
        kept, deleted_until, join = "NULL", "NULL", ""
    else:
        kept, deleted_until = "r.kept_chain_id", "r.deleted_until"
        join = f" LEFT JOIN {retention} r ON r.cluster_id = f.cluster_id"
    return (
        f"{alias}.status IN ({statuses}) AND EXISTS (SELECT 1 FROM {backups} f{join} "
        f"WHERE f.cluster_id = {alias}.cluster_id AND f.backup_id = {alias}.chain_id "
        f"AND (f.backup_id = {alias}.backup_id OR f.status = 'COMPLETE') "
        f"AND ({deleted_until} IS NULL OR {deleted_until} > ?) "
        f"AND (f.expires_at IS NULL OR f.expires_at > ? OR {kept} = f.backup_id))"
    )


def incremental_parent(
    chain: Iterable[tuple[str, datetime]], complete: Callable[[str], bool]
) -> str | None:
    """The backup an incremental builds on: among its chain's manifests ``(backup id, data
    from)``, the newest whose backup is COMPLETE (``complete``); None if there is none. A manifest
    whose backup failed or was reaped (its worker wrote on after losing its lease) is never a
    parent: what it holds was never confirmed."""
    for backup_id, _ in sorted(chain, key=lambda entry: entry[1], reverse=True):
        if complete(backup_id):
            return backup_id
    return None


def chain_has_expired(full_status: str | None) -> bool:
    """Whether a chain, by its full backup's status (None: not recorded), has expired."""
    return full_status == BackupStatus.EXPIRED.value


def refuse_backup_on_expired_chain(chain_id: UUID, full_status: str | None) -> None:
    """An on-demand TakeBackup naming an expired chain is refused (409)."""
    if chain_has_expired(full_status):
        raise Conflict(
            f"chain {chain_id} has expired; an incremental cannot be added to it: take a full "
            "backup or name a live chain"
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
