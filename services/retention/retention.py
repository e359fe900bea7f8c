"""Retention: expire chains by the rules of ``shared.domain.backup_lifecycle``, then delete them.

A pass (:meth:`Retention.enforce`, for one cluster or all) guarantees, at the time it reads from
the system clock (simulated or not):

1. every COMPLETE backup whose chain has expired (:func:`chain_expires_at`) is recorded as
   ``BackupExpired``, the chain's backups atomically, *before* anything is deleted;
2. then, for each expired chain (and each chain whose full backup failed: nothing in it can be
   restored), once no backup of it is running and no job lease holds any of its backups
   (:func:`~managed_backups.shared.jobs.held_backups`: a running restore), its objects (the chain's prefix in its region
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
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.domain import Aggregate, DomainEventProtocol

from managed_backups.contracts.enums import BackupStatus
from managed_backups.services.retention.leftovers import sweep_leftovers
from managed_backups.shared.dataplane.manifest import chain_prefix
from managed_backups.shared.dataplane.objectstore import (
    DELETE_BATCH,
    ObjectInfo,
    ObjectStore,
    ObjectStoreError,
    open_store,
)
from managed_backups.shared.domain.backup import Backup, load_backup
from managed_backups.shared.domain.backup_lifecycle import (
    STATUS_AFTER,
    chain_expires_at,
    deleted_cluster_until,
    newest_restorable_chain,
)
from managed_backups.shared.domain.cluster import Cluster
from managed_backups.shared.domain.connection_secret import (
    ConnectionSecret,
    a_deleted_clusters_secret_goes_when_its_backups_do,
)
from managed_backups.shared.domain.ids import cluster_aggregate_id
from managed_backups.shared.encryption import ClusterEncryption
from managed_backups.shared.eventstore import EventStore, IntegrityError, event_topics
from managed_backups.shared.faults import FaultPoint, no_fault
from managed_backups.shared.jobs import held_backups
from managed_backups.shared.log_follower import LogFollower, PositionRow
from managed_backups.shared.secrets import ConnectionSecrets
from managed_backups.shared.sqldb import Cursor, SqlDatabase

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
INDEX_POSITION = PositionRow(f"{P}position", "index")
"""The index's position in the log (its table also holds the index's shape, row ``schema``)."""
INDEX_VERSION = 2
"""The index's shape. 2: backups keyed by (cluster, backup id), a backup id being unique only
within its cluster. An index of an older shape is dropped when opened and rebuilt from the log."""
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
        self.follower = LogFollower(store, db, INDEX_POSITION, FOLLOWED, batch=1000)
        with db.transaction() as cursor:
            INDEX_POSITION.create_table(cursor)
            cursor.execute(f"SELECT position FROM {P}position WHERE name = 'schema'")
            row = cursor.fetchone()
            if row is None or int(row[0]) < INDEX_VERSION:
                for table in ("backups", "clusters"):
                    cursor.execute(f"DROP TABLE IF EXISTS {P}{table}")
                cursor.execute(
                    f"DELETE FROM {P}position WHERE name = 'index'"
                )  # rebuilt from the log
                cursor.execute(
                    f"INSERT INTO {P}position (name, position) VALUES ('schema', ?) "
                    "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                    (INDEX_VERSION,),
                )
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {P}backups (backup_id TEXT NOT NULL, "
                "cluster_id TEXT NOT NULL, chain_id TEXT NOT NULL, is_full INTEGER NOT NULL, "
                "status TEXT NOT NULL, data_from TEXT, expires_at TEXT, region TEXT NOT NULL, "
                "PRIMARY KEY (cluster_id, backup_id))"
            )
            cursor.execute(
                f"CREATE INDEX IF NOT EXISTS {P}backups_by_cluster ON {P}backups (cluster_id)"
            )
            cursor.execute(
                f"CREATE INDEX IF NOT EXISTS {P}backups_by_status ON {P}backups "
                "(status, expires_at)"
            )
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {P}clusters (cluster_id TEXT PRIMARY KEY, "
                "deleted_until TEXT NOT NULL)"
            )

    def position(self) -> int:
        return self.follower.position()

    def follow_once(self) -> int:
        return self.follower.follow_once(self._apply, self.store.domain_event)

    def catch_up(self) -> None:
        self.follower.catch_up(self._apply, self.store.domain_event)

    def _apply(self, cursor: Cursor, events: list[DomainEventProtocol[UUID]]) -> None:
        """Apply followed events to the index, in the transaction that moves its position."""
        for event in events:
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
                    "NULL, ?) ON CONFLICT (cluster_id, backup_id) DO NOTHING",
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
                    f"DELETE FROM {P}backups WHERE cluster_id = ? AND backup_id = ?",
                    (fields["cluster_id"], str(fields["backup_id"])),
                )
            elif name == "BackupCompleted":
                cursor.execute(
                    f"UPDATE {P}backups SET status = ?, data_from = ?, expires_at = ? "
                    "WHERE cluster_id = ? AND backup_id = ?",
                    (
                        STATUS_AFTER[name],
                        _ts(fields["as_of_time"]),
                        _ts(fields["expires_at"]),
                        fields["cluster_id"],
                        str(fields["backup_id"]),
                    ),
                )
            else:
                cursor.execute(
                    f"UPDATE {P}backups SET status = ? WHERE cluster_id = ? AND backup_id = ?",
                    (STATUS_AFTER[name], fields["cluster_id"], str(fields["backup_id"])),
                )

    def cluster_count(self) -> int:
        return int(self.db.query(f"SELECT COUNT(DISTINCT cluster_id) FROM {P}backups")[0][0])

    def clusters_with_work(self, now: datetime) -> list[str]:
        """The clusters a pass at ``now`` may have something to do for: a superset of those
        with a chain to expire or delete (the pass decides on each from its backups).

        A chain can only go when its full failed or expired (deletion pending or resumed), a
        backup of it failed (leftovers), its full's own expiry has passed (the newest
        restorable chain is kept past it: it stays a candidate, and the pass keeps it), or the
        cluster was deleted and its keep-until time has passed. Expiry times are stored as UTC
        ISO texts, which compare in time order."""
        at = _ts(now)
        rows = self.db.query(
            f"SELECT DISTINCT cluster_id FROM {P}backups WHERE status IN (?, ?) "
            f"OR (is_full = 1 AND status = ? AND expires_at <= ?) "
            f"UNION SELECT cluster_id FROM {P}clusters WHERE deleted_until <= ? ORDER BY 1",
            (
                BackupStatus.FAILED.value,
                BackupStatus.EXPIRED.value,
                BackupStatus.COMPLETE.value,
                at,
                at,
            ),
        )
        return [str(r[0]) for r in rows]

    def clusters_with_backups(self) -> list[str]:
        """Every cluster with a backup not yet deleted (what a rotation of all re-wraps)."""
        rows = self.db.query(f"SELECT DISTINCT cluster_id FROM {P}backups ORDER BY 1")
        return [str(r[0]) for r in rows]

    def backups_of(self, cluster_ids: Sequence[str]) -> dict[str, list[IndexedBackup]]:
        """The indexed backups of each of ``cluster_ids`` (one query)."""
        if not cluster_ids:
            return {}
        marks = ", ".join("?" for _ in cluster_ids)
        rows = self.db.query(
            f"SELECT cluster_id, backup_id, chain_id, is_full, status, data_from, expires_at, "
            f"region FROM {P}backups WHERE cluster_id IN ({marks})",
            tuple(cluster_ids),
        )
        found: dict[str, list[IndexedBackup]] = defaultdict(list)
        for cid, b, c, f, s, d, e, r in rows:
            found[str(cid)].append(
                IndexedBackup(str(b), str(c), bool(f), str(s), _dt(d), _dt(e), str(r))
            )
        return found

    def deleted_clusters(self) -> dict[str, datetime]:
        """Every deleted cluster's keep-until time."""
        rows = self.db.query(f"SELECT cluster_id, deleted_until FROM {P}clusters")
        return {str(c): datetime.fromisoformat(d) for c, d in rows}

    def deleted_until_of(self, cluster_ids: Sequence[str]) -> dict[str, datetime]:
        """The keep-until time of each deleted cluster among ``cluster_ids`` (one query)."""
        if not cluster_ids:
            return {}
        marks = ", ".join("?" for _ in cluster_ids)
        rows = self.db.query(
            f"SELECT cluster_id, deleted_until FROM {P}clusters WHERE cluster_id IN ({marks})",
            tuple(cluster_ids),
        )
        return {str(c): datetime.fromisoformat(d) for c, d in rows}


@dataclass
class PassReport:
    clusters: int = 0
    """Clusters with backups in the index (a pass for every cluster) or the one asked for."""
    clusters_with_work: int = 0
    """Clusters the pass looked at in detail (:meth:`RetentionIndex.clusters_with_work`)."""
    backups_expired: int = 0
    chains_deleted: int = 0
    objects_deleted: int = 0
    bytes_freed: int = 0
    chains_held: int = 0
    """Expired chains left for a later pass: a running job (a restore) holds them."""
    leftovers_swept: int = 0
    """Failed backups of live chains whose leftovers were swept (:mod:`.leftovers`)."""
    secrets_removed: int = 0
    """Deleted clusters whose password left the secret store (their backups' time ended)."""
    errors: list[str] = field(default_factory=list)

    def error(self, cluster_id: str, exc: BaseException) -> None:
        self.errors.append(f"{cluster_id}: {type(exc).__name__}: {exc}"[:500])


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


@dataclass
class ClusterPlan:
    """What a pass does to one cluster: the chains that go (and why), their aggregates with the
    expiries applied in memory, then the chains no job holds and their objects."""

    cluster_id: str
    chains: dict[str, list[IndexedBackup]]
    doomed: dict[str, str]
    """Chain id -> why it goes."""
    loaded: dict[str, Backup]
    to_expire: list[Backup]
    free: list[str] = field(default_factory=list)
    listings: dict[str, tuple[str, list[ObjectInfo]]] = field(default_factory=dict)


GROUP_SIZE = 500
"""Clusters handled together: one query for their backups, one transaction for their expiries,
one for their deletions, deletes batched across them. Bounds a pass's memory."""
WORKERS = 16
"""Threads for loading aggregates and for the object store's requests (I/O bound)."""


class Retention:
    """One retention worker: applies the rules, records the events, deletes the objects.

    A pass goes over the clusters with work only (:meth:`RetentionIndex.clusters_with_work`),
    :data:`GROUP_SIZE` at a time: the plans of a group are made in parallel, their expiries saved
    in one transaction, the holds read once, the chains listed in parallel, their objects deleted
    in batches across the group, and the deletions saved in one transaction. If a group's save
    meets another worker's write (an :class:`IntegrityError`), its clusters are redone one by one
    from the store, so one conflict costs one cluster, not the group."""

    def __init__(
        self,
        store: EventStore,
        db: SqlDatabase,
        store_url_for: StoreUrlFor,
        name: str = BY,
        secrets: ConnectionSecrets | None = None,
        *,
        encryption: ClusterEncryption | None = None,
        fault_point: FaultPoint = no_fault,
    ) -> None:
        self.store = store
        self.fault_point = fault_point
        self.db = db
        self.secrets = secrets
        """The secret store, whose deleted clusters' passwords a pass removes (None: not this
        worker's concern)."""
        self.encryption = encryption
        """The clusters' keys, to read encrypted manifests (the leftover sweep, rotation);
        ``None``: the store's objects as they are (deleting chains needs no key)."""
        self.index = RetentionIndex(store, db)
        self.store_url_for = store_url_for
        self.name = name
        self._stores: dict[str, ObjectStore] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="retention")

    def object_store(self, region: str) -> ObjectStore:
        url = self.store_url_for(region)
        with self._lock:
            if url not in self._stores:
                self._stores[url] = open_store(url)
            return self._stores[url]

    def cluster_store(self, cluster_id: str, region: str) -> ObjectStore:
        """The region's store as ``cluster_id`` reads it (sealed for it: encryption at rest)."""
        objects = self.object_store(region)
        if self.encryption is None:
            return objects
        cluster = self.store.get_or_none(cluster_aggregate_id(cluster_id), Cluster)
        if cluster is None:
            raise ObjectStoreError(f"cluster {cluster_id} is not registered: no keys for it")
        return self.encryption.seal(objects, cluster)

    def enforce(self, now: datetime, cluster_id: str | None = None) -> PassReport:
        """One pass over ``cluster_id`` (None: every cluster) at ``now``."""
        self.index.catch_up()
        report = PassReport()
        if cluster_id is None:
            report.clusters = self.index.cluster_count()
            candidates = self.index.clusters_with_work(now)
        else:
            report.clusters = 1
            candidates = [cluster_id]
        report.clusters_with_work = len(candidates)
        for start in range(0, len(candidates), GROUP_SIZE):
            group = candidates[start : start + GROUP_SIZE]
            try:
                self._enforce_group(group, now, report)
            except Exception as exc:  # one group's trouble never stops the others
                log.exception("retention of clusters %s.. failed; the next pass retries", group[0])
                report.error(group[0], exc)
        try:
            self._remove_deleted_clusters_secrets(now, cluster_id, report)
        except Exception as exc:
            log.exception("removing deleted clusters' secrets failed; the next pass retries")
            report.error("secrets", exc)
        return report

    def _remove_deleted_clusters_secrets(
        self, now: datetime, cluster_id: str | None, report: PassReport
    ) -> None:
        """The rule ``a_deleted_clusters_secret_goes_when_its_backups_do``: the removal is
        recorded on the cluster's audit trail first (never the value), then the secret goes; a
        worker stopped between the two removes it on its next pass."""
        if self.secrets is None:
            return
        with_secret = self.secrets.clusters()
        for cid, until in self.index.deleted_clusters().items():
            if cid not in with_secret or (cluster_id is not None and cid != cluster_id):
                continue
            if not a_deleted_clusters_secret_goes_when_its_backups_do(until, now):
                continue
            audit = self.store.get_or_none(ConnectionSecret.create_id(cid), ConnectionSecret)
            if audit is not None and not audit.removed:
                reason = (
                    f"cluster {cid} was deleted and its backups were kept until "
                    f"{until.isoformat()}: its password is not needed any more"
                )
                audit.remove(reason, at=now, by=self.name)
                try:
                    self.store.save_all(audit)
                except IntegrityError:  # changed meanwhile: the next pass decides again
                    continue
            self.secrets.delete(cid)
            report.secrets_removed += 1

    def _enforce_group(
        self, cluster_ids: Sequence[str], now: datetime, report: PassReport, alone: bool = False
    ) -> None:
        """Expire the group's expired chains (one atomic save), then delete the objects of those
        no job holds (batched deletes) and record it (one atomic save). ``alone``: a group of
        one redone after a conflict (another conflict leaves the cluster to the next pass)."""
        indexed = self.index.backups_of(cluster_ids)
        deleted = self.index.deleted_until_of(cluster_ids)
        if not alone:  # failed incrementals' leftovers in live chains (rare: one by one)
            for cid in cluster_ids:
                if indexed.get(cid):
                    swept = _attempt(sweep_leftovers, self, cid, indexed[cid], now, report)
                    if isinstance(swept, BaseException):
                        report.error(cid, swept)
        plans: list[ClusterPlan] = []
        for cid, outcome in zip(
            cluster_ids,
            self._pool.map(
                lambda c: _attempt(self._plan, c, indexed.get(c, []), deleted.get(c), now),
                cluster_ids,
            ),
            strict=True,
        ):
            if isinstance(outcome, BaseException):
                report.error(cid, outcome)
            elif outcome is not None:
                plans.append(outcome)
        if not plans:
            return
        to_expire: list[Aggregate] = [b for p in plans for b in p.to_expire]
        if to_expire:
            try:
                self.store.save_all(*to_expire)
            except IntegrityError:  # another worker acted on one of them
                if not alone:
                    self._one_by_one(plans, now, report)
                return
            report.backups_expired += len(to_expire)
        # The handshake with restores: expiry recorded first, then the holds are read.
        holds = held_backups(self.db)
        for plan in plans:
            held = holds.get(plan.cluster_id, set())
            plan.free = [
                c for c in plan.doomed if not any(m.backup_id in held for m in plan.chains[c])
            ]
            report.chains_held += len(plan.doomed) - len(plan.free)
        listed = [(p, c) for p in plans for c in p.free]
        failed: set[str] = set()
        for (plan, chain_id), listing in zip(
            listed, self._pool.map(lambda pc: _attempt(self._list_chain, *pc), listed), strict=True
        ):
            if isinstance(listing, BaseException):
                report.error(plan.cluster_id, listing)
                failed.add(plan.cluster_id)
            else:
                plan.listings[chain_id] = listing
        plans = [p for p in plans if p.free and p.cluster_id not in failed]
        failed_regions = self._delete(plans, report)
        to_record: list[Aggregate] = []
        recorded: list[ClusterPlan] = []
        for plan in plans:
            if any(region in failed_regions for region, _ in plan.listings.values()):
                continue  # its objects may still be there: the next pass resumes
            to_record += self._record_deleted(plan, now)
            recorded.append(plan)
        if not to_record:
            return
        try:
            self.store.save_all(*to_record)
        except IntegrityError:  # another worker recorded some: redo each from the store
            if not alone:
                self._one_by_one(recorded, now, report)
            return
        for plan in recorded:
            report.chains_deleted += len(plan.free)
            for _, objects in plan.listings.values():
                report.objects_deleted += len(objects)
                report.bytes_freed += sum(i.size for i in objects)

    def _one_by_one(self, plans: Iterable[ClusterPlan], now: datetime, report: PassReport) -> None:
        for plan in plans:
            self._enforce_group([plan.cluster_id], now, report, alone=True)

    def _plan(
        self,
        cluster_id: str,
        backups: list[IndexedBackup],
        deleted_until: datetime | None,
        now: datetime,
    ) -> ClusterPlan | None:
        """Decide which of the cluster's chains go, load them and apply the expiries."""
        if not backups:
            return None
        chains: dict[str, list[IndexedBackup]] = defaultdict(list)
        for b in backups:
            chains[b.chain_id].append(b)
        kept = newest_restorable_chain(
            (b.backup_id, b.status, b.data_from) for b in backups if b.is_full
        )
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
            return None
        loaded = {
            str(b.backup_id): b
            for b in self._load(cluster_id, (m for c in (*doomed, *expiring) for m in chains[c]))
        }
        for chain_id in [*doomed, *expiring]:
            stored = [loaded[m.backup_id] for m in chains[chain_id] if m.backup_id in loaded]
            if stored and all(b.deleted_at is not None for b in stored):
                doomed.pop(chain_id, None)  # the index lags: another worker deleted it
                expiring.pop(chain_id, None)
        if not doomed and not expiring:
            return None
        to_expire: list[Backup] = []
        for chain_id, expires in expiring.items():
            full_aggregate = loaded[chain_id]
            reason = expiry_reason(full_aggregate, chain_id == kept, deleted_until)
            for member in chains[chain_id]:
                backup = loaded.get(member.backup_id)
                if backup is not None and backup.status == BackupStatus.COMPLETE.value:
                    backup.expire(reason, expires, at=now, by=self.name)
                    to_expire.append(backup)
            doomed[chain_id] = reason
        return ClusterPlan(cluster_id, dict(chains), doomed, loaded, to_expire)

    def _delete(self, plans: list[ClusterPlan], report: PassReport) -> set[str]:
        """Delete the plans' listed objects, in batches per region across the plans, in parallel;
        returns the regions where a delete failed."""
        by_region: dict[str, list[str]] = defaultdict(list)
        for plan in plans:
            for region, objects in plan.listings.values():
                by_region[region] += [info.key for info in objects]
        batches = [
            (region, keys[i : i + size])
            for region, keys in by_region.items()
            for size in [delete_batch_size(len(keys))]
            for i in range(0, len(keys), size)
        ]
        failed: set[str] = set()
        outcomes = self._pool.map(lambda rk: _attempt(self._delete_batch, *rk), batches)
        for (region, _), outcome in zip(batches, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                report.error(f"region {region}", outcome)
                failed.add(region)
        return failed

    def _delete_batch(self, region: str, keys: list[str]) -> None:
        self.object_store(region).delete(keys)
        # Objects gone, their deletion not yet recorded: the fault suite kills a worker here.
        self.fault_point("retention-mid-deletion")

    def _record_deleted(self, plan: ClusterPlan, now: datetime) -> list[Aggregate]:
        recorded: list[Aggregate] = []
        for chain_id in plan.free:
            _, objects = plan.listings[chain_id]
            for member in plan.chains[chain_id]:
                backup = plan.loaded.get(member.backup_id)
                if backup is None or backup.deleted_at is not None:
                    continue
                is_full = member.backup_id == chain_id
                backup.record_deleted(
                    objects_deleted=len(objects) if is_full else 0,
                    bytes_freed=sum(i.size for i in objects) if is_full else 0,
                    reason=plan.doomed[chain_id],
                    at=now,
                    by=self.name,
                )
                recorded.append(backup)
        return recorded

    def _list_chain(self, plan: ClusterPlan, chain_id: str) -> tuple[str, list[ObjectInfo]]:
        members = plan.chains[chain_id]
        region = next(b.region for b in members if b.backup_id == chain_id)
        prefix = chain_prefix(plan.cluster_id, chain_id)
        return region, list(self.object_store(region).list(prefix))

    def _load(self, cluster_id: str, members: Iterable[IndexedBackup]) -> list[Backup]:
        loaded = [load_backup(self.store, cluster_id, UUID(b.backup_id)) for b in members]
        return [b for b in loaded if b is not None]


def delete_batch_size(keys: int) -> int:
    """Keys per delete request: at most the store's :data:`DELETE_BATCH`, and small enough that
    a group's deletes run as several requests in parallel (a store deletes one request's keys in
    turn), but no smaller than 100 keys, so a pass makes few requests."""
    return max(100, min(DELETE_BATCH, -(-keys // (WORKERS // 2))))


R = TypeVar("R")


def _attempt(call: Callable[..., R], *args: Any) -> R | BaseException:
    """``call(*args)``, or the exception it raised (for results gathered from a thread pool)."""
    try:
        return call(*args)
    except Exception as exc:
        return exc
