"""Queries over the read models: what the HTTP API and the console show.

Only reads live here; the projections service keeps the tables current (one handler per event,
``services/projections/handlers.py``), and any service may read them through this module without
importing another service. :meth:`ReadModels.create` makes the tables if they are missing, so a
reader that starts before the projections service sees empty views rather than errors.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from managed_backups.shared.domain.backup_lifecycle import kept_past_retention, listed_backup_sql
from managed_backups.shared.sqldb import SqlDatabase
from managed_backups.shared.views.schema import (
    DEFAULT_PREFIX,
    PROJECTION_NAME,
    Tables,
    parse_ts,
    ts,
)


@dataclass(frozen=True)
class Page:
    page: int
    limit: int
    sort_desc: bool


class ReadModels:
    """The read models of one database under one table prefix."""

    def __init__(self, db: SqlDatabase, prefix: str = DEFAULT_PREFIX) -> None:
        self.db = db
        self.prefix = prefix
        self.tables = Tables(prefix)

    def create(self) -> None:
        self.tables.create(self.db)

    def drop(self) -> None:
        self.tables.drop(self.db)

    def position(self) -> int:
        return self.tables.position_of(self.db)

    async def wait_until(self, position: int | None, timeout: float) -> None:
        """Wait until the views reached event-store ``position`` (at once for None, which a
        command that recorded nothing has): ``TimeoutError`` after ``timeout`` seconds.

        The one wait for read-your-writes: the API answers a change only once a GET would show
        it, and the tests wait the same way before reading the views. It polls the projection's
        position row (every 10 ms, each read in a thread); the projections service is in another
        process, so there is nothing in this one to be notified by."""
        if position is None:
            return
        # A deadline checked after each read, not ``asyncio.timeout``: views found caught up are
        # never a timeout, however short the wait allowed (or slow the read).
        deadline = time.monotonic() + timeout
        while await asyncio.to_thread(self.position) < position:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the views have not reached position {position} in {timeout} s")
            await asyncio.sleep(0.01)

    def completed_backups(self, cluster_id: str) -> tuple[int, list[tuple[datetime, UUID]]]:
        """The log position the views are at and the cluster's backups that had completed by
        then (as-of time, id), read together (the projections write rows and position in one
        transaction). ``(0, [])`` while the views do not exist."""
        if not self.db.table_exists(self.tables.backups):
            return 0, []
        with self.db.transaction() as cursor:
            cursor.execute(
                f"SELECT position FROM {self.tables.position} WHERE name = ?", (PROJECTION_NAME,)
            )
            row = cursor.fetchone()
            cursor.execute(
                f"SELECT as_of_time, backup_id FROM {self.tables.backups} "
                "WHERE cluster_id = ? AND as_of_time IS NOT NULL",
                (cluster_id,),
            )
            rows = cursor.fetchall()
        if row is None:
            return 0, []
        return int(row[0]), [(datetime.fromisoformat(a), UUID(b)) for a, b in rows]

    def _docs(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[dict[str, Any]]:
        return [json.loads(row[0]) for row in self.db.query(sql, params)]

    def _doc(self, sql: str, params: tuple[Any, ...]) -> dict[str, Any] | None:
        docs = self._docs(sql, params)
        return docs[0] if docs else None

    # -- clusters and their audit trail -----------------------------------------------------

    def cluster(self, cluster_id: str) -> dict[str, Any] | None:
        return self._doc(
            f"SELECT doc FROM {self.tables.clusters} WHERE cluster_id = ?", (cluster_id,)
        )

    def clusters(self, include_deleted: bool = False) -> list[dict[str, Any]]:
        where = "" if include_deleted else " WHERE deleted = 0"
        return self._docs(f"SELECT doc FROM {self.tables.clusters}{where} ORDER BY cluster_id")

    def audit(self, cluster_id: str, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        return self._docs(
            f"SELECT doc FROM {self.tables.audit} WHERE cluster_id = ? AND position > ? "
            "ORDER BY position LIMIT ?",
            (cluster_id, after, limit),
        )

    def audit_before(self, cluster_id: str, before: int, limit: int) -> list[dict[str, Any]]:
        """The ``limit`` events of the cluster just before position ``before``, in order (the
        console opens the audit trail on its latest page and pages back)."""
        docs = self._docs(
            f"SELECT doc FROM {self.tables.audit} WHERE cluster_id = ? AND position < ? "
            "ORDER BY position DESC LIMIT ?",
            (cluster_id, before, limit),
        )
        return docs[::-1]

    # -- backups ----------------------------------------------------------------------------

    def backup(self, cluster_id: str, backup_id: str) -> dict[str, Any] | None:
        return self._doc(
            f"SELECT doc FROM {self.tables.backups} WHERE backup_id = ? AND cluster_id = ?",
            (backup_id, cluster_id),
        )

    def _listed_sql(self) -> str:
        """The condition "listed to a user" on alias ``b`` (two ``now`` parameters)."""
        return listed_backup_sql(self.tables.backups, "b", self.tables.retention)

    def _listed_between(
        self, cluster_id: str, now: datetime, start: datetime | None, end: datetime | None
    ) -> tuple[str, list[Any]]:
        """The condition (on alias ``b``) and parameters: the cluster's listed backups whose
        time is in [start, end)."""
        where = f"b.cluster_id = ? AND {self._listed_sql()}"
        params: list[Any] = [cluster_id, ts(now), ts(now)]
        if start is not None:
            where += " AND b.sort_time >= ?"
            params.append(ts(start))
        if end is not None:
            where += " AND b.sort_time < ?"
            params.append(ts(end))
        return where, params

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
        where, params = self._listed_between(cluster_id, now, start, end)
        sql = f"SELECT b.doc FROM {self.tables.backups} b WHERE {where}"
        sql += f" ORDER BY b.sort_time {'DESC' if page.sort_desc else 'ASC'}, b.backup_id LIMIT ? OFFSET ?"
        params += [page.limit + 1, (page.page - 1) * page.limit]
        docs = self._docs(sql, params)
        self._with_retention(cluster_id, docs, now)
        return docs[: page.limit], len(docs) > page.limit

    def _with_retention(self, cluster_id: str, docs: list[dict[str, Any]], now: datetime) -> None:
        """Say, on each listed backup, when its chain expires under the retention rules."""
        rows = self.db.query(
            f"SELECT kept_chain_id, deleted_until FROM {self.tables.retention} WHERE cluster_id = ?",
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

    def recoverability(self, cluster_id: str, now: datetime) -> dict[str, Any]:
        """The cluster's recoverability window at ``now`` (oldest and newest "data from" of the
        COMPLETE backups it lists), its last successful backup, stored bytes, expired and
        deleted counts, and whether its newest chain is kept past its retention."""
        t = self.tables
        rows = self.db.query(
            f"SELECT MIN(b.as_of_time), MAX(b.as_of_time), COUNT(*) FROM {t.backups} b "
            f"WHERE b.cluster_id = ? AND b.status = 'COMPLETE' AND {self._listed_sql()}",
            (cluster_id, ts(now), ts(now)),
        )
        oldest, newest, restorable = rows[0] if rows else (None, None, 0)
        last = self.db.query(
            f"SELECT MAX(as_of_time) FROM {t.backups} WHERE cluster_id = ? "
            "AND as_of_time IS NOT NULL AND status IN ('COMPLETE', 'EXPIRED')",
            (cluster_id,),
        )
        counters = self.db.query(
            f"SELECT stored_bytes, expired_count, deleted_count, bytes_freed, kept_chain_id "
            f"FROM {t.retention} WHERE cluster_id = ?",
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

    def backup_days(
        self, cluster_id: str, now: datetime, start: datetime | None, end: datetime | None
    ) -> list[tuple[str, int]]:
        """(UTC day, number of listed backups whose data is from it), in day order: the days
        the console's calendar marks."""
        where, params = self._listed_between(cluster_id, now, start, end)
        rows = self.db.query(
            f"SELECT substr(b.sort_time, 1, 10) AS day, COUNT(*) FROM {self.tables.backups} b "
            f"WHERE {where} GROUP BY substr(b.sort_time, 1, 10) ORDER BY 1",
            params,
        )
        return [(str(day), int(count)) for day, count in rows]

    def last_finished_backup(self, cluster_id: str) -> dict[str, Any] | None:
        """The cluster's newest backup that ended, complete or failed (the clusters view marks a
        cluster whose last backup failed)."""
        return self._doc(
            f"SELECT doc FROM {self.tables.backups} WHERE cluster_id = ? "
            "AND status IN ('COMPLETE', 'FAILED', 'EXPIRED') ORDER BY sort_time DESC LIMIT 1",
            (cluster_id,),
        )

    def backups_by_id(self, backup_id: str) -> list[dict[str, Any]]:
        """The backups of any cluster with this id (the caller keeps those of the clusters it may
        see): what ``backups show ID`` looks up without a cluster id."""
        return self._docs(
            f"SELECT doc FROM {self.tables.backups} WHERE backup_id = ? ORDER BY cluster_id",
            (backup_id,),
        )

    def incomplete_backups(self, cluster_id: str) -> list[dict[str, Any]]:
        return self._docs(
            f"SELECT doc FROM {self.tables.backups} WHERE cluster_id = ? "
            "AND status IN ('SCHEDULED', 'IN_PROGRESS', 'FAILED') ORDER BY sort_time DESC",
            (cluster_id,),
        )

    def backup_metrics(self) -> list[tuple[str, str, int, str | None]]:
        """(cluster id, status, count, latest as_of_time) per cluster and status."""
        rows = self.db.query(
            f"SELECT cluster_id, status, COUNT(*), MAX(as_of_time) FROM {self.tables.backups} "
            "GROUP BY cluster_id, status ORDER BY cluster_id, status"
        )
        return [(str(c), str(s), int(n), t) for c, s, n, t in rows]

    # -- restore jobs -----------------------------------------------------------------------

    def restores(self, cluster_id: str, page: int, limit: int) -> tuple[list[dict[str, Any]], bool]:
        """A destination cluster's restore jobs, newest first: (rows, has_more)."""
        docs = self._docs(
            f"SELECT doc FROM {self.tables.restores} WHERE cluster_id = ? "
            "ORDER BY created_at DESC, restore_id LIMIT ? OFFSET ?",
            (cluster_id, limit + 1, (page - 1) * limit),
        )
        return docs[:limit], len(docs) > limit

    def restore(self, cluster_id: str, restore_id: str) -> dict[str, Any] | None:
        return self._doc(
            f"SELECT doc FROM {self.tables.restores} WHERE restore_id = ? AND cluster_id = ?",
            (restore_id, cluster_id),
        )

    # -- identity ---------------------------------------------------------------------------

    def organizations(self) -> list[dict[str, Any]]:
        return self._docs(f"SELECT doc FROM {self.tables.organizations} ORDER BY organization_id")

    def service_accounts(self) -> list[dict[str, Any]]:
        return self._docs(
            f"SELECT doc FROM {self.tables.service_accounts} ORDER BY organization, account_id"
        )

    def api_keys(self) -> list[dict[str, Any]]:
        """Every key, newest first: none has its secret or a hash of it here."""
        return sorted(
            self._docs(f"SELECT doc FROM {self.tables.api_keys}"),
            key=lambda d: (d["created_at"], d["id"]),
            reverse=True,
        )

    def role_grants(self) -> list[dict[str, Any]]:
        return self._docs(
            f"SELECT doc FROM {self.tables.role_grants} "
            "ORDER BY organization, account_id, resource_type, resource_id, role"
        )

    # -- whole tables -----------------------------------------------------------------------

    def dump(self) -> dict[str, list[Any]]:
        """Every row of every table by its unprefixed name (for comparing a rebuilt projection
        with the live one)."""
        return {
            table.removeprefix(self.prefix): [
                list(r) for r in self.db.query(f"SELECT * FROM {table} ORDER BY 1, 2")
            ]
            for table in self.tables.all()
        }
