"""One runner of leased background jobs (backups, verifies, restores, key rotations).

A :class:`JobRunner` holds one kind of job for one service instance and does everything the
lease pattern of :mod:`managed_backups.shared.jobs` asks, once, so that every service (and the
fault suite) relies on the same mechanism:

- :meth:`JobRunner.take` takes the job's fenced lease in the command handler, *before* the job's
  start event is saved (a crash after it leaves a lease that expires);
- :meth:`JobRunner.start` spawns the worker and tracks it; a heartbeat renews the lease every
  third of its length and reports progress; a renewal that finds the lease lost (reaped, taken
  anew) cancels the worker (:attr:`JobHandle.cancel`);
- :meth:`JobHandle.check` refuses (:class:`~managed_backups.shared.jobs.LeaseLost`) each commit
  point and the terminal event of a worker whose fencing token is stale;
- once the worker returns, the runner looks once more: a worker that lost its lease and whose
  job was recorded but never ended (its lease was released as an orphan, so no reaper records
  the end) gets the service's ``record_lost`` (FAILED ``LEASE_LOST``): no job stays running;
- the lease is released with the worker's fence (a stale worker never drops its successor's
  lease), or left to the reaper when the worker says something is left to clean up
  (:meth:`JobHandle.leave_to_reaper`);
- :meth:`JobRunner.reap_once` (periodically: :meth:`JobRunner.reap`) fails every expired job
  this process does not run (the service's ``fail_expired``), cleans up after it (``cleanup``)
  and releases its lease; an orphan lease is simply released;
- :meth:`JobRunner.stop` cancels every worker and waits for them.

The service supplies only what is specific to its jobs: the work, how to record a job's end
after an expiry or a lost lease, how to clean up. Optimistic concurrency on the job's stream
settles a race between a late end and the reaper: exactly one of them is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar
from uuid import UUID

from eventsourcing.domain import Aggregate

from managed_backups.shared.eventstore import EventStore, IntegrityError
from managed_backups.shared.jobs import (
    Fence,
    JobLeases,
    Lease,
    LeaseLost,
    keep_renewed,
    lease_until,
)

log = logging.getLogger(__name__)


@dataclass
class JobHandle:
    """What a worker holds of its job: its lease's fence and the signals the runner gives it."""

    leases: JobLeases
    fence: Fence
    cluster_id: str
    detail: Mapping[str, Any] = field(default_factory=dict)
    cancel: threading.Event = field(default_factory=threading.Event)
    """Set when the worker must stop (its lease was lost, or the service stops)."""
    lost: threading.Event = field(default_factory=threading.Event)
    """Set once the worker's lease was found lost: it writes nothing more."""
    left_to_reaper: Mapping[str, Any] | None = None

    @property
    def job_id(self) -> UUID:
        return self.fence.job_id

    def lose(self) -> None:
        if not self.lost.is_set():
            log.warning("%s %s lost its lease: stopping it", self.leases.kind, self.job_id)
        self.lost.set()
        self.cancel.set()

    def check(self) -> None:
        """Call right before each write that commits the job's work or records its end:
        raises :class:`LeaseLost` (and stops the worker) once the lease is no longer its own.
        Synchronous: call from the worker's thread."""
        if self.lost.is_set():
            raise LeaseLost(f"{self.leases.kind} {self.job_id} lost its lease")
        try:
            self.leases.check(self.fence)
        except LeaseLost:
            self.lose()
            raise

    def holds(self) -> bool:
        """:meth:`check` as a boolean."""
        try:
            self.check()
        except LeaseLost:
            return False
        return True

    def write_fence(self, now: Callable[[], datetime], every: timedelta) -> Callable[[], None]:
        """A check for the worker to call before each object it writes: refused at once when the
        lease is known lost, and checked against the lease table whenever ``every`` (a renewal
        period) has passed on the clock since the last check, so a worker that stalled past its
        lease is refused its first write after the stall without a query per object."""
        checked = [now()]

        def before_write() -> None:
            if self.lost.is_set():
                raise LeaseLost(f"{self.leases.kind} {self.job_id} lost its lease")
            moment = now()
            if moment - checked[0] >= every:
                self.check()
                checked[0] = moment

        return before_write

    def leave_to_reaper(self, detail: Mapping[str, Any]) -> None:
        """The job ended but left something to clean up (described by ``detail``): at the end
        its lease expires at once instead of being released, and every instance's reaper
        retries the service's ``cleanup`` until it succeeds."""
        self.left_to_reaper = dict(detail)


Work = Callable[[JobHandle], Awaitable[None]]


class Job(Protocol):
    """A job's aggregate (a backup, a restore, a key rotation)."""

    @property
    def is_terminal(self) -> bool: ...


J = TypeVar("J", bound=Job)


def record_job(
    store: EventStore, job: J | None, change: Callable[[J], object], running: JobHandle | None
) -> bool:
    """Record ``change`` of a ``job`` that has not ended (None: not recorded); by its worker
    (``running``) only while the worker's fencing token is current. False when nothing was
    recorded: the job is unknown or ended, the worker lost its lease (the runner then records
    the end if nobody did), or someone else (a reaper, a late end) recorded first: that stands."""
    if job is None or job.is_terminal:
        return False
    if running is not None and not running.holds():
        return False
    change(job)
    assert isinstance(job, Aggregate)  # every job is an event-sourced aggregate
    try:
        store.save_all(job)
    except IntegrityError:
        return False
    return True


class JobRunner:
    """Leased jobs of one kind in one service instance (see the module docstring).

    ``fail_expired(lease)`` records the job of an expired lease as failed (``LEASE_EXPIRED``)
    and returns False when the job was never recorded or already ended; ``cleanup(lease)``
    removes what the job left half-done and raises while something is left (the lease is then
    kept for the next pass); ``record_lost(handle)`` records FAILED ``LEASE_LOST`` for a job
    whose worker lost its lease, unless its end is recorded already. Callbacks are synchronous
    (run in worker threads)."""

    def __init__(
        self,
        leases: JobLeases,
        owner: str,
        lease_seconds: float,
        clock: Callable[[], datetime],
        *,
        fail_expired: Callable[[Lease], bool],
        record_lost: Callable[[JobHandle], bool],
        cleanup: Callable[[Lease], None] = lambda lease: None,
    ) -> None:
        self.leases = leases
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.fail_expired = fail_expired
        self.record_lost = record_lost
        self.cleanup = cleanup
        self.running: dict[UUID, JobHandle] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def kind(self) -> str:
        return self.leases.kind

    # -- starting a job --------------------------------------------------------------------------

    def take(
        self, job_id: UUID, cluster_id: str, detail: Mapping[str, Any] | None = None
    ) -> JobHandle | None:
        """Take the job's lease (before its start event is saved); None if another worker
        holds it."""
        fence = self.leases.take_fenced(
            job_id, cluster_id, self.owner, self.until(), dict(detail or {})
        )
        if fence is None:
            return None
        return JobHandle(self.leases, fence, cluster_id, dict(detail or {}))

    def until(self) -> datetime:
        """Until when a lease taken or renewed now holds."""
        return lease_until(self.clock(), self.lease_seconds)

    def start(
        self,
        handle: JobHandle,
        work: Work,
        progress: Callable[[], None] | None = None,
        progress_seconds: float | None = None,
    ) -> asyncio.Task[None]:
        """Run ``work(handle)`` as a tracked task (see :meth:`run`)."""
        self.running[handle.job_id] = handle
        return self.spawn(self.run(handle, work, progress, progress_seconds))

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Track a task of this service's (awaited by :meth:`stop`)."""
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def running_on(self, cluster_id: str) -> JobHandle | None:
        """A job of this instance's running on ``cluster_id``, if any."""
        return next((h for h in self.running.values() if h.cluster_id == cluster_id), None)

    # -- running it ------------------------------------------------------------------------------

    async def run(
        self,
        handle: JobHandle,
        work: Work,
        progress: Callable[[], None] | None = None,
        progress_seconds: float | None = None,
    ) -> None:
        """``work(handle)`` with its lease renewed (and ``progress`` reported every
        ``progress_seconds``) until it returns; then the lost-lease fallback and the release.
        ``work`` records the job's end itself (checking the fence first); an exception it lets
        out is logged, and the fallback still runs."""
        self.running[handle.job_id] = handle
        heartbeat = asyncio.create_task(
            keep_renewed(
                self.leases,
                handle.job_id,
                self.lease_seconds,
                self.clock,
                handle.fence,
                handle.lose,
                progress_seconds,
                progress,
            )
        )
        crashed = False
        try:
            await work(handle)
        except Exception:
            crashed = True  # e.g. its end could not be recorded: the database went away
            log.exception("%s %s failed unexpectedly", self.kind, handle.job_id)
        finally:
            heartbeat.cancel()
            await self._end(handle, crashed)

    async def _end(self, handle: JobHandle, crashed: bool = False) -> None:
        try:
            if not handle.lost.is_set():  # found out only now (e.g. reaped as it ended)
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(handle.holds)
            if handle.lost.is_set():
                log.warning(
                    "%s %s: its worker lost its lease and stopped", self.kind, handle.job_id
                )
                await asyncio.to_thread(self.record_lost, handle)
            elif crashed:  # its end may be unrecorded: never release, hand it to the reaper
                await self._hand_to_reaper(handle)
                return
            elif handle.left_to_reaper is not None:
                await asyncio.to_thread(
                    self.leases.leave_to_reaper, handle.job_id, self.clock(), handle.left_to_reaper
                )
                return
            await asyncio.to_thread(self.leases.release, handle.job_id, handle.fence)
        except Exception:
            log.exception("ending %s %s failed; handing it to the reaper", self.kind, handle.job_id)
            await self._hand_to_reaper(handle)
        finally:
            if self.running.get(handle.job_id) is handle:
                self.running.pop(handle.job_id, None)

    async def _hand_to_reaper(self, handle: JobHandle) -> None:
        """Expire the job's lease now (:meth:`JobLeases.expire`), retried until the database
        answers: the reaper of any instance, this one's included once the job leaves
        :attr:`running`, then records its end (``LEASE_EXPIRED`` if none was) and cleans up,
        instead of nobody until the lease's length passes (which a clock that stands still,
        simulated, never reaches). A stopping service leaves the lease to expire by itself."""
        delay = 0.5
        while True:
            try:
                await asyncio.to_thread(self.leases.expire, handle.fence, self.clock())
                return
            except Exception as error:
                log.warning(
                    "handing %s %s to the reaper failed (%s); retrying in %.1f s",
                    self.kind,
                    handle.job_id,
                    error,
                    delay,
                )
            if handle.cancel.is_set():
                return
            await asyncio.sleep(delay)
            delay = min(2 * delay, 5.0)

    # -- reaping ---------------------------------------------------------------------------------

    def reap_once(self, now: datetime | None = None) -> int:
        """Fail and clean up every job whose lease expired (except those this process runs);
        returns how many were failed."""
        return self.leases.reap(
            now or self.clock(),
            self.fail_expired,
            self.cleanup,
            running_here=lambda job_id: job_id in self.running,
        )

    async def reap(
        self, stop: asyncio.Event, after_pass: Callable[[datetime], None] | None = None
    ) -> None:
        """Reap every sixth of the lease's length until ``stop``; ``after_pass(now)`` once
        every job that expired by ``now`` was reaped (e.g. a simulated clock's report)."""
        interval = max(0.2, self.lease_seconds / 6)
        while not stop.is_set():
            try:
                now = self.clock()
                await asyncio.to_thread(self.reap_once, now)
                if after_pass is not None:
                    await asyncio.to_thread(after_pass, now)
            except Exception:
                log.exception("reaping expired %s leases failed", self.kind)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)

    async def stop(self) -> None:
        """Cancel every worker and wait for them (their leases released or left to expire)."""
        for handle in self.running.values():
            handle.cancel.set()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
