"""Time, from one abstraction: the wall clock in production, a simulated clock in tests and demos.

The simulated clock is one row in the shared database: ``POST /admin/clock`` moves it forward and
every service follows it (polling the row), reporting the time it has fully processed so a caller
can wait until all have caught up. It cannot be enabled in a production-like configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from datetime import UTC, datetime, timedelta

from managed_backups.shared.settings import Settings
from managed_backups.shared.sqldb import SqlDatabase

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Clock(ABC):
    simulated: bool = False

    @abstractmethod
    def now(self) -> datetime: ...

    async def sleep_until(self, when: datetime, max_real_seconds: float) -> None:
        """Wait until ``when`` on this clock, or at most ``max_real_seconds`` of real time."""
        delay = (when - self.now()).total_seconds()
        if delay > 0:
            await asyncio.sleep(min(delay, max_real_seconds))

    def report_reached(self, service: str, when: datetime) -> None:
        """Tell observers this service has processed everything due up to ``when``."""

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


class WallClock(Clock):
    def now(self) -> datetime:
        return utcnow()


class SimulatedClockRefused(RuntimeError):
    pass


class SimulatedClock(Clock):
    """The whole system's simulated time, kept in the shared database."""

    simulated = True

    def __init__(self, db: SqlDatabase, start: datetime | None = None, poll: float = 0.02) -> None:
        self.db = db
        self.poll = poll
        ensure_clock_tables(db)
        initial = (start or utcnow().replace(minute=0, second=0, microsecond=0)).isoformat()
        if db.dialect == "sqlite":
            db.execute("INSERT OR IGNORE INTO mb_sim_clock (id, now) VALUES (1, ?)", (initial,))
        else:
            db.execute(
                "INSERT INTO mb_sim_clock (id, now) VALUES (1, ?) ON CONFLICT DO NOTHING",
                (initial,),
            )
        self._now = self._read()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _read(self) -> datetime:
        rows = self.db.query("SELECT now FROM mb_sim_clock WHERE id = 1")
        return datetime.fromisoformat(rows[0][0])

    def now(self) -> datetime:
        # Read through: a command handled right after someone advanced the clock must see the
        # new time (a cached value could lag behind by one poll). It is one indexed read.
        return self.refresh()

    def refresh(self) -> datetime:
        self._now = self._read()
        return self._now

    async def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="simulated-clock")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self) -> None:
        """Follow the shared clock for :meth:`sleep_until`; a failed read (the database
        restarting) is retried, never the end of the task: a dead follower would leave every
        sleeper waiting out its whole real-time bound."""
        failing = False
        while True:
            try:
                new = await asyncio.to_thread(self._read)
            except Exception:
                if not failing:
                    log.exception("reading the simulated clock failed; retrying")
                failing = True
                await asyncio.sleep(max(self.poll, 0.5))
                continue
            failing = False
            if new != self._now:
                self._now = new
                self._changed.set()
            await asyncio.sleep(self.poll)

    async def sleep_until(self, when: datetime, max_real_seconds: float) -> None:
        if self._now >= when:
            return
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout=max_real_seconds)

    def advance(self, seconds: float) -> datetime:
        with self.db.transaction() as cursor:
            cursor.execute("SELECT now FROM mb_sim_clock WHERE id = 1")
            now = datetime.fromisoformat(cursor.fetchone()[0]) + timedelta(seconds=seconds)
            cursor.execute("UPDATE mb_sim_clock SET now = ? WHERE id = 1", (now.isoformat(),))
        self._now = now
        return now

    def report_reached(self, service: str, when: datetime) -> None:
        upsert = (
            "INSERT INTO mb_clock_reached (service, reached) VALUES (?, ?) "
            "ON CONFLICT (service) DO UPDATE SET reached = excluded.reached"
        )
        self.db.execute(upsert, (service, when.isoformat()))

    def reached(self) -> dict[str, datetime]:
        rows = self.db.query("SELECT service, reached FROM mb_clock_reached ORDER BY service")
        return {service: datetime.fromisoformat(value) for service, value in rows}


def ensure_clock_tables(db: SqlDatabase) -> None:
    db.execute(
        "CREATE TABLE IF NOT EXISTS mb_sim_clock (id INTEGER PRIMARY KEY, now TEXT NOT NULL)"
    )
    db.execute(
        "CREATE TABLE IF NOT EXISTS mb_clock_reached (service TEXT PRIMARY KEY, reached TEXT NOT NULL)"
    )


def build_clock(settings: Settings, db: SqlDatabase) -> Clock:
    if not settings.simulated_clock:
        return WallClock()
    why = settings.production_like()
    if why is not None:
        raise SimulatedClockRefused(
            f"the simulated clock is refused in a production-like configuration ({why})"
        )
    start = (
        datetime.fromisoformat(settings.simulated_clock_start)
        if settings.simulated_clock_start
        else None
    )
    return SimulatedClock(db, start=start)
