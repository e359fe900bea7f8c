"""The write half of the read models: one handler per event class.

:meth:`ViewProjection.apply_batch` applies a batch of events in one transaction together with the
projection's position, so every event is applied exactly once; dropping the tables and replaying
from position 0 rebuilds them identically (``managed-backups projections rebuild``). Each event
first goes to the cluster's audit trail, then to the one handler registered for its class
(``functools.singledispatchmethod``: the class is the key, so a new event class is a new handler,
not a new branch of a chain, and an event class with no handler changes nothing but the audit
trail). The tables and their names are defined once, in ``shared/views/schema.py``; the queries
over them are in ``shared/views/queries.py``.

Handlers take the contract (wire) form of each event, the form the audit trail records and every
reader of the topics sees, so the views show exactly what was published.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import singledispatchmethod
from typing import Any

from managed_backups.contracts.enums import BackupStatus, BackupType
from managed_backups.contracts.events import (
    ApiKeyCreated,
    ApiKeyIssued,
    ApiKeyRevoked,
    BackupCompleted,
    BackupDeleted,
    BackupExpired,
    BackupFailed,
    BackupScheduled,
    BackupSettingsUpdated,
    BackupStarted,
    BackupVerified,
    ClusterDeleted,
    ClusterRegistered,
    ClusterTierChanged,
    CommandHandled,
    ConnectionSecretChanged,
    ConnectionSecretRemoved,
    ConnectionSecretSet,
    EventBase,
    OrganizationCreated,
    RestoreFailed,
    RestoreProgressed,
    RestoreRequested,
    RestoreRunning,
    RestoreSucceeded,
    RoleGranted,
    RoleGrantRemoved,
    ServiceAccountCreated,
)
from managed_backups.shared.domain.backup_lifecycle import deleted_cluster_until
from managed_backups.shared.sqldb import Cursor, SqlDatabase
from managed_backups.shared.views.schema import DEFAULT_PREFIX, PROJECTION_NAME, Tables, ts

# A restore job's phase and the Cloud API status it shows as.
_RESTORE_STATUS = {
    "PREPARING": "PENDING",
    "RUNNING": "PENDING",
    "SUCCEEDED": "SUCCESS",
    "FAILED": "FAILED",
}
# Event classes no view shows beyond the audit trail. Every other event class has its handler;
# tests/unit/test_view_projection.py checks that each contract event class is in one of the two,
# so a new event class is a decision about the views, not a silent no-op.
AUDIT_ONLY: tuple[type[EventBase], ...] = (
    CommandHandled,
    ConnectionSecretSet,
    ConnectionSecretChanged,
    ConnectionSecretRemoved,
)
_RETENTION_COLUMNS = ("kept_chain_id", "kept_data_from", "deleted_until")


class ViewProjection:
    """Keeps the read-model tables of ``db`` (under ``prefix``) current, event by event."""

    def __init__(self, db: SqlDatabase, prefix: str = DEFAULT_PREFIX) -> None:
        self.db = db
        self.t = Tables(prefix)

    def apply_batch(self, events: list[EventBase]) -> bool:
        """Apply ``events`` (in log order) and record the last one's position, atomically.

        Compare-and-set on the position (two instances of the service may read the same batch):
        the position row is locked first, and a batch another instance has applied meanwhile
        (the position already at or past its first event) is dropped, so no event is applied
        twice (the retention counters add). Returns whether the batch was applied."""
        if not events:
            return False
        with self.db.transaction() as cursor:
            cursor.execute(
                f"INSERT INTO {self.t.position} (name, position) VALUES (?, 0) "
                "ON CONFLICT (name) DO NOTHING",
                (PROJECTION_NAME,),
            )
            lock = " FOR UPDATE" if self.db.dialect == "postgres" else ""
            cursor.execute(
                f"SELECT position FROM {self.t.position} WHERE name = ?{lock}", (PROJECTION_NAME,)
            )
            if int(cursor.fetchone()[0]) >= events[0].position:
                return False
            for event in events:
                self._audit(event, cursor)
                self.handle(event, cursor)
            cursor.execute(
                f"INSERT INTO {self.t.position} (name, position) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                (PROJECTION_NAME, events[-1].position),
            )
        return True

    def _audit(self, event: EventBase, cursor: Cursor) -> None:
        """Audit trail: every event of a cluster, except accepted-command bookkeeping (the domain
        events an accepted command caused already name the command and the principal)."""
        if isinstance(event, CommandHandled) and event.status.value == "ACCEPTED":
            return
        if event.cluster_id is not None:
            cursor.execute(
                f"INSERT INTO {self.t.audit} (position, cluster_id, doc) VALUES (?, ?, ?) "
                "ON CONFLICT (position) DO NOTHING",
                (event.position, event.cluster_id, event.model_dump_json()),
            )

    # -- one handler per event class ----------------------------------------------------------

    @singledispatchmethod
    def handle(self, event: EventBase, cursor: Cursor) -> None:
        """Events no view shows beyond the audit trail (:data:`AUDIT_ONLY`)."""

    @handle.register
    def _cluster_registered(self, event: ClusterRegistered, cursor: Cursor) -> None:
        self._put_cluster(
            cursor,
            {
                "id": event.cluster_id,
                "name": event.name,
                "organization": event.organization,
                "tier": event.tier.value,
                "regions": event.regions,
                "engine": event.engine.value,
                "database_version": event.database_version,
                "connection_ref": event.connection_ref,
                "backup_region": event.backup_region,
                "state": "READY",
                "backups_config": _backups_config(event),
                "retention_changed": False,
                "created_at": ts(event.occurred_at),
                "deleted_at": None,
                "version": event.aggregate_version,
            },
        )

    @handle.register
    def _settings_updated(self, event: BackupSettingsUpdated, cursor: Cursor) -> None:
        doc = self._cluster_doc(cursor, event)
        if doc is not None:
            doc["retention_changed"] = doc["retention_changed"] or event.retention_changed
            doc["backups_config"] = _backups_config(event)
            self._put_cluster(cursor, doc)

    @handle.register
    def _tier_changed(self, event: ClusterTierChanged, cursor: Cursor) -> None:
        doc = self._cluster_doc(cursor, event)
        if doc is not None:
            doc["tier"] = event.tier.value
            doc["backups_config"] = _backups_config(event)
            self._put_cluster(cursor, doc)

    @handle.register
    def _cluster_deleted(self, event: ClusterDeleted, cursor: Cursor) -> None:
        doc = self._cluster_doc(cursor, event)
        if doc is None:
            return
        until = deleted_cluster_until(event.occurred_at, event.retention_days)
        doc["state"] = "DELETED"
        doc["deleted_at"] = ts(event.occurred_at)
        doc["backups_kept_until"] = ts(until)
        self._put_retention(cursor, doc["id"], deleted_until=ts(until))
        self._put_cluster(cursor, doc)

    @handle.register
    def _backup_scheduled(self, event: BackupScheduled, cursor: Cursor) -> None:
        cluster_doc = self._cluster_doc(cursor, event)
        if cluster_doc is not None:
            self._put_cluster(cursor, cluster_doc)
        if self._backup_doc(cursor, str(event.backup_id)) is None:
            self._put_backup(
                cursor,
                _new_backup_doc(event, ts(event.slot), BackupStatus.SCHEDULED),
            )

    @handle.register
    def _backup_started(self, event: BackupStarted, cursor: Cursor) -> None:
        doc = self._backup_doc(cursor, str(event.backup_id)) or _new_backup_doc(
            event, ts(event.scheduled_for), BackupStatus.IN_PROGRESS
        )
        doc.update(
            status=BackupStatus.IN_PROGRESS.value,
            started_at=ts(event.occurred_at),
            reason=event.reason.value,
            description=(
                f"{event.reason.value.lower()} {event.backup_type.value.lower()} backup of "
                f"cluster {event.cluster_id} into region {event.region} by {event.executor}"
            ),
        )
        self._put_backup(cursor, doc)

    @handle.register
    def _backup_completed(self, event: BackupCompleted, cursor: Cursor) -> None:
        doc = self._backup_doc(cursor, str(event.backup_id))
        if doc is None:
            return
        self._count(cursor, doc["cluster_id"], stored_bytes=event.size_bytes)
        expires_at = ts(event.expires_at)
        if doc["type"] == BackupType.FULL.value:
            self._full_completed(cursor, doc["cluster_id"], doc["id"], event.as_of_time)
        else:  # an incremental expires with its full
            full = self._backup_doc(cursor, doc["chain_id"])
            expires_at = full["expires_at"] if full is not None else expires_at
        doc.update(
            status=BackupStatus.COMPLETE.value,
            as_of_time=ts(event.as_of_time),
            ended_at=ts(event.occurred_at),
            expires_at=expires_at,
            size_bytes=event.size_bytes,
            database_count=event.database_count,
            catalog=[db.model_dump() for db in event.catalog],
            manifest_key=event.manifest_key,
        )
        self._put_backup(cursor, doc)

    @handle.register
    def _backup_failed(self, event: BackupFailed, cursor: Cursor) -> None:
        doc = self._backup_doc(cursor, str(event.backup_id))
        if doc is None:
            return
        doc.update(
            status=BackupStatus.FAILED.value,
            ended_at=ts(event.occurred_at),
            error={"code": event.error_code, "message": event.error_message},
            failed_step=event.failed_step,
        )
        self._put_backup(cursor, doc)

    @handle.register
    def _backup_verified(self, event: BackupVerified, cursor: Cursor) -> None:
        doc = self._backup_doc(cursor, str(event.backup_id))
        if doc is None:
            return
        doc["verification"] = {
            "ok": event.ok,
            "verified_at": ts(event.occurred_at),
            "chunks_checked": event.chunks_checked,
            "missing_chunks": event.missing_chunks,
            "corrupt_chunks": event.corrupt_chunks,
        }
        self._put_backup(cursor, doc)

    @handle.register
    def _backup_expired(self, event: BackupExpired, cursor: Cursor) -> None:
        doc = self._backup_doc(cursor, str(event.backup_id))
        if doc is None:
            return
        self._count(cursor, doc["cluster_id"], expired_count=1)
        doc.update(
            status=BackupStatus.EXPIRED.value,
            expired_at=ts(event.occurred_at),
            expired_because=event.reason,
        )
        self._put_backup(cursor, doc)

    @handle.register
    def _backup_deleted(self, event: BackupDeleted, cursor: Cursor) -> None:
        doc = self._backup_doc(cursor, str(event.backup_id))
        if doc is None:
            return
        stored = int(doc["size_bytes"]) if doc["status"] != "FAILED" else 0
        self._count(
            cursor,
            doc["cluster_id"],
            stored_bytes=-stored,
            deleted_count=1,
            bytes_freed=event.bytes_freed,
        )
        doc.update(
            deleted_at=ts(event.occurred_at),
            bytes_freed=event.bytes_freed,
            objects_deleted=event.objects_deleted,
        )
        self._put_backup(cursor, doc)

    @handle.register
    def _restore_requested(self, event: RestoreRequested, cursor: Cursor) -> None:
        """A restore job's row, keyed by its destination cluster. Its document holds the Cloud
        API fields (``status`` PENDING | SUCCESS | FAILED, ``completion_percent`` 0..1 by bytes,
        ...) plus the console's ``phase`` and the phases in the order they happened."""
        at = ts(event.occurred_at)
        doc: dict[str, Any] = {
            "id": str(event.restore_id),
            "backup_id": str(event.backup_id),
            "type": event.restore_type.value,
            "completion_percent": 0.0,
            "created_at": at,
            "completed_at": None,
            "backup_end_time": ts(event.backup_end_time),
            "source_cluster_id": event.source_cluster_id,
            "source_cluster_name": event.source_cluster_name,
            "destination_cluster_id": event.cluster_id,
            "destination_cluster_name": event.destination_cluster_name,
            "objects": [o.model_dump(by_alias=True, exclude_none=True) for o in event.objects],
            "restore_opts": event.restore_opts.model_dump(),
            "target_database": event.target_database,
            "client_error_code": None,
            "client_error_message": None,
            "failed_step": None,
            "destination_state": None,
            "bytes_total": 0,
            "bytes_done": 0,
            "requested_by": event.by,
            "phases": [],
        }
        _restore_phase(doc, "PREPARING", at)
        self._put_restore(cursor, doc)

    @handle.register
    def _restore_running(self, event: RestoreRunning, cursor: Cursor) -> None:
        doc = self._restore_doc(cursor, str(event.restore_id))
        if doc is not None:
            doc["bytes_total"] = event.bytes_total
            _restore_phase(doc, "RUNNING", ts(event.occurred_at))
            self._put_restore(cursor, doc)

    @handle.register
    def _restore_progressed(self, event: RestoreProgressed, cursor: Cursor) -> None:
        doc = self._restore_doc(cursor, str(event.restore_id))
        if doc is not None:
            doc["bytes_done"] = event.bytes_done
            doc["completion_percent"] = event.completion
            self._put_restore(cursor, doc)

    @handle.register
    def _restore_succeeded(self, event: RestoreSucceeded, cursor: Cursor) -> None:
        doc = self._restore_doc(cursor, str(event.restore_id))
        if doc is not None:
            at = ts(event.occurred_at)
            doc.update(bytes_done=event.bytes_done, completion_percent=1.0, completed_at=at)
            doc["restored"] = event.restored
            doc["left_out"] = event.left_out
            _restore_phase(doc, "SUCCEEDED", at)
            self._put_restore(cursor, doc)

    @handle.register
    def _restore_failed(self, event: RestoreFailed, cursor: Cursor) -> None:
        doc = self._restore_doc(cursor, str(event.restore_id))
        if doc is not None:
            at = ts(event.occurred_at)
            doc.update(
                completed_at=at,
                client_error_code=event.error_code,
                client_error_message=event.error_message,
                failed_step=event.failed_step,
                destination_state=event.destination_state,
            )
            _restore_phase(doc, "FAILED", at)
            self._put_restore(cursor, doc)

    # -- identity: organizations, service accounts, API keys, role grants -----------------------

    @handle.register
    def _organization_created(self, event: OrganizationCreated, cursor: Cursor) -> None:
        doc = {
            "id": event.organization_id,
            "name": event.name,
            "created_at": ts(event.occurred_at),
            "created_by": event.by,
        }
        cursor.execute(
            f"INSERT INTO {self.t.organizations} (organization_id, doc) VALUES (?, ?) "
            "ON CONFLICT (organization_id) DO NOTHING",
            (event.organization_id, json.dumps(doc)),
        )

    @handle.register
    def _service_account_created(self, event: ServiceAccountCreated, cursor: Cursor) -> None:
        doc = {
            "id": str(event.account_id),
            "name": event.name,
            "description": event.description,
            "organization": event.organization,
            "created_at": ts(event.occurred_at),
            "creator_name": event.by,
        }
        cursor.execute(
            f"INSERT INTO {self.t.service_accounts} (account_id, organization, doc) "
            "VALUES (?, ?, ?) ON CONFLICT (account_id) DO NOTHING",
            (str(event.account_id), event.organization, json.dumps(doc)),
        )

    @handle.register
    def _role_granted(self, event: RoleGranted, cursor: Cursor) -> None:
        cursor.execute(
            f"SELECT organization FROM {self.t.service_accounts} WHERE account_id = ?",
            (str(event.account_id),),
        )
        row = cursor.fetchone()
        organization = row[0] if row else None
        doc = {
            "service_account_id": str(event.account_id),
            "role_name": event.role.value,
            "resource_type": event.resource_type,
            "resource_id": event.resource_id,
            "organization": organization,
            "granted_at": ts(event.occurred_at),
            "granted_by": event.by,
        }
        cursor.execute(
            f"INSERT INTO {self.t.role_grants} (account_id, role, resource_type, resource_id, "
            "organization, doc) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (account_id, role, resource_type, resource_id) DO NOTHING",
            (
                str(event.account_id),
                event.role.value,
                event.resource_type,
                event.resource_id,
                organization,
                json.dumps(doc),
            ),
        )

    @handle.register
    def _role_grant_removed(self, event: RoleGrantRemoved, cursor: Cursor) -> None:
        cursor.execute(
            f"DELETE FROM {self.t.role_grants} WHERE account_id = ? AND role = ? "
            "AND resource_type = ? AND resource_id = ?",
            (str(event.account_id), event.role.value, event.resource_type, event.resource_id),
        )

    @handle.register
    def _api_key_created(self, event: ApiKeyCreated, cursor: Cursor) -> None:
        self._put_key(
            cursor,
            {
                "id": event.key_id,
                "name": event.name,
                "service_account_id": str(event.account_id),
                "organization": event.organization,
                "created_at": ts(event.occurred_at),
                "created_by": event.by,
                "expires_at": ts(event.expires_at),
                "revoked_at": None,
                "revoked_by": None,
            },
        )

    @handle.register
    def _api_key_issued(self, event: ApiKeyIssued, cursor: Cursor) -> None:
        """A key of version 0.1: listed (to be revoked) with the principal and grants it names."""
        self._put_key(
            cursor,
            {
                "id": event.key_id,
                "name": f"{event.principal} (a key of version 0.1)",
                "service_account_id": None,
                "organization": None,
                "created_at": ts(event.occurred_at),
                "created_by": event.by,
                "expires_at": None,
                "revoked_at": None,
                "revoked_by": None,
                "legacy_principal": event.principal,
                "legacy_grants": [g.model_dump(mode="json") for g in event.grants],
            },
        )

    @handle.register
    def _api_key_revoked(self, event: ApiKeyRevoked, cursor: Cursor) -> None:
        cursor.execute(f"SELECT doc FROM {self.t.api_keys} WHERE key_id = ?", (event.key_id,))
        row = cursor.fetchone()
        if row is not None:
            doc = json.loads(row[0])
            doc.update(revoked_at=ts(event.occurred_at), revoked_by=event.by)
            self._put_key(cursor, doc)

    def _put_key(self, cursor: Cursor, doc: dict[str, Any]) -> None:
        cursor.execute(
            f"INSERT INTO {self.t.api_keys} (key_id, account_id, organization, doc) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (key_id) DO UPDATE SET doc = excluded.doc",
            (doc["id"], doc["service_account_id"], doc["organization"], json.dumps(doc)),
        )

    # -- rows -----------------------------------------------------------------------------------

    def _cluster_doc(self, cursor: Cursor, event: EventBase) -> dict[str, Any] | None:
        """The cluster's document with the version of ``event``'s cluster stream (None if the
        cluster was never registered)."""
        cursor.execute(
            f"SELECT doc FROM {self.t.clusters} WHERE cluster_id = ?", (event.cluster_id,)
        )
        row = cursor.fetchone()
        if row is None:
            return None
        doc: dict[str, Any] = json.loads(row[0])
        doc["version"] = event.aggregate_version
        return doc

    def _put_cluster(self, cursor: Cursor, doc: dict[str, Any]) -> None:
        cursor.execute(
            f"INSERT INTO {self.t.clusters} (cluster_id, organization, deleted, doc) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (cluster_id) DO UPDATE SET "
            "organization = excluded.organization, deleted = excluded.deleted, doc = excluded.doc",
            (
                doc["id"],
                doc["organization"],
                1 if doc["state"] == "DELETED" else 0,
                json.dumps(doc),
            ),
        )

    def _backup_doc(self, cursor: Cursor, backup_id: str) -> dict[str, Any] | None:
        cursor.execute(f"SELECT doc FROM {self.t.backups} WHERE backup_id = ?", (backup_id,))
        row = cursor.fetchone()
        return json.loads(row[0]) if row else None

    def _put_backup(self, cursor: Cursor, doc: dict[str, Any]) -> None:
        cursor.execute(
            f"INSERT INTO {self.t.backups} (backup_id, cluster_id, status, backup_type, "
            "chain_id, sort_time, as_of_time, expires_at, doc) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (backup_id) DO UPDATE SET status = excluded.status, "
            "backup_type = excluded.backup_type, chain_id = excluded.chain_id, "
            "sort_time = excluded.sort_time, as_of_time = excluded.as_of_time, "
            "expires_at = excluded.expires_at, doc = excluded.doc",
            (
                doc["id"],
                doc["cluster_id"],
                doc["status"],
                doc["type"],
                doc["chain_id"],
                doc["as_of_time"] or doc["started_at"] or doc["scheduled_for"],
                doc["as_of_time"],
                doc["expires_at"],
                json.dumps(doc),
            ),
        )

    def _restore_doc(self, cursor: Cursor, restore_id: str) -> dict[str, Any] | None:
        cursor.execute(f"SELECT doc FROM {self.t.restores} WHERE restore_id = ?", (restore_id,))
        row = cursor.fetchone()
        return json.loads(row[0]) if row else None

    def _put_restore(self, cursor: Cursor, doc: dict[str, Any]) -> None:
        cursor.execute(
            f"INSERT INTO {self.t.restores} (restore_id, cluster_id, created_at, doc) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (restore_id) DO UPDATE SET doc = excluded.doc",
            (doc["id"], doc["destination_cluster_id"], doc["created_at"], json.dumps(doc)),
        )

    def _retention_row(self, cursor: Cursor, cluster_id: str) -> tuple[Any, ...] | None:
        cursor.execute(
            f"SELECT {', '.join(_RETENTION_COLUMNS)} FROM {self.t.retention} WHERE cluster_id = ?",
            (cluster_id,),
        )
        row = cursor.fetchone()
        return tuple(row) if row else None

    def _put_retention(self, cursor: Cursor, cluster_id: str, **values: str | None) -> None:
        row = self._retention_row(cursor, cluster_id) or (None, None, None)
        current = dict(zip(_RETENTION_COLUMNS, row, strict=True))
        current.update(values)
        cursor.execute(
            f"INSERT INTO {self.t.retention} (cluster_id, kept_chain_id, kept_data_from, "
            "deleted_until) VALUES (?, ?, ?, ?) ON CONFLICT (cluster_id) DO UPDATE SET "
            "kept_chain_id = excluded.kept_chain_id, kept_data_from = excluded.kept_data_from, "
            "deleted_until = excluded.deleted_until",
            (cluster_id, *(current[name] for name in _RETENTION_COLUMNS)),
        )

    def _count(self, cursor: Cursor, cluster_id: str, **deltas: int) -> None:
        """Add ``deltas`` to the cluster's retention counters."""
        if self._retention_row(cursor, cluster_id) is None:
            self._put_retention(cursor, cluster_id)
        sets = ", ".join(f"{name} = {name} + ?" for name in deltas)
        cursor.execute(
            f"UPDATE {self.t.retention} SET {sets} WHERE cluster_id = ?",
            (*deltas.values(), cluster_id),
        )

    def _full_completed(
        self, cursor: Cursor, cluster_id: str, backup_id: str, data_from: datetime
    ) -> None:
        """Rule "a live cluster never loses its newest restorable chain": track that chain."""
        row = self._retention_row(cursor, cluster_id)
        newest = ts(data_from)
        if row is None or row[1] is None or (newest or "") > row[1]:
            self._put_retention(cursor, cluster_id, kept_chain_id=backup_id, kept_data_from=newest)


def _backups_config(
    event: ClusterRegistered | BackupSettingsUpdated | ClusterTierChanged,
) -> dict[str, Any]:
    return {
        "enabled": event.enabled,
        "frequency_minutes": event.frequency_minutes,
        "retention_days": event.retention_days,
    }


def _new_backup_doc(
    event: BackupScheduled | BackupStarted, scheduled_for: str | None, status: BackupStatus
) -> dict[str, Any]:
    """A backup's document before it ran (a BackupStarted may arrive without its schedule,
    e.g. an on-demand backup)."""
    kind = event.backup_type.value
    return {
        "id": str(event.backup_id),
        "cluster_id": event.cluster_id,
        "type": kind,
        "chain_id": str(event.chain_id),
        "region": event.region,
        "retention_days": event.retention_days,
        "scheduled_for": scheduled_for,
        "status": status.value,
        "started_at": None,
        "ended_at": None,
        "as_of_time": None,
        "expires_at": None,
        "size_bytes": 0,
        "database_count": 0,
        "catalog": [],
        "error": None,
        "failed_step": None,
        "description": f"{kind.lower()} backup scheduled for {scheduled_for}",
        "reason": "SCHEDULED",
    }


def _restore_phase(doc: dict[str, Any], phase: str, at: str | None) -> None:
    doc["phase"] = phase
    doc["status"] = _RESTORE_STATUS[phase]
    doc["phases"].append({"phase": phase, "at": at})
