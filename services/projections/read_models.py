"""The read models behind the HTTP views, built by following the event store's notification log.

Each batch of events is applied in one transaction together with the projection's position, so
every event is applied exactly once; dropping the tables and replaying from position 0 rebuilds
them identically (``managed-backups projections rebuild``). Tables are plain SQL on SQLite or
PostgreSQL, in the event store's database; documents are JSON text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from managed_backups.contracts.enums import BackupStatus, BackupType
from managed_backups.contracts.events import (
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
    EventBase,
)
from managed_backups.services.projections import restore_views
from managed_backups.shared.domain.backup_lifecycle import (
    deleted_cluster_until,
    kept_past_retention,
    listed_backup_sql,
)
from managed_backups.shared.sqldb import Cursor, SqlDatabase

PROJECTION_NAME = "views"


def ts(value: datetime | None) -> str | None:
    """Fixed-width UTC text, so timestamps sort correctly as strings on both databases."""
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_ts(value: str | None) -> datetime | None:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC) if value else None


@dataclass(frozen=True)
class Page:
    page: int
    limit: int
    sort_desc: bool


class ReadModels:
    def __init__(self, db: SqlDatabase, prefix: str = "mb_view_") -> None:
        self.db = db
        self.p = prefix

    # -- schema ---------------------------------------------------------------------------

    def create(self) -> None:
        p = self.p
        statements = [
            f"CREATE TABLE IF NOT EXISTS {p}position (name TEXT PRIMARY KEY, position BIGINT NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {p}clusters (cluster_id TEXT PRIMARY KEY, "
            "organization TEXT NOT NULL, deleted INTEGER NOT NULL, doc TEXT NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {p}backups (backup_id TEXT PRIMARY KEY, "
            "cluster_id TEXT NOT NULL, status TEXT NOT NULL, backup_type TEXT NOT NULL, "
            "chain_id TEXT NOT NULL, sort_time TEXT NOT NULL, as_of_time TEXT, "
            "expires_at TEXT, doc TEXT NOT NULL)",
            f"CREATE INDEX IF NOT EXISTS {p}backups_by_cluster ON {p}backups (cluster_id, sort_time)",
            f"CREATE TABLE IF NOT EXISTS {p}audit (position BIGINT PRIMARY KEY, "
            "cluster_id TEXT NOT NULL, doc TEXT NOT NULL)",
            f"CREATE INDEX IF NOT EXISTS {p}audit_by_cluster ON {p}audit (cluster_id, position)",
            *restore_views.create_statements(p),
            # Per cluster, what the retention rules need to list: its newest restorable chain
            # (the newest COMPLETE full) and, once deleted, until when its backups are kept.
            f"CREATE TABLE IF NOT EXISTS {p}retention (cluster_id TEXT PRIMARY KEY, "
            "kept_chain_id TEXT, kept_data_from TEXT, deleted_until TEXT, "
            "stored_bytes BIGINT NOT NULL DEFAULT 0, expired_count BIGINT NOT NULL DEFAULT 0, "
            "deleted_count BIGINT NOT NULL DEFAULT 0, bytes_freed BIGINT NOT NULL DEFAULT 0)",
        ]
        if not self.db.table_exists(f"{p}retention") and self.db.table_exists(f"{p}position"):
            self.drop()  # views built before the retention table: rebuilt from the log
        with self.db.transaction() as cursor:
            for statement in statements:
                cursor.execute(statement)

    def drop(self) -> None:
        with self.db.transaction() as cursor:
            for table in ("position", "clusters", "backups", "audit", "restores", "retention"):
                cursor.execute(f"DROP TABLE IF EXISTS {self.p}{table}")

    def position(self) -> int:
        rows = self.db.query(
            f"SELECT position FROM {self.p}position WHERE name = ?", (PROJECTION_NAME,)
        )
        return int(rows[0][0]) if rows else 0

    # -- writes ---------------------------------------------------------------------------

    def apply_batch(self, events: Sequence[EventBase]) -> None:
        if not events:
            return
        with self.db.transaction() as cursor:
            for event in events:
                self._apply(cursor, event)
            cursor.execute(
                f"INSERT INTO {self.p}position (name, position) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                (PROJECTION_NAME, events[-1].position),
            )

    def _cluster_doc(self, cursor: Cursor, cluster_id: str) -> dict[str, Any] | None:
        cursor.execute(f"SELECT doc FROM {self.p}clusters WHERE cluster_id = ?", (cluster_id,))
        row = cursor.fetchone()
        return json.loads(row[0]) if row else None

    def _put_cluster(self, cursor: Cursor, doc: dict[str, Any]) -> None:
        cursor.execute(
            f"INSERT INTO {self.p}clusters (cluster_id, organization, deleted, doc) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (cluster_id) DO UPDATE SET organization = excluded.organization, "
            "deleted = excluded.deleted, doc = excluded.doc",
            (
                doc["id"],
                doc["organization"],
                1 if doc["state"] == "DELETED" else 0,
                json.dumps(doc),
            ),
        )

    def _backup_doc(self, cursor: Cursor, backup_id: str) -> dict[str, Any] | None:
        cursor.execute(f"SELECT doc FROM {self.p}backups WHERE backup_id = ?", (backup_id,))
        row = cursor.fetchone()
        return json.loads(row[0]) if row else None

    def _put_backup(self, cursor: Cursor, doc: dict[str, Any]) -> None:
        cursor.execute(
            f"INSERT INTO {self.p}backups (backup_id, cluster_id, status, backup_type, chain_id, "
            "sort_time, as_of_time, expires_at, doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
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

    def _apply(self, cursor: Cursor, event: EventBase) -> None:
        # Audit trail: every event of a cluster, except accepted-command bookkeeping (the domain
        # events an accepted command caused already name the command and the principal).
        if isinstance(event, CommandHandled) and event.status.value == "ACCEPTED":
            pass
        elif event.cluster_id is not None:
            cursor.execute(
                f"INSERT INTO {self.p}audit (position, cluster_id, doc) VALUES (?, ?, ?) "
                "ON CONFLICT (position) DO NOTHING",
                (event.position, event.cluster_id, event.model_dump_json()),
            )
        restore_views.apply_restore_event(cursor, self.p, event)
        if isinstance(event, ClusterRegistered):
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
                    "backups_config": {
                        "enabled": event.enabled,
                        "frequency_minutes": event.frequency_minutes,
                        "retention_days": event.retention_days,
                    },
                    "retention_changed": False,
                    "created_at": ts(event.occurred_at),
                    "deleted_at": None,
                    "version": event.aggregate_version,
                },
            )
        elif isinstance(event, BackupSettingsUpdated | ClusterTierChanged | ClusterDeleted):
            assert event.cluster_id is not None
            doc = self._cluster_doc(cursor, event.cluster_id)
            if doc is None:
                return
            if isinstance(event, ClusterDeleted):
                doc["state"] = "DELETED"
                doc["deleted_at"] = ts(event.occurred_at)
                until = deleted_cluster_until(event.occurred_at, event.retention_days)
                doc["backups_kept_until"] = ts(until)
                self._put_retention(cursor, event.cluster_id, deleted_until=ts(until))
            else:
                if isinstance(event, ClusterTierChanged):
                    doc["tier"] = event.tier.value
                else:
                    doc["retention_changed"] = doc["retention_changed"] or event.retention_changed
                doc["backups_config"] = {
                    "enabled": event.enabled,
                    "frequency_minutes": event.frequency_minutes,
                    "retention_days": event.retention_days,
                }
            doc["version"] = event.aggregate_version
            self._put_cluster(cursor, doc)
        elif isinstance(event, BackupScheduled):
            assert event.cluster_id is not None
            cluster_doc = self._cluster_doc(cursor, event.cluster_id)
            if cluster_doc is not None:
                cluster_doc["version"] = event.aggregate_version
                self._put_cluster(cursor, cluster_doc)
            if self._backup_doc(cursor, str(event.backup_id)) is None:
                self._put_backup(
                    cursor,
                    _new_backup_doc(
                        backup_id=str(event.backup_id),
                        cluster_id=event.cluster_id,
                        backup_type=event.backup_type,
                        chain_id=str(event.chain_id),
                        region=event.region,
                        retention_days=event.retention_days,
                        scheduled_for=ts(event.slot),
                        status=BackupStatus.SCHEDULED.value,
                    ),
                )
        elif isinstance(event, BackupStarted):
            assert event.cluster_id is not None
            doc = self._backup_doc(cursor, str(event.backup_id)) or _new_backup_doc(
                backup_id=str(event.backup_id),
                cluster_id=event.cluster_id,
                backup_type=event.backup_type,
                chain_id=str(event.chain_id),
                region=event.region,
                retention_days=event.retention_days,
                scheduled_for=ts(event.scheduled_for),
                status=BackupStatus.IN_PROGRESS.value,
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
        elif isinstance(event, BackupCompleted | BackupFailed | BackupVerified):
            doc = self._backup_doc(cursor, str(event.backup_id))
            if doc is None:
                return
            if isinstance(event, BackupCompleted):
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
            elif isinstance(event, BackupFailed):
                doc.update(
                    status=BackupStatus.FAILED.value,
                    ended_at=ts(event.occurred_at),
                    error={"code": event.error_code, "message": event.error_message},
                    failed_step=event.failed_step,
                )
            else:
                doc["verification"] = {
                    "ok": event.ok,
                    "verified_at": ts(event.occurred_at),
                    "chunks_checked": event.chunks_checked,
                    "missing_chunks": event.missing_chunks,
                    "corrupt_chunks": event.corrupt_chunks,
                }
            self._put_backup(cursor, doc)
        elif isinstance(event, BackupExpired | BackupDeleted):
            doc = self._backup_doc(cursor, str(event.backup_id))
            if doc is None:
                return
            if isinstance(event, BackupExpired):
                self._count(cursor, doc["cluster_id"], expired_count=1)
                doc.update(
                    status=BackupStatus.EXPIRED.value,
                    expired_at=ts(event.occurred_at),
                    expired_because=event.reason,
                )
            else:
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

    def _retention_row(self, cursor: Cursor, cluster_id: str) -> tuple[Any, ...] | None:
        cursor.execute(
            f"SELECT kept_chain_id, kept_data_from, deleted_until FROM {self.p}retention "
            "WHERE cluster_id = ?",
            (cluster_id,),
        )
        row = cursor.fetchone()
        return tuple(row) if row else None

    def _put_retention(self, cursor: Cursor, cluster_id: str, **values: str | None) -> None:
        row = self._retention_row(cursor, cluster_id) or (None, None, None)
        current = dict(zip(("kept_chain_id", "kept_data_from", "deleted_until"), row, strict=True))
        current.update(values)
        cursor.execute(
            f"INSERT INTO {self.p}retention (cluster_id, kept_chain_id, kept_data_from, "
            "deleted_until) VALUES (?, ?, ?, ?) ON CONFLICT (cluster_id) DO UPDATE SET "
            "kept_chain_id = excluded.kept_chain_id, kept_data_from = excluded.kept_data_from, "
            "deleted_until = excluded.deleted_until",
            (
                cluster_id,
                current["kept_chain_id"],
                current["kept_data_from"],
                current["deleted_until"],
            ),
        )

    def _count(self, cursor: Cursor, cluster_id: str, **deltas: int) -> None:
        """Add ``deltas`` to the cluster's retention counters."""
        if self._retention_row(cursor, cluster_id) is None:
            self._put_retention(cursor, cluster_id)
        sets = ", ".join(f"{name} = {name} + ?" for name in deltas)
        cursor.execute(
            f"UPDATE {self.p}retention SET {sets} WHERE cluster_id = ?",
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

    def _with_retention(self, cluster_id: str, docs: list[dict[str, Any]], now: datetime) -> None:
        """Say, on each listed backup, when its chain expires under the retention rules."""
        rows = self.db.query(
            f"SELECT kept_chain_id, deleted_until FROM {self.p}retention WHERE cluster_id = ?",
            (cluster_id,),
        )
        kept_chain, deleted_until = (rows[0][0], parse_ts(rows[0][1])) if rows else (None, None)
        for doc in docs:
            own = parse_ts(doc.get("expires_at"))
            kept = doc["chain_id"] == kept_chain
            past = kept_past_retention(own, kept, now)
            doc["kept_past_retention"] = past
            if past:
                doc["expires_at"] = ts(deleted_until)
                doc["retention_note"] = (
                    "kept past its retention: the cluster's newest restorable backup chain is "
                    "kept until a newer full backup completes"
                    if deleted_until is None
                    else "kept past its retention until the deleted cluster's backups are deleted"
                )
            elif deleted_until is not None and (own is None or own > deleted_until):
                doc["expires_at"] = ts(deleted_until)

    # -- queries --------------------------------------------------------------------------

    def cluster(self, cluster_id: str) -> dict[str, Any] | None:
        rows = self.db.query(
            f"SELECT doc FROM {self.p}clusters WHERE cluster_id = ?", (cluster_id,)
        )
        return json.loads(rows[0][0]) if rows else None

    def clusters(self, include_deleted: bool = False) -> list[dict[str, Any]]:
        where = "" if include_deleted else " WHERE deleted = 0"
        rows = self.db.query(f"SELECT doc FROM {self.p}clusters{where} ORDER BY cluster_id")
        return [json.loads(r[0]) for r in rows]

    def audit(self, cluster_id: str, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        rows = self.db.query(
            f"SELECT doc FROM {self.p}audit WHERE cluster_id = ? AND position > ? "
            "ORDER BY position LIMIT ?",
            (cluster_id, after, limit),
        )
        return [json.loads(r[0]) for r in rows]

    def backup(self, cluster_id: str, backup_id: str) -> dict[str, Any] | None:
        rows = self.db.query(
            f"SELECT doc FROM {self.p}backups WHERE backup_id = ? AND cluster_id = ?",
            (backup_id, cluster_id),
        )
        return json.loads(rows[0][0]) if rows else None

    def listed_backups(
        self,
        cluster_id: str,
        now: datetime,
        start: datetime | None,
        end: datetime | None,
        page: Page,
    ) -> tuple[list[dict[str, Any]], bool]:
        """Backups a user can restore (or that are running): not expired, not failed, and an
        incremental only while its full is complete and unexpired. Returns (rows, has_more)."""
        p = self.p
        sql = (
            f"SELECT b.doc FROM {p}backups b WHERE b.cluster_id = ? "
            f"AND {listed_backup_sql(f'{p}backups', 'b', f'{p}retention')}"
        )
        params: list[Any] = [cluster_id, ts(now), ts(now)]
        if start is not None:
            sql += " AND b.sort_time >= ?"
            params.append(ts(start))
        if end is not None:
            sql += " AND b.sort_time < ?"
            params.append(ts(end))
        sql += f" ORDER BY b.sort_time {'DESC' if page.sort_desc else 'ASC'}, b.backup_id LIMIT ? OFFSET ?"
        params += [page.limit + 1, (page.page - 1) * page.limit]
        rows = self.db.query(sql, params)
        docs = [json.loads(r[0]) for r in rows]
        self._with_retention(cluster_id, docs, now)
        return docs[: page.limit], len(docs) > page.limit

    def recoverability(self, cluster_id: str, now: datetime) -> dict[str, Any]:
        """The cluster's recoverability window at ``now`` (oldest and newest "data from" of the
        COMPLETE backups it lists), its last successful backup, stored bytes, expired and
        deleted counts, and whether its newest chain is kept past its retention."""
        p = self.p
        rows = self.db.query(
            f"SELECT MIN(b.as_of_time), MAX(b.as_of_time), COUNT(*) FROM {p}backups b "
            f"WHERE b.cluster_id = ? AND b.status = 'COMPLETE' "
            f"AND {listed_backup_sql(f'{p}backups', 'b', f'{p}retention')}",
            (cluster_id, ts(now), ts(now)),
        )
        oldest, newest, restorable = rows[0] if rows else (None, None, 0)
        last = self.db.query(
            f"SELECT MAX(as_of_time) FROM {p}backups WHERE cluster_id = ? "
            "AND as_of_time IS NOT NULL AND status IN ('COMPLETE', 'EXPIRED')",
            (cluster_id,),
        )
        counters = self.db.query(
            f"SELECT stored_bytes, expired_count, deleted_count, bytes_freed, kept_chain_id "
            f"FROM {p}retention WHERE cluster_id = ?",
            (cluster_id,),
        )
        stored, expired, deleted, freed, kept = counters[0] if counters else (0, 0, 0, 0, None)
        kept_doc = self.backup(cluster_id, str(kept)) if kept else None
        kept_expires = parse_ts(kept_doc["expires_at"]) if kept_doc else None
        return {
            "oldest_restorable": oldest,
            "newest_restorable": newest,
            "restorable_backups": int(restorable or 0),
            "last_successful_backup": last[0][0] if last else None,
            "stored_bytes": int(stored),
            "expired_backups": int(expired),
            "deleted_backups": int(deleted),
            "bytes_freed": int(freed),
            "kept_past_retention": kept_past_retention(kept_expires, kept is not None, now),
        }

    def incomplete_backups(self, cluster_id: str) -> list[dict[str, Any]]:
        rows = self.db.query(
            f"SELECT doc FROM {self.p}backups WHERE cluster_id = ? "
            "AND status IN ('SCHEDULED', 'IN_PROGRESS', 'FAILED') ORDER BY sort_time DESC",
            (cluster_id,),
        )
        return [json.loads(r[0]) for r in rows]

    def backup_metrics(self) -> list[tuple[str, str, int, str | None]]:
        """(cluster id, status, count, latest as_of_time) per cluster and status."""
        rows = self.db.query(
            f"SELECT cluster_id, status, COUNT(*), MAX(as_of_time) FROM {self.p}backups "
            "GROUP BY cluster_id, status ORDER BY cluster_id, status"
        )
        return [(str(c), str(s), int(n), t) for c, s, n, t in rows]

    def dump(self) -> dict[str, list[Any]]:
        """Every row of every table (for comparing a rebuilt projection with the live one)."""
        return {
            table: [list(r) for r in self.db.query(f"SELECT * FROM {self.p}{table} ORDER BY 1")]
            for table in ("clusters", "backups", "audit", "restores", "position", "retention")
        }

    def restores(self, cluster_id: str, page: int, limit: int) -> tuple[list[dict[str, Any]], bool]:
        """Restore jobs into ``cluster_id``, newest first: (rows, has_more)."""
        return restore_views.restores(self.db, self.p, cluster_id, page, limit)

    def restore(self, cluster_id: str, restore_id: str) -> dict[str, Any] | None:
        return restore_views.restore(self.db, self.p, cluster_id, restore_id)


def _new_backup_doc(
    *,
    backup_id: str,
    cluster_id: str,
    backup_type: BackupType,
    chain_id: str,
    region: str,
    retention_days: int,
    scheduled_for: str | None,
    status: str,
) -> dict[str, Any]:
    return {
        "id": backup_id,
        "cluster_id": cluster_id,
        "type": backup_type.value,
        "chain_id": chain_id,
        "region": region,
        "retention_days": retention_days,
        "scheduled_for": scheduled_for,
        "status": status,
        "started_at": None,
        "ended_at": None,
        "as_of_time": None,
        "expires_at": None,
        "size_bytes": 0,
        "database_count": 0,
        "catalog": [],
        "error": None,
        "failed_step": None,
        "description": f"{backup_type.value.lower()} backup scheduled for {scheduled_for}",
        "reason": "SCHEDULED",
    }
