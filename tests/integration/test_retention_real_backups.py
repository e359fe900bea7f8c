"""Retention over real backups: the real executor backs up a real PostgreSQL into each object
store (a local directory, the S3-compatible server), a full and an incremental fail half-way
(after some chunks were uploaded), retention runs, and then the store holds exactly the listed
backups' manifests and the chunks they reference (nothing orphaned, nothing missing), and every
listed backup restores to what its source held at its snapshot.

How a backup fails half-way, for real: the cluster is backed up by a role without superuser
rights; taking away its SELECT on the one table of the database backed up last (databases go in
name order) makes the backup fail with ``PERMISSION_DENIED`` when it reaches that database, after
the first database's chunks were written. Giving it back and taking the next incremental at once
stores the same changed rows again: chunks the failed backup left and the next one only
references (they are stored already), which the sweep must keep.

Time: a backup's ``data_from`` is its snapshot's time on the database server, that is, now, so
the backups of this test are seconds apart. The retention passes run at chosen instants days
ahead (as ``Retention.enforce(now)`` takes them): the first just after the first chain's full
reaches its 2 days, the second when every chain but the newest has.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from managed_backups.contracts import topics
from managed_backups.services.executor.service import run as run_executor
from managed_backups.services.retention.retention import Retention
from managed_backups.shared import jobs
from managed_backups.shared.dataplane.manifest import (
    Manifest,
    chunk_key,
    list_manifests,
    load_chain,
    manifest_key,
    read_manifest,
)
from managed_backups.shared.dataplane.objectstore import ObjectStore
from managed_backups.shared.dataplane.restore_plan import ClusterAccess, RestorePlan, execute_plan
from managed_backups.shared.dataplane.verify import verify_backup
from managed_backups.shared.domain.backup import Backup
from managed_backups.shared.domain.cluster import Cluster as Registered
from managed_backups.shared.domain.ids import cluster_aggregate_id
from managed_backups.shared.encryption import ClusterEncryption
from managed_backups.shared.eventstore import EventStore, open_event_store
from managed_backups.shared.sqldb import SqlDatabase
from managed_backups.shared.views import ReadModels
from tests.harness import System, run_cluster_commands_only
from tests.infra.postgres import LocalPostgres
from tests.integration.test_executor import wait_terminal
from tests.integration.test_retention import listed
from tests.restore_checks import table_digest

pytestmark = pytest.mark.integration

REGION = "us-east-1"
APP, LEDGER = "app", "zz_ledger"
"""Backed up in this order (by name, ``postgres`` and ``template1`` between them)."""
TABLES = [(APP, "accounts"), (APP, "events"), (LEDGER, "entries")]
ROLE, ROLE_PASSWORD = "mb_backup", "backup-role-pw"
RETENTION_DAYS = 2

Digests = dict[tuple[str, str], tuple[int, str]]


@pytest.fixture(scope="module")
def source() -> Iterator[LocalPostgres]:
    with LocalPostgres() as pg:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{ROLE_PASSWORD}'")
            for db in (APP, LEDGER):
                conn.execute(f"CREATE DATABASE {db}")
        with psycopg.connect(pg.url_for(APP), autocommit=True) as conn:
            conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance numeric, note text)")
            conn.execute(
                "INSERT INTO accounts SELECT g, g * 10, repeat(md5(g::text), 4) "
                "FROM generate_series(1, 20000) g"
            )
            conn.execute("CREATE TABLE events (id bigserial PRIMARY KEY, what text)")
            conn.execute("INSERT INTO events (what) SELECT 'e' || g FROM generate_series(1, 500) g")
        with psycopg.connect(pg.url_for(LEDGER), autocommit=True) as conn:
            conn.execute("CREATE TABLE entries (id bigserial PRIMARY KEY, amount numeric)")
            conn.execute("INSERT INTO entries (amount) SELECT g FROM generate_series(1, 100) g")
        for db in (APP, LEDGER):
            with psycopg.connect(pg.url_for(db), autocommit=True) as conn:
                conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {ROLE}")
                conn.execute(f"GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {ROLE}")
        yield pg


class Source:
    """The source cluster: its changes, and what each backup saw."""

    def __init__(self, pg: LocalPostgres) -> None:
        self.pg = pg
        self.changes = 0

    def change(self) -> None:
        """Some updates, inserts and deletes in both databases."""
        self.changes += 1
        n = self.changes
        with psycopg.connect(self.pg.url_for(APP), autocommit=True) as conn:
            conn.execute(
                "UPDATE accounts SET balance = balance + %s, note = note || %s WHERE id %% 97 = %s",
                (n, str(n), n % 97),
            )
            conn.execute("DELETE FROM accounts WHERE id %% 1013 = %s", (n,))
            conn.execute(
                "INSERT INTO events (what) SELECT 'change ' || %s FROM generate_series(1, 20)", (n,)
            )
        with psycopg.connect(self.pg.url_for(LEDGER), autocommit=True) as conn:
            conn.execute("INSERT INTO entries (amount) VALUES (%s)", (n,))

    def ledger_readable(self, readable: bool) -> None:
        verb = (
            f"GRANT SELECT ON entries TO {ROLE}"
            if readable
            else f"REVOKE SELECT ON entries FROM {ROLE}"
        )
        with psycopg.connect(self.pg.url_for(LEDGER), autocommit=True) as conn:
            conn.execute(verb)

    def digests(self) -> Digests:
        return {(db, t): table_digest(self.pg.url_for(db), "public", t) for db, t in TABLES}


class Cluster:
    """The cluster as the system sees it: its backups taken through the real executor."""

    def __init__(self, system: System, cluster_id: str, objects: ObjectStore) -> None:
        self.system = system
        self.cluster_id = cluster_id
        self.objects = objects
        self.backups: dict[str, Backup] = {}
        self.seen: dict[str, Digests] = {}
        """What the source held at each COMPLETE backup's snapshot (nothing changes during
        a backup here)."""

    async def take(self, source: Source, backup_type: str, chain: str | None = None) -> str:
        backup_id = uuid.uuid4()
        body: dict[str, Any] = {
            "type": "TakeBackup",
            "cluster_id": self.cluster_id,
            "backup_id": str(backup_id),
            "backup_type": backup_type,
            "retention_days": RETENTION_DAYS,
        }
        if chain is not None:
            body["chain_id"] = chain
        result = await self.system.command(topics.BACKUP_COMMANDS, body)
        assert result.code == 200, result
        backup = await wait_terminal(self.system, backup_id)
        self.backups[str(backup_id)] = backup
        if backup.status == "COMPLETE":
            self.seen[str(backup_id)] = await asyncio.to_thread(source.digests)
        return str(backup_id)

    def stored_keys(self) -> set[str]:
        return {info.key for info in self.objects.list(f"clusters/{self.cluster_id}/")}

    def chain_of(self, backup_id: str) -> str:
        return str(self.backups[backup_id].chain_id)

    def manifest(self, backup_id: str) -> Manifest:
        return read_manifest(self.objects, self.cluster_id, self.chain_of(backup_id), backup_id)

    def referenced(self, backup_ids: set[str]) -> set[str]:
        """The manifests of ``backup_ids``, every chunk they reference and their chains' data
        key objects (encryption at rest)."""
        keys: set[str] = set()
        for backup_id in backup_ids:
            chain = self.chain_of(backup_id)
            keys.add(manifest_key(self.cluster_id, chain, backup_id))
            keys |= {k for k in self.stored_keys() if f"/chains/{chain}/keys/" in k}
            keys |= {
                chunk_key(self.cluster_id, chain, ref.hash)
                for ref in self.manifest(backup_id).chunk_refs()
            }
        return keys


def restores_as_seen(pg: LocalPostgres, cluster: Cluster, backup_id: str) -> None:
    """A DATABASE restore of each database from the backup's chain matches the source at its
    snapshot (row counts and checksums)."""
    access = ClusterAccess(pg.dsn_for(), password=pg.password)
    chain = load_chain(cluster.objects, cluster.manifest(backup_id))
    for db in (APP, LEDGER):
        target = f"restored_{uuid.uuid4().hex[:8]}_{db}"
        plan = RestorePlan(
            kind="DATABASE", source_database=db, target_database=target, job_id=uuid.uuid4()
        )
        execute_plan(cluster.objects, chain, plan, access, lambda n: None)
        try:
            for d, table in TABLES:
                if d == db:
                    got = table_digest(pg.url_for(target), "public", table)
                    assert got == cluster.seen[backup_id][(db, table)], (backup_id, db, table)
        finally:
            with psycopg.connect(pg.url, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE {target}")


def deleted(store: EventStore) -> dict[str, Any]:
    """The ``BackupDeleted`` events by backup id."""
    events = (store.domain_event(n) for n in store.notifications(0, 100_000))
    return {str(e.backup_id): e for e in events if type(e).__name__ == "BackupDeleted"}  # type: ignore[attr-defined]


async def no_backup_lease(db: SqlDatabase, cluster_id: str) -> None:
    """Wait until the executor released its last lease (it does right after recording)."""
    async with asyncio.timeout(30):
        while await asyncio.to_thread(jobs.on_cluster, db, cluster_id):
            await asyncio.sleep(0.05)


async def test_retention_over_real_backups_keeps_exactly_the_listed_backups_restorable(
    tmp_path: Path, kafka: str, source: LocalPostgres, object_store_url: str
) -> None:
    store_url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    system = await System.start(
        tmp_path,
        store_url,
        kafka,
        services=("projections",),
        region_stores={REGION: object_store_url},
    )
    await system.start_service("registry", run_cluster_commands_only)
    await system.start_service("backup-executor", run_executor)
    store, db = open_event_store(store_url), SqlDatabase(store_url)
    src = Source(source)
    try:
        cluster_id = f"real-{uuid.uuid4().hex[:6]}"
        registered = await system.register(
            cluster_id,
            connection_ref=f"postgresql://{ROLE}@127.0.0.1:{source.port}/postgres",
            regions=[REGION],
            secret=ROLE_PASSWORD,
        )
        assert registered.code == 200, registered
        # A backup is kept for its cluster's retention: the cluster keeps them 2 days.
        kept = await system.command(
            topics.CLUSTER_COMMANDS,
            {
                "type": "UpdateBackupSettings",
                "cluster_id": cluster_id,
                "retention_days": RETENTION_DAYS,
            },
        )
        assert kept.code == 200, kept
        encryption = ClusterEncryption(system.settings, store)
        registry = store.get_or_none(cluster_aggregate_id(cluster_id), Registered)
        assert registry is not None
        objects = encryption.seal(ObjectStore(object_store_url), registry)
        cluster = Cluster(system, cluster_id, objects)

        # Chain A: a full and an incremental.
        full_a = await cluster.take(src, "FULL")
        src.change()
        inc_a = await cluster.take(src, "INCREMENTAL", full_a)
        # A full that fails half-way: its chain is nothing but leftovers.
        src.change()
        src.ledger_readable(False)
        failed_full = await cluster.take(src, "FULL")
        src.ledger_readable(True)
        # Chain B: an incremental fails half-way, the next one stores the same rows again.
        full_b = await cluster.take(src, "FULL")
        src.change()
        inc_b1 = await cluster.take(src, "INCREMENTAL", full_b)
        src.change()
        src.ledger_readable(False)
        before = cluster.stored_keys()
        failed_inc = await cluster.take(src, "INCREMENTAL", full_b)
        left_by_failed = cluster.stored_keys() - before
        src.ledger_readable(True)
        inc_b2 = await cluster.take(src, "INCREMENTAL", full_b)
        src.change()
        inc_b3 = await cluster.take(src, "INCREMENTAL", full_b)
        # Chain D, the newest.
        src.change()
        full_d = await cluster.take(src, "FULL")
        src.change()
        inc_d = await cluster.take(src, "INCREMENTAL", full_d)

        statuses = {b: cluster.backups[b].status for b in cluster.backups}
        assert [b for b, s in statuses.items() if s != "COMPLETE"] == [failed_full, failed_inc]
        for failed in (failed_full, failed_inc):
            error = cluster.backups[failed].error
            assert error is not None and error["code"] == "PERMISSION_DENIED", error
        # Both failures left chunks and no manifest; some of the incremental's leftovers are
        # chunks the next incremental references (it found them stored).
        assert list_manifests(cluster.objects, cluster_id, failed_full) == []
        assert any(f"/chains/{failed_full}/chunks/" in k for k in cluster.stored_keys())
        assert left_by_failed and not any("/manifests/" in k for k in left_by_failed)
        shared = left_by_failed & cluster.referenced({inc_b2})
        assert shared and left_by_failed - shared

        await no_backup_lease(db, cluster_id)
        worker = Retention(store, db, lambda region: object_store_url, encryption=encryption)
        models = ReadModels(db)
        as_of = {b: cluster.backups[b].as_of_time for b in cluster.seen}
        assert all(t is not None for t in as_of.values())
        expiry = {b: as_of[b] + timedelta(days=RETENTION_DAYS) for b in (full_a, full_b, full_d)}  # type: ignore[operator]
        assert expiry[full_a] + timedelta(seconds=1) < expiry[full_b]

        # Pass 1: chain A reached its retention; the failed full's chain goes; the failed
        # incremental's leftovers are swept, the chunks inc_b2 references stay.
        now = expiry[full_a] + timedelta(seconds=1)
        report = worker.enforce(now)
        assert not report.errors, report.errors
        assert (report.chains_deleted, report.leftovers_swept) == (2, 1)
        await system.wait_projection(store.max_position())
        shown = {str(d["id"]) for d in listed(models, cluster_id, now)}
        assert shown == {full_b, inc_b1, inc_b2, inc_b3, full_d, inc_d}
        assert cluster.stored_keys() == cluster.referenced(shown)
        swept = deleted(store)
        assert swept[failed_inc].reason == "its backup failed: leftovers swept"
        assert swept[failed_inc].objects_deleted == len(left_by_failed - shared)
        assert swept[failed_full].objects_deleted > 0 and swept[full_a].objects_deleted > 0
        assert swept[inc_a].reason == swept[full_a].reason != swept[failed_full].reason
        for backup_id in sorted(shown):
            await asyncio.to_thread(restores_as_seen, source, cluster, backup_id)

        # Pass 2: every chain but the newest reached its retention; the newest is kept past it
        # (nothing newer completed) and stays whole.
        later = expiry[full_d] + timedelta(hours=1)
        report = worker.enforce(later)
        assert not report.errors and report.chains_deleted == 1 and report.leftovers_swept == 0
        await system.wait_projection(store.max_position())
        docs = listed(models, cluster_id, later)
        assert {str(d["id"]) for d in docs} == {full_d, inc_d}
        assert all(d["kept_past_retention"] for d in docs)
        assert cluster.stored_keys() == cluster.referenced({full_d, inc_d})
        for backup_id in (full_d, inc_d):
            assert verify_backup(cluster.objects, cluster.manifest(backup_id)).ok
        assert set(deleted(store)) == set(cluster.backups) - {full_d, inc_d}
    finally:
        store.close()
        db.close()
        await system.close()
