"""The work the fault suite keeps in flight: clusters backed up every simulated day, restores,
retention, and the waits that tell when the system has settled (from the sources of truth)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar
from uuid import uuid4

import psycopg
from eventsourcing.persistence import InterfaceError
from eventsourcing.persistence import OperationalError as PersistenceOperationalError

from managed_backups.contracts import topics
from managed_backups.services.relay.relay import RELAY_ROLE
from managed_backups.shared.broker_access import ADMIN_USER, KafkaAuth
from tests.faults.invariants import BackupState, LogState, Report, check_all, fold_log, open_stores
from tests.faults.stack import LOCAL_REGION, S3_REGION, Stack

T = TypeVar("T")
DAY = 86400.0


@dataclass(frozen=True)
class ClusterSpec:
    cluster_id: str
    region: str
    frequency_minutes: int
    retention_days: int


CLUSTERS = (
    ClusterSpec("daily-s3", S3_REGION, 1440, 2),
    ClusterSpec("weekly-local", LOCAL_REGION, 1440, 7),
    ClusterSpec("weekly-s3", S3_REGION, 1440, 7),
)


async def wait_for(
    check: Callable[[], Awaitable[T | None]], what: str, timeout: float = 180, every: float = 0.5
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = await check()
        except (psycopg.OperationalError, PersistenceOperationalError, InterfaceError) as exc:
            # A server the fault restarted or paused: our own connection is lost once (the
            # next attempt reconnects), which says nothing about the system under test.
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}: {exc}") from exc
            await asyncio.sleep(every)
            continue
        if found:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(every)


@dataclass
class Workload:
    stack: Stack
    timings: dict[str, float] = field(default_factory=dict)
    restores: list[str] = field(default_factory=list)

    # -- setup -------------------------------------------------------------------------------

    async def setup(self) -> None:
        """The targets' databases, then the clusters registered, their secrets set and their
        settings changed (each step as a user does it: commands and the API)."""
        await asyncio.to_thread(self._create_target_databases)
        for spec in CLUSTERS:
            result = await self.stack.command(
                topics.CLUSTER_COMMANDS,
                {
                    "type": "RegisterCluster",
                    "cluster_id": spec.cluster_id,
                    "name": spec.cluster_id,
                    "organization": "faults",
                    "tier": "STANDARD",
                    "regions": [spec.region],
                    "database_version": "15",
                    "connection_ref": self.stack.connection_ref(),
                },
            )
            assert result.code == 200, result
            await self.wait_views(result.position)
            response = await self.stack.http(
                "PUT",
                f"/api/v1/clusters/{spec.cluster_id}/connection-secret",
                json={"password": self.stack.target_password()},
            )
            assert response.status_code == 200, response.text
            result = await self.stack.command(
                topics.CLUSTER_COMMANDS,
                {
                    "type": "UpdateBackupSettings",
                    "cluster_id": spec.cluster_id,
                    "frequency_minutes": spec.frequency_minutes,
                    "retention_days": spec.retention_days,
                },
            )
            assert result.code == 200, result
        await self.settle()

    TARGET_ROWS = (20000, 3000, 8)
    """The target's rows: accounts, notes, and how many md5s make a note's body."""

    def _create_target_databases(self) -> None:
        accounts, notes, note_md5s = self.TARGET_ROWS
        with self.stack.target() as conn:
            conn.execute("DROP DATABASE IF EXISTS app")
            conn.execute("CREATE DATABASE app")
        with self.stack.target("app") as conn:
            conn.execute(
                "CREATE TABLE accounts (id bigint PRIMARY KEY, owner text, balance numeric)"
            )
            conn.execute(
                "INSERT INTO accounts SELECT g, md5(g::text), g * 1.5 "
                "FROM generate_series(1, %s) g",
                (accounts,),
            )
            conn.execute("CREATE TABLE notes (id bigint PRIMARY KEY, body text)")
            conn.execute(
                "INSERT INTO notes SELECT g, repeat(md5(g::text), %s) FROM generate_series(1, %s) g",
                (note_md5s, notes),
            )

    def touch_targets(self) -> None:
        """Some rows changed, so incrementals have something to store."""
        with self.stack.target("app") as conn:
            conn.execute(
                "UPDATE accounts SET balance = balance + 1 WHERE id % 97 = "
                "(extract(epoch FROM clock_timestamp())::bigint % 97)"
            )

    # -- reading the sources of truth ---------------------------------------------------------

    async def log(self) -> LogState:
        assert self.stack.store is not None
        return await asyncio.to_thread(fold_log, self.stack.store)

    async def running_backups(self) -> list[BackupState]:
        state = await self.log()
        return [b for b in state.backups.values() if b.status == "IN_PROGRESS"]

    def leases(self, kind: str | None = None, jobs_only: bool = False) -> list[tuple[Any, ...]]:
        """The leases (of ``kind``); ``jobs_only``: not the active relay's, which is held for
        as long as a relay runs."""
        assert self.stack.db is not None
        rows = self.stack.db.query(
            "SELECT kind, job_id, owner, lease_until, detail FROM mb_job_leases"
        )
        # A backup lease is keyed by the backup's stream id; its detail names the backup id.
        return [
            (k, json.loads(d).get("backup_id", j) if k == "backup" else j, o, u, d)
            for k, j, o, u, d in rows
            if (kind is None or k == kind) and not (jobs_only and k == RELAY_ROLE)
        ]

    async def wait_views(self, position: int | None, timeout: float = 60) -> None:
        if position is None:
            return
        assert self.stack.db is not None
        db = self.stack.db

        async def reached() -> bool:
            rows = await asyncio.to_thread(
                db.query, "SELECT position FROM mb_view_position WHERE name = 'views'"
            )
            return bool(rows) and int(rows[0][0]) >= position

        await wait_for(reached, f"views at {position}", timeout, every=0.1)

    # -- moving time --------------------------------------------------------------------------

    async def next_day(self) -> datetime:
        """Move the clock to the next slot of the daily schedules (each run at the same time of
        day) and wait until the scheduler and the executors reached it."""
        await asyncio.to_thread(self.touch_targets)
        now = await asyncio.to_thread(self.stack.advance, DAY)
        await self.stack.wait_reached(now, ("scheduler",))
        return now

    async def settle(self, timeout: float = 300) -> None:
        """Wait until nothing runs: every scheduled backup and every restore ended, then one more
        retention pass (an hour later) and every lease released (quarantined leases of reaped
        jobs expire as time passes), the relay and the views at the end of the log."""
        began = time.monotonic()
        busy: list[str] = []

        async def idle() -> bool:
            self.stack.check_alive()
            state = await self.log()
            unstarted = [
                f"{c}/{b} ({slot})" for c, b, slot in state.scheduled if (c, b) not in state.backups
            ]
            running = [
                f"{b.cluster_id}/{b.backup_id}"
                for b in state.backups.values()
                if b.status == "IN_PROGRESS"
            ]
            restoring = [
                r for r, (_, s) in state.restores.items() if s not in ("SUCCEEDED", "FAILED")
            ]
            busy[:] = [
                f"never started: {unstarted}",
                f"running: {running}",
                f"restoring: {restoring}",
                f"leases: {self.leases()}",
            ]
            return not unstarted and not running and not restoring

        nudged = time.monotonic()

        async def idle_or_nudged() -> bool:
            # A scheduled backup that never started (its TakeBackup was refused while the
            # cluster's previous backup ran, or lost with a killed process) is sent again when
            # the scheduler looks at its cluster again, a simulated minute later: let that minute
            # pass, but only while nothing runs (a running job's lease must not expire under it).
            nonlocal nudged
            if await idle():
                return True
            quiet = busy[1] == "running: []" and busy[2] == "restoring: []"
            if quiet and time.monotonic() - nudged > 3:
                nudged = time.monotonic()
                await asyncio.to_thread(self.stack.advance, 61)
            return False

        try:
            await wait_for(idle_or_nudged, "every job to end", timeout)
        except TimeoutError:
            raise TimeoutError(f"the system did not settle: {busy}") from None
        for _ in range(10):
            now = await asyncio.to_thread(self.stack.advance, 3660)
            await self.stack.wait_reached(now)
            await wait_for(idle_or_nudged, "every job to end", timeout)
            if not self.leases(jobs_only=True):
                break
        await wait_for(self._caught_up, "the relay and the views at the log's end", timeout)
        self.timings["settle"] = self.timings.get("settle", 0) + time.monotonic() - began

    async def _caught_up(self) -> bool:
        assert self.stack.db is not None and self.stack.store is not None
        db, store = self.stack.db, self.stack.store
        top = await asyncio.to_thread(store.max_position)
        views = await asyncio.to_thread(
            db.query, "SELECT position FROM mb_view_position WHERE name = 'views'"
        )
        relay = await asyncio.to_thread(db.query, "SELECT position FROM mb_relay_position")
        return bool(views and relay) and int(views[0][0]) >= top and int(relay[0][0]) >= top

    # -- restores -----------------------------------------------------------------------------

    async def start_restore(self, cluster_id: str, new_db_name: str) -> str:
        restore_id = str(uuid4())
        result = await self.stack.command(
            topics.RESTORE_COMMANDS,
            {
                "type": "StartRestore",
                "restore_id": restore_id,
                "destination_cluster_id": cluster_id,
                "restore_type": "DATABASE",
                "objects": [{"database": "app"}],
                "restore_opts": {"new_db_name": new_db_name},
            },
        )
        assert result.code == 200, result
        self.restores.append(restore_id)
        return restore_id

    def target_databases(self) -> list[str]:
        with self.stack.target() as conn:
            rows = conn.execute(
                "SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY 1"
            ).fetchall()
        return [str(r[0]) for r in rows]

    def drop_target_database(self, name: str) -> None:
        with self.stack.target() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # -- invariants ---------------------------------------------------------------------------

    async def check(self, fault: str, after_retention: bool = True) -> tuple[Report, LogState]:
        assert self.stack.kafka is not None and self.stack.store and self.stack.db
        auth = KafkaAuth(ADMIN_USER, self.stack.passwords[ADMIN_USER], "PLAIN")
        report, state = await check_all(
            fault,
            self.stack.store,
            self.stack.db,
            self.stack.kafka.bootstrap_servers,
            auth,
            open_stores(self.stack.region_stores()),
            after_retention,
            self.stack.sealed,
        )
        return report, state


def later(when: datetime, seconds: float) -> datetime:
    return when + timedelta(seconds=seconds)
