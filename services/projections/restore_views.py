"""The restore jobs view: one row per restore job, keyed by its destination cluster, updated by
the Restore events in the same transaction as the rest of the read models.

The row's document holds the Cloud API fields (``status`` PENDING | SUCCESS | FAILED,
``completion_percent`` 0..1 by bytes, ...) plus the console's ``phase`` and the history of
phases with their times, so the view shows the phases in the order they happened.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from managed_backups.contracts.events import (
    EventBase,
    RestoreFailed,
    RestoreProgressed,
    RestoreRequested,
    RestoreRunning,
    RestoreSucceeded,
)
from managed_backups.shared.sqldb import Cursor, SqlDatabase

RESTORE_EVENTS = (
    RestoreRequested,
    RestoreRunning,
    RestoreProgressed,
    RestoreSucceeded,
    RestoreFailed,
)
_STATUS = {"PREPARING": "PENDING", "RUNNING": "PENDING", "SUCCEEDED": "SUCCESS", "FAILED": "FAILED"}


def _iso(value: datetime | None) -> str | None:
    """Fixed-width UTC text (sorts as a string on both databases)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if value else None


def create_statements(p: str) -> list[str]:
    return [
        f"CREATE TABLE IF NOT EXISTS {p}restores (restore_id TEXT PRIMARY KEY, "
        "cluster_id TEXT NOT NULL, created_at TEXT NOT NULL, doc TEXT NOT NULL)",
        f"CREATE INDEX IF NOT EXISTS {p}restores_by_cluster ON {p}restores "
        "(cluster_id, created_at)",
    ]


def _get(cursor: Cursor, p: str, restore_id: str) -> dict[str, Any] | None:
    cursor.execute(f"SELECT doc FROM {p}restores WHERE restore_id = ?", (restore_id,))
    row = cursor.fetchone()
    return json.loads(row[0]) if row else None


def _put(cursor: Cursor, p: str, doc: dict[str, Any]) -> None:
    cursor.execute(
        f"INSERT INTO {p}restores (restore_id, cluster_id, created_at, doc) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (restore_id) DO UPDATE SET doc = excluded.doc",
        (doc["id"], doc["destination_cluster_id"], doc["created_at"], json.dumps(doc)),
    )


def _phase(doc: dict[str, Any], phase: str, at: str | None) -> None:
    doc["phase"] = phase
    doc["status"] = _STATUS[phase]
    doc["phases"].append({"phase": phase, "at": at})


def apply_restore_event(cursor: Cursor, p: str, event: EventBase) -> None:
    """Apply one event if it is a restore event (others are ignored)."""
    if isinstance(event, RestoreRequested):
        at = _iso(event.occurred_at)
        doc: dict[str, Any] = {
            "id": str(event.restore_id),
            "backup_id": str(event.backup_id),
            "type": event.restore_type.value,
            "completion_percent": 0.0,
            "created_at": at,
            "completed_at": None,
            "backup_end_time": _iso(event.backup_end_time),
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
        _phase(doc, "PREPARING", at)
        _put(cursor, p, doc)
        return
    if not isinstance(event, RESTORE_EVENTS):
        return
    found = _get(cursor, p, str(event.restore_id))
    if found is None:
        return
    doc = found
    at = _iso(event.occurred_at)
    if isinstance(event, RestoreRunning):
        doc["bytes_total"] = event.bytes_total
        _phase(doc, "RUNNING", at)
    elif isinstance(event, RestoreProgressed):
        doc["bytes_done"] = event.bytes_done
        doc["completion_percent"] = event.completion
    elif isinstance(event, RestoreSucceeded):
        doc.update(bytes_done=event.bytes_done, completion_percent=1.0, completed_at=at)
        doc["restored"] = event.restored
        _phase(doc, "SUCCEEDED", at)
    elif isinstance(event, RestoreFailed):
        doc.update(
            completed_at=at,
            client_error_code=event.error_code,
            client_error_message=event.error_message,
            failed_step=event.failed_step,
            destination_state=event.destination_state,
        )
        _phase(doc, "FAILED", at)
    _put(cursor, p, doc)


def restores(
    db: SqlDatabase, p: str, cluster_id: str, page: int, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """A destination cluster's restore jobs, newest first; returns (rows, has_more)."""
    rows = db.query(
        f"SELECT doc FROM {p}restores WHERE cluster_id = ? "
        "ORDER BY created_at DESC, restore_id LIMIT ? OFFSET ?",
        (cluster_id, limit + 1, (page - 1) * limit),
    )
    docs = [json.loads(r[0]) for r in rows]
    return docs[:limit], len(docs) > limit


def restore(db: SqlDatabase, p: str, cluster_id: str, restore_id: str) -> dict[str, Any] | None:
    rows = db.query(
        f"SELECT doc FROM {p}restores WHERE restore_id = ? AND cluster_id = ?",
        (restore_id, cluster_id),
    )
    return json.loads(rows[0][0]) if rows else None
