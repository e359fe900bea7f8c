"""One log follower for every service: a named position, batches after it, resume.

Every reader of the event store's notification log goes through :class:`LogReader` (a batch
after a position, optionally of some topics only); the services that keep their position in
the database follow it with :class:`LogFollower`:

- **Position table.** A position is one named row of a table ``(name TEXT PRIMARY KEY,
  position BIGINT)`` (:class:`PositionRow`). Every follower's table has had that shape since it
  was written (the relay's ``mb_relay_position``, the views' ``mb_view_position``, the retention
  index's ``mb_retention_position``), so the follower reads and writes those rows where they
  are: a system upgraded in place resumes exactly where the old code stopped, neither replaying
  nor skipping an event. (The views' row must stay beside the views: a rebuild swaps the whole
  set of tables, position included, in one transaction.)
- **Batch, commit.** :meth:`LogFollower.follow_once` reads a batch after the stored position and
  applies it *in the same transaction* that moves the position (projections, the retention
  index: their rows and their position change together). :meth:`LogFollower.follow_once_then_commit`
  first performs the batch's side effect (the relay: the broker acknowledged every event), then
  moves the position. Either way the move is a compare-and-set from the position the batch was
  read after: two instances never apply a batch twice, and an instance that paused mid-batch and
  resumes can never move the position back; it finds it moved and rereads from there.
- **Resume.** Nothing is kept in memory between batches: each batch starts from the stored
  position, so a restarted (or restarted-after-failure, :mod:`.loops`) follower goes on from the
  last committed batch. A crash after a side effect and before the commit repeats that one batch
  (at least once; the relay's consumers drop repeats by event id).
- **Poll.** :meth:`LogFollower.run` applies batches back to back while they are full and waits
  ``poll`` seconds (or until stopped) when caught up.

:class:`OneActive` keeps exactly one instance of a service active at a time (the relay): a lease
in ``mb_job_leases`` (:mod:`.jobs`) that the active instance renews and a standby takes over once
it expired. The position's compare-and-set is what fences a deposed instance's commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar
from uuid import UUID, uuid5

from eventsourcing.persistence import Notification

from managed_backups.shared.domain.ids import NAMESPACE
from managed_backups.shared.eventstore import EventStore
from managed_backups.shared.jobs import Fence, JobLeases, keep_renewed, lease_until
from managed_backups.shared.sqldb import Cursor, SqlDatabase

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class PositionRow:
    """The row ``name`` of the position table ``table``: how far into the log a follower is."""

    table: str
    name: str

    def create_table(self, cursor: Cursor) -> None:
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} (name TEXT PRIMARY KEY, "
            "position BIGINT NOT NULL)"
        )

    def load(self, db: SqlDatabase) -> int:
        """The stored position (0 before the first batch)."""
        rows = db.query(f"SELECT position FROM {self.table} WHERE name = ?", (self.name,))
        return int(rows[0][0]) if rows else 0

    def claim(self, cursor: Cursor, after: int, last: int) -> bool:
        """Move the position from ``after`` to ``last`` if it is still ``after`` (compare-and-
        set, in the caller's transaction; a concurrent claimer waits for it, then finds the
        position moved). False: another instance moved it."""
        cursor.execute(
            f"INSERT INTO {self.table} (name, position) VALUES (?, 0) ON CONFLICT (name) DO NOTHING",
            (self.name,),
        )
        moved = cursor.execute(
            f"UPDATE {self.table} SET position = ? WHERE name = ? AND position = ?",
            (last, self.name, after),
        )
        return int(moved.rowcount) == 1

    def put(self, cursor: Cursor, position: int) -> None:
        """Set the position whatever it was (a rebuild writing tables no one else writes)."""
        cursor.execute(
            f"INSERT INTO {self.table} (name, position) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
            (self.name, position),
        )


class LogReader:
    """Batches of the notification log after a position: the one way every service reads it."""

    def __init__(self, store: EventStore, topics: Sequence[str] = (), batch: int = 500) -> None:
        self.store = store
        self.topics = list(topics)
        self.batch = batch

    def read(self, after: int) -> list[Notification]:
        """The next batch after position ``after`` (of the followed topics), in log order."""
        return self.store.notifications(after, self.batch, self.topics)

    def pages(self, after: int = 0) -> Iterator[list[Notification]]:
        """Every batch after ``after`` up to the end of the log as it is now."""
        while rows := self.read(after):
            yield rows
            if len(rows) < self.batch:
                return
            after = rows[-1].id


class LogFollower(LogReader):
    """Follows the log from a position stored in ``db`` (see the module's docstring)."""

    def __init__(
        self,
        store: EventStore,
        db: SqlDatabase,
        position: PositionRow,
        topics: Sequence[str] = (),
        batch: int = 500,
        poll: float = 0.02,
    ) -> None:
        super().__init__(store, topics, batch)
        self.db = db
        self.at = position
        self.poll = poll

    def position(self) -> int:
        return self.at.load(self.db)

    def follow_once(
        self,
        apply: Callable[[Cursor, list[T]], None],
        decode: Callable[[Notification], T],
    ) -> int:
        """Apply the next batch (each notification ``decode``d outside the transaction) with
        ``apply`` in the transaction that moves the position; returns how many were applied
        (0 also when another instance moved the position meanwhile)."""
        after = self.position()
        rows = self.read(after)
        if not rows:
            return 0
        items = [decode(row) for row in rows]
        with self.db.transaction() as cursor:
            if not self.at.claim(cursor, after, rows[-1].id):
                return 0
            apply(cursor, items)
        return len(rows)

    def catch_up(
        self,
        apply: Callable[[Cursor, list[T]], None],
        decode: Callable[[Notification], T],
    ) -> None:
        """:meth:`follow_once` until nothing is left (or another instance is following)."""
        while self.follow_once(apply, decode) > 0:
            pass

    async def follow_once_then_commit(
        self, effect: Callable[[list[Notification]], Awaitable[None]]
    ) -> int:
        """Perform the next batch's side ``effect`` (it raises if it did not happen: nothing is
        committed, the batch is read again), then move the position past it; returns the batch's
        length (0 when another instance moved the position meanwhile: the effect was repeated,
        which its consumers tolerate)."""
        after = await asyncio.to_thread(self.position)
        rows = await asyncio.to_thread(self.read, after)
        if not rows:
            return 0
        await effect(rows)
        return len(rows) if await asyncio.to_thread(self._commit, after, rows[-1].id) else 0

    def _commit(self, after: int, last: int) -> bool:
        with self.db.transaction() as cursor:
            moved = self.at.claim(cursor, after, last)
        if not moved:
            log.warning(
                "%s moved past %s while this instance worked on the batch after it",
                self.at.name,
                after,
            )
        return moved

    async def run(self, stop: asyncio.Event, step: Callable[[], Awaitable[int]]) -> None:
        """Run ``step`` (one batch) until ``stop``: back to back while batches are full,
        ``poll`` seconds apart once caught up."""
        while not stop.is_set():
            if await step() < self.batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.poll)


def wall_clock() -> datetime:
    return datetime.now(UTC)


class OneActive:
    """Exactly one active instance of a role (e.g. ``relay``) among a service's instances.

    The active instance holds the role's lease in ``mb_job_leases`` (its kind the role's name,
    a job id derived from ``name``) and renews it every third of ``seconds``; the others stand by and try
    to take it every third of ``seconds``: once it expired (its holder was killed or paused
    longer than the lease) one of them takes it over with a fresh fencing token. A holder that
    finds at a renewal that it lost the lease stops its work and stands by again. Leases are
    timed by the wall clock: the role has nothing to do with the product's (maybe simulated)
    time."""

    def __init__(
        self,
        db: SqlDatabase,
        role: str,
        name: str,
        owner: str,
        seconds: float,
        now: Callable[[], datetime] = wall_clock,
    ) -> None:
        self.leases = JobLeases(db, role)
        self.job_id: UUID = uuid5(NAMESPACE, f"{role}:{name}")
        self.owner = owner
        self.seconds = seconds
        self.now = now
        self.fence: Fence | None = None
        """The fence of the lease while this instance is active."""

    def try_take(self) -> Fence | None:
        return self.leases.take_over_expired(
            self.job_id, "", self.owner, lease_until(self.now(), self.seconds), self.now()
        )

    async def run(
        self, stop: asyncio.Event, work: Callable[[asyncio.Event], Awaitable[None]]
    ) -> None:
        """Run ``work(stopping)`` whenever this instance holds the lease, until ``stop``;
        ``stopping`` is set on ``stop`` or when the lease is lost. The lease is released when
        ``work`` ends (a standby takes over at once after a clean stop)."""
        while not stop.is_set():
            fence = await asyncio.to_thread(self.try_take)
            if fence is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.seconds / 3)
                continue
            log.info("%s %s is now the active one", self.leases.kind, self.owner)
            self.fence = fence
            stopping = asyncio.Event()
            tasks = [
                asyncio.create_task(
                    keep_renewed(
                        self.leases, self.job_id, self.seconds, self.now, fence, stopping.set
                    )
                ),
                asyncio.create_task(_relay_event(stop, stopping)),
            ]
            try:
                await work(stopping)
            finally:
                self.fence = None
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.leases.release, self.job_id, fence)


async def _relay_event(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()
