"""The Backup aggregate: one backup's life, IN_PROGRESS → COMPLETE | FAILED (→ EXPIRED), then
its stored objects deleted (``BackupDeleted``, recorded by the retention service only).

Its id derives from the cluster id and the backup id (deterministic for a scheduled slot), so a
duplicate TakeBackup collides with the stream that already exists and does nothing, and no tenant's
backup id can name another tenant's stream. Load backups with :func:`load_backup`, which also
finds those recorded by version 0.1 at the bare backup id.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from managed_backups.contracts.enums import BackupStatus
from managed_backups.shared.domain.errors import WrongRecordType
from managed_backups.shared.domain.ids import backup_aggregate_id

if TYPE_CHECKING:
    from managed_backups.shared.eventstore import EventStore


class Backup(Aggregate):
    @staticmethod
    def create_id(cluster_id: str, backup_id: UUID) -> UUID:
        return backup_aggregate_id(cluster_id, backup_id)

    class BackupStarted(Aggregate.Created):
        backup_id: UUID
        cluster_id: str
        backup_type: str
        chain_id: UUID
        reason: str
        region: str
        retention_days: int
        scheduled_for: datetime | None
        executor: str
        lease_until: datetime
        command_id: UUID | None
        at: datetime
        by: str

    @event(BackupStarted)
    def __init__(
        self,
        backup_id: UUID,
        cluster_id: str,
        backup_type: str,
        chain_id: UUID,
        reason: str,
        region: str,
        retention_days: int,
        scheduled_for: datetime | None,
        executor: str,
        lease_until: datetime,
        command_id: UUID | None,
        at: datetime,
        by: str,
    ) -> None:
        self.backup_id = backup_id
        self.cluster_id = cluster_id
        self.backup_type = backup_type
        self.chain_id = chain_id
        self.reason = reason
        self.region = region
        self.retention_days = retention_days
        self.scheduled_for = scheduled_for
        self.executor = executor
        self.lease_until = lease_until
        self.started_at = at
        self.status = BackupStatus.IN_PROGRESS.value
        self.encrypted: bool | None = None
        self.ended_at: datetime | None = None
        self.as_of_time: datetime | None = None
        self.expires_at: datetime | None = None
        self.size_bytes = 0
        self.error: dict[str, str] | None = None
        self.expired_at: datetime | None = None
        self.deleted_at: datetime | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status != BackupStatus.IN_PROGRESS.value

    def complete(
        self,
        as_of_time: datetime,
        size_bytes: int,
        database_count: int,
        catalog: list[dict[str, Any]],
        manifest_key: str,
        expires_at: datetime,
        at: datetime,
        by: str,
        encrypted: bool | None = None,
    ) -> None:
        self._completed(
            cluster_id=self.cluster_id,
            backup_id=self.backup_id,
            as_of_time=as_of_time,
            size_bytes=size_bytes,
            database_count=database_count,
            catalog=catalog,
            manifest_key=manifest_key,
            expires_at=expires_at,
            at=at,
            by=by,
            encrypted=encrypted,
        )

    class BackupCompleted(Aggregate.Event):
        cluster_id: str
        backup_id: UUID
        as_of_time: datetime
        size_bytes: int
        database_count: int
        catalog: list[dict[str, Any]]
        manifest_key: str
        expires_at: datetime
        at: datetime
        by: str
        encrypted: bool | None = None
        """Whether its chain is stored encrypted (``None``: recorded before encryption at
        rest). Readers refuse to take such a chain as unencrypted."""

    @event(BackupCompleted)
    def _completed(
        self,
        cluster_id: str,
        backup_id: UUID,
        as_of_time: datetime,
        size_bytes: int,
        database_count: int,
        catalog: list[dict[str, Any]],
        manifest_key: str,
        expires_at: datetime,
        at: datetime,
        by: str,
        encrypted: bool | None = None,
    ) -> None:
        self.status = BackupStatus.COMPLETE.value
        self.encrypted = encrypted
        self.as_of_time = as_of_time
        self.size_bytes = size_bytes
        self.expires_at = expires_at
        self.ended_at = at

    def fail(
        self, error_code: str, error_message: str, failed_step: str, at: datetime, by: str
    ) -> None:
        self._failed(
            cluster_id=self.cluster_id,
            backup_id=self.backup_id,
            error_code=error_code,
            error_message=error_message,
            failed_step=failed_step,
            at=at,
            by=by,
        )

    class BackupFailed(Aggregate.Event):
        cluster_id: str
        backup_id: UUID
        error_code: str
        error_message: str
        failed_step: str
        at: datetime
        by: str

    @event(BackupFailed)
    def _failed(
        self,
        cluster_id: str,
        backup_id: UUID,
        error_code: str,
        error_message: str,
        failed_step: str,
        at: datetime,
        by: str,
    ) -> None:
        self.status = BackupStatus.FAILED.value
        self.error = {"code": error_code, "message": error_message, "step": failed_step}
        self.ended_at = at

    def record_verification(
        self,
        ok: bool,
        chunks_checked: int,
        missing_chunks: list[str],
        corrupt_chunks: list[str],
        command_id: UUID | None,
        at: datetime,
        by: str,
    ) -> None:
        self._verified(
            cluster_id=self.cluster_id,
            backup_id=self.backup_id,
            ok=ok,
            chunks_checked=chunks_checked,
            missing_chunks=missing_chunks,
            corrupt_chunks=corrupt_chunks,
            command_id=command_id,
            at=at,
            by=by,
        )

    class BackupVerified(Aggregate.Event):
        cluster_id: str
        backup_id: UUID
        ok: bool
        chunks_checked: int
        missing_chunks: list[str]
        corrupt_chunks: list[str]
        command_id: UUID | None
        at: datetime
        by: str

    @event(BackupVerified)
    def _verified(
        self,
        cluster_id: str,
        backup_id: UUID,
        ok: bool,
        chunks_checked: int,
        missing_chunks: list[str],
        corrupt_chunks: list[str],
        command_id: UUID | None,
        at: datetime,
        by: str,
    ) -> None:
        self.verified_ok = ok

    def expire(self, reason: str, chain_expires_at: datetime, at: datetime, by: str) -> None:
        """Record that the backup's chain expired (only a COMPLETE backup, once)."""
        self._expired(
            cluster_id=self.cluster_id,
            backup_id=self.backup_id,
            chain_id=self.chain_id,
            reason=reason,
            chain_expires_at=chain_expires_at,
            at=at,
            by=by,
        )

    class BackupExpired(Aggregate.Event):
        cluster_id: str
        backup_id: UUID
        chain_id: UUID
        reason: str
        chain_expires_at: datetime
        at: datetime
        by: str

    @event(BackupExpired)
    def _expired(
        self,
        cluster_id: str,
        backup_id: UUID,
        chain_id: UUID,
        reason: str,
        chain_expires_at: datetime,
        at: datetime,
        by: str,
    ) -> None:
        self.status = BackupStatus.EXPIRED.value
        self.expired_at = at

    def record_deleted(
        self, objects_deleted: int, bytes_freed: int, reason: str, at: datetime, by: str
    ) -> None:
        """Record that the backup's stored objects are gone (once)."""
        self._deleted(
            cluster_id=self.cluster_id,
            backup_id=self.backup_id,
            chain_id=self.chain_id,
            objects_deleted=objects_deleted,
            bytes_freed=bytes_freed,
            reason=reason,
            at=at,
            by=by,
        )

    class BackupDeleted(Aggregate.Event):
        cluster_id: str
        backup_id: UUID
        chain_id: UUID
        objects_deleted: int
        bytes_freed: int
        reason: str
        at: datetime
        by: str

    @event(BackupDeleted)
    def _deleted(
        self,
        cluster_id: str,
        backup_id: UUID,
        chain_id: UUID,
        objects_deleted: int,
        bytes_freed: int,
        reason: str,
        at: datetime,
        by: str,
    ) -> None:
        self.deleted_at = at


def load_backup(store: EventStore, cluster_id: str, backup_id: UUID) -> Backup | None:
    """The cluster's backup ``backup_id``, or None. A backup recorded by version 0.1 (stream id =
    the bare backup id) is found too, but only for the cluster it belongs to."""
    backup = store.get_or_none(backup_aggregate_id(cluster_id, backup_id), Backup)
    if backup is not None:
        return backup
    try:
        legacy = store.get_or_none(backup_id, Backup)
    except WrongRecordType:  # that bare id is another kind of record: not a backup of this cluster
        return None
    return legacy if legacy is not None and legacy.cluster_id == cluster_id else None
