"""A scripted history for the projections: clusters living for weeks, written through the real
aggregates into a real event store, with every kind of event the views handle (registration,
secrets, keys, refused commands, settings and tier changes, scheduled backups that complete,
fail or are verified, chains that expire and are deleted, restores that run, progress, succeed
or fail, a deleted cluster).

``write_history`` calls ``after_each_save`` after every save (the projections test applies the
log as it grows, the way the live service does) and returns how many events it wrote. About
3,500 events per cluster for 30 days at one backup an hour: 30 clusters make over 100,000.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4, uuid5

from managed_backups.contracts.enums import BackupType, Role, Tier
from managed_backups.shared.domain.backup import Backup
from managed_backups.shared.domain.backup_settings import SettingsChange
from managed_backups.shared.domain.cluster import Cluster
from managed_backups.shared.domain.connection_secret import ConnectionSecret
from managed_backups.shared.domain.identity import ApiKey, Organization, ServiceAccount
from managed_backups.shared.domain.ids import connection_secret_aggregate_id
from managed_backups.shared.domain.outcome import CommandOutcome
from managed_backups.shared.domain.restore import Restore
from managed_backups.shared.eventstore import EventStore
from tests.factories import new_backup, new_cluster

START = datetime(2026, 1, 5, tzinfo=UTC)
NAMESPACE = UUID("6a3c1b8e-3f5e-4c55-9d0e-6f1f3a2b9c10")
TIERS = (Tier.STANDARD.value, Tier.ADVANCED.value, Tier.BASIC.value)


@dataclass
class ClusterLife:
    cluster: Cluster
    chains: list[list[Backup]] = field(default_factory=list)


def _id(*parts: object) -> UUID:
    return uuid5(NAMESPACE, "/".join(str(p) for p in parts))


def write_history(
    store: EventStore,
    clusters: int = 30,
    days: int = 30,
    after_each_save: Callable[[], object] = lambda: None,
    seed: int = 7,
    first: int = 0,
) -> int:
    """Write the history of ``clusters`` clusters (numbered from ``first``) over ``days`` days;
    returns the events written."""
    rng = random.Random(seed)
    before = store.max_position()
    lives = [_register(store, n, after_each_save) for n in range(first, first + clusters)]
    for day in range(days):
        for n, life in enumerate(lives, start=first):
            _day(store, rng, n, life, day)
            after_each_save()
    gone = lives[-1].cluster
    gone.delete(command_id=None, at=START + timedelta(days=days), by="admin")
    store.save_all(gone)
    after_each_save()
    return store.max_position() - before


def _register(store: EventStore, n: int, after_each_save: Callable[[], object]) -> ClusterLife:
    tier = TIERS[n % len(TIERS)]
    cluster = new_cluster(
        f"c{n:03d}",
        name=f"Cluster {n}",
        organization=f"org{n % 4}",
        tier=tier,
        regions=("us-east-1", "eu-west-1") if n % 2 else ("eu-west-1",),
        frequency_minutes=1440 if tier == Tier.BASIC.value else 60,
        retention_days=30 if tier == Tier.BASIC.value else 7,
        at=START,
        by="admin",
    )
    secret = ConnectionSecret(cluster_id=cluster.cluster_id, at=START, by="admin")
    organization = cluster.organization
    new: list[object] = []
    if store.get_or_none(Organization.create_id(organization), Organization) is None:
        new.append(
            Organization(organization_id=organization, name=organization, at=START, by="admin")
        )
    account = ServiceAccount(
        account_id=ServiceAccount.create_id(organization, f"operator-{n}"),
        organization=organization,
        name=f"operator-{n}",
        description="",
        at=START,
        by="admin",
    )
    account.grant(Role.CLUSTER_OPERATOR, "CLUSTER", cluster.cluster_id, START, "admin")
    account.grant(Role.CLUSTER_MONITOR, "ORGANIZATION", organization, START, "admin")
    key = ApiKey(
        key_id=f"k{n:03d}",
        account_id=account.account_id,
        organization=organization,
        name=f"key of operator {n}",
        expires_at=None,
        at=START,
        by="admin",
    )
    refused = CommandOutcome(
        command_id=_id(n, "refused"),
        command_type="UpdateBackupSettings",
        cluster_id=cluster.cluster_id,
        status="REJECTED",
        code=400,
        reason="frequency_minutes 7 is not allowed",
        body_sha256=None,
        at=START,
        by="admin",
    )
    store.save_all(*new, cluster, secret, account, key, refused)  # type: ignore[arg-type]
    after_each_save()
    return ClusterLife(cluster)


def _day(store: EventStore, rng: random.Random, n: int, life: ClusterLife, day: int) -> None:
    cluster = life.cluster
    changed: list[object] = [cluster]
    at = START + timedelta(days=day)
    if day == 3 and cluster.tier != Tier.BASIC.value:
        decision = cluster.decide_settings(SettingsChange(retention_days=2))
        cluster.update_backup_settings(decision, None, at + timedelta(minutes=1), "admin")
    if day == 9 and n % 5 == 0:
        cluster.change_tier(Tier.ADVANCED, None, at + timedelta(minutes=2), "admin")
    if day == 11:
        secret = store.get_or_none(
            connection_secret_aggregate_id(cluster.cluster_id), ConnectionSecret
        )
        assert secret is not None
        secret.change(at + timedelta(minutes=3), "admin")
        changed.append(secret)
    if day == 13 and n % 3 == 0:
        key = store.get_or_none(ApiKey.create_id(f"k{n:03d}"), ApiKey)
        assert key is not None
        key.revoke(at + timedelta(minutes=4), "admin")
        account = store.get_or_none(key.account_id, ServiceAccount)
        assert account is not None
        account.remove_grant(
            Role.CLUSTER_MONITOR, "ORGANIZATION", cluster.organization, at, "admin"
        )
        changed += [key, account]
    slots = 1 if cluster.frequency_minutes == 1440 else 24
    for slot in range(slots):
        when = at + timedelta(minutes=cluster.frequency_minutes * slot + 5)
        changed += _backup(rng, n, life, day, slot, when)
    changed += _retention(life, at)
    if day % 2 == 1 and life.chains:
        changed.append(_restore(rng, n, life, day, at + timedelta(hours=23)))
    store.save_all(*changed)  # type: ignore[arg-type]


def _backup(
    rng: random.Random, n: int, life: ClusterLife, day: int, slot: int, when: datetime
) -> list[Backup]:
    cluster = life.cluster
    full = slot == 0 or not life.chains
    backup_id = _id(n, day, slot)
    chain_id = backup_id if full else life.chains[-1][0].backup_id
    kind = BackupType.FULL if full else BackupType.INCREMENTAL
    cluster.schedule_backup(backup_id, kind, when, chain_id, when, "scheduler")
    backup = new_backup(
        cluster.cluster_id,
        backup_id,
        backup_type=kind.value,
        chain_id=chain_id,
        reason="SCHEDULED",
        region=cluster.backup_region,
        retention_days=cluster.retention_days,
        scheduled_for=when,
        executor="executor-1",
        at=when,
    )
    done = when + timedelta(seconds=rng.randint(5, 90))
    if rng.random() < 0.03 and not full:
        backup.fail("CONNECTION_FAILED", "could not connect", "connect", done, "executor-1")
        return [backup]
    tables = rng.randint(1, 4)
    catalog = [
        {
            "name": "app",
            "table_count": tables,
            "schemas": [
                {
                    "name": "public",
                    "tables": [
                        {"name": f"t{t}", "row_count": rng.randint(0, 10**6), "size_bytes": 8192}
                        for t in range(tables)
                    ],
                }
            ],
        }
    ]
    backup.complete(
        as_of_time=when,
        size_bytes=rng.randint(10**4, 10**8),
        database_count=1,
        catalog=catalog,
        manifest_key=f"clusters/{cluster.cluster_id}/chains/{chain_id}/manifests/{backup_id}.json",
        expires_at=when + timedelta(days=backup.retention_days),
        at=done,
        by="executor-1",
    )
    if slot % 12 == 3:
        backup.record_verification(
            ok=rng.random() > 0.1,
            chunks_checked=rng.randint(1, 500),
            missing_chunks=[],
            corrupt_chunks=[],
            command_id=uuid4(),
            at=done + timedelta(minutes=1),
            by="admin",
        )
    if full:
        life.chains.append([backup])
    else:
        life.chains[-1].append(backup)
    return [backup]


def _retention(life: ClusterLife, now: datetime) -> list[Backup]:
    """Expire and delete every chain whose full is past its retention, except the newest."""
    gone: list[Backup] = []
    while len(life.chains) > 1:
        chain = life.chains[0]
        full = chain[0]
        expires = full.as_of_time + timedelta(days=full.retention_days)  # type: ignore[operator]
        if expires > now:
            break
        life.chains.pop(0)
        for backup in chain:
            if backup.status == "COMPLETE":
                backup.expire("its chain reached its retention", expires, now, "retention")
            backup.record_deleted(3, 1 << 20, "expired", now, "retention")
            gone.append(backup)
    return gone


def _restore(rng: random.Random, n: int, life: ClusterLife, day: int, at: datetime) -> Restore:
    cluster = life.cluster
    backup = life.chains[-1][-1] if life.chains[-1][-1].status == "COMPLETE" else life.chains[-1][0]
    restore = Restore(
        restore_id=_id(n, day, "restore"),
        cluster_id=cluster.cluster_id,
        restore_type="TABLE",
        source_cluster_id=cluster.cluster_id,
        source_cluster_name=cluster.name,
        destination_cluster_name=cluster.name,
        backup_id=backup.backup_id,
        chain_id=backup.chain_id,
        backup_end_time=backup.as_of_time,  # type: ignore[arg-type]
        objects=[{"database": "app", "schema": "public", "table": "t0"}],
        restore_opts={"new_db_name": f"app_{day}"},
        target_database=f"app_{day}",
        worker="restore-1",
        lease_until=at + timedelta(hours=1),
        command_id=uuid4(),
        at=at,
        by=f"operator-{n}",
    )
    total = rng.randint(10**5, 10**8)
    restore.start_running(total, at + timedelta(seconds=1), "restore-1")
    for step in (0.25, 0.5, 0.75):
        restore.progress(int(total * step), at + timedelta(seconds=10 * step), "restore-1")
    if day % 5 == 0:
        restore.fail("CHUNK_CORRUPT", "a chunk is corrupt", "verify", "unchanged", at, "restore-1")
    else:
        restore.succeed(
            total,
            ["table app.public.t0"],
            ["a grant to a missing role"],
            at + timedelta(seconds=20),
            "restore-1",
        )
    return restore
