"""Soak: many clusters for many simulated days on the fault suite's real stack, with failures,
restores, retention and a service instance killed every day; then the invariants and a summary.

Run on demand (not in the test suite; ``tests/faults/test_soak.py`` runs a small one)::

    python -m benchmarks.soak --clusters 1000 --days 30      # the issue's size
    python -m benchmarks.soak --clusters 100 --days 3        # a first measure
    python -m benchmarks.soak --clusters 5 --days 2 --fail-rate 0.2 --json summary.json

What one run does:

1. the stack of ``tests/faults/stack.py``: the event store's PostgreSQL, an authenticating Kafka
   broker, moto's S3 behind its proxy, the local store, **two processes of every service**, all
   on the simulated clock;
2. one PostgreSQL server of backup targets holding a small ``app`` database; every cluster is
   registered as a user does (RegisterCluster, its connection secret over the API,
   UpdateBackupSettings: daily backups, retention 2, 7 or 30 days in turn) and reaches that
   server through **a TCP proxy of its own** (``TcpProxy``), so one cluster's target can refuse
   connections while the others answer. A backup holds every database of its server, so the
   clusters share one small server's data: 1,000 clusters are realistic on one machine;
3. every simulated day: a few rows of ``app`` change; each cluster's target refuses connections
   for that day's backup with probability ``--fail-rate`` (1%: real connection failures, the
   backups end FAILED ``CONNECTION_FAILED``); the clock moves to the next daily slot (every
   cluster was registered at the same instant, so their slots fall together: a burst); one
   instance of one service is SIGKILLed in the middle of the day's work (round robin over the
   services, alternating instances) and started again; the system settles (every job ended, a
   retention pass an hour later, the relay and the views at the log's end); then
   ``--restores-per-day`` DATABASE restores of clusters whose backup of the day completed, each
   compared with its source (row count and checksum of every table) and dropped;
4. at the end (and every ``--check-every`` days) the fault suite's invariants
   (``tests/faults/invariants.py``), then the summary.

The summary: backups scheduled, taken (started), complete, failed (by error code), expired and
deleted by retention; injected target failures; restores run (succeeded, failed, compared
equal); kills; max consumer lag per group (committed offsets against the log end, read from
the broker every few seconds); the event store's size (events, bytes); scheduler lateness p50 /
p99 (slot to TakeBackup published, the producer's timestamp: in real time from the moment the
clock was moved to the slot, and in simulated time); peak RSS of each service (``VmHWM`` of
every instance, sampled every second and just before a kill); whether the invariants held; the
wall time.

The driver's memory stays bounded by the work in flight: it follows the event store's log
incrementally and keeps only unfinished slots, backups and restores (plus one float per backup
for the lateness); the final invariant check alone reads the whole log and topic once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from managed_backups.contracts import topics
from managed_backups.shared.broker_access import ADMIN_USER, KafkaAuth
from managed_backups.shared.domain.restore import Restore
from managed_backups.shared.eventstore import EventStore
from tests.faults.faults import held_by, only_running
from tests.faults.invariants import LogState, Report, _apply, behind
from tests.faults.proxies import TcpProxy
from tests.faults.stack import (
    BACKUP_LEASE_SECONDS,
    LOCAL_REGION,
    RESTORE_LEASE_SECONDS,
    S3_REGION,
    ServiceProcess,
    Stack,
)
from tests.faults.workload import DAY, Workload, wait_for
from tests.restore_checks import table_digest

#: The services killed in turn, one a simulated day (instance 0, then 1 on the next round).
KILL_ORDER = (
    "backup-executor",
    "restore",
    "scheduler",
    "retention",
    "relay",
    "projections",
    "api",
)
RETENTIONS = (2, 7, 30)
TABLES = ("accounts", "notes")
CONCURRENCY = 25
SOAK_TMPFS_BYTES = 2 << 30


@dataclass(frozen=True)
class SoakConfig:
    clusters: int = 100
    days: int = 3
    fail_rate: float = 0.01
    restores_per_day: int = 2
    check_every: int = 0
    """Check the invariants every this many days (0: only at the end)."""
    seed: int = 25
    base: Path | None = None
    wall_budget: float = 0.0
    """Stop after the day during which this many real seconds passed, and check and report
    the days run (0: no limit): the largest run that fits a time slot."""


# -- the sources of truth, followed incrementally ------------------------------------------------


@dataclass
class Tally:
    scheduled: int = 0
    started: int = 0
    complete: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    expired: int = 0
    deleted: int = 0
    restores: Counter[str] = field(default_factory=Counter)


class FollowedLog:
    """The event store's log folded as it grows, keeping only what is unfinished: a
    :class:`LogState` of the open slots, running backups and unfinished restores (what
    ``Workload.settle`` and the fault helpers look at), and totals for the summary."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.after = 0
        self.tally = Tally()
        self.open_slots: dict[tuple[str, str], Any] = {}
        self.state = LogState()
        self.completed_today: set[str] = set()
        self.lock = threading.Lock()

    def follow(self) -> LogState:
        with self.lock:
            while rows := self.store.notifications(self.after, 2000):
                for row in rows:
                    self.after = row.id
                    event = self.store.domain_event(row)
                    self._count(type(event).__name__, event.__dict__)
                    _apply(self.state, type(event).__name__, event.__dict__)
                self._prune()
            view = LogState()
            view.scheduled = [(c, b, slot) for (c, b), slot in self.open_slots.items()]
            view.backups = dict(self.state.backups)
            view.restores = dict(self.state.restores)
            return view

    def _count(self, name: str, f: dict[str, Any]) -> None:
        tally = self.tally
        if name == "BackupScheduled":
            tally.scheduled += 1
            self.open_slots[(f["cluster_id"], str(f["backup_id"]))] = f["slot"]
        elif name == "BackupStarted":
            tally.started += 1
            self.open_slots.pop((f["cluster_id"], str(f["backup_id"])), None)
        elif name == "BackupCompleted":
            tally.complete += 1
            self.completed_today.add(f["cluster_id"])
        elif name == "BackupFailed":
            tally.failed[str(f["error_code"])] += 1
        elif name == "BackupExpired":
            tally.expired += 1
        elif name == "BackupDeleted":
            tally.deleted += 1
        elif name in ("RestoreSucceeded", "RestoreFailed"):
            tally.restores[name.removeprefix("Restore").upper()] += 1

    def _prune(self) -> None:
        state = self.state
        state.backups = {k: b for k, b in state.backups.items() if b.status == "IN_PROGRESS"}
        state.restores = {
            r: (c, s) for r, (c, s) in state.restores.items() if s not in ("SUCCEEDED", "FAILED")
        }


class SoakStack(Stack):
    """The fault suite's stack, remembering when (real time) the clock reached which value."""

    timeline_sim: list[float]
    timeline_wall: list[float]

    def start_servers(self) -> None:
        super().start_servers()
        if self.tmpfs is not None and self.tmpfs_mounted:
            # The fault suite's 64 MiB (for its full-disk fault) would fill up over weeks of
            # backups: the soak's local store is not meant to run out of space.
            subprocess.run(
                ["mount", "-o", f"remount,size={SOAK_TMPFS_BYTES}", str(self.tmpfs)], check=True
            )

    def advance(self, seconds: float) -> datetime:
        now = super().advance(seconds)
        self.timeline_sim.append(now.timestamp())
        self.timeline_wall.append(time.time())
        return now

    def reached_wall(self, sim: float) -> float:
        """Real time at which the clock was first moved to (or past) ``sim``."""
        for value, wall in zip(self.timeline_sim, self.timeline_wall, strict=True):
            if value >= sim:
                return wall
        return self.timeline_wall[-1]

    def sim_at(self, wall: float) -> float:
        value = self.timeline_sim[0]
        for sim, at in zip(self.timeline_sim, self.timeline_wall, strict=True):
            if at > wall:
                break
            value = sim
        return value


class SoakWorkload(Workload):
    """The fault suite's workload over many clusters, each behind its own target proxy."""

    followed: FollowedLog
    proxies: dict[str, TcpProxy]

    async def log(self) -> LogState:
        return await asyncio.to_thread(self.followed.follow)

    TARGET_ROWS = (2000, 300, 4)  # one small database for every cluster

    async def register(self, names: Sequence[str]) -> None:
        """Register ``names`` as a user does, ``CONCURRENCY`` at a time."""
        stack = self.stack
        for start in range(0, len(names), CONCURRENCY):
            batch = names[start : start + CONCURRENCY]
            results = await asyncio.gather(
                *(
                    stack.command(
                        topics.CLUSTER_COMMANDS,
                        {
                            "type": "RegisterCluster",
                            "cluster_id": name,
                            "name": name,
                            "organization": "soak",
                            "tier": "STANDARD",
                            "regions": [S3_REGION if i % 2 else LOCAL_REGION],
                            "database_version": "15",
                            "connection_ref": "postgresql://postgres@127.0.0.1:"
                            f"{self.proxies[name].port}/postgres",
                        },
                    )
                    for i, name in enumerate(batch, start)
                )
            )
            assert all(r.code == 200 for r in results), results
            await self.wait_views(max(r.position or 0 for r in results))
            responses = await asyncio.gather(
                *(
                    stack.http(
                        "PUT",
                        f"/api/v1/clusters/{name}/connection-secret",
                        json={"password": stack.target_password()},
                    )
                    for name in batch
                )
            )
            assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
            results = await asyncio.gather(
                *(
                    stack.command(
                        topics.CLUSTER_COMMANDS,
                        {
                            "type": "UpdateBackupSettings",
                            "cluster_id": name,
                            "frequency_minutes": 1440,
                            "retention_days": RETENTIONS[i % len(RETENTIONS)],
                        },
                    )
                    for i, name in enumerate(batch, start)
                )
            )
            assert all(r.code == 200 for r in results), results

    def touch_app(self, day: int) -> None:
        """About 1% of the rows changed and one added: each day's incrementals store something."""
        with self.stack.target("app") as conn:
            conn.execute(
                "UPDATE accounts SET balance = balance + 1 WHERE id %% 97 = %s", (day % 97,)
            )
            conn.execute(
                "INSERT INTO notes VALUES ((SELECT max(id) + 1 FROM notes), %s)", (f"day {day}",)
            )


# -- measurements ---------------------------------------------------------------------------------


def vm_hwm_mib(pid: int) -> float:
    """The peak resident set of ``pid`` so far (``VmHWM``), in MiB."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


class RssSampler(threading.Thread):
    """The peak RSS of each service (every instance, every start), sampled every second."""

    def __init__(self, stack: Stack) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.stack = stack
        self.peak: dict[str, float] = {}
        self.halt = threading.Event()
        self.lock = threading.Lock()

    def sample(self, process: ServiceProcess | None = None) -> None:
        processes = (
            [process]
            if process is not None
            else [p for ps in list(self.stack.services.values()) for p in ps]
        )
        with self.lock:
            for p in processes:
                if p.alive():
                    mib = vm_hwm_mib(p.pid)
                    self.peak[p.name] = max(self.peak.get(p.name, 0.0), mib)

    def run(self) -> None:
        while not self.halt.wait(1.0):
            self.sample()

    def close(self) -> None:
        self.halt.set()
        self.join(5)
        self.sample()


class BrokerWatch:
    """From the broker: every consumer group's lag (sampled), and the TakeBackup records' times."""

    def __init__(self, bootstrap: str, auth: KafkaAuth) -> None:
        self.bootstrap = bootstrap
        self.auth = auth
        self.max_lag: dict[str, int] = {}
        self.admin: AIOKafkaAdminClient | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.commands: AIOKafkaConsumer | None = None
        self.task: asyncio.Task[None] | None = None
        self.samples = 0

    async def start(self) -> None:
        options = self.auth.client_options()
        self.admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, **options)
        await self.admin.start()
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, **options)
        await self.consumer.start()
        self.commands = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, **options
        )
        await self.commands.start()
        await self.commands._client.force_metadata_update()
        parts = sorted(self.commands.partitions_for_topic(topics.BACKUP_COMMANDS) or [])
        assert parts, "no partitions of the backup-commands topic"
        assigned = [TopicPartition(topics.BACKUP_COMMANDS, p) for p in parts]
        self.commands.assign(assigned)
        await self.commands.seek_to_beginning(*assigned)
        self.task = asyncio.create_task(self._watch(), name="lag")

    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a broker killed or paused: sample later
                await self.sample()
            await asyncio.sleep(3)

    async def sample(self) -> None:
        assert self.admin is not None and self.consumer is not None
        for group in await self.admin.list_consumer_groups():
            group_id = str(group[0])
            offsets = await self.admin.list_consumer_group_offsets(group_id)
            committed = {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
            if not committed:
                continue
            ends = await self.consumer.end_offsets(list(committed))
            lag = sum(max(0, ends[tp] - offset) for tp, offset in committed.items())
            self.max_lag[group_id] = max(self.max_lag.get(group_id, 0), lag)
        self.samples += 1

    async def take_backups(self) -> list[tuple[float, str, datetime]]:
        """The TakeBackup records published since the last call: (publish time, backup id,
        slot) of the scheduled ones (the producer's timestamp, whole ms rounded up)."""
        assert self.commands is not None
        consumer = self.commands
        parts = list(consumer.assignment())
        ends = await consumer.end_offsets(parts)
        found: list[tuple[float, str, datetime]] = []
        async with asyncio.timeout(120):
            while await behind(consumer, ends):
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        assert record.value is not None
                        body = json.loads(record.value)
                        if body.get("type") != "TakeBackup" or not body.get("scheduled_for"):
                            continue
                        found.append(
                            (
                                (record.timestamp + 1) / 1000,
                                str(body["backup_id"]),
                                datetime.fromisoformat(body["scheduled_for"]),
                            )
                        )
        return found

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        for client in (self.consumer, self.commands):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()
        if self.admin is not None:
            with contextlib.suppress(Exception):
                await self.admin.close()


async def report_progress(followed: FollowedLog, began: float, every: float = 30) -> None:
    """A line every ``every`` seconds while the run lasts (a long run is not silent)."""
    while True:
        await asyncio.sleep(every)
        tally = followed.tally
        print(
            f"  ... {time.monotonic() - began:.0f} s: {tally.scheduled} slots, {tally.started} "
            f"backups started, {tally.complete} complete, {sum(tally.failed.values())} failed",
            flush=True,
        )


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class Summary:
    clusters: int
    days: int
    fail_rate: float
    days_run: int = 0
    scheduled: int = 0
    taken: int = 0
    complete: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    failed_at_registration: dict[str, int] = field(default_factory=dict)
    """Of ``failed``: the backups each registration starts at once, before the user could set
    the connection secret (``AUTHENTICATION_FAILED``, as for a real user)."""
    expired: int = 0
    deleted: int = 0
    injected_failures: int = 0
    refused_connections: int = 0
    restores: dict[str, int] = field(default_factory=dict)
    restores_compared_equal: int = 0
    restores_differing: list[str] = field(default_factory=list)
    kills: list[str] = field(default_factory=list)
    max_consumer_lag: dict[str, int] = field(default_factory=dict)
    lag_samples: int = 0
    event_store_events: int = 0
    event_store_table_bytes: int = 0
    event_store_database_bytes: int = 0
    lateness_real_s_p50: float = math.nan
    lateness_real_s_p99: float = math.nan
    lateness_real_s_max: float = math.nan
    lateness_sim_s_p50: float = math.nan
    lateness_sim_s_p99: float = math.nan
    slots_measured: int = 0
    peak_rss_mib: dict[str, float] = field(default_factory=dict)
    driver_peak_rss_mib: float = 0.0
    invariants_held: bool = False
    invariants: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    day_wall_s: list[float] = field(default_factory=list)

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    def render(self) -> str:
        def mib(values: dict[str, float]) -> str:
            return ", ".join(f"{k} {v:.0f}" for k, v in sorted(values.items()))

        lines = [
            f"== soak: {self.clusters} clusters x {self.days_run} simulated days "
            f"(of {self.days} asked) "
            f"(fail rate {self.fail_rate:.1%}), wall {self.wall_s:.0f} s "
            f"(per day: {', '.join(f'{d:.0f}' for d in self.day_wall_s)} s)",
            f"backups scheduled        {self.scheduled}",
            f"backups taken            {self.taken} started: {self.complete} COMPLETE, "
            f"{self.failed_total} FAILED {dict(sorted(self.failed.items()))}, of which "
            f"{sum(self.failed_at_registration.values())} at registration "
            f"{self.failed_at_registration}",
            f"injected failures        {self.injected_failures} cluster-days whose target "
            f"refused connections ({self.refused_connections} connections refused)",
            f"expired by retention     {self.expired} backups; {self.deleted} backups' objects "
            "deleted (expired chains, failed backups' leftovers)",
            f"restores run             {sum(self.restores.values())} {self.restores}; "
            f"compared equal with their source: {self.restores_compared_equal}"
            + (f"; DIFFERING {self.restores_differing}" if self.restores_differing else ""),
            f"kills (SIGKILL)          {len(self.kills)}: {'; '.join(self.kills)}",
            f"max consumer lag         {self.lag_samples} samples: "
            + ", ".join(f"{g} {n}" for g, n in sorted(self.max_consumer_lag.items())),
            f"event store              {self.event_store_events} events, events table "
            f"{self.event_store_table_bytes / 2**20:.1f} MiB, database "
            f"{self.event_store_database_bytes / 2**20:.1f} MiB",
            f"scheduler lateness       {self.slots_measured} slots: real p50 "
            f"{self.lateness_real_s_p50:.2f} s, p99 {self.lateness_real_s_p99:.2f} s, max "
            f"{self.lateness_real_s_max:.2f} s; simulated p50 {self.lateness_sim_s_p50:.0f} s, "
            f"p99 {self.lateness_sim_s_p99:.0f} s",
            f"peak RSS (MiB)           {mib(self.peak_rss_mib)}; the soak driver "
            f"{self.driver_peak_rss_mib:.0f}",
            f"invariants               {'all held' if self.invariants_held else 'BROKEN'}",
            *(f"  {line}" for line in self.invariants),
        ]
        return "\n".join(lines)


# -- the run --------------------------------------------------------------------------------------


@dataclass
class Soak:
    cfg: SoakConfig
    work: SoakWorkload
    rng: random.Random
    summary: Summary
    broker: BrokerWatch
    rss: RssSampler
    seen_slots: set[str] = field(default_factory=set)
    lateness_real: array[float] = field(default_factory=lambda: array("d"))
    lateness_sim: array[float] = field(default_factory=lambda: array("d"))
    registered_at: float = 0.0

    @property
    def stack(self) -> SoakStack:
        assert isinstance(self.work.stack, SoakStack)
        return self.work.stack

    @property
    def clusters(self) -> list[str]:
        return list(self.work.proxies)

    async def day(self, day: int) -> None:
        began = time.monotonic()
        stack, work = self.stack, self.work
        self.seen_slots.clear()  # a slot's TakeBackup is sent again the same day, if at all
        failing = [c for c in self.clusters if self.rng.random() < self.cfg.fail_rate]
        if not failing and self.summary.injected_failures == 0 and self.cfg.fail_rate > 0:
            failing = [self.rng.choice(self.clusters)]  # a short run shows the fault too
        refused_before = sum(work.proxies[c].refused for c in failing)
        for cluster in failing:
            work.proxies[cluster].refuse()
        self.summary.injected_failures += len(failing)
        await asyncio.to_thread(work.touch_app, day)
        work.followed.completed_today.clear()
        victim_name = KILL_ORDER[(day - 1) % len(KILL_ORDER)]
        victim = stack.instance(victim_name, ((day - 1) // len(KILL_ORDER)) % stack.instances)
        slot = self.registered_at + day * DAY
        now = await asyncio.to_thread(stack.advance, slot - stack.now().timestamp())
        if victim_name == "scheduler":  # between recording the day's slots and sending them
            await self.kill(victim, "as the day's slots fell due")
        await stack.wait_reached(now, ("scheduler",))
        if victim_name == "backup-executor":
            await self.kill_executor_mid_backup(victim)
        elif victim_name not in ("scheduler", "restore"):
            await self.kill_mid_day(victim)
        await work.settle(timeout=max(300, self.cfg.clusters * 3))
        for cluster in failing:
            work.proxies[cluster].accept()
        self.summary.refused_connections += (
            sum(work.proxies[c].refused for c in failing) - refused_before
        )
        await self.measure_lateness()
        await self.restores(day, kill=victim if victim_name == "restore" else None)
        if self.cfg.check_every and day % self.cfg.check_every == 0 and day < self.cfg.days:
            await self.check(f"day {day}")
        self.summary.day_wall_s.append(time.monotonic() - began)
        tally = work.followed.tally
        print(
            f"day {day}: {time.monotonic() - began:.0f} s, {tally.started} backups started, "
            f"{tally.complete} complete, failed {dict(tally.failed)}, "
            f"{tally.expired} expired, {len(failing)} targets refusing, "
            f"killed {self.summary.kills[-1] if self.summary.kills else '-'}",
            flush=True,
        )

    async def kill(self, victim: ServiceProcess, when: str) -> None:
        self.rss.sample(victim)
        victim.kill()
        self.summary.kills.append(f"{victim.instance} {when}")
        victim.start()
        if victim.name == "api":
            await self.api_answers(self.stack.api_ports[victim.index])

    async def api_answers(self, port: int) -> None:
        async def healthy() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                async with httpx.AsyncClient(timeout=5) as client:
                    response = await client.get(f"http://127.0.0.1:{port}/healthz")
                    return response.status_code == 200
            return False

        await wait_for(healthy, f"the API on port {port} after its restart", 180, every=0.2)

    async def kill_mid_day(self, victim: ServiceProcess) -> None:
        """While the day's backups run (or at once, if they all ended already)."""
        with contextlib.suppress(TimeoutError):
            await wait_for(self.work.running_backups, "a backup running", 30, every=0.05)
        await self.kill(victim, "with the day's backups running")

    async def kill_executor_mid_backup(self, fallback: ServiceProcess) -> None:
        """The executor instance holding a running backup's lease: its backups are failed
        ``LEASE_EXPIRED`` by the other instance once their leases expire."""
        work, stack = self.work, self.stack

        async def lease() -> tuple[Any, ...] | None:
            running = {b.backup_id for b in await work.running_backups()}
            return next((x for x in work.leases("backup") if str(x[1]) in running), None)

        try:
            found = await wait_for(lease, "a backup in the middle of its work", 60, every=0.05)
        except TimeoutError:
            await self.kill(fallback, "(no backup was running)")
            return
        victim = stack.owner_process(str(found[2]))
        orphans = held_by(work, str(found[2]))
        await self.kill(victim, f"mid-backup ({len(orphans)} backups orphaned)")
        await only_running(work, orphans, timeout=max(300, self.cfg.clusters * 3))
        await asyncio.to_thread(stack.advance, BACKUP_LEASE_SECONDS + 5)

    async def restores(self, day: int, kill: ServiceProcess | None) -> None:
        """Restores of clusters whose backup of the day completed (so the source still equals
        it), each compared with the source, then dropped."""
        work = self.work
        done = sorted(work.followed.completed_today)
        chosen = self.rng.sample(done, min(len(done), self.cfg.restores_per_day))
        if kill is not None and chosen:
            work.proxies[chosen[0]].slow(0.05)  # long enough to be killed in the middle
        started = {
            await work.start_restore(cluster, f"soak_{day}_{i}"): (cluster, f"soak_{day}_{i}")
            for i, cluster in enumerate(chosen)
        }
        if kill is not None and started:
            await self.kill_restore(kill, started)
        elif kill is not None:
            await self.kill(kill, "(no restore to run)")
        if chosen:
            work.proxies[chosen[0]].slow(0)
        await work.settle(timeout=max(300, self.cfg.clusters * 3))
        source = {t: await asyncio.to_thread(self.digest, "app", t) for t in TABLES}
        for restore_id, (cluster, database) in started.items():
            if not await asyncio.to_thread(self.exists, database):
                continue  # failed (a killed worker): the destination was left as it was
            copy = {t: await asyncio.to_thread(self.digest, database, t) for t in TABLES}
            if copy == source:
                self.summary.restores_compared_equal += 1
            else:
                self.summary.restores_differing.append(f"{cluster}/{restore_id}")
            await asyncio.to_thread(work.drop_target_database, database)

    async def kill_restore(
        self, fallback: ServiceProcess, started: dict[str, tuple[str, str]]
    ) -> None:
        """The restore instance holding a running restore's lease: the other instance fails
        it ``LEASE_EXPIRED`` and drops its temporary database once the lease expired."""
        work, stack = self.work, self.stack
        jobs = {
            str(Restore.create_id(cluster, UUID(restore_id))): restore_id
            for restore_id, (cluster, _) in started.items()
        }

        async def lease() -> tuple[Any, ...] | None:
            state = await work.log()
            running = {r for r, (_, s) in state.restores.items() if s == "RUNNING"}
            return next(
                (x for x in work.leases("restore") if jobs.get(str(x[1]), str(x[1])) in running),
                None,
            )

        try:
            found = await wait_for(lease, "a restore in the middle of its work", 60, every=0.05)
        except TimeoutError:
            await self.kill(fallback, "(no restore was running)")
            return
        victim = stack.owner_process(str(found[2]))
        await self.kill(victim, "mid-restore")

        async def only_orphan() -> bool:
            state = await work.log()
            return len([r for r in state.restores if r in started]) <= 1

        await wait_for(only_orphan, "the other restores to end", 300)
        await asyncio.to_thread(stack.advance, RESTORE_LEASE_SECONDS + 5)

    def digest(self, database: str, table: str) -> tuple[int, str]:
        assert self.stack.target_pg is not None
        return table_digest(self.stack.target_pg.url_for(database), "public", table)

    def exists(self, database: str) -> bool:
        return database in self.work.target_databases()

    async def measure_lateness(self, record: bool = True) -> None:
        """The lateness of the TakeBackups published since the last call (``record=False``:
        the registrations' backups, which wait for the registrations, not for the schedule)."""
        for published, backup_id, slot in await self.broker.take_backups():
            if backup_id in self.seen_slots:
                continue  # sent again (a refused or lost TakeBackup): the first one counts
            self.seen_slots.add(backup_id)
            if not record:
                continue
            due = slot.timestamp()
            self.lateness_real.append(published - self.stack.reached_wall(due))
            self.lateness_sim.append(self.stack.sim_at(published) - due)

    async def check(self, when: str) -> Report:
        report, _ = await self.work.check(when)
        print(report.render(), flush=True)
        self.summary.invariants = [
            f"{'held  ' if line.held else 'BROKEN'} {line.name}: {line.detail}"
            for line in report.lines
        ]
        self.summary.invariants_held = report.held
        return report

    def finish(self) -> None:
        summary, tally, db = self.summary, self.work.followed.tally, self.stack.db
        assert db is not None
        summary.scheduled, summary.taken, summary.complete = (
            tally.scheduled,
            tally.started,
            tally.complete,
        )
        summary.failed = dict(tally.failed)
        summary.expired, summary.deleted = tally.expired, tally.deleted
        summary.restores = dict(tally.restores)
        summary.max_consumer_lag = dict(self.broker.max_lag)
        summary.lag_samples = self.broker.samples
        assert self.stack.store is not None
        table = self.stack.store.recorder.events_table_name  # type: ignore[attr-defined]
        rows = db.query(
            f"SELECT count(*), pg_total_relation_size('\"{table}\"'),"
            f' pg_database_size(current_database()) FROM "{table}"'
        )
        summary.event_store_events = int(rows[0][0])
        summary.event_store_table_bytes = int(rows[0][1])
        summary.event_store_database_bytes = int(rows[0][2])
        real, sim = list(self.lateness_real), list(self.lateness_sim)
        summary.slots_measured = len(real)
        summary.lateness_real_s_p50 = percentile(real, 0.5)
        summary.lateness_real_s_p99 = percentile(real, 0.99)
        summary.lateness_real_s_max = max(real, default=math.nan)
        summary.lateness_sim_s_p50 = percentile(sim, 0.5)
        summary.lateness_sim_s_p99 = percentile(sim, 0.99)
        summary.peak_rss_mib = dict(self.rss.peak)
        summary.driver_peak_rss_mib = vm_hwm_mib_self()


def vm_hwm_mib_self() -> float:
    return vm_hwm_mib(os.getpid())


async def run(cfg: SoakConfig) -> Summary:
    began = time.monotonic()
    own_base = cfg.base is None
    base = Path(tempfile.mkdtemp(prefix="soak-")) if cfg.base is None else cfg.base
    stack = SoakStack(base)
    stack.timeline_sim, stack.timeline_wall = [], []
    summary = Summary(cfg.clusters, cfg.days, cfg.fail_rate)
    rss = RssSampler(stack)
    broker: BrokerWatch | None = None
    progress: asyncio.Task[None] | None = None
    proxies: list[TcpProxy] = []
    try:
        stack.start_servers()
        await stack.prepare()
        stack.start_services()
        await stack.wait_ready()
        assert stack.store is not None and stack.kafka is not None and stack.target_pg
        rss.start()
        broker = BrokerWatch(
            stack.kafka.bootstrap_servers,
            KafkaAuth(ADMIN_USER, stack.passwords[ADMIN_USER], "PLAIN"),
        )
        await broker.start()
        work = SoakWorkload(stack)
        work.followed = FollowedLog(stack.store)
        progress = asyncio.create_task(report_progress(work.followed, began), name="progress")
        names = [f"soak-{i:04d}" for i in range(cfg.clusters)]
        port = stack.target_pg.port
        assert port is not None
        work.proxies = {name: TcpProxy("127.0.0.1", port) for name in names}
        for proxy in work.proxies.values():
            stack.loop.run(proxy.start())
            proxies.append(proxy)
        await asyncio.to_thread(work._create_target_databases)
        stack.timeline_sim.append(stack.now().timestamp())
        stack.timeline_wall.append(time.time())
        soak = Soak(cfg, work, random.Random(cfg.seed), summary, broker, rss)
        soak.registered_at = stack.now().timestamp()
        await work.register(names)
        await work.settle(timeout=max(300, cfg.clusters * 3))
        summary.failed_at_registration = dict(work.followed.tally.failed)
        await soak.measure_lateness(record=False)
        print(
            f"registered {cfg.clusters} clusters, first backups ended: "
            f"{time.monotonic() - began:.0f} s; {work.followed.tally}",
            flush=True,
        )
        for day in range(1, cfg.days + 1):
            await soak.day(day)
            summary.days_run = day
            spent = time.monotonic() - began
            if cfg.wall_budget and spent + 1.2 * summary.day_wall_s[-1] > cfg.wall_budget:
                print(f"stopping after day {day}: the wall budget is spent", flush=True)
                break
        await soak.check(f"soak of {cfg.clusters} clusters x {summary.days_run} days")
        rss.close()
        soak.finish()
    finally:
        if progress is not None:
            progress.cancel()
        if rss.is_alive():
            rss.close()
        if broker is not None:
            await broker.close()
        for proxy in proxies:
            with contextlib.suppress(Exception):
                stack.loop.run(proxy.stop())
        await stack.close()
        if own_base:
            shutil.rmtree(base, ignore_errors=True)
    summary.wall_s = time.monotonic() - began
    return summary


def parse_args(argv: Sequence[str] | None) -> tuple[SoakConfig, Path | None]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--clusters", type=int, default=SoakConfig.clusters)
    parser.add_argument("--days", type=int, default=SoakConfig.days)
    parser.add_argument("--fail-rate", type=float, default=SoakConfig.fail_rate)
    parser.add_argument("--restores-per-day", type=int, default=SoakConfig.restores_per_day)
    parser.add_argument("--check-every", type=int, default=SoakConfig.check_every)
    parser.add_argument("--seed", type=int, default=SoakConfig.seed)
    parser.add_argument(
        "--wall-budget",
        type=float,
        default=0.0,
        help="stop after the day that would end past this many real seconds (0: no limit)",
    )
    parser.add_argument("--base", type=Path, default=None, help="keep the run's files here")
    parser.add_argument("--json", type=Path, default=None, help="write the summary here too")
    args = parser.parse_args(argv)
    cfg = SoakConfig(
        clusters=args.clusters,
        days=args.days,
        fail_rate=args.fail_rate,
        restores_per_day=args.restores_per_day,
        check_every=args.check_every,
        seed=args.seed,
        base=args.base,
        wall_budget=args.wall_budget,
    )
    return cfg, args.json


def main(argv: Sequence[str] | None = None) -> int:
    cfg, json_path = parse_args(argv)
    summary = asyncio.run(run(cfg))
    print(summary.render(), flush=True)
    if json_path is not None:
        json_path.write_text(json.dumps(asdict(summary), indent=2, default=str) + "\n")
    return 0 if summary.invariants_held and not summary.restores_differing else 1


if __name__ == "__main__":
    sys.exit(main())
