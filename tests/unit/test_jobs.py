"""Job leases: taken, renewed, expired, released; leases of version 0.1 adopted."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest

from managed_backups.services.executor.leases import LEGACY_TABLE, backup_leases
from managed_backups.shared.domain.backup_lifecycle import chain_has_expired, incremental_parent
from managed_backups.shared.jobs import (
    SWEEP,
    Fence,
    JobLeases,
    LeaseLost,
    backup_writing_chain,
    backups_in_use,
    holding,
    keep_renewed,
    lease_until,
    sweep_of_chain,
)
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


def test_the_sweep_handshake_each_side_sees_the_other(tmp_path: Path) -> None:
    """A sweep lease and a backup lease on one chain: each side finds the other's; another
    chain or cluster is not concerned; an expired sweep lease holds nothing back."""
    db = SqlDatabase(f"sqlite:///{tmp_path / 's.sqlite'}")
    chain, other = uuid4(), uuid4()
    sweeps, backups = JobLeases(db, SWEEP), backup_leases(db)
    assert sweep_of_chain(db, "c1", str(chain), NOW) is None
    assert backup_writing_chain(db, "c1", str(chain)) is None
    sweeps.take(chain, "c1", "retention", lease_until(NOW, 60), {"chain_id": str(chain)})
    backup = uuid4()
    backups.take(backup, "c1", "executor-a", NOW, {"chain_id": str(chain), "region": "r1"})
    found = sweep_of_chain(db, "c1", str(chain), NOW + timedelta(seconds=60))
    assert found is not None and found.owner == "retention"
    assert sweep_of_chain(db, "c1", str(chain), NOW + timedelta(seconds=61)) is None  # expired
    assert sweep_of_chain(db, "c1", str(other), NOW) is None
    assert sweep_of_chain(db, "c2", str(chain), NOW) is None
    writing = backup_writing_chain(db, "c1", str(chain))
    assert writing is not None and writing.job_id == backup  # expired or not: not released
    assert backup_writing_chain(db, "c1", str(other)) is None
    backups.release(backup)
    sweeps.release(chain)
    assert backup_writing_chain(db, "c1", str(chain)) is None
    assert sweep_of_chain(db, "c1", str(chain), NOW) is None
    assert backups_in_use(db) == set()  # neither lease holds backups
    db.close()


def test_a_backup_waits_for_the_sweep_of_its_chain(tmp_path: Path) -> None:
    """The executor's side of the handshake: while an unexpired sweep lease names its chain,
    the backup does not go on (cancelled there, it says so); once released, it goes on."""
    import threading

    from managed_backups.services.executor.executor import BackupExecutor
    from managed_backups.services.runtime import open_runtime
    from managed_backups.shared.dataplane.engine import BackupError, ErrorCode
    from managed_backups.shared.settings import Settings

    runtime = open_runtime(Settings(data_dir=tmp_path / "data"))
    try:
        executor = BackupExecutor(runtime, "executor-a")
        chain = uuid4()
        sweeps = JobLeases(runtime.db, SWEEP)
        until = lease_until(runtime.clock.now(), 3600)
        sweeps.take(chain, "c1", "retention", until, {"chain_id": str(chain)})
        cancel = threading.Event()
        cancel.set()
        with pytest.raises(BackupError) as info:
            executor._wait_for_sweep("c1", str(chain), cancel)
        assert info.value.code is ErrorCode.CANCELLED and info.value.step == "wait for a sweep"
        executor._wait_for_sweep("c1", str(uuid4()), cancel)  # another chain: no wait
        sweeps.release(chain)
        executor._wait_for_sweep("c1", str(chain), cancel)
    finally:
        runtime.close()


def test_a_lease_left_to_the_reaper_holds_nothing_and_is_retried_until_cleaned(
    tmp_path: Path,
) -> None:
    """A restore that ended with temporary databases it could not drop leaves its lease to
    the reaper: expired at once, holding no backup and excluding nothing; the reaper releases
    it only once its clean-up succeeds."""
    from managed_backups.shared.jobs import EXCLUSIVE, clusters_held_exclusively

    db = SqlDatabase(f"sqlite:///{tmp_path / 's.sqlite'}")
    restores = JobLeases(db, "restore")
    job = uuid4()
    restores.take(
        job, "c1", "restore-a", lease_until(NOW, 60), {EXCLUSIVE: True, **holding(["f1"])}
    )
    assert clusters_held_exclusively(db) == {"c1"} and backups_in_use(db) == {"f1"}
    restores.leave_to_reaper(job, NOW, {"target_database": "orders"})
    assert clusters_held_exclusively(db) == set() and backups_in_use(db) == set()
    attempts: list[str] = []

    def cleanup(lease: object) -> None:
        attempts.append("cleanup")
        if len(attempts) == 1:
            raise RuntimeError("a database is still there")

    later = NOW + timedelta(seconds=1)
    assert restores.reap(later, lambda lease: False, cleanup) == 0
    [lease] = restores.expired(later)
    assert lease.detail == {"target_database": "orders"}
    restores.reap(later, lambda lease: False, cleanup)
    assert attempts == ["cleanup", "cleanup"] and restores.expired(later) == []
    db.close()


def test_a_restore_says_its_temporary_databases_were_dropped_only_when_none_is_left() -> None:
    from managed_backups.services.restore.restorer import cleanup_state
    from managed_backups.shared.dataplane.restore_plan import DropReport

    assert cleanup_state(DropReport(["mb_restore_1"], [])) == (
        "the restore's temporary databases were dropped"
    )
    left = cleanup_state(DropReport([], [("mb_restore_1_old_0", "permission denied")]))
    assert "were dropped" not in left
    assert "mb_restore_1_old_0 (permission denied)" in left
    unknown = cleanup_state(None, "connection refused")
    assert "were dropped" not in unknown and "connection refused" in unknown


def test_a_stale_fencing_token_is_refused_and_cannot_renew_or_release(tmp_path: Path) -> None:
    db = SqlDatabase(f"sqlite:///{tmp_path / 's.sqlite'}")
    leases = JobLeases(db, "backup")
    job = uuid4()
    first = leases.take_fenced(job, "c1", "executor-a", lease_until(NOW, 60))
    assert first is not None
    assert leases.take_fenced(job, "c1", "executor-b", lease_until(NOW, 60)) is None
    assert leases.take_fenced(job, "c1", "executor-a", lease_until(NOW, 90)) == first  # extended
    leases.check(first)
    assert leases.renew(job, lease_until(NOW, 120), first)

    leases.release(job)  # reaped by another instance, then taken anew by executor-b
    with pytest.raises(LeaseLost, match="reaped"):
        leases.check(first)
    assert not leases.renew(job, lease_until(NOW, 180), first)
    second = leases.take_fenced(job, "c1", "executor-b", lease_until(NOW, 60))
    assert second is not None and second.token != first.token
    with pytest.raises(LeaseLost, match="stale"):
        leases.check(first)
    assert not leases.renew(job, lease_until(NOW, 180), first)
    leases.release(job, first)  # the stale worker's release leaves the new holder's lease
    [held] = leases.expired(NOW + timedelta(days=1))
    assert held.owner == "executor-b" and held.until == lease_until(NOW, 60)
    leases.check(second)
    db.close()


def test_leases_taken_before_fencing_get_a_token_column(tmp_path: Path) -> None:
    db = SqlDatabase(f"sqlite:///{tmp_path / 's.sqlite'}")
    db.execute(
        "CREATE TABLE mb_job_leases (kind TEXT NOT NULL, job_id TEXT NOT NULL, "
        "cluster_id TEXT NOT NULL, owner TEXT NOT NULL, lease_until TEXT NOT NULL, "
        "detail TEXT NOT NULL, PRIMARY KEY (kind, job_id))"
    )
    old = uuid4()
    db.execute(
        "INSERT INTO mb_job_leases VALUES (?, ?, ?, ?, ?, ?)",
        ("backup", str(old), "c1", "executor-0", NOW.isoformat(), "{}"),
    )
    leases = JobLeases(db, "backup")
    [lease] = leases.expired(NOW + timedelta(seconds=1))
    assert lease.job_id == old
    with pytest.raises(LeaseLost):
        leases.check(Fence(old, "executor-0", "any-token"))
    db.close()


async def test_keep_renewed_stops_the_worker_once_its_lease_is_lost(tmp_path: Path) -> None:
    db = SqlDatabase(f"sqlite:///{tmp_path / 's.sqlite'}")
    leases = JobLeases(db, "backup")
    job = uuid4()
    fence = leases.take_fenced(job, "c1", "executor-a", lease_until(NOW, 0.3))
    assert fence is not None
    lost = asyncio.Event()
    renewing = asyncio.create_task(keep_renewed(leases, job, 0.3, lambda: NOW, fence, lost.set))
    await asyncio.sleep(0.25)  # renewed at least once: still held
    assert not lost.is_set() and not renewing.done()
    leases.release(job)
    async with asyncio.timeout(5):
        await lost.wait()
        await renewing  # it returns once it told the worker to stop
    db.close()


def test_an_incremental_builds_on_the_newest_complete_backup() -> None:
    chain = [("full", NOW), ("i1", NOW + timedelta(hours=1)), ("reaped", NOW + timedelta(hours=2))]
    assert incremental_parent(chain, lambda b: b != "reaped") == "i1"
    assert incremental_parent(chain, lambda b: True) == "reaped"
    assert incremental_parent(chain, lambda b: False) is None
    assert chain_has_expired("EXPIRED") and not chain_has_expired("COMPLETE")
    assert not chain_has_expired(None)


async def test_a_verify_holds_its_backup_through_its_lease_until_it_ends(tmp_path: Path) -> None:
    """A VerifyBackup runs through the job runner under a ``verify`` lease that holds the
    backup (retention deletes no chain a lease names) from the command's handling until the
    verify recorded its report; a refused one leaves no lease."""
    from managed_backups.contracts.commands import VerifyBackup
    from managed_backups.contracts.enums import Role
    from managed_backups.services.executor.executor import BackupExecutor
    from managed_backups.services.runtime import open_runtime
    from managed_backups.shared.commands import CommandContext
    from managed_backups.shared.domain.backup import load_backup
    from managed_backups.shared.domain.errors import NotFound
    from managed_backups.shared.jobs import VERIFY, of_kind
    from managed_backups.shared.security import Grant, Principal
    from managed_backups.shared.settings import Settings
    from tests.factories import new_cluster

    runtime = open_runtime(Settings(data_dir=tmp_path / "data"))
    try:
        executor = BackupExecutor(runtime, "executor-a")
        now = runtime.clock.now()
        backup = new_backup("shop", region="us-east-1", at=now)
        backup.complete(
            as_of_time=now, size_bytes=1, database_count=0, catalog=[], manifest_key="m",
            expires_at=now + timedelta(days=7), at=now, by="test",
        )  # fmt: skip
        runtime.store.save_all(new_cluster("shop"), backup)
        admin = Principal("someone", "k", (Grant(Role.CLUSTER_ADMIN, "cluster:shop"),))
        context = CommandContext(runtime.store, runtime.clock, "executor-a")
        command = VerifyBackup(
            command_id=uuid4(), token="t", cluster_id="shop", backup_id=backup.backup_id
        )
        handled = executor.verify(command, admin, context)
        assert backups_in_use(runtime.db, "shop") == {str(backup.backup_id)}
        assert handled.follow_up is not None
        await handled.follow_up()
        async with asyncio.timeout(30):
            await asyncio.gather(*executor.verifies.tasks)
        verified = load_backup(runtime.store, "shop", backup.backup_id)
        assert verified is not None and verified.version == backup.version + 1  # its report
        assert backups_in_use(runtime.db) == set() and of_kind(runtime.db, VERIFY) == []

        unknown = VerifyBackup(command_id=uuid4(), token="t", cluster_id="shop", backup_id=uuid4())
        with pytest.raises(NotFound):
            executor.verify(unknown, admin, context)
        assert of_kind(runtime.db, VERIFY) == []
    finally:
        runtime.close()
