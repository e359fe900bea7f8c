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
from collections.abc import Iterable, Sequence
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
    CustomerKeyChanged,
    CustomerKeyConfigured,
    CustomerKeyRemoved,
    EventBase,
    KeyRotationCompleted,
    KeyRotationFailed,
    KeyRotationStarted,
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
from managed_backups.shared.log_follower import PositionRow
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
    CustomerKeyConfigured,
    CustomerKeyChanged,
    CustomerKeyRemoved,
    KeyRotationStarted,
    KeyRotationCompleted,
    KeyRotationFailed,
)
_RETENTION_COLUMNS = ("kept_chain_id", "kept_data_from", "deleted_until")
_RETENTION_COUNTERS = ("stored_bytes", "expired_count", "deleted_count", "bytes_freed")
_CHUNK = 900
"""Parameters per statement at most (SQLite's limit is 999 on old builds)."""


class ViewProjection:
    """Keeps the read-model tables of ``db`` (under ``prefix``) current, event by event."""

    def __init__(self, db: SqlDatabase, prefix: str = DEFAULT_PREFIX) -> None:
        self.db = db
        self.t = Tables(prefix)
        self.at = PositionRow(self.t.position, PROJECTION_NAME)
        """The views' position: a row of their own position table (a rebuild swaps it with
        them)."""
        self._rows: _BatchRows | None = None

    def apply_batch(self, events: Sequence[EventBase], after: int | None = None) -> bool:
        """Apply ``events`` (in log order) and record the last one's position, atomically.

        With ``after`` (the position the events follow), the batch applies only if the views
        are still at ``after`` when its transaction starts (it moves the position first, so a
        concurrent writer waits for it, then finds the position moved and applies nothing):
        two projectors, or a projector and a rebuild that just replaced the views, never apply
        an event twice or skip one. Returns whether it applied.

        The rows the batch reads are read once and kept, with its changes, in memory
        (:class:`_BatchRows`) until its end; then every changed row is written once, together
        with the audit rows and the position, in the same transaction. A handler sees the rows as
        every earlier event of the batch left them, so a batch of any size gives the same tables
        as one event at a time (``tests/integration/test_projections_rebuild.py`` compares a
        rebuild in large batches with the views kept live in small ones)."""
        if not events:
            return True
        with self.db.transaction() as cursor:
            if after is not None and not self.at.claim(cursor, after, events[-1].position):
                return False
            self.apply_in(cursor, events)
            if after is None:
                self.at.put(cursor, events[-1].position)
        return True

    def apply_in(self, cursor: Cursor, events: Sequence[EventBase]) -> None:
        """Apply ``events`` in the caller's transaction, which moves the position (the
        :class:`~managed_backups.shared.log_follower.LogFollower`'s, or :meth:`apply_batch`)."""
        self._rows = _BatchRows(self.t, cursor, self.db.dialect)
        try:
            self._rows.prefetch(events)
            for event in events:
                self._audit(event, cursor)
                self.handle(event, cursor)
            self._rows.flush()
        finally:
            self._rows = None

    @property
    def rows(self) -> _BatchRows:
        assert self._rows is not None, "rows are read and written inside apply_batch only"
        return self._rows

    def _audit(self, event: EventBase, cursor: Cursor) -> None:
        """Audit trail: every event of a cluster, except accepted-command bookkeeping (the domain
        events an accepted command caused already name the command and the principal)."""
        if isinstance(event, CommandHandled) and event.status.value == "ACCEPTED":
            return
        if event.cluster_id is not None:
            self.rows.audit.append((event.position, event.cluster_id, event.model_dump_json()))

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
        if self._backup_doc(cursor, event.cluster_id, str(event.backup_id)) is None:
            self._put_backup(
                cursor,
                _new_backup_doc(event, ts(event.slot), BackupStatus.SCHEDULED),
            )

    @handle.register
    def _backup_started(self, event: BackupStarted, cursor: Cursor) -> None:
        doc = self._backup_doc(cursor, event.cluster_id, str(event.backup_id)) or _new_backup_doc(
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
        doc = self._backup_doc(cursor, event.cluster_id, str(event.backup_id))
        if doc is None:
            return
        self._count(cursor, doc["cluster_id"], stored_bytes=event.size_bytes)
        expires_at = ts(event.expires_at)
        if doc["type"] == BackupType.FULL.value:
            self._full_completed(cursor, doc["cluster_id"], doc["id"], event.as_of_time)
        else:  # an incremental expires with its full
            full = self._backup_doc(cursor, doc["cluster_id"], doc["chain_id"])
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
        doc = self._backup_doc(cursor, event.cluster_id, str(event.backup_id))
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
        doc = self._backup_doc(cursor, event.cluster_id, str(event.backup_id))
        if doc is None:
            return
        doc["verification"] = {
            "ok": event.ok,
            "verified_at": ts(event.occurred_at),
            "chunks_checked": event.chunks_checked,
            "missing_chunks": event.missing_chunks,
            "corrupt_chunks": event.corrupt_chunks,
            "command_id": None if event.command_id is None else str(event.command_id),
        }
        self._put_backup(cursor, doc)

    @handle.register
    def _backup_expired(self, event: BackupExpired, cursor: Cursor) -> None:
        doc = self._backup_doc(cursor, event.cluster_id, str(event.backup_id))
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
        doc = self._backup_doc(cursor, event.cluster_id, str(event.backup_id))
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
        doc = self._restore_doc(cursor, event.cluster_id, str(event.restore_id))
        if doc is not None:
            doc["bytes_total"] = event.bytes_total
            _restore_phase(doc, "RUNNING", ts(event.occurred_at))
            self._put_restore(cursor, doc)

    @handle.register
    def _restore_progressed(self, event: RestoreProgressed, cursor: Cursor) -> None:
        doc = self._restore_doc(cursor, event.cluster_id, str(event.restore_id))
        if doc is not None:
            doc["bytes_done"] = event.bytes_done
            doc["completion_percent"] = event.completion
            self._put_restore(cursor, doc)

    @handle.register
    def _restore_succeeded(self, event: RestoreSucceeded, cursor: Cursor) -> None:
        doc = self._restore_doc(cursor, event.cluster_id, str(event.restore_id))
        if doc is not None:
            at = ts(event.occurred_at)
            doc.update(bytes_done=event.bytes_done, completion_percent=1.0, completed_at=at)
            doc["restored"] = event.restored
            doc["left_out"] = event.left_out
            _restore_phase(doc, "SUCCEEDED", at)
            self._put_restore(cursor, doc)

    @handle.register
    def _restore_failed(self, event: RestoreFailed, cursor: Cursor) -> None:
        doc = self._restore_doc(cursor, event.cluster_id, str(event.restore_id))
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
    # Written at once through the cursor, not kept by _BatchRows: no other handler reads these
    # tables, and each handler here reads only rows an earlier statement of the same
    # transaction wrote, so a batch of any size still gives the tables one event at a time would.

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

    # -- rows (kept by the batch until its end: _BatchRows) -------------------------------------

    def _cluster_doc(self, cursor: Cursor, event: EventBase) -> dict[str, Any] | None:
        """The cluster's document with the version of ``event``'s cluster stream (None if the
        cluster was never registered)."""
        doc = self.rows.get("clusters", str(event.cluster_id))
        if doc is None:
            return None
        doc["version"] = event.aggregate_version
        return doc

    def _put_cluster(self, cursor: Cursor, doc: dict[str, Any]) -> None:
        self.rows.put("clusters", doc["id"], doc)

    def _backup_doc(
        self, cursor: Cursor, cluster_id: str | None, backup_id: str
    ) -> dict[str, Any] | None:
        return self.rows.get("backups", (cluster_id or "", backup_id))

    def _put_backup(self, cursor: Cursor, doc: dict[str, Any]) -> None:
        self.rows.put("backups", (doc["cluster_id"], doc["id"]), doc)

    def _restore_doc(
        self, cursor: Cursor, cluster_id: str | None, restore_id: str
    ) -> dict[str, Any] | None:
        return self.rows.get("restores", (cluster_id or "", restore_id))

    def _put_restore(self, cursor: Cursor, doc: dict[str, Any]) -> None:
        self.rows.put("restores", (doc["destination_cluster_id"], doc["id"]), doc)

    def _retention_row(self, cursor: Cursor, cluster_id: str) -> tuple[Any, ...] | None:
        row = self.rows.get("retention", cluster_id)
        return None if row is None else tuple(row[name] for name in _RETENTION_COLUMNS)

    def _put_retention(self, cursor: Cursor, cluster_id: str, **values: str | None) -> None:
        row = self.rows.get("retention", cluster_id) or {
            **dict.fromkeys(_RETENTION_COLUMNS),
            **dict.fromkeys(_RETENTION_COUNTERS, 0),
        }
        row.update(values)
        self.rows.put("retention", cluster_id, row)

    def _count(self, cursor: Cursor, cluster_id: str, **deltas: int) -> None:
        """Add ``deltas`` to the cluster's retention counters."""
        if self._retention_row(cursor, cluster_id) is None:
            self._put_retention(cursor, cluster_id)
        row = self.rows.get("retention", cluster_id)
        assert row is not None
        for name, delta in deltas.items():
            row[name] += delta
        self.rows.put("retention", cluster_id, row)

    def _full_completed(
        self, cursor: Cursor, cluster_id: str, backup_id: str, data_from: datetime
    ) -> None:
        """Rule "a live cluster never loses its newest restorable chain": track that chain."""
        row = self._retention_row(cursor, cluster_id)
        newest = ts(data_from)
        if row is None or row[1] is None or (newest or "") > row[1]:
            self._put_retention(cursor, cluster_id, kept_chain_id=backup_id, kept_data_from=newest)


Key = str | tuple[str, str]
"""A row's key in :class:`_BatchRows`: a cluster id, or (cluster id, id) for backups and
restores (ids chosen by clients are unique only within their cluster)."""


class _BatchRows:
    """The rows one batch reads and writes: each read from its table once, then kept (with the
    batch's changes) in memory; ``flush`` writes every changed row once (``executemany``) and
    the audit rows, in the batch's transaction. What a replay costs per event is then mostly
    the handler itself, not a round trip to the database per read and write."""

    def __init__(self, tables: Tables, cursor: Cursor, dialect: str) -> None:
        self.t = tables
        self.cursor = cursor
        # On PostgreSQL the keys read are one array parameter (``= ANY``) and the rows written
        # one JSON parameter: a statement with thousands of placeholders costs more to send
        # than its rows.
        self.arrays = dialect == "postgres"
        self.kept: dict[str, dict[Key, dict[str, Any] | None]] = {
            kind: {} for kind in ("clusters", "backups", "restores", "retention")
        }
        self.changed: dict[str, set[Key]] = {kind: set() for kind in self.kept}
        self.audit: list[tuple[int, str, str]] = []

    def _in(self, values: list[str]) -> tuple[str, list[Any]]:
        """A condition ``column <this>`` that holds for ``values``, and its parameters."""
        if self.arrays:
            return "= ANY(?::text[])", [values]
        return f"IN ({', '.join('?' for _ in values)})", list(values)

    def _select(self, kind: str, keys: list[Key]) -> None:
        """Read the rows of ``keys`` into ``kept``, None where a row does not exist. Backups
        and restores are keyed by (cluster id, id): both columns are matched (the primary
        key's index), and a row of a pair not asked for is not kept."""
        if kind in ("backups", "restores"):
            pairs = [k for k in keys if isinstance(k, tuple)]
            table, column = (
                (self.t.backups, "backup_id")
                if kind == "backups"
                else (self.t.restores, "restore_id")
            )
            in_clusters, cluster_params = self._in(sorted({c for c, _ in pairs}))
            in_ids, id_params = self._in(sorted({i for _, i in pairs}))
            self.cursor.execute(
                f"SELECT cluster_id, {column}, doc FROM {table} "
                f"WHERE cluster_id {in_clusters} AND {column} {in_ids}",
                [*cluster_params, *id_params],
            )
            rows = {(r[0], r[1]): json.loads(r[2]) for r in self.cursor.fetchall()}
            for pair in pairs:
                self.kept[kind][pair] = rows.get(pair)
            return
        where, params = self._in([k for k in keys if isinstance(k, str)])
        if kind == "retention":
            columns = ("cluster_id", *_RETENTION_COLUMNS, *_RETENTION_COUNTERS)
            self.cursor.execute(
                f"SELECT {', '.join(columns)} FROM {self.t.retention} WHERE cluster_id {where}",
                params,
            )
            found = {
                r[0]: dict(zip(columns[1:], r[1:], strict=True)) for r in self.cursor.fetchall()
            }
        else:
            self.cursor.execute(
                f"SELECT cluster_id, doc FROM {self.t.clusters} WHERE cluster_id {where}", params
            )
            found = {r[0]: json.loads(r[1]) for r in self.cursor.fetchall()}
        for key in keys:
            self.kept[kind][key] = found.get(key)

    def read(self, kind: str, keys: Iterable[Key]) -> None:
        """Read every row of ``keys`` not yet kept (on SQLite in chunks, below its parameter
        limit: a pair takes two)."""
        missing = sorted((k for k in keys if k not in self.kept[kind]), key=str)
        step = max(len(missing), 1) if self.arrays else _CHUNK // 2
        for start in range(0, len(missing), step):
            self._select(kind, missing[start : start + step])

    def prefetch(self, events: Sequence[EventBase]) -> None:
        """Read at once the rows the batch's events name (their clusters, backups, the full
        backups of their chains, restores), instead of one query per row on first use."""
        clusters = {e.cluster_id for e in events if e.cluster_id is not None}
        self.read("clusters", clusters)
        self.read("retention", clusters)
        self.read(
            "backups",
            {(e.cluster_id or "", str(b)) for e in events if (b := getattr(e, "backup_id", None))},
        )
        chains: set[Key] = {
            (e.cluster_id or "", str(c)) for e in events if (c := getattr(e, "chain_id", None))
        }
        chains |= {
            (d["cluster_id"], d["chain_id"]) for d in self.kept["backups"].values() if d is not None
        }
        self.read("backups", chains)
        self.read(
            "restores",
            {(e.cluster_id or "", str(r)) for e in events if (r := getattr(e, "restore_id", None))},
        )

    def get(self, kind: str, key: Key) -> dict[str, Any] | None:
        if key not in self.kept[kind]:
            self._select(kind, [key])
        return self.kept[kind][key]

    def put(self, kind: str, key: Key, row: dict[str, Any]) -> None:
        self.kept[kind][key] = row
        self.changed[kind].add(key)

    def _changed(self, kind: str) -> list[dict[str, Any]]:
        return [row for key in sorted(self.changed[kind], key=str) if (row := self.kept[kind][key])]

    def _upsert(
        self, head: str, rows: list[tuple[Any, ...]], tail: str, types: tuple[str, ...]
    ) -> None:
        """Insert ``rows`` (``head`` names the columns, of the SQL ``types``): on PostgreSQL
        in one statement whose one parameter is the rows as JSON (``json_to_recordset``: the
        server parses it, where a parameter per value, or an array of quoted documents, costs
        the client more than the rows); on SQLite ``head VALUES (...), (...) tail``, as many
        rows a statement as its parameter limit allows."""
        if not rows:
            return
        if self.arrays:
            names = [c.strip() for c in head[head.index("(") + 1 : head.rindex(")")].split(",")]
            quoted = [f'"{name}"' for name in names]
            record = ", ".join(f"{q} {t}" for q, t in zip(quoted, types, strict=True))
            self.cursor.execute(
                f"{head} SELECT {', '.join(quoted)} FROM json_to_recordset(?::json) AS "
                f"r({record}) {tail}",
                [json.dumps([dict(zip(names, row, strict=True)) for row in rows])],
            )
            return
        width = len(rows[0])
        per_statement = max(1, _CHUNK // width)
        one = f"({', '.join('?' for _ in range(width))})"
        for start in range(0, len(rows), per_statement):
            chunk = rows[start : start + per_statement]
            self.cursor.execute(
                f"{head} VALUES {', '.join(one for _ in chunk)} {tail}",
                [value for row in chunk for value in row],
            )

    def flush(self) -> None:
        t = self.t
        self._upsert(
            f"INSERT INTO {t.audit} (position, cluster_id, doc)",
            self.audit,
            "ON CONFLICT (position) DO NOTHING",
            ("bigint", "text", "text"),
        )
        self._upsert(
            f"INSERT INTO {t.clusters} (cluster_id, organization, deleted, doc)",
            [
                (d["id"], d["organization"], 1 if d["state"] == "DELETED" else 0, json.dumps(d))
                for d in self._changed("clusters")
            ],
            "ON CONFLICT (cluster_id) DO UPDATE SET organization = excluded.organization, "
            "deleted = excluded.deleted, doc = excluded.doc",
            ("text", "text", "integer", "text"),
        )
        self._upsert(
            f"INSERT INTO {t.backups} (backup_id, cluster_id, status, backup_type, chain_id, "
            "sort_time, as_of_time, expires_at, doc)",
            [
                (
                    d["id"],
                    d["cluster_id"],
                    d["status"],
                    d["type"],
                    d["chain_id"],
                    d["as_of_time"] or d["started_at"] or d["scheduled_for"],
                    d["as_of_time"],
                    d["expires_at"],
                    json.dumps(d),
                )
                for d in self._changed("backups")
            ],
            "ON CONFLICT (cluster_id, backup_id) DO UPDATE SET status = excluded.status, "
            "backup_type = excluded.backup_type, chain_id = excluded.chain_id, "
            "sort_time = excluded.sort_time, as_of_time = excluded.as_of_time, "
            "expires_at = excluded.expires_at, doc = excluded.doc",
            ("text",) * 9,
        )
        self._upsert(
            f"INSERT INTO {t.restores} (restore_id, cluster_id, created_at, doc)",
            [
                (d["id"], d["destination_cluster_id"], d["created_at"], json.dumps(d))
                for d in self._changed("restores")
            ],
            "ON CONFLICT (cluster_id, restore_id) DO UPDATE SET doc = excluded.doc",
            ("text",) * 4,
        )
        columns = (*_RETENTION_COLUMNS, *_RETENTION_COUNTERS)
        self._upsert(
            f"INSERT INTO {t.retention} (cluster_id, {', '.join(columns)})",
            [
                (key, *(row[name] for name in columns))
                for key in sorted(self.changed["retention"], key=str)
                if (row := self.kept["retention"][key])
            ],
            "ON CONFLICT (cluster_id) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in columns),
            ("text",) * 4 + ("bigint",) * 4,
        )


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
