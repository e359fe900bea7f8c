"""Retention: expire chains by the rules of ``shared.domain.backup_lifecycle``, then delete them.

A pass (:meth:`Retention.enforce`, for one cluster or all) guarantees, at the time it reads from
the system clock (simulated or not):

1. every COMPLETE backup whose chain has expired (:func:`chain_expires_at`) is recorded as
   ``BackupExpired``, the chain's backups atomically, *before* anything is deleted;
2. then, for each expired chain (and each chain whose full backup failed: nothing in it can be
   restored), once no backup of it is running and no job lease holds any of its backups
   (:func:`backups_in_use`: a running restore), its objects (the chain's prefix in its region
   store) are deleted, then ``BackupDeleted`` is recorded on each of its backups (the full
   carries the objects and bytes freed);
3. a pass killed anywhere leaves expired-but-not-deleted chains, which the next pass deletes:
   deleting is idempotent (a missing object is ignored), so nothing is left orphaned;
4. before that, the leftovers of failed incrementals in live chains are swept
   (:mod:`.leftovers`: the objects no manifest of the chain still needs).

Object stores are written once and never rewritten: these deletes are their only mutation.

Which backups exist is read from :class:`RetentionIndex`, a table that follows the event store's
log (its position saved in the same transaction as the rows it changes); what to do is decided
on the aggregates themselves, so a lagging index never makes a pass act twice.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID

from eventsourcing.domain import Aggregate

from managed_backups.contracts.enums import BackupStatus
from managed_backups.services.retention.leftovers import sweep_leftovers
from managed_backups.shared.dataplane.manifest import chain_prefix
from managed_backups.shared.dataplane.objectstore import ObjectInfo, ObjectStore, open_store
from managed_backups.shared.domain.backup import Backup, load_backup
from managed_backups.shared.domain.backup_lifecycle import (
    STATUS_AFTER,
    chain_expires_at,
    deleted_cluster_until,
    newest_restorable_chain,
)
from managed_backups.shared.domain.cluster import Cluster
from managed_backups.shared.eventstore import EventStore, IntegrityError, event_topics
from managed_backups.shared.jobs import backups_in_use
from managed_backups.shared.sqldb import SqlDatabase

log = logging.getLogger(__name__)
BY = "retention"
FOLLOWED = event_topics(
    Backup.BackupStarted,
    Backup.BackupCompleted,
    Backup.BackupFailed,
    Backup.BackupExpired,
    Backup.BackupDeleted,
    Cluster.ClusterDeleted,
)
P = "mb_retention_"
StoreUrlFor = Callable[[str], str]
"""The object store URL of a region."""


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


@dataclass(frozen=True)
class IndexedBackup:
    backup_id: str
    chain_id: str
    is_full: bool
    status: str
    data_from: datetime | None
    expires_at: datetime | None
    region: str


class RetentionIndex:
    """Every backup not yet deleted, per cluster, and the deleted clusters' keep-until times."""

    def __init__(self, store: EventStore, db: SqlDatabase) -> None:
        self.store = store
        self.db = db
        with db.transaction() as cursor:
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {P}position (name TEXT PRIMARY KEY, "
                "position BIGINT NOT NULL)"
            )
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {P}backups (backup_id TEXT PRIMARY KEY, "
                "cluster_id TEXT NOT NULL, chain_id TEXT NOT NULL, is_full INTEGER NOT NULL, "
                "status TEXT NOT NULL, data_from TEXT, expires_at TEXT, region TEXT NOT NULL)"
            )
            cursor.execute(
                f"CREATE INDEX IF NOT EXISTS {P}backups_by_cluster ON {P}backups (cluster_id)"
            )
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {P}clusters (cluster_id TEXT PRIMARY KEY, "
                "deleted_until TEXT NOT NULL)"
            )

    def position(self) -> int:
        rows = self.db.query(f"SELECT position FROM {P}position WHERE name = 'index'")
        return int(rows[0][0]) if rows else 0

    def follow_once(self, limit: int = 1000) -> int:
        rows = self.store.notifications(self.position(), limit, FOLLOWED)
        if not rows:
            return 0
        with self.db.transaction() as cursor:
            for row in rows:
                event = self.store.domain_event(row)
                name = type(event).__name__
                fields = event.__dict__
                if name == "ClusterDeleted":
                    until = deleted_cluster_until(fields["at"], fields["retention_days"])
                    cursor.execute(
                        f"INSERT INTO {P}clusters (cluster_id, deleted_until) VALUES (?, ?) "
                        "ON CONFLICT (cluster_id) DO NOTHING",
                        (fields["cluster_id"], _ts(until)),
                    )
                elif name == "BackupStarted":
                    cursor.execute(
                        f"INSERT INTO {P}backups (backup_id, cluster_id, chain_id, is_full, "
                        "status, data_from, expires_at, region) VALUES (?, ?, ?, ?, ?, NULL, "
                        "NULL, ?) ON CONFLICT (backup_id) DO NOTHING",
                        (
                            str(fields["backup_id"]),
                            fields["cluster_id"],
                            str(fields["chain_id"]),
                            int(fields["backup_type"] == "FULL"),
                            STATUS_AFTER[name],
                            fields["region"],
                        ),
                    )
                elif name == "BackupDeleted":
                    cursor.execute(
                        f"DELETE FROM {P}backups WHERE backup_id = ?", (str(fields["backup_id"]),)
                    )
                elif name == "BackupCompleted":
                    cursor.execute(
                        f"UPDATE {P}backups SET status = ?, data_from = ?, expires_at = ? "
                        "WHERE backup_id = ?",
                        (
                            STATUS_AFTER[name],
                            _ts(fields["as_of_time"]),
                            _ts(fields["expires_at"]),
                            str(fields["backup_id"]),
                        ),
                    )
                else:
                    cursor.execute(
                        f"UPDATE {P}backups SET status = ? WHERE backup_id = ?",
                        (STATUS_AFTER[name], str(fields["backup_id"])),
                    )
            cursor.execute(
                f"INSERT INTO {P}position (name, position) VALUES ('index', ?) "
                "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                (rows[-1].id,),
            )
        return len(rows)

    def catch_up(self) -> None:
        while self.follow_once() > 0:
            pass

    def cluster_ids(self) -> list[str]:
        rows = self.db.query(f"SELECT DISTINCT cluster_id FROM {P}backups ORDER BY cluster_id")
        return [str(r[0]) for r in rows]

    def backups(self, cluster_id: str) -> list[IndexedBackup]:
        rows = self.db.query(
            f"SELECT backup_id, chain_id, is_full, status, data_from, expires_at, region "
            f"FROM {P}backups WHERE cluster_id = ?",
            (cluster_id,),
        )
        return [
            IndexedBackup(str(b), str(c), bool(f), str(s), _dt(d), _dt(e), str(r))
            for b, c, f, s, d, e, r in rows
        ]

    def deleted_until(self, cluster_id: str) -> datetime | None:
        rows = self.db.query(
            f"SELECT deleted_until FROM {P}clusters WHERE cluster_id = ?", (cluster_id,)
        )
        return _dt(rows[0][0]) if rows else None


@dataclass
class PassReport:
    clusters: int = 0
    backups_expired: int = 0
    chains_deleted: int = 0
    objects_deleted: int = 0
    bytes_freed: int = 0
    chains_held: int = 0
    """Expired chains left for a later pass: a running job (a restore) holds them."""
    leftovers_swept: int = 0
    """Failed backups of live chains whose leftovers were swept (:mod:`.leftovers`)."""
    errors: list[str] = field(default_factory=list)


def expiry_reason(full: Backup, kept: bool, deleted_until: datetime | None) -> str:
    if deleted_until is not None and (
        kept or full.expires_at is None or deleted_until <= full.expires_at
    ):
        return (
            f"the cluster was deleted: its backups are kept for its configured retention, "
            f"until {deleted_until.isoformat()}"
        )
    return (
        f"its full backup {full.backup_id} reached the retention of {full.retention_days} days "
        "it was taken with"
    )


class Retention:
    """One retention worker: applies the rules, records the events, deletes the objects."""

    def __init__(
        self, store: EventStore, db: SqlDatabase, store_url_for: StoreUrlFor, name: str = BY
    ) -> None:
        self.store = store
        self.db = db
        self.index = RetentionIndex(store, db)
        self.store_url_for = store_url_for
        self.name = name
        self._stores: dict[str, ObjectStore] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="retention-list")

    def object_store(self, region: str) -> ObjectStore:
        url = self.store_url_for(region)
        with self._lock:
            if url not in self._stores:
                self._stores[url] = open_store(url)
            return self._stores[url]

    def enforce(self, now: datetime, cluster_id: str | None = None) -> PassReport:
        """One pass over ``cluster_id`` (None: every cluster) at ``now``."""
        self.index.catch_up()
        report = PassReport()
        clusters = self.index.cluster_ids() if cluster_id is None else [cluster_id]
        for cid in clusters:
            report.clusters += 1
            try:
                self._enforce_cluster(cid, now, report)
            except Exception as exc:  # one cluster's trouble never stops the others
                log.exception("retention of cluster %s failed; the next pass retries", cid)
                report.errors.append(f"{cid}: {type(exc).__name__}: {exc}"[:500])
        return report

    def _enforce_cluster(self, cluster_id: str, now: datetime, report: PassReport) -> None:
        """Expire the cluster's expired chains (one atomic save), then delete the objects of
        those no job holds (batched deletes) and record it (one atomic save)."""
        backups = self.index.backups(cluster_id)
        if not backups:
            return
        sweep_leftovers(self, cluster_id, backups, now, report)
        chains: dict[str, list[IndexedBackup]] = defaultdict(list)
        for b in backups:
            chains[b.chain_id].append(b)
        kept = newest_restorable_chain(
            (b.backup_id, b.status, b.data_from) for b in backups if b.is_full
        )
        deleted_until = self.index.deleted_until(cluster_id)
        doomed: dict[str, str] = {}  # chain id -> why it goes
        expiring: dict[str, datetime] = {}
        for chain_id, members in chains.items():
            full = next((b for b in members if b.backup_id == chain_id), None)
            if full is None or any(b.status == BackupStatus.IN_PROGRESS.value for b in members):
                continue  # a running backup's chain (or one whose start the index lacks)
            if full.status == BackupStatus.FAILED.value:
                doomed[chain_id] = "its full backup failed: nothing to restore"
            elif full.status == BackupStatus.EXPIRED.value:
                doomed[chain_id] = "its chain expired (deletion resumed)"
            elif full.status == BackupStatus.COMPLETE.value:
                expires = chain_expires_at(full.expires_at, chain_id == kept, deleted_until)
                if expires is not None and expires <= now:
                    expiring[chain_id] = expires
        if not doomed and not expiring:
            return
        loaded = {
            str(b.backup_id): b
            for b in self._load(cluster_id, (m for c in (*doomed, *expiring) for m in chains[c]))
        }
        to_expire: list[Aggregate] = []
        for chain_id, expires in expiring.items():
            full_aggregate = loaded[chain_id]
            reason = expiry_reason(full_aggregate, chain_id == kept, deleted_until)
            for member in chains[chain_id]:
                backup = loaded.get(member.backup_id)
                if backup is not None and backup.status == BackupStatus.COMPLETE.value:
                    backup.expire(reason, expires, at=now, by=self.name)
                    to_expire.append(backup)
            doomed[chain_id] = reason
        if to_expire:
            try:
                self.store.save_all(*to_expire)
            except IntegrityError:  # another worker acted on this cluster: the next pass goes on
                return
            report.backups_expired += len(to_expire)
        # The handshake with restores: expiry recorded first, then the holds are read.
        held = backups_in_use(self.db, cluster_id)
        free = [c for c in doomed if not any(m.backup_id in held for m in chains[c])]
        report.chains_held += len(doomed) - len(free)
        if not free:
            return
        listings = dict(
            zip(
                free,
                self._pool.map(lambda c: self._list_chain(cluster_id, c, chains[c]), free),
                strict=True,
            )
        )
        by_region: dict[str, list[str]] = defaultdict(list)
        for chain_id in free:
            region, listed = listings[chain_id]
            by_region[region] += [info.key for info in listed]
        for region, keys in by_region.items():
            self.object_store(region).delete(keys)
        to_record: list[Aggregate] = []
        for chain_id in free:
            _, listed = listings[chain_id]
            for member in chains[chain_id]:
                backup = loaded.get(member.backup_id)
                if backup is None or backup.deleted_at is not None:
                    continue
                is_full = member.backup_id == chain_id
                backup.record_deleted(
                    objects_deleted=len(listed) if is_full else 0,
                    bytes_freed=sum(i.size for i in listed) if is_full else 0,
                    reason=doomed[chain_id],
                    at=now,
                    by=self.name,
                )
                to_record.append(backup)
        try:
            self.store.save_all(*to_record)
        except IntegrityError:
            return  # another worker recorded it
        report.chains_deleted += len(free)
        for _, listed in listings.values():
            report.objects_deleted += len(listed)
            report.bytes_freed += sum(i.size for i in listed)

    def _list_chain(
        self, cluster_id: str, chain_id: str, members: list[IndexedBackup]
    ) -> tuple[str, list[ObjectInfo]]:
        region = next(b.region for b in members if b.backup_id == chain_id)
        return region, list(self.object_store(region).list(chain_prefix(cluster_id, chain_id)))

    def _load(self, cluster_id: str, members: Iterable[IndexedBackup]) -> list[Backup]:
        loaded = [load_backup(self.store, cluster_id, UUID(b.backup_id)) for b in members]
        return [b for b in loaded if b is not None]
