"""A backup worker's object writes are fenced: once its lease is lost (reaped while it stalled,
taken anew), the next chunk it writes is refused, so nothing lands in a chain that retention may
already have deleted or swept (the fault suite met such an orphan chunk)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import pytest

from managed_backups.services.executor.executor import BackupExecutor
from managed_backups.shared.dataplane.errors import BackupError, ErrorCode
from managed_backups.shared.dataplane.objectstore import open_store
from managed_backups.shared.job_runner import JobHandle
from managed_backups.shared.jobs import JobLeases, lease_until
from managed_backups.shared.sqldb import SqlDatabase

NOW = datetime(2026, 3, 1, tzinfo=UTC)
LEASE = 60.0


class Clock:
    def __init__(self) -> None:
        self.at = NOW

    def now(self) -> datetime:
        return self.at


def refused() -> None:
    raise BackupError(ErrorCode.LEASE_LOST, "stale", "executor lease")


def test_a_fenced_store_asks_before_every_write_and_the_raw_one_does_not() -> None:
    store = open_store("memory://")
    fenced = store.fenced_by(refused)
    with pytest.raises(BackupError):
        fenced.put_if_absent("clusters/c/chains/x/chunks/aa/aa", b"chunk")
    with pytest.raises(BackupError):
        fenced.put_new("clusters/c/chains/x/manifests/b.json", b"{}")
    assert not store.exists("clusters/c/chains/x/chunks/aa/aa")
    assert not store.exists("clusters/c/chains/x/manifests/b.json")
    assert store.put_if_absent("clusters/c/chains/x/chunks/aa/aa", b"chunk")
    assert fenced.sealed_with(None).before_write is refused  # a view of it stays fenced


def executor_with(db: SqlDatabase, clock: Clock) -> Any:
    executor: Any = BackupExecutor.__new__(BackupExecutor)
    executor.settings = SimpleNamespace(backup_lease_seconds=LEASE)
    executor.runtime = SimpleNamespace(clock=clock)
    executor.leases = JobLeases(db, "backup")
    return executor


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[tuple[Any, Clock, JobHandle]]:
    """An executor on a clock and a worker holding its backup's lease."""
    db = SqlDatabase(f"sqlite:///{tmp_path / 's.sqlite'}")
    clock = Clock()
    executor = executor_with(db, clock)
    fence = executor.leases.take_fenced(uuid4(), "c1", "executor-a", lease_until(NOW, LEASE))
    assert fence is not None
    yield executor, clock, JobHandle(executor.leases, fence, "c1")
    db.close()


def test_a_worker_that_stalled_past_its_lease_writes_no_more_chunks(
    worker: tuple[Any, Clock, JobHandle],
) -> None:
    executor, clock, running = worker
    job = running.job_id
    store = open_store("memory://").fenced_by(executor._write_fence(running))

    store.put_if_absent("k/1", b"one")  # the lease is its own
    executor.leases.release(job)  # it stalls; the reaper fails its backup and drops the lease
    clock.at = NOW + timedelta(seconds=LEASE + 5)
    with pytest.raises(BackupError) as lost:
        store.put_if_absent("k/2", b"two")
    assert lost.value.code is ErrorCode.LEASE_LOST
    assert not store.exists("k/2") and running.lost.is_set()
    with pytest.raises(BackupError):  # and every write after it
        store.put_if_absent("k/3", b"three")


def test_a_worker_holding_its_lease_checks_it_once_a_renewal_period(
    worker: tuple[Any, Clock, JobHandle],
) -> None:
    executor, clock, running = worker
    store = open_store("memory://").fenced_by(executor._write_fence(running))
    checks = []
    check = executor.leases.check
    executor.leases.check = lambda f: (checks.append(f), check(f))
    for second in range(0, 61, 5):
        clock.at = NOW + timedelta(seconds=second)
        store.put_if_absent(f"k/{second}", b"x")
    assert len(checks) == 3  # at 20, 40 and 60 s: a third of the lease apart
