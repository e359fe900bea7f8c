"""The one runner of leased jobs (``shared/job_runner.py``), on a real SQLite lease table: a
worker that lost its lease is cancelled and its commits refused; expired jobs are reaped; a
job whose lease was released as an orphan still gets its end; stop cancels and waits."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from managed_backups.shared.job_runner import JobHandle, JobRunner, Work
from managed_backups.shared.jobs import JobLeases, Lease, LeaseLost, lease_until
from managed_backups.shared.sqldb import SqlDatabase

NOW = datetime(2026, 1, 5, tzinfo=UTC)
LEASE = 0.3  # seconds: the heartbeat renews every 0.1 s


class Jobs:
    """A service's side of the runner, in memory: which jobs are recorded, and their ends."""

    def __init__(self) -> None:
        self.recorded: set[UUID] = set()
        self.ended: dict[UUID, str] = {}
        self.cleaned: list[UUID] = []
        self.cleanup_fails = False

    def end(self, job_id: UUID, how: str) -> bool:
        if job_id not in self.recorded or job_id in self.ended:
            return False
        self.ended[job_id] = how
        return True

    def fail_expired(self, lease: Lease) -> bool:
        return self.end(lease.job_id, "LEASE_EXPIRED")

    def record_lost(self, handle: JobHandle) -> bool:
        return self.end(handle.job_id, "LEASE_LOST")

    def cleanup(self, lease: Lease) -> None:
        if self.cleanup_fails:
            raise RuntimeError("something is left")
        self.cleaned.append(lease.job_id)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[SqlDatabase]:
    db = SqlDatabase(f"sqlite:///{tmp_path / 'leases.sqlite'}")
    yield db
    db.close()


def runner_of(db: SqlDatabase, service: Jobs, owner: str = "worker-a") -> JobRunner:
    return JobRunner(
        JobLeases(db, "test-job"),
        owner,
        LEASE,
        lambda: NOW,
        fail_expired=service.fail_expired,
        record_lost=service.record_lost,
        cleanup=service.cleanup,
    )


def taken(
    db: SqlDatabase, detail: dict[str, str] | None = None
) -> tuple[Jobs, JobRunner, JobHandle]:
    """A service's runner, and the handle of a job it took and recorded."""
    service = Jobs()
    runner = runner_of(db, service)
    handle = runner.take(uuid4(), "c1", detail)
    assert handle is not None
    service.recorded.add(handle.job_id)
    return service, runner, handle


def commit_when_cancelled(service: Jobs, outcome: list[str]) -> Work:
    """A job that works until told to stop, then tries to commit (as a backup's manifest)."""

    async def work(handle: JobHandle) -> None:
        def run() -> None:
            handle.cancel.wait(30)
            try:
                handle.check()
            except LeaseLost:
                outcome.append("refused")
                return
            outcome.append("committed")
            service.end(handle.job_id, "COMPLETE")

        await asyncio.to_thread(run)

    return work


async def test_a_worker_whose_lease_was_reaped_is_cancelled_and_its_commit_refused(
    db: SqlDatabase,
) -> None:
    service, runner, handle = taken(db, {"what": "it"})
    job = handle.job_id
    outcome: list[str] = []
    task = runner.start(handle, commit_when_cancelled(service, outcome))
    await asyncio.sleep(LEASE)  # renewed on the way: still running, nothing ended
    assert not handle.cancel.is_set() and runner.running == {job: handle}

    # Another instance's reaper: the job recorded FAILED, its lease released.
    assert service.fail_expired(Lease(job, "test-job", "c1", "worker-a", NOW)) is True
    runner.leases.release(job)
    async with asyncio.timeout(10):
        await task
    assert handle.lost.is_set() and outcome == ["refused"]
    assert service.ended == {job: "LEASE_EXPIRED"}  # the reaper's end stands
    assert runner.running == {} and runner.leases.expired(NOW + timedelta(days=1)) == []


async def test_a_stale_worker_never_releases_its_successors_lease(db: SqlDatabase) -> None:
    service, runner, handle = taken(db)
    job = handle.job_id
    outcome: list[str] = []
    runner.leases.release(job)  # reaped, then taken anew by another worker
    successor = JobLeases(db, "test-job").take_fenced(job, "c1", "worker-b", lease_until(NOW, 60))
    assert successor is not None
    async with asyncio.timeout(10):
        await runner.start(handle, commit_when_cancelled(service, outcome))
    assert outcome == ["refused"] and service.ended == {job: "LEASE_LOST"}
    [kept] = runner.leases.expired(NOW + timedelta(days=1))
    assert (kept.owner, kept.until) == ("worker-b", lease_until(NOW, 60))


async def test_a_job_whose_lease_was_released_as_an_orphan_ends_lease_lost(
    db: SqlDatabase,
) -> None:
    """The lease expired before the job's start was saved: the reaper found no job and released
    the lease as an orphan (recording nothing); then the start was saved. Its worker finds its
    lease gone and stops; the runner records the end nobody else will."""
    service = Jobs()
    runner = runner_of(db, service)
    reaper = runner_of(db, service, "worker-b")
    job = uuid4()
    handle = runner.take(job, "c1")
    assert handle is not None
    assert reaper.reap_once(NOW + timedelta(seconds=LEASE * 2)) == 0  # an orphan: released
    assert runner.leases.expired(NOW + timedelta(days=1)) == []
    service.recorded.add(job)  # the start saved late
    outcome: list[str] = []
    async with asyncio.timeout(10):
        await runner.start(handle, commit_when_cancelled(service, outcome))
    assert outcome == ["refused"]
    assert service.ended == {job: "LEASE_LOST"}


async def test_a_job_that_ends_releases_its_lease_and_records_no_loss(db: SqlDatabase) -> None:
    service, runner, handle = taken(db)
    job = handle.job_id
    reported: list[int] = []

    async def work(handle: JobHandle) -> None:
        await asyncio.sleep(LEASE)
        await asyncio.to_thread(handle.check)
        service.end(handle.job_id, "COMPLETE")

    async with asyncio.timeout(10):
        await runner.start(handle, work, lambda: reported.append(1), progress_seconds=0.05)
    assert service.ended == {job: "COMPLETE"} and not handle.lost.is_set()
    assert len(reported) >= 2  # progress reported by the heartbeat while it ran
    assert runner.leases.expired(NOW + timedelta(days=1)) == [] and runner.running == {}


async def test_a_job_that_left_something_behind_leaves_its_lease_to_the_reaper(
    db: SqlDatabase,
) -> None:
    service, runner, handle = taken(db, {"holds": "much"})
    job = handle.job_id

    async def work(handle: JobHandle) -> None:
        service.end(handle.job_id, "FAILED")
        handle.leave_to_reaper({"left": "db_1"})

    await runner.start(handle, work)
    [left] = runner.leases.expired(NOW + timedelta(seconds=1))
    assert left.detail == {"left": "db_1"} and left.until == NOW
    service.cleanup_fails = True
    assert runner.reap_once(NOW + timedelta(seconds=1)) == 0
    assert len(runner.leases.expired(NOW + timedelta(seconds=1))) == 1  # kept: retried
    service.cleanup_fails = False
    assert runner.reap_once(NOW + timedelta(seconds=1)) == 0  # the job had ended already
    assert service.cleaned == [job] and runner.leases.expired(NOW + timedelta(days=1)) == []


async def test_a_job_whose_end_could_not_be_recorded_is_handed_to_the_reaper_at_once(
    db: SqlDatabase,
) -> None:
    """Its worker crashed (recording its end failed: the database went away, then came back):
    its lease is neither released (the job would stay running for ever, with nothing to reap)
    nor left to run out (a clock standing still never gets there): it expires now, and the next
    reaper pass, on the same clock, fails the job."""
    service, runner, handle = taken(db, {"holds": "chunks"})
    job = handle.job_id

    async def work(handle: JobHandle) -> None:
        raise OSError("the database system is shutting down")

    async with asyncio.timeout(10):
        await runner.start(handle, work)
    [left] = runner.leases.expired(NOW)  # expired already on the same, unmoved, clock
    assert left.detail == {"holds": "chunks"} and runner.running == {}
    assert runner.reap_once(NOW) == 1
    assert service.ended == {job: "LEASE_EXPIRED"} and service.cleaned == [job]
    assert runner.leases.expired(NOW + timedelta(days=1)) == []


def test_the_reaper_fails_expired_jobs_but_not_its_own_and_drops_orphans(db: SqlDatabase) -> None:
    service = Jobs()
    runner = runner_of(db, service)
    dead = JobLeases(db, "test-job")
    recorded, orphan, mine = uuid4(), uuid4(), uuid4()
    for job in (recorded, orphan):
        dead.take(job, "c1", "worker-dead", NOW - timedelta(seconds=1))
    service.recorded.add(recorded)
    handle = runner.take(mine, "c2")
    assert handle is not None
    runner.running[mine] = handle  # running here: its lease is this process's to renew
    later = NOW + timedelta(seconds=LEASE * 2)
    assert runner.reap_once(later) == 1
    assert service.ended == {recorded: "LEASE_EXPIRED"}
    assert set(service.cleaned) == {recorded, orphan}
    assert [lease.job_id for lease in runner.leases.expired(later)] == [mine]


async def test_the_periodic_reaper_runs_until_stopped(db: SqlDatabase) -> None:
    service = Jobs()
    runner = runner_of(db, service)
    job = uuid4()
    JobLeases(db, "test-job").take(job, "c1", "worker-dead", NOW - timedelta(seconds=1))
    service.recorded.add(job)
    passes: list[datetime] = []
    stop = asyncio.Event()
    reaping = asyncio.create_task(runner.reap(stop, passes.append))
    async with asyncio.timeout(10):
        while not passes:
            await asyncio.sleep(0.01)
    assert service.ended == {job: "LEASE_EXPIRED"}
    stop.set()
    async with asyncio.timeout(5):
        await reaping


async def test_stop_cancels_every_worker_and_waits_for_it(db: SqlDatabase) -> None:
    service, runner, handle = taken(db)
    job = handle.job_id
    stopped = threading.Event()

    async def work(handle: JobHandle) -> None:
        await asyncio.to_thread(handle.cancel.wait, 30)
        service.end(handle.job_id, "CANCELLED")
        stopped.set()

    runner.start(handle, work)
    await asyncio.sleep(0.05)
    async with asyncio.timeout(10):
        await runner.stop()
    assert stopped.is_set() and service.ended == {job: "CANCELLED"}
    assert runner.tasks == set() and runner.running == {}
    assert runner.leases.expired(NOW + timedelta(days=1)) == []
