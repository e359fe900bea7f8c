"""The retention service's rules over 60+ simulated days, on the real event store and both object
stores, compared day by day with an independent statement of the rules.

The backups come from a stand-in executor (:class:`StandIn`): it records each scheduled slot's
``BackupStarted`` and ``BackupCompleted`` (or ``BackupFailed``) exactly as the executor's
bookkeeping does, and writes small objects at the real keys of the chain (a chunk per backup,
and a minimal but valid manifest referencing it for a completed one; a failed one leaves its
chunk, as a failed backup leaves chunks without a manifest) through the data plane's store
API, instead of taking a PostgreSQL backup per slot (thousands of slots per run). The slots
follow the scheduler's cadence rule (:func:`backup_type_for`).
``tests/integration/test_retention_real_backups.py`` runs retention over real backups.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from managed_backups.contracts import topics
from managed_backups.contracts.enums import BackupType
from managed_backups.services.projections.service import Projector
from managed_backups.services.retention import retention as retention_module
from managed_backups.services.retention.leftovers import REASON, REASON_BUILT_ON
from managed_backups.services.retention.retention import Retention
from managed_backups.services.scheduler.cadence import ScheduleView, backup_type_for
from managed_backups.shared.dataplane.manifest import (
    Catalog,
    ChunkRef,
    Manifest,
    Totals,
    chain_prefix,
    chunk_key,
    manifest_key,
    save_manifest,
)
from managed_backups.shared.dataplane.objectstore import ObjectStore
from managed_backups.shared.domain.backup import Backup
from managed_backups.shared.domain.backup_lifecycle import backup_expires_at
from managed_backups.shared.domain.backup_settings import SettingsChange
from managed_backups.shared.domain.cluster import Cluster
from managed_backups.shared.eventstore import EventStore, open_event_store
from managed_backups.shared.jobs import JobLeases, holding, sweep_of_chain
from managed_backups.shared.sqldb import SqlDatabase
from managed_backups.shared.views import Page, ReadModels
from tests.harness import System, iso
from tests.unit.test_retention_rules import B, stated_listed

T0 = datetime(2026, 1, 1, tzinfo=UTC)
REGION = "us-east-1"


@dataclass
class StandIn:
    """The cluster, its schedule and a stand-in executor, on the real event store and store."""

    store: EventStore
    objects: ObjectStore
    cluster_id: str
    frequency_minutes: int
    retention_days: int
    history: list[B] = field(default_factory=list)
    chain: dict[str, object] | None = None
    chain_complete: bool = False
    full_required: bool = False
    deleted_at: datetime | None = None
    pending: list[Backup] = field(default_factory=list)
    parent: str | None = None
    """The chain's last completed backup (what the next incremental's manifest builds on)."""
    chunk_of: dict[str, str] = field(default_factory=dict)
    """Each backup's chunk (its digest)."""

    def register(self) -> Cluster:
        cluster = Cluster(
            cluster_id=self.cluster_id,
            name=self.cluster_id,
            organization="acme",
            tier="STANDARD",
            regions=[REGION],
            engine="postgres",
            database_version="15",
            connection_ref=f"postgresql://u@h/{self.cluster_id}",
            backup_region=REGION,
            enabled=True,
            frequency_minutes=self.frequency_minutes,
            retention_days=self.retention_days,
            command_id=None,
            at=T0,
            by="test",
        )
        self.store.save_all(cluster)
        return cluster

    def change_retention(self, retention_days: int) -> None:
        cluster = self.store.get_or_none(Cluster.create_id(self.cluster_id), Cluster)
        assert cluster is not None
        decision = cluster.decide_settings(SettingsChange(retention_days=retention_days))
        cluster.update_backup_settings(decision, None, T0, "test")
        self.store.save_all(cluster)
        self.retention_days = retention_days
        self.full_required = decision.full_backup_required  # a retention change takes a full

    def delete(self, at: datetime) -> None:
        cluster = self.store.get_or_none(Cluster.create_id(self.cluster_id), Cluster)
        assert cluster is not None
        cluster.delete(None, at, "test")
        self.store.save_all(cluster)
        self.deleted_at = at

    def take(self, slot: datetime, fail: bool, same_chunk_as: str | None = None) -> str:
        """Take the slot's backup; returns its id. ``same_chunk_as``: a backup of the chain whose
        chunk this one stores too (content-addressed: it finds it stored and references it)."""
        view = ScheduleView(
            enabled=True,
            deleted=False,
            frequency_minutes=self.frequency_minutes,
            generation=0,
            generation_start=T0,
            full_backup_required=self.full_required,
            last_scheduled=None,
            chain=self.chain,
        )
        kind = backup_type_for(view, slot, self.chain_complete)
        backup_id = uuid.uuid5(uuid.NAMESPACE_URL, f"{self.cluster_id}/{slot.isoformat()}")
        if kind is BackupType.FULL:
            chain_id = backup_id
            self.chain = {
                "chain_id": backup_id,
                "slot": slot,
                "retention_days": self.retention_days,
            }
            self.full_required = False
        else:
            assert self.chain is not None
            chain_id = self.chain["chain_id"]  # type: ignore[assignment]
        backup = Backup(
            backup_id=backup_id,
            cluster_id=self.cluster_id,
            backup_type=kind.value,
            chain_id=chain_id,
            reason="SCHEDULED",
            region=REGION,
            retention_days=self.retention_days,
            scheduled_for=slot,
            executor="stand-in",
            lease_until=slot + timedelta(minutes=5),
            command_id=None,
            at=slot,
            by="stand-in",
        )
        cid, chain = self.cluster_id, str(chain_id)
        digest = chunk_digest(same_chunk_as or str(backup_id))
        self.chunk_of[str(backup_id)] = digest
        data = b"rows " + digest.encode()
        self.objects.put_if_absent(chunk_key(cid, chain, digest), data)
        if kind is BackupType.FULL:
            self.parent = None
        if fail:
            backup.fail("STAND_IN", "the stand-in failed this slot", "copy", slot, "stand-in")
        else:
            manifest = stand_in_manifest(
                cid,
                chain,
                str(backup_id),
                self.parent,
                slot,
                ChunkRef(hash=digest, size=len(data), stored=len(data)),
            )
            save_manifest(self.objects, manifest)
            self.parent = str(backup_id)
            backup.complete(
                as_of_time=slot,
                size_bytes=100,
                database_count=1,
                catalog=[],
                manifest_key=manifest_key(cid, chain, str(backup_id)),
                expires_at=backup_expires_at(slot, self.retention_days),
                at=slot,
                by="stand-in",
            )
        self.pending.append(backup)
        if kind is BackupType.FULL:
            self.chain_complete = not fail
        self.history.append(
            B(
                str(backup_id),
                chain,
                kind is BackupType.FULL,
                "FAILED" if fail else "COMPLETE",
                slot,
                self.retention_days,
            )
        )
        return str(backup_id)

    def flush(self) -> None:
        """Record the backups taken since the last flush (one save: the log is the same as with
        one save per backup, and a long run on the 5-minute setting stays fast)."""
        if self.pending:
            self.store.save_all(*self.pending)
            self.pending = []

    def stated(self, now: datetime) -> set[str]:
        deleted = (self.deleted_at, self.retention_days) if self.deleted_at else None
        return stated_listed(self.history, now, deleted)

    def chains_in_store(self) -> set[str]:
        prefix = f"{chain_prefix(self.cluster_id, 'x').rsplit('/', 1)[0]}/"
        return {info.key[len(prefix) :].split("/", 1)[0] for info in self.objects.list(prefix)}


def chunk_digest(backup_id: str) -> str:
    """The stand-in's one chunk of a backup (a SHA-256-shaped name)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, backup_id).hex * 2


def stand_in_manifest(
    cluster_id: str,
    chain_id: str,
    backup_id: str,
    parent_id: str | None,
    at: datetime,
    chunk: ChunkRef,
) -> Manifest:
    """A valid manifest with no database, whose globals are the stand-in's one chunk."""
    return Manifest(
        backup_id=backup_id,
        cluster_id=cluster_id,
        type=BackupType.FULL if parent_id is None else BackupType.INCREMENTAL,
        chain_id=chain_id,
        parent_id=parent_id,
        data_from=at,
        started_at=at,
        completed_at=at,
        server_version="15.0",
        server_version_num=150000,
        globals_dump=[chunk],
        databases=[],
        catalog=Catalog(databases=[]),
        totals=Totals(
            logical_bytes=chunk.size,
            stored_bytes=chunk.stored,
            new_stored_bytes=chunk.stored,
            chunks=1,
            new_chunks=1,
        ),
    )


def listed(models: ReadModels, cluster_id: str, now: datetime) -> list[dict[str, object]]:
    docs, more = models.listed_backups(cluster_id, now, None, None, Page(1, 100_000, False))
    assert not more
    return docs


def check(sim: StandIn, models: ReadModels, projector: Projector, now: datetime) -> None:
    """The listing matches the rules' statement; the store holds exactly the listed backups'
    manifests and chunks (expired chains deleted, failed backups' leftovers swept)."""
    projector.catch_up()
    docs = listed(models, sim.cluster_id, now)
    stated = sim.stated(now)
    assert {str(d["id"]) for d in docs} == stated, now
    by_id = {b.backup_id: b for b in sim.history}
    assert sim.chains_in_store() == {by_id[b].chain_id for b in stated}, now
    cid = sim.cluster_id
    expected = {manifest_key(cid, by_id[b].chain_id, b) for b in stated} | {
        chunk_key(cid, by_id[b].chain_id, sim.chunk_of[b]) for b in stated
    }
    stored = {info.key for info in sim.objects.list(f"clusters/{cid}/")}
    assert stored == expected, (now, sorted(stored ^ expected)[:5])
    for doc in docs:
        b = by_id[str(doc["id"])]
        assert sim.objects.exists(manifest_key(sim.cluster_id, b.chain_id, b.backup_id))
        full = by_id[b.chain_id]
        own = backup_expires_at(full.data_from, full.retention_days)
        if own > now:
            assert doc["expires_at"] is not None and not doc["kept_past_retention"]
        else:
            assert doc["kept_past_retention"], (now, doc)


SETTINGS = [
    # (store, frequency minutes, retention days, retention after the change on day 31). The
    # 5-minute setting (17,856 slots) runs on the local store only: on the S3 server it would
    # take minutes of CI time while proving nothing the other two settings do not.
    ("local", 5, 2, 7),
    ("local", 60, 7, 2),
    ("s3", 60, 7, 2),
    ("local", 1440, 30, 7),
    ("s3", 1440, 30, 7),
]


@pytest.mark.parametrize(
    ("object_store_url", "frequency", "retention", "changed"),
    SETTINGS,
    indirect=["object_store_url"],
)
def test_62_days_of_retention_match_the_rules(
    frequency: int, retention: int, changed: int, tmp_path: Path, object_store_url: str
) -> None:
    """Backups every ``frequency`` minutes for 62 days; fulls failing for a stretch longer than
    the retention (the last good chain is kept and says so); the retention changed on day 31
    (only later backups take it); the cluster deleted on day 62 (its backups kept for its
    retention, then deleted). Retention passes run every 6 simulated hours; at every simulated day
    the listing and the store are compared with the statement of the rules."""
    url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    store, db = open_event_store(url), SqlDatabase(url)
    objects = ObjectStore(object_store_url)
    retention_worker = Retention(store, db, lambda region: object_store_url)
    models = ReadModels(db)
    projector = Projector(store, models)
    sim = StandIn(store, objects, f"c-{frequency}", frequency, retention)
    sim.register()
    failing = (T0 + timedelta(days=10), T0 + timedelta(days=10 + retention + 2))
    step = timedelta(minutes=frequency)
    now = T0
    next_pass = T0
    next_check = T0 + timedelta(days=1)
    end = T0 + timedelta(days=62)
    while now < end:
        if now == T0 + timedelta(days=31):
            sim.change_retention(changed)
        sim.take(now, fail=failing[0] <= now < failing[1])
        now += step
        if now >= next_pass:
            sim.flush()
            report = retention_worker.enforce(now)
            assert not report.errors
            next_pass = now + timedelta(hours=6)
        if now >= next_check:
            sim.flush()
            retention_worker.enforce(now)
            check(sim, models, projector, now)
            next_check += timedelta(days=1)
    sim.delete(end)
    for day in range(sim.retention_days + 2):
        at = end + timedelta(days=day, hours=1)
        retention_worker.enforce(at)
        check(sim, models, projector, at)
    assert sim.chains_in_store() == set()
    projector.catch_up()
    audit = models.audit(sim.cluster_id, limit=1_000_000)
    deleted = [e for e in audit if e["type"] == "BackupDeleted"]
    assert sum(int(e["bytes_freed"]) for e in deleted) > 0
    assert {e["type"] for e in audit} >= {"BackupExpired", "BackupDeleted"}
    store.close()
    db.close()


def test_the_leftovers_of_failed_incrementals_are_swept_once_no_backup_writes_the_chain(
    tmp_path: Path, object_store_url: str
) -> None:
    """An hourly chain with two failed incrementals: their chunks (no manifest references them)
    are swept and ``BackupDeleted`` recorded on them, except a chunk that a later backup
    references (it found it stored), and only once no backup lease names the chain; the views
    count the deletions, the failed backups stay FAILED; a second pass does nothing."""
    url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    store, db = open_event_store(url), SqlDatabase(url)
    sim = StandIn(store, ObjectStore(object_store_url), "hourly", 60, 7)
    sim.register()
    slots = [T0 + timedelta(hours=h) for h in range(6)]
    sim.take(slots[0], fail=False)
    sim.take(slots[1], fail=False)
    first_failed = sim.take(slots[2], fail=True)
    second_failed = sim.take(slots[3], fail=True)
    sim.take(slots[4], fail=False, same_chunk_as=second_failed)
    sim.take(slots[5], fail=False)
    sim.flush()
    chain = sim.history[0].chain_id
    assert all(b.chain_id == chain for b in sim.history)
    now = T0 + timedelta(hours=6)
    models = ReadModels(db)
    projector = Projector(store, models)
    worker = Retention(store, db, lambda region: object_store_url)

    writer = uuid.uuid4()  # a backup being written into the chain holds the sweep back
    backup_leases = JobLeases(db, "backup")
    backup_leases.take(writer, sim.cluster_id, "executor-a", now, {"chain_id": chain})
    report = worker.enforce(now)
    assert report.leftovers_swept == 0 and not report.errors
    leftover = chunk_key(sim.cluster_id, chain, chunk_digest(first_failed))
    assert sim.objects.exists(leftover)
    assert not deleted_events(store)

    backup_leases.release(writer)
    report = worker.enforce(now)
    assert (report.leftovers_swept, report.objects_deleted, report.errors) == (2, 1, [])
    assert report.bytes_freed == len(b"rows " + chunk_digest(first_failed).encode())
    assert not sim.objects.exists(leftover)
    check(sim, models, projector, now)  # the shared chunk stays: a listed backup needs it
    deleted = [
        store.domain_event(n)
        for n in store.notifications(0, 100_000)
        if type(store.domain_event(n)).__name__ == "BackupDeleted"
    ]
    assert [(str(e.backup_id), e.objects_deleted, e.reason) for e in deleted] == [  # type: ignore[attr-defined]
        (first_failed, 1, "its backup failed: leftovers swept"),
        (second_failed, 0, "its backup failed: leftovers swept"),
    ]
    assert worker.enforce(now + timedelta(minutes=1)).leftovers_swept == 0
    projector.catch_up()
    window = models.recoverability(sim.cluster_id, now)
    assert (window["deleted_backups"], window["bytes_freed"]) == (2, report.bytes_freed)
    assert window["restorable_backups"] == 4 and window["stored_bytes"] == 400
    failed_docs = {str(d["id"]): d for d in models.incomplete_backups(sim.cluster_id)}
    assert set(failed_docs) == {first_failed, second_failed}
    assert all(d["status"] == "FAILED" and d["deleted_at"] for d in failed_docs.values())
    store.close()
    db.close()


def test_a_failed_backup_that_a_later_one_builds_on_keeps_its_manifest_and_chunks(
    tmp_path: Path, object_store_url: str
) -> None:
    """A backup failed by the lease reaper whose executor wrote its manifest anyway, and the
    next incremental built on it (it builds on the chain's newest manifest): the sweep keeps
    what the later one needs and says so; another failed backup's chunk goes."""
    url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    store, db = open_event_store(url), SqlDatabase(url)
    sim = StandIn(store, ObjectStore(object_store_url), "built-on", 60, 7)
    sim.register()
    cid = sim.cluster_id
    full = sim.take(T0, fail=False)
    built_on = sim.take(T0 + timedelta(hours=1), fail=True)
    chain = sim.history[0].chain_id
    data = b"rows " + sim.chunk_of[built_on].encode()
    chunk = ChunkRef(hash=sim.chunk_of[built_on], size=len(data), stored=len(data))
    save_manifest(
        sim.objects, stand_in_manifest(cid, chain, built_on, full, T0 + timedelta(hours=1), chunk)
    )
    sim.parent = built_on
    later = sim.take(T0 + timedelta(hours=2), fail=False)
    plain = sim.take(T0 + timedelta(hours=3), fail=True)
    sim.flush()
    report = Retention(store, db, lambda region: object_store_url).enforce(T0 + timedelta(hours=4))
    assert (report.leftovers_swept, report.objects_deleted, report.errors) == (2, 1, [])
    kept = (full, built_on, later)
    assert {info.key for info in sim.objects.list(f"clusters/{cid}/")} == {
        manifest_key(cid, chain, b) for b in kept
    } | {chunk_key(cid, chain, sim.chunk_of[b]) for b in kept}
    reasons = {
        str(e.backup_id): e.reason  # type: ignore[attr-defined]
        for e in (store.domain_event(n) for n in store.notifications(0, 100_000))
        if type(e).__name__ == "BackupDeleted"
    }
    assert reasons == {built_on: REASON_BUILT_ON, plain: REASON}
    store.close()
    db.close()


def daily_cluster(
    tmp_path: Path, object_store_url: str, days: int, url: str | None = None
) -> tuple[StandIn, SqlDatabase]:
    """A cluster taking a full backup every day, kept 2 days, for ``days`` days."""
    url = url or f"sqlite:///{tmp_path / 'events.sqlite'}"
    store, db = open_event_store(url), SqlDatabase(url)
    sim = StandIn(store, ObjectStore(object_store_url), "daily", 1440, 2)
    sim.register()
    for day in range(days):
        sim.take(T0 + timedelta(days=day), fail=False)
    sim.flush()
    return sim, db


def deleted_events(store: EventStore) -> set[str]:
    return {
        str(event.backup_id)  # type: ignore[attr-defined]
        for event in (store.domain_event(n) for n in store.notifications(0, 100_000))
        if type(event).__name__ == "BackupDeleted"
    }


def test_a_chain_a_restore_holds_is_deleted_only_after_the_restore_ends(
    tmp_path: Path, object_store_url: str
) -> None:
    sim, db = daily_cluster(tmp_path, object_store_url, 6)
    held = sim.history[0]
    leases = JobLeases(db, "restore")
    restore_id = uuid.uuid4()
    now = T0 + timedelta(days=5, hours=1)
    leases.take(restore_id, sim.cluster_id, "restore-1", now, holding([held.backup_id]))
    worker = Retention(sim.store, db, lambda region: object_store_url)
    report = worker.enforce(now)
    assert report.chains_held == 1 and report.chains_deleted == 3
    expired = {
        str(event.backup_id)  # type: ignore[attr-defined]
        for event in (sim.store.domain_event(n) for n in sim.store.notifications(0, 100_000))
        if type(event).__name__ == "BackupExpired"
    }
    assert held.backup_id in expired  # expired (no new restore may start on it)...
    assert held.chain_id in sim.chains_in_store()  # ... but its objects stay while it is held
    assert held.backup_id not in deleted_events(sim.store)
    leases.release(restore_id)
    assert worker.enforce(now).chains_deleted == 1
    assert sim.chains_in_store() == {b.chain_id for b in sim.history[-2:]}
    assert held.backup_id in deleted_events(sim.store)


KILLED_WORKER = """
import os, signal, sys
from datetime import datetime
from managed_backups.services.retention.retention import Retention
from managed_backups.shared.dataplane.objectstore import ObjectStore
from managed_backups.shared.eventstore import open_event_store
from managed_backups.shared.sqldb import SqlDatabase

events_url, objects_url, now = sys.argv[1:4]
real_delete = ObjectStore.delete

def delete_then_die(self, keys):
    keys = list(keys)
    real_delete(self, keys[: len(keys) // 2])
    os.kill(os.getpid(), signal.SIGKILL)

ObjectStore.delete = delete_then_die
worker = Retention(open_event_store(events_url), SqlDatabase(events_url), lambda r: objects_url)
worker.enforce(datetime.fromisoformat(now))
"""


def test_a_retention_worker_killed_mid_deletion_finishes_after_restart(
    tmp_path: Path, object_store_url: str
) -> None:
    sim, db = daily_cluster(tmp_path, object_store_url, 6)
    now = T0 + timedelta(days=5, hours=1)
    events_url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_WORKER, events_url, object_store_url, now.isoformat()],
        capture_output=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    expired_chains = {b.chain_id for b in sim.history[:4]}
    left = sim.chains_in_store() & expired_chains
    assert left  # killed half-way through the expired chains' objects
    assert not deleted_events(sim.store)
    report = Retention(sim.store, db, lambda region: object_store_url).enforce(now)
    assert report.chains_deleted == 4 and not report.errors
    assert sim.chains_in_store() == {b.chain_id for b in sim.history[-2:]}
    assert deleted_events(sim.store) == {b.backup_id for b in sim.history[:4]}


def test_a_sweep_killed_mid_deletion_is_finished_by_the_next_pass(
    tmp_path: Path, object_store_url: str
) -> None:
    """A worker SIGKILLed half-way through a sweep's deletes leaves leftovers, nothing recorded,
    and its sweep lease (a backup of the chain waits on it until it expires); the next pass of a
    worker of the same name takes the lease back, finishes, records, and releases it."""
    url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    store, db = open_event_store(url), SqlDatabase(url)
    sim = StandIn(store, ObjectStore(object_store_url), "hourly", 60, 7)
    sim.register()
    sim.take(T0, fail=False)
    failed = [sim.take(T0 + timedelta(hours=h), fail=True) for h in (1, 2)]
    sim.flush()
    cid, chain = sim.cluster_id, sim.history[0].chain_id
    leftovers = {chunk_key(cid, chain, sim.chunk_of[b]) for b in failed}
    now = T0 + timedelta(hours=3)
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_WORKER, url, object_store_url, now.isoformat()],
        capture_output=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert len({k for k in leftovers if sim.objects.exists(k)}) == 1  # half of them deleted
    assert not deleted_events(store)
    assert sweep_of_chain(db, cid, chain, now) is not None
    report = Retention(store, db, lambda region: object_store_url).enforce(now)
    assert (report.leftovers_swept, report.errors) == (2, [])
    assert not any(sim.objects.exists(k) for k in leftovers)
    assert deleted_events(store) == set(failed)
    assert sweep_of_chain(db, cid, chain, now) is None
    store.close()
    db.close()


async def wait_deleted(store: EventStore, backup_ids: set[str], timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while not backup_ids <= await asyncio.to_thread(deleted_events, store):
            await asyncio.sleep(0.05)


async def test_the_retention_service_runs_periodically_on_the_simulated_clock_and_on_demand(
    tmp_path: Path, kafka: str
) -> None:
    """The service as ``up`` runs it: the real broker, the event store, the simulated clock."""
    objects_url = (tmp_path / "objects").as_uri()
    store_url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    system = await System.start(
        tmp_path / "data",
        store_url,
        kafka,
        services=("relay", "projections"),
        simulated_clock=True,
        region_stores={REGION: objects_url},
        retention_interval_minutes=60 * 24 * 365,
    )
    try:
        sim, _ = daily_cluster(tmp_path, objects_url, 6, store_url)
        # The clock starts on 2026-01-05: the chains of the first three days have expired.
        await system.start_service("retention")
        await wait_deleted(sim.store, {b.backup_id for b in sim.history[:3]})
        # The next periodic pass is a year away: a pass on demand deletes the next chain.
        system.clock.advance(timedelta(days=1, hours=1).total_seconds())
        body = {"type": "EnforceRetention", "cluster_id": sim.cluster_id}
        result = await system.command(topics.RETENTION_COMMANDS, body)
        assert result.code == 200, result
        await wait_deleted(sim.store, {sim.history[3].backup_id})
        unknown = await system.command(
            topics.RETENTION_COMMANDS, {"type": "EnforceRetention", "cluster_id": "nope"}
        )
        assert unknown.code == 404 and "nope" in (unknown.reason or "")
        assert sim.chains_in_store() == {b.chain_id for b in sim.history[4:]}
        # The views: the recoverability window, stored bytes and counts, in the cluster's view
        # and in /metrics.
        await system.wait_projection(sim.store.max_position())
        assert system.http is not None
        view = (await system.http.get(f"/api/v1/clusters/{sim.cluster_id}")).json()
        window = view["recoverability"]
        fourth, last = sim.history[4], sim.history[5]
        assert iso(window["oldest_restorable"]) == fourth.data_from
        assert iso(window["newest_restorable"]) == last.data_from
        assert window["last_successful_backup"] == window["newest_restorable"]
        assert (window["stored_bytes"], window["expired_backups"]) == (200, 4)
        assert window["deleted_backups"] == 4 and window["bytes_freed"] > 0
        text = (await system.http.get("/metrics")).text
        metrics = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        cluster = (("cluster", sim.cluster_id),)
        expected = {
            "oldest_restorable_timestamp_seconds": fourth.data_from.timestamp(),
            "newest_restorable_timestamp_seconds": last.data_from.timestamp(),
            "stored_bytes": 200,
            "expired_backups": 4,
            "deleted_backups": 4,
            "kept_past_retention": 0,
        }
        for name, value in expected.items():
            assert metrics[(f"managed_backups_{name}", cluster)] == value, name
        status = (("cluster", sim.cluster_id), ("status", "EXPIRED"))
        assert metrics[("managed_backups_backups", status)] == 4
    finally:
        await system.close()


def test_a_pass_over_many_clusters_survives_another_worker_acting_on_one_of_them(
    tmp_path: Path, object_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass works on groups of clusters, one transaction per group: when another worker has
    just acted on one cluster of a group (its save conflicts), the group's other clusters are
    redone one by one in the same pass. Every expired backup ends expired and deleted exactly
    once; only the clusters due are looked at; the store keeps exactly the kept chains."""
    monkeypatch.setattr(retention_module, "GROUP_SIZE", 3)
    url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    store, db = open_event_store(url), SqlDatabase(url)
    objects = ObjectStore(object_store_url)
    sims = [StandIn(store, objects, f"many-{i}", 1440, 2) for i in range(8)]
    for i, sim in enumerate(sims):
        sim.register()
        for day in range(6) if i < 7 else (4, 5):  # the last one has nothing to expire yet
            sim.take(T0 + timedelta(days=day), fail=False)
        sim.flush()
    now = T0 + timedelta(days=5, hours=1)
    other = Retention(store, db, lambda region: object_store_url, name="other-worker")
    worker = Retention(store, db, lambda region: object_store_url)
    real_plan = worker._plan

    def plan_after_the_other_worker(cluster_id: str, *args: Any) -> Any:
        if cluster_id == "many-4":  # in the second group
            other.enforce(now, cluster_id)
        return real_plan(cluster_id, *args)

    monkeypatch.setattr(worker, "_plan", plan_after_the_other_worker)
    report = worker.enforce(now)
    assert not report.errors
    assert (report.clusters, report.clusters_with_work) == (8, 7)
    assert report.chains_deleted == 6 * 4  # the other worker deleted many-4's four chains
    counts: dict[tuple[str, str], int] = {}
    for n in store.notifications(0, 100_000):
        event = store.domain_event(n)
        kind = type(event).__name__
        if kind in ("BackupExpired", "BackupDeleted"):
            key = (kind, str(event.backup_id))  # type: ignore[attr-defined]
            counts[key] = counts.get(key, 0) + 1
    expected = {b.backup_id for sim in sims[:7] for b in sim.history[:4]}
    assert set(counts.values()) == {1}
    assert {b for kind, b in counts if kind == "BackupExpired"} == expected
    assert {b for kind, b in counts if kind == "BackupDeleted"} == expected
    for sim in sims:
        assert sim.chains_in_store() == {b.chain_id for b in sim.history[-2:]}
    store.close()
    db.close()
