"""Job leases: taken, renewed, expired, released; leases of version 0.1 adopted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

from managed_backups.services.executor.leases import LEGACY_TABLE, backup_leases
from managed_backups.shared.jobs import JobLeases, backups_in_use, holding, lease_until
from managed_backups.shared.sqldb import SqlDatabase
from tests.factories import new_backup

NOW = datetime(2026, 1, 5, tzinfo=UTC)


def test_a_lease_expires_unless_renewed_and_kinds_do_not_mix(tmp_path: Path) -> None:
    db = SqlDatabase(f"sqlite:///{tmp_path / 's.sqlite'}")
    backups, restores = JobLeases(db, "backup"), JobLeases(db, "restore")
    job = uuid4()
    backups.take(job, "c1", "executor-a", lease_until(NOW, 60), {"region": "r1"})
    assert backups.expired(NOW + timedelta(seconds=59)) == []
    assert restores.expired(NOW + timedelta(days=1)) == []
    backups.renew(job, lease_until(NOW, 120))
    assert backups.expired(NOW + timedelta(seconds=61)) == []
    [lease] = backups.expired(NOW + timedelta(seconds=121))
    assert (lease.job_id, lease.cluster_id, lease.owner, lease.detail) == (
        job,
        "c1",
        "executor-a",
        {"region": "r1"},
    )
    backups.release(job)
    assert backups.expired(NOW + timedelta(days=1)) == []
    db.close()


def test_leases_of_version_0_1_are_adopted(tmp_path: Path) -> None:
    db = SqlDatabase(f"sqlite:///{tmp_path / 's.sqlite'}")
    db.execute(
        f"CREATE TABLE {LEGACY_TABLE} (backup_id TEXT PRIMARY KEY, cluster_id TEXT NOT NULL, "
        "chain_id TEXT NOT NULL, region TEXT NOT NULL, executor TEXT NOT NULL, "
        "lease_until TEXT NOT NULL)"
    )
    backup, chain = uuid4(), uuid4()
    db.execute(
        f"INSERT INTO {LEGACY_TABLE} VALUES (?, ?, ?, ?, ?, ?)",
        (str(backup), "c1", str(chain), "r1", "old-executor", NOW.isoformat()),
    )
    leases = backup_leases(db)
    [lease] = leases.expired(NOW + timedelta(seconds=1))
    assert lease.job_id == backup and lease.detail == {"chain_id": str(chain), "region": "r1"}
    assert not db.table_exists(LEGACY_TABLE)
    db.close()


def test_the_reaper_fails_a_recorded_backup_and_drops_an_orphan(tmp_path: Path) -> None:
    from managed_backups.services.executor.executor import BackupExecutor
    from managed_backups.services.runtime import open_runtime
    from managed_backups.shared.domain.backup import load_backup
    from managed_backups.shared.settings import Settings

    runtime = open_runtime(Settings(data_dir=tmp_path / "data", backup_lease_seconds=1))
    try:
        executor = BackupExecutor(runtime, "reaper")
        now = runtime.clock.now()
        recorded, orphan = uuid4(), uuid4()
        runtime.store.save_all(
            new_backup("c1", recorded, executor="dead-executor", lease_until=now, at=now)
        )
        past = now - timedelta(seconds=5)
        for job in (recorded, orphan):
            executor.leases.take(
                job, "c1", "dead-executor", past, {"chain_id": str(job), "region": "r1"}
            )
        position = runtime.store.max_position()
        assert executor.reap_once() == 1
        failed = load_backup(runtime.store, "c1", recorded)
        assert failed is not None and failed.status == "FAILED"
        assert failed.error is not None and failed.error["code"] == "LEASE_EXPIRED"
        assert runtime.store.max_position() == position + 1  # nothing recorded for the orphan
        assert executor.leases.expired(now + timedelta(days=1)) == []
    finally:
        runtime.close()


def test_backups_held_by_a_lease_are_in_use_until_it_is_released(tmp_path: Path) -> None:
    db = SqlDatabase(f"sqlite:///{tmp_path / 's.sqlite'}")
    assert backups_in_use(db) == set()
    restores, backups = JobLeases(db, "restore"), JobLeases(db, "backup")
    job, other = uuid4(), uuid4()
    restores.take(job, "c1", "restore-a", lease_until(NOW, 60), holding(["f1", "i1"]))
    restores.take(other, "c2", "restore-a", lease_until(NOW, 60), holding(["f9"]))
    backups.take(uuid4(), "c1", "executor-a", lease_until(NOW, 60), {"region": "r1"})
    assert backups_in_use(db) == {"f1", "i1", "f9"}
    assert backups_in_use(db, "c1") == {"f1", "i1"}
    # An expired lease still holds its backups: its reaper has not cleaned up yet.
    assert {lease.job_id for lease in restores.expired(NOW + timedelta(days=1))} == {job, other}
    assert backups_in_use(db, "c1") == {"f1", "i1"}
    restores.release(job)
    assert backups_in_use(db, "c1") == set()
    db.close()
