"""Leases of running jobs: no job (a backup, a restore) stays running for ever, whatever dies.

The pattern, for any service that runs long jobs recorded as events:

1. In the command handler, :meth:`JobLeases.take` the job's lease *before* the job's start event
   is saved (the save happens atomically with the command's outcome, right after). A crash
   anywhere after that (between the save and the worker's start included) leaves a lease that
   expires.
2. While the process holds the job (waiting for a slot included), :func:`keep_renewed` renews
   the lease every third of its length.
3. When the job's terminal event is recorded, :meth:`JobLeases.release` it.
4. Every instance periodically reads :meth:`JobLeases.expired`: for each lease it does not hold
   itself, it records the job as failed (``LEASE_EXPIRED``) if the job was recorded and is not
   terminal, cleans up what the job left half-done, then releases the lease. A lease whose job
   was never recorded (the save failed) is simply released: an orphan.

**Fencing.** Each take of a lease draws a fresh fencing token. The worker holds the token
(:class:`Fence`); a renewal, and :meth:`JobLeases.check` right before each write that commits the
job's result (the manifest in the object store, the terminal event in the event store), succeed
only while the row still has this owner and token. A worker whose lease was reaped (it paused
or was cut off from the database longer than the lease) or taken anew therefore stops
(:func:`keep_renewed` calls ``on_lost``) and its commits are refused with :class:`LeaseLost`.

Leases are rows in the shared database (table ``mb_job_leases``, one per running job, keyed by
the job's kind and id), not events: renewals are not history. Optimistic concurrency on the job's
stream settles a race between a late completion and a reaper: exactly one of them is recorded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
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
    until: datetime
    detail: dict[str, Any] = field(default_factory=dict)
    """What the reaper needs to clean up after the job (e.g. where it wrote), and what the job
    holds (``"backups"``: the ids of the backups it reads, see :func:`backups_in_use`)."""


class LeaseLost(Exception):
    """The worker's lease expired, was reaped or taken over: it must stop and write nothing."""


@dataclass(frozen=True)
class Fence:
    """What a worker holds of its lease: the job, its own name and the take's fencing token."""

    job_id: UUID
    owner: str
    token: str


def lease_until(now: datetime, seconds: float) -> datetime:
    return now + timedelta(seconds=seconds)


_ENSURED: weakref.WeakSet[SqlDatabase] = weakref.WeakSet()


def ensure_table(db: SqlDatabase) -> None:
    """Create the lease table once per database handle (not on every read: the scheduler reads
    it at every tick)."""
    if db in _ENSURED:
        return
    db.execute(
        f"CREATE TABLE IF NOT EXISTS {TABLE} (kind TEXT NOT NULL, job_id TEXT NOT NULL, "
        "cluster_id TEXT NOT NULL, owner TEXT NOT NULL, lease_until TEXT NOT NULL, "
        "detail TEXT NOT NULL, PRIMARY KEY (kind, job_id))"
    )
    _add_token_column(db)
    _ENSURED.add(db)


def _add_token_column(db: SqlDatabase) -> None:
    """Leases taken before fencing have no token column: add it (their token is empty, so no
    fence of this version matches them; they are reaped as before)."""
    if db.dialect == "postgres":
        db.execute(f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS token TEXT NOT NULL DEFAULT ''")
        return
    columns = {row[1] for row in db.query(f"PRAGMA table_info({TABLE})")}
    if "token" not in columns:
        db.execute(f"ALTER TABLE {TABLE} ADD COLUMN token TEXT NOT NULL DEFAULT ''")


class JobLeases:
    """The leases of one kind of job (``"backup"``, ``"restore"``). Synchronous: call from
    worker threads (``asyncio.to_thread``) in async code."""

    def __init__(self, db: SqlDatabase, kind: str) -> None:
        self.db = db
        self.kind = kind
        ensure_table(db)

    def take(
        self,
        job_id: UUID,
        cluster_id: str,
        owner: str,
        until: datetime,
        detail: Mapping[str, Any] | None = None,
    ) -> bool:
        """Take (or, for its owner, extend) the lease of ``job_id``; False if another worker
        holds it."""
        return self.take_fenced(job_id, cluster_id, owner, until, detail) is not None

    def take_fenced(
        self,
        job_id: UUID,
        cluster_id: str,
        owner: str,
        until: datetime,
        detail: Mapping[str, Any] | None = None,
    ) -> Fence | None:
        """:meth:`take`, returning the lease's :class:`Fence` (None if another worker holds
        it). A new lease gets a fresh token; its owner extending it keeps the token."""
        self.db.execute(
            f"INSERT INTO {TABLE} (kind, job_id, cluster_id, owner, lease_until, detail, token) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (kind, job_id) DO UPDATE SET "
            f"lease_until = excluded.lease_until WHERE {TABLE}.owner = excluded.owner",
            (
                self.kind,
                str(job_id),
                cluster_id,
                owner,
                until.isoformat(),
                json.dumps(dict(detail or {})),
                uuid.uuid4().hex,
            ),
        )
        rows = self.db.query(
            f"SELECT owner, token FROM {TABLE} WHERE kind = ? AND job_id = ?",
            (self.kind, str(job_id)),
        )
        if not rows or rows[0][0] != owner:
            return None
        return Fence(job_id, owner, str(rows[0][1]))

    def take_over_expired(
        self, job_id: UUID, cluster_id: str, owner: str, until: datetime, now: datetime
    ) -> Fence | None:
        """:meth:`take_fenced`, and also take over the lease of another owner once it expired
        (before ``now``) with a fresh token: for a role one instance holds at a time (the
        active relay, :class:`~managed_backups.shared.log_follower.OneActive`), which nobody
        reaps. The takeover is a compare-and-set on the old token: of two standbys, one wins."""
        fence = self.take_fenced(job_id, cluster_id, owner, until)
        if fence is not None:
            return fence
        rows = self.db.query(
            f"SELECT owner, token, lease_until FROM {TABLE} WHERE kind = ? AND job_id = ?",
            (self.kind, str(job_id)),
        )
        if not rows or datetime.fromisoformat(rows[0][2]) >= now:
            return None
        token = uuid.uuid4().hex
        taken = self.db.query(
            f"UPDATE {TABLE} SET owner = ?, token = ?, lease_until = ? "
            "WHERE kind = ? AND job_id = ? AND owner = ? AND token = ? RETURNING job_id",
            (owner, token, until.isoformat(), self.kind, str(job_id), rows[0][0], rows[0][1]),
        )
        return Fence(job_id, owner, token) if taken else None

    def renew(self, job_id: UUID, until: datetime, fence: Fence | None = None) -> bool:
        """Extend the lease to ``until``. With a ``fence``, only while the lease is still the
        fence's (same owner and token); False otherwise: the worker lost its lease."""
        sql = f"UPDATE {TABLE} SET lease_until = ? WHERE kind = ? AND job_id = ?"
        params: tuple[str, ...] = (until.isoformat(), self.kind, str(job_id))
        if fence is None:
            self.db.execute(sql, params)
            return True
        rows = self.db.query(
            f"{sql} AND owner = ? AND token = ? RETURNING job_id",
            (*params, fence.owner, fence.token),
        )
        return bool(rows)

    def check(self, fence: Fence) -> None:
        """Refuse (:class:`LeaseLost`) a write by a worker whose lease is no longer its own:
        reaped, or taken anew (another token)."""
        rows = self.db.query(
            f"SELECT owner, token FROM {TABLE} WHERE kind = ? AND job_id = ?",
            (self.kind, str(fence.job_id)),
        )
        if not rows:
            raise LeaseLost(f"the lease of {self.kind} {fence.job_id} was reaped")
        owner, token = rows[0]
        if owner != fence.owner or token != fence.token:
            raise LeaseLost(
                f"the lease of {self.kind} {fence.job_id} was taken anew by {owner}; "
                "this worker's fencing token is stale"
            )

    def leave_to_reaper(self, job_id: UUID, now: datetime, detail: Mapping[str, Any]) -> None:
        """The job ended but left something to clean up: its lease expires now, with only
        ``detail`` (it holds nothing more, excludes no other job), and every instance's reaper
        retries the clean-up until it succeeds (``fail`` sees a job already ended)."""
        self.db.execute(
            f"UPDATE {TABLE} SET lease_until = ?, detail = ? WHERE kind = ? AND job_id = ?",
            (now.isoformat(), json.dumps(dict(detail)), self.kind, str(job_id)),
        )

    def expire(self, fence: Fence, now: datetime) -> bool:
        """Hand a job whose worker could not record its end (its database went away) to the
        reapers: its lease, while still the fence's, expires at once with its detail kept, so
        the next pass of any instance fails the job (or, ended after all, drops the lease) and
        cleans up after it. False when the lease is no longer the fence's."""
        rows = self.db.query(
            f"UPDATE {TABLE} SET lease_until = ? "
            "WHERE kind = ? AND job_id = ? AND owner = ? AND token = ? RETURNING job_id",
            (
                (now - timedelta(microseconds=1)).isoformat(),
                self.kind,
                str(fence.job_id),
                fence.owner,
                fence.token,
            ),
        )
        return bool(rows)

    def release(self, job_id: UUID, fence: Fence | None = None) -> None:
        """Drop the lease; with a ``fence``, only if it is still the fence's (a worker that lost
        its lease never drops the lease of whoever holds the job now)."""
        if fence is None:
            self.db.execute(
                f"DELETE FROM {TABLE} WHERE kind = ? AND job_id = ?", (self.kind, str(job_id))
            )
            return
        self.db.execute(
            f"DELETE FROM {TABLE} WHERE kind = ? AND job_id = ? AND owner = ? AND token = ?",
            (self.kind, str(job_id), fence.owner, fence.token),
        )

    def expired(self, now: datetime) -> list[Lease]:
        return [lease for lease in of_kind(self.db, self.kind) if lease.until < now]

    def reap(
        self,
        now: datetime,
        fail: Callable[[Lease], bool],
        cleanup: Callable[[Lease], None],
        running_here: Callable[[UUID], bool] = lambda _: False,
    ) -> int:
        """Fail and clean up every job whose lease expired (except those this process runs);
        returns how many were failed. ``fail`` returns False when the job was never recorded or
        already ended (an orphan lease). A lease is released only when both succeeded, so a
        failed cleanup is retried by the next pass."""
        reaped = 0
        for lease in self.expired(now):
            if running_here(lease.job_id):
                continue
            try:
                failed = fail(lease)
                cleanup(lease)
            except Exception:
                log.exception("reaping %s job %s failed; will retry", self.kind, lease.job_id)
                continue
            self.release(lease.job_id)
            reaped += int(failed)
        return reaped


def _leases(db: SqlDatabase, column: str, value: str) -> list[Lease]:
    ensure_table(db)
    rows = db.query(
        f"SELECT kind, job_id, cluster_id, owner, lease_until, detail FROM {TABLE} "
        f"WHERE {column} = ?",
        (value,),
    )
    return [
        Lease(UUID(j), k, c, o, datetime.fromisoformat(u), json.loads(d))
        for k, j, c, o, u, d in rows
    ]


def on_cluster(db: SqlDatabase, cluster_id: str) -> list[Lease]:
    """Every job (of any kind) holding a lease on ``cluster_id``."""
    return _leases(db, "cluster_id", cluster_id)


def of_kind(db: SqlDatabase, kind: str) -> list[Lease]:
    """Every lease of ``kind`` (expired or not): the jobs of that kind queued or running."""
    return _leases(db, "kind", kind)


ORGANIZATION = "organization"
"""The lease detail key naming the organization of the job's cluster (what bounds jobs per
organization count by)."""

EXCLUSIVE = "exclusive"
"""The lease detail key of a job no other job of its cluster may run beside (a CLUSTER restore:
no backup and no other restore of the cluster while it runs)."""


def clusters_held_exclusively(db: SqlDatabase) -> set[str]:
    """The clusters an exclusive job holds now (one query, for the scheduler's tick)."""
    ensure_table(db)
    rows = db.query(f"SELECT cluster_id, detail FROM {TABLE}")
    return {str(c) for c, d in rows if json.loads(d).get(EXCLUSIVE)}


def exclusive_job(db: SqlDatabase, cluster_id: str) -> Lease | None:
    """The job that holds ``cluster_id`` exclusively, if any."""
    return next((job for job in on_cluster(db, cluster_id) if job.detail.get(EXCLUSIVE)), None)


async def keep_renewed(
    leases: JobLeases,
    job_id: UUID,
    seconds: float,
    now: Callable[[], datetime],
    fence: Fence | None = None,
    on_lost: Callable[[], None] | None = None,
    every: float | None = None,
    on_renewed: Callable[[], None] | None = None,
) -> None:
    """Renew ``job_id``'s lease every third of ``seconds`` (or every ``every`` seconds, if
    sooner) until cancelled (run it as a task for as long as the process holds the job), and
    call ``on_renewed`` (in a worker thread: e.g. record progress) after each renewal. With a
    ``fence``: once a renewal finds the lease lost (expired, reaped, taken over), call
    ``on_lost`` (stop the job) and return."""
    interval = seconds / 3 if every is None else min(every, seconds / 3)
    while True:
        await asyncio.sleep(interval)
        try:
            held = await asyncio.to_thread(leases.renew, job_id, lease_until(now(), seconds), fence)
            if held and on_renewed is not None:
                await asyncio.to_thread(on_renewed)
        except Exception:
            log.exception(
                "renewing the lease of %s %s (or its progress) failed; will retry",
                leases.kind,
                job_id,
            )
            continue
        if not held:
            if on_lost is None:
                log.warning("%s %s lost its lease", leases.kind, job_id)
            else:
                on_lost()  # it says so, and stops the job
            return


HOLDS = "backups"
"""The lease detail key listing the ids of the backups a job reads (a restore: every backup of its
chain). Retention deletes no backup a lease still names."""
HOLDS_OF = "backups_of"
"""The lease detail key naming the cluster whose backups :data:`HOLDS` lists (a backup id is
unique only within its cluster; a cross-cluster restore's lease is on its destination). Leases
without it hold backups of their own cluster."""


def holding(backup_ids: Sequence[str], cluster_id: str | None = None) -> dict[str, Any]:
    """The lease detail of a job that reads ``backup_ids`` of ``cluster_id``."""
    detail: dict[str, Any] = {HOLDS: [str(b) for b in backup_ids]}
    if cluster_id is not None:
        detail[HOLDS_OF] = cluster_id
    return detail


def held_backups(db: SqlDatabase) -> dict[str, set[str]]:
    """Per cluster, the ids of its backups that jobs hold through their leases (see
    :func:`backups_in_use`)."""
    ensure_table(db)
    held: dict[str, set[str]] = {}
    for cluster_id, detail in db.query(f"SELECT cluster_id, detail FROM {TABLE}"):
        parsed = json.loads(detail)
        ids = parsed.get(HOLDS, [])
        if ids:
            held.setdefault(str(parsed.get(HOLDS_OF, cluster_id)), set()).update(map(str, ids))
    return held


def backups_in_use(db: SqlDatabase, cluster_id: str | None = None) -> set[str]:
    """Ids of the backups (of ``cluster_id``, or of any cluster) that jobs hold through their leases (of any kind, expired or not: a lease
    is released only once its job is recorded as ended or its reaper has cleaned up after it).

    The handshake between a job that reads a chain and retention, which deletes chains: the job
    takes its lease naming the backups *before* its start event is saved, then checks that none
    of them is expired; retention records the expiry first, then reads this, and deletes only
    what no lease names. Either the job sees the expiry, or retention sees the hold."""
    held = held_backups(db)
    if cluster_id is not None:
        return held.get(cluster_id, set())
    return set().union(*held.values())


SWEEP = "sweep"
"""The lease kind of retention's leftover sweep of one chain (its job id is the chain id, its
detail names the chain)."""
BACKUP = "backup"
"""The lease kind of a running backup (its detail names the chain it writes into)."""
VERIFY = "verify"
"""The lease kind of a running verify of a backup (its detail holds the backup it reads)."""


def _names_chain(lease: Lease, chain_id: str) -> bool:
    return str(lease.detail.get("chain_id")) == chain_id


def backup_writing_chain(db: SqlDatabase, cluster_id: str, chain_id: str) -> Lease | None:
    """A backup lease (expired or not: it is released only once the backup is recorded as
    ended) on ``chain_id``, if any."""
    return next(
        (j for j in on_cluster(db, cluster_id) if j.kind == BACKUP and _names_chain(j, chain_id)),
        None,
    )


def sweep_of_chain(db: SqlDatabase, cluster_id: str, chain_id: str, now: datetime) -> Lease | None:
    """The unexpired sweep lease on ``chain_id``, if any.

    The handshake between retention's sweep of a chain's leftovers and a backup writing into
    that chain (a chunk the backup finds already stored it only references, so the sweep must
    never delete under it): the backup takes its lease, then waits while this returns a lease
    before it reads the chain; the sweep takes its lease, then checks
    :func:`backup_writing_chain` and backs off if it finds one. Either the backup sees the
    sweep (and waits for its release), or the sweep sees the backup (and leaves the chain to a
    later pass). An expired sweep lease (a retention worker that died mid-sweep) does not hold
    a backup back."""
    return next(
        (
            j
            for j in on_cluster(db, cluster_id)
            if j.kind == SWEEP and _names_chain(j, chain_id) and j.until >= now
        ),
        None,
    )
