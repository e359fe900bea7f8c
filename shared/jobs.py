"""Leases of long-running jobs (restores today; backups can move onto it): a job whose worker
died is failed within a bounded time, and what it left behind is cleaned up.

The order is what makes it safe:

1. :func:`take` writes the lease row *before* the job's start event is saved (inside the command
   handler). If the save then fails or the process dies before it, the lease names a job that
   was never recorded; :func:`reap` drops such leases once they expire (after running the job
   kind's cleanup, which may find nothing to clean).
2. While the job runs, its worker renews the lease (:func:`renew`) every third of its length.
   Renewals are rows, not events: they are not history.
3. When the job ends, its worker records the outcome, then :func:`release`s the lease.
4. Every worker instance runs :func:`reap`: for each expired lease it calls ``fail`` (record a
   ``LEASE_EXPIRED`` outcome on a job that is still running; optimistic concurrency on the job's
   stream settles a race with a late real outcome) and ``cleanup`` (drop the job's temporary
   objects), and releases the lease only when both succeeded, so a failed cleanup is retried.

A lease carries ``details`` (JSON: what the cleanup needs, e.g. a temporary database's name;
``"exclusive": true`` for a job no other job of its cluster may run beside, see
:func:`exclusive_job`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from managed_backups.shared.sqldb import SqlDatabase

log = logging.getLogger(__name__)
TABLE = "mb_job_leases"


@dataclass(frozen=True)
class Lease:
    job_id: UUID
    kind: str
    cluster_id: str
    owner: str
    lease_until: datetime
    details: dict[str, Any]


def ensure_table(db: SqlDatabase) -> None:
    db.execute(
        f"CREATE TABLE IF NOT EXISTS {TABLE} (job_id TEXT PRIMARY KEY, kind TEXT NOT NULL, "
        "cluster_id TEXT NOT NULL, owner TEXT NOT NULL, lease_until TEXT NOT NULL, "
        "details TEXT NOT NULL)"
    )


def lease_until(now: datetime, seconds: float) -> datetime:
    return now + timedelta(seconds=seconds)


def take(
    db: SqlDatabase,
    job_id: UUID,
    kind: str,
    cluster_id: str,
    owner: str,
    until: datetime,
    details: dict[str, Any] | None = None,
) -> bool:
    """Take the lease of a new job; False if another worker already holds it."""
    with db.transaction() as cursor:
        cursor.execute(
            f"INSERT INTO {TABLE} (job_id, kind, cluster_id, owner, lease_until, details) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (job_id) DO NOTHING",
            (str(job_id), kind, cluster_id, owner, until.isoformat(), json.dumps(details or {})),
        )
        cursor.execute(f"SELECT owner FROM {TABLE} WHERE job_id = ?", (str(job_id),))
        row = cursor.fetchone()
    return row is not None and row[0] == owner


def renew(db: SqlDatabase, job_id: UUID, owner: str, until: datetime) -> None:
    db.execute(
        f"UPDATE {TABLE} SET lease_until = ? WHERE job_id = ? AND owner = ?",
        (until.isoformat(), str(job_id), owner),
    )


def release(db: SqlDatabase, job_id: UUID) -> None:
    db.execute(f"DELETE FROM {TABLE} WHERE job_id = ?", (str(job_id),))


def held(db: SqlDatabase, kind: str) -> list[Lease]:
    rows = db.query(
        f"SELECT job_id, kind, cluster_id, owner, lease_until, details FROM {TABLE} WHERE kind = ?",
        (kind,),
    )
    return [
        Lease(UUID(j), k, c, o, datetime.fromisoformat(u), json.loads(d))
        for j, k, c, o, u, d in rows
    ]


def on_cluster(db: SqlDatabase, cluster_id: str) -> list[Lease]:
    """Every job (of any kind) holding a lease on ``cluster_id``."""
    rows = db.query(
        f"SELECT job_id, kind, cluster_id, owner, lease_until, details FROM {TABLE} "
        "WHERE cluster_id = ?",
        (cluster_id,),
    )
    return [
        Lease(UUID(j), k, c, o, datetime.fromisoformat(u), json.loads(d))
        for j, k, c, o, u, d in rows
    ]


def exclusive_job(db: SqlDatabase, cluster_id: str) -> Lease | None:
    """The job that holds ``cluster_id`` exclusively (``details["exclusive"]``, e.g. a CLUSTER
    restore: no backup and no other restore of the cluster while it runs), if any."""
    return next((job for job in on_cluster(db, cluster_id) if job.details.get("exclusive")), None)


def expired(db: SqlDatabase, kind: str, now: datetime) -> list[Lease]:
    return [lease for lease in held(db, kind) if lease.lease_until < now]


def reap(
    db: SqlDatabase,
    kind: str,
    now: datetime,
    fail: Callable[[Lease], bool],
    cleanup: Callable[[Lease], None],
    running_here: Callable[[UUID], bool] = lambda _: False,
) -> int:
    """Fail and clean up every job of ``kind`` whose lease expired; returns how many were
    failed. ``fail`` returns False when the job was never recorded or already ended."""
    reaped = 0
    for lease in expired(db, kind, now):
        if running_here(lease.job_id):
            continue
        try:
            failed = fail(lease)
            cleanup(lease)
        except Exception:
            log.exception("reaping %s job %s failed; will retry", kind, lease.job_id)
            continue
        release(db, lease.job_id)
        reaped += int(failed)
    return reaped
