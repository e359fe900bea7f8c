"""Scheduler benchmark: N clusters at a 5-minute frequency on the simulated clock.

Run on demand (not in the test suite)::

    python -m benchmarks.bench_scheduler                           # 10,000 x 24 h at 10x: 2.4 h
    python -m benchmarks.bench_scheduler --hours 1 --speedup 15    # 10,000 x 1 h: 4 minutes
    python -m benchmarks.bench_scheduler --clusters 500 --hours 1  # quick check
    python -m benchmarks.bench_scheduler --hours 0.5 --burst       # worst case: all due at once
    python -m benchmarks.bench_scheduler --pg-setting autovacuum=off   # A/B a server setting
    python -m benchmarks.bench_scheduler --hours 1 --prefill-events 5000000 [--recorder table-lock]
        # a grown store (about 14 h of this benchmark's events), with the product's recorder or
        # the previous version's (which locked the events table on every insert)

One run:

1. infrastructure: a real Kafka (``LocalKafka``) and PostgreSQL (``LocalPostgres``, a fresh
   database) in a temporary directory, or ``$KAFKA_BOOTSTRAP_SERVERS`` / ``$POSTGRES_URL``
   (a fresh database is created there too); ``--store sqlite`` puts the event store in a file;
2. N clusters are created directly in the event store (bulk saves), each at ``--frequency``.
   Their registration times (= their slot grids) are spread uniformly over one period by
   default, as in real life; ``--burst`` registers them all at the same instant (worst case);
3. the real scheduler service runs in its own process (``python -m managed_backups.services.cli service
   scheduler`` on the simulated clock) and publishes TakeBackup on the real broker;
4. a batched stand-in executor in this process consumes ``managed-backups.backup-commands``,
   records BackupStarted + BackupCompleted for each TakeBackup (one ``store.save`` per batch)
   so the next slot is never held back by a backup in flight, and counts TakeBackup per
   (cluster, slot);
5. the simulated clock advances continuously at ``--speedup`` simulated seconds per real second,
   in steps of ``--step-ms`` real milliseconds, for ``--hours`` simulated hours.

Measures:

- lateness of each due slot, two ways: (a) published: the simulated clock's value at the
  TakeBackup record's Kafka timestamp (CreateTime, set by the scheduler's producer when it sends,
  whole ms rounded up) minus the slot (``scheduled_for``): slot to TakeBackup published, the
  issue's definition, on which the target is judged; (b) received: the clock's value when this
  process received the record, so (a) plus the broker hop and this consumer's own delay. Each
  also in real milliseconds: that instant minus the real time the clock was first advanced to
  (or past) the slot. The scheduler follows the clock by polling it (every 20 ms), so at
  speed-up S simulated lateness is about S x real latency: p99 < 1 s simulated is much stricter
  at S = 10 than at real time (S = 1), where it means p99 < 1000 ms real;
- the scheduler process's CPU time (utime + stime of all its threads from ``/proc/PID/stat``)
  from the moment the clock starts until everything is drained, divided by the backups it
  scheduled; and split into what it costs to follow the running clock with nothing due
  (measured during the lead before the first slot) and the rest, per backup. Bootstrap (loading
  the clusters) is reported apart. CPU of Kafka, PostgreSQL (server and backends) and this
  process is reported too, to show where the machine's time goes;
- duplicates (a slot whose TakeBackup arrived more than once), missing slots (on the cluster's
  grid, due by the end, never sent), unexpected ones (off-grid, or a backup id that is not the
  deterministic id of the slot) and wrong types (FULL at the first slot and every day, else
  INCREMENTAL, for frequencies up to 60 minutes).

- the event store's maintenance on PostgreSQL: the vacuums and analyzes autovacuum completed on
  the events table while the clock ran (``pg_stat_user_tables``), when the last vacuum ended,
  the table's size, and the autovacuum runs PostgreSQL cancelled (its log, when this benchmark
  started the server).

Exit status 0 when the targets are met (p99 lateness < 1 s simulated; nothing duplicated,
missing, unexpected or of the wrong type; on PostgreSQL, at least one vacuum of the events table
completed while the clock ran), 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from array import array
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from aiokafka import AIOKafkaConsumer

from managed_backups.contracts import topics
from managed_backups.contracts.commands import TakeBackup
from managed_backups.shared.bus import ensure_topics
from managed_backups.shared.clock import SimulatedClock
from managed_backups.shared.domain.backup import Backup
from managed_backups.shared.domain.cluster import Cluster
from managed_backups.shared.domain.ids import scheduled_backup_id
from managed_backups.shared.eventstore import (
    EventStore,
    IntegrityError,
    event_topics,
    open_event_store,
)
from managed_backups.shared.infra.kafka import LocalKafka
from managed_backups.shared.sqldb import SqlDatabase
from tests.factories import backup_taken, new_cluster
from tests.infra.postgres import LocalPostgres, url_with_database

T0 = datetime(2026, 1, 5, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US = timedelta(microseconds=1)
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: A fast disposable server with room for a day of events (millions of rows).
PG_SETTINGS = {"shared_buffers": "256MB", "max_wal_size": "4GB", "checkpoint_timeout": "30min"}
#: ``--recorder table-lock``: the previous version's recorder, ``eventsourcing``'s own (``LOCK
#: TABLE … IN EXCLUSIVE MODE`` before every insert), for an A/B in the same benchmark. The
#: library reads settings prefixed with the application's name before the store's own, so these
#: win in this process and in the scheduler's.
PREVIOUS_RECORDER_ENV = {
    "MANAGEDBACKUPS_APPLICATION_RECORDER_TOPIC": "eventsourcing.postgres:PostgresApplicationRecorder",
    "MANAGEDBACKUPS_POSTGRES_ENABLE_DB_FUNCTIONS": "n",
}


def to_us(when: datetime) -> int:
    return (when - EPOCH) // US


def from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


# ------------------------------------------------------------------------------- /proc probes
def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        raw = f.read()
    return raw[raw.rindex(")") + 2 :].split()  # fields from #3 (state) on


def proc_cpu(pid: int, with_reaped_children: bool = False) -> float:
    """CPU seconds (user + system, all threads) of a live process."""
    fields = _stat_fields(pid)
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if with_reaped_children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / CLK_TCK


def tree_cpu(pid: int) -> float:
    """A server's CPU seconds: itself, its reaped children, and its live children."""
    total = proc_cpu(pid, with_reaped_children=True)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = _stat_fields(int(entry))
            if int(fields[1]) == pid:
                total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def self_cpu() -> float:
    times = os.times()
    return times.user + times.system


# ------------------------------------------------------------------------------ configuration
@dataclass(frozen=True)
class Config:
    clusters: int
    frequency: int
    hours: float
    speedup: float
    store: str
    burst: bool
    step_ms: float
    save_batch: int
    lead_seconds: float
    scheduler_poll: float | None
    drain_seconds: float
    json_path: Path | None
    keep: bool
    pg_settings: dict[str, str]
    prefill_events: int
    recorder: str

    @property
    def period_us(self) -> int:
        return self.frequency * 60_000_000

    @property
    def start_us(self) -> int:
        return to_us(T0)

    @property
    def end_us(self) -> int:
        return self.start_us + round(self.hours * 3600e6)

    def registration_us(self, index: int) -> int:
        """When cluster ``index`` registers (its slot 0): spread over one period, or all at once."""
        lead = self.start_us + round(self.lead_seconds * 1e6)
        return lead if self.burst else lead + index * self.period_us // self.clusters

    @property
    def generation(self) -> int:
        """The settings generation of the slots: 1 after the change from the default 60 min."""
        return 0 if self.frequency == 60 else 1

    def expected_type(self, k: int) -> str:
        """The cadence rule's type of slot ``k`` of a cluster's grid (within its 30-day retention)."""
        every = (1 if self.frequency <= 60 else 7) * 24 * 60 // self.frequency
        return "FULL" if k % max(1, every) == 0 else "INCREMENTAL"

    def expected_slots(self, index: int) -> int:
        first = self.registration_us(index)
        return 0 if first > self.end_us else (self.end_us - first) // self.period_us + 1


# ----------------------------------------------------------------------------- the event store
def cluster_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index}"


def fill_store(store: EventStore, cfg: Config, prefix: str, batch_size: int = 500) -> None:
    """The clusters, created directly in the store (one transaction per ``batch_size``)."""
    batch: list[Cluster] = []
    for i in range(cfg.clusters):
        at = from_us(cfg.registration_us(i))
        cluster = new_cluster(
            cluster_name(prefix, i),
            name=f"bench {i}",
            organization="bench",
            regions=("r1",),
            connection_ref="postgresql://bench@127.0.0.1/db",
            retention_days=30,
            at=at,
            by="bench",
        )
        if cfg.frequency != 60:  # as UpdateBackupSettings would, at the same instant
            cluster._backup_settings_updated(
                cluster_id=cluster.cluster_id,
                enabled=True,
                frequency_minutes=cfg.frequency,
                retention_days=30,
                retention_changed=False,
                full_backup_required=True,
                command_id=None,
                at=at,
                by="bench",
            )
        batch.append(cluster)
        if len(batch) == batch_size:
            store.save(*batch)
            batch = []
    if batch:
        store.save(*batch)


def prefill(store: EventStore, url: str, events: int) -> None:
    """``events`` rows in the events table before the clusters, as in a store that has run for
    a while: about 700 bytes each, as the benchmark's own, of a topic nothing here reads; then
    ``VACUUM (ANALYZE)``, so autovacuum starts from a settled table."""
    table = store.recorder.events_table_name  # type: ignore[attr-defined]
    with psycopg.connect(url, autocommit=True) as conn:
        for start in range(0, events, 500_000):
            conn.execute(
                f"INSERT INTO {table} (originator_id, originator_version, topic, state)"
                " SELECT gen_random_uuid(), 1, 'bench:Prefilled', decode(repeat(md5(g::text), 40),"
                " 'hex') FROM generate_series(1, %s) AS g",
                (min(500_000, events - start),),
            )
        conn.execute(f"VACUUM (ANALYZE) {table}")


def count_scheduled(store: EventStore, db: SqlDatabase) -> int | None:
    """BackupScheduled events recorded in the store (the scheduler's own count)."""
    table = getattr(store.recorder, "events_table_name", None)
    if not isinstance(table, str):
        return None
    topic = event_topics(Cluster.BackupScheduled)[0]
    rows = db.query(f"SELECT count(*) FROM {table} WHERE topic = ?", (topic,))
    return int(rows[0][0])


@dataclass(frozen=True)
class Maintenance:
    """The events table's vacuum and analyze counters and size (``pg_stat_user_tables``)."""

    autovacuums: int
    autoanalyzes: int
    rows: int
    mib: float
    last_autovacuum: datetime | None


def events_table_maintenance(store: EventStore, db: SqlDatabase) -> Maintenance | None:
    """None on SQLite (no autovacuum)."""
    table = getattr(store.recorder, "events_table_name", None)
    if not isinstance(table, str) or db.dialect == "sqlite":
        return None
    rows = db.query(
        "SELECT autovacuum_count, autoanalyze_count, n_live_tup,"
        " pg_total_relation_size(relid), last_autovacuum"
        " FROM pg_stat_user_tables WHERE relname = ?",
        (table,),
    )
    vacuums, analyzes, live, size, last = rows[0]
    return Maintenance(int(vacuums), int(analyzes), int(live), size / 2**20, last)


# ---------------------------------------------------------------------------- the clock driver
class ClockDriver(threading.Thread):
    """Moves the shared simulated clock at ``speedup`` in steps of ``step`` real seconds."""

    def __init__(self, url: str, cfg: Config) -> None:
        super().__init__(name="clock-driver", daemon=True)
        self.db = SqlDatabase(url)
        self.clock = SimulatedClock(self.db)
        self.cfg = cfg
        self.current_us = to_us(self.clock.now())
        #: After each step: the clock's value (µs) and the real (wall) time it was written.
        self.step_sim: list[int] = [self.current_us]
        self.step_wall: list[float] = [time.time()]
        self.started = 0.0
        self.finished = threading.Event()
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self.error = exc
        finally:
            self.finished.set()

    def _run(self) -> None:
        step = self.cfg.step_ms / 1000
        start_us, end_us = self.current_us, self.cfg.end_us
        self.started = next_at = time.monotonic()
        self.step_sim[0], self.step_wall[0] = start_us, time.time()
        while not self.halt.is_set():
            elapsed = time.monotonic() - self.started
            target = min(start_us + round(elapsed * self.cfg.speedup * 1e6), end_us)
            if target > self.current_us:
                now = self.clock.advance((target - self.current_us) / 1e6)
                written = time.time()
                self.current_us = to_us(now)
                self.step_sim.append(self.current_us)
                self.step_wall.append(written)
            if self.current_us >= end_us:
                return
            next_at += step
            time.sleep(max(0.0, next_at - time.monotonic()))

    def reached_wall(self, slot_us: int) -> float:
        """Real (wall) time at which the clock was first written at or past ``slot_us``."""
        i = bisect.bisect_left(self.step_sim, slot_us)
        return self.step_wall[min(i, len(self.step_wall) - 1)]

    def longest_gap_ms(self) -> float:
        """The longest real time between two clock steps (a stall makes slots due in a bunch)."""
        wall = self.step_wall
        return max((b - a for a, b in itertools.pairwise(wall)), default=0.0) * 1000

    def sim_at(self, wall: float) -> int:
        """The simulated clock's value (µs) at real (wall) time ``wall``."""
        i = bisect.bisect_right(self.step_wall, wall)
        return self.step_sim[max(0, i - 1)]

    def close(self) -> None:
        self.halt.set()
        if self.is_alive():
            self.join(5)
        self.db.close()


# ----------------------------------------------------------------- the batched stand-in executor
@dataclass
class Tally:
    """What arrived, per cluster: TakeBackup count per slot index on the cluster's grid."""

    per_slot: list[array[int]]
    received: int = 0
    first_receipts: int = 0
    duplicates: int = 0
    unexpected: int = 0
    wrong_type: int = 0
    foreign: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    #: Lateness of each slot's first TakeBackup: when published (the producer's timestamp) and
    #: when received here; in simulated seconds and in real milliseconds.
    published_sim: array[float] = field(default_factory=lambda: array("d"))
    #: The simulated hour (since the start) of each slot, aligned with ``published_sim``.
    slot_hour: array[int] = field(default_factory=lambda: array("H"))
    published_real: array[float] = field(default_factory=lambda: array("d"))
    received_sim: array[float] = field(default_factory=lambda: array("d"))
    received_real: array[float] = field(default_factory=lambda: array("d"))


class BatchedExecutor:
    """Answers TakeBackup like the real executor's bookkeeping, in batches: BackupStarted +
    BackupCompleted per backup, one ``store.save`` per batch; a repeated backup id does nothing."""

    def __init__(
        self, kafka: str, store: EventStore, driver: ClockDriver, cfg: Config, prefix: str
    ) -> None:
        self.kafka = kafka
        self.store = store
        self.driver = driver
        self.cfg = cfg
        self.prefix = prefix + "-"
        self.tally = Tally(
            [array("I", [0]) * (cfg.expected_slots(i) + 1) for i in range(cfg.clusters)]
        )
        self.pending: list[TakeBackup] = []
        self.wake = asyncio.Event()
        self.saved = 0
        self.save_seconds = 0.0
        self.save_batches = 0
        self.save_max = 0.0
        self.consumer: AIOKafkaConsumer | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.stopping = False

    async def start(self) -> None:
        # No group: every partition is assigned to this consumer. From the earliest offset, so
        # nothing the scheduler publishes is missed; earlier runs' records (an external Kafka)
        # are skipped by their cluster-id prefix.
        consumer = AIOKafkaConsumer(
            topics.BACKUP_COMMANDS,
            bootstrap_servers=self.kafka,
            enable_auto_commit=False,
            group_id=None,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        async with asyncio.timeout(60):
            while not consumer.assignment():
                await asyncio.sleep(0.05)
        self.consumer = consumer
        self.tasks = [
            asyncio.create_task(self._consume(), name="consume"),
            asyncio.create_task(self._save_loop(), name="save"),
        ]

    async def _consume(self) -> None:
        assert self.consumer is not None
        while not self.stopping:
            batches = await self.consumer.getmany(timeout_ms=5, max_records=2000)
            received = time.time()
            for records in batches.values():
                for record in records:
                    # CreateTime, set by the scheduler's producer when it sent the record; in
                    # whole ms, rounded up so as never to make a TakeBackup look earlier.
                    published = (record.timestamp + 1) / 1000
                    command = TakeBackup.model_validate_json(record.value)
                    self._record(command, min(published, received), received)
            if self.pending:
                self.wake.set()

    def _record(self, command: TakeBackup, published: float, received: float) -> None:
        tally = self.tally
        if not command.cluster_id.startswith(self.prefix) or command.scheduled_for is None:
            tally.foreign += 1
            return
        tally.received += 1
        self.pending.append(command)
        index = int(command.cluster_id[len(self.prefix) :])
        slot_us = to_us(command.scheduled_for)
        k, off_grid = divmod(slot_us - self.cfg.registration_us(index), self.cfg.period_us)
        counts = tally.per_slot[index]
        expected_id = scheduled_backup_id(
            command.cluster_id, self.cfg.generation, command.scheduled_for
        )
        if off_grid or not 0 <= k < len(counts) - 1 or command.backup_id != expected_id:
            tally.unexpected += 1
            return
        counts[k] += 1
        if counts[k] > 1:
            tally.duplicates += 1
            return
        tally.first_receipts += 1
        tally.by_type[command.backup_type.value] += 1
        if command.backup_type.value != self.cfg.expected_type(k):
            tally.wrong_type += 1
        driver = self.driver
        due = driver.reached_wall(slot_us)
        tally.published_sim.append((driver.sim_at(published) - slot_us) / 1e6)
        hour = (slot_us - self.cfg.start_us) // 3_600_000_000
        tally.slot_hour.append(
            min(hour, math.ceil(self.cfg.hours) - 1)
        )  # the end's slot: last hour
        tally.published_real.append((published - due) * 1000)
        tally.received_sim.append((driver.sim_at(received) - slot_us) / 1e6)
        tally.received_real.append((received - due) * 1000)

    async def _save_loop(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.pending:
                chunk = self.pending[: self.cfg.save_batch]
                del self.pending[: self.cfg.save_batch]
                started = time.perf_counter()
                await asyncio.to_thread(self._save, chunk, from_us(self.driver.current_us))
                took = time.perf_counter() - started
                self.save_seconds += took
                self.save_batches += 1
                self.save_max = max(self.save_max, took)
                self.saved += len(chunk)

    def _save(self, commands: Sequence[TakeBackup], now: datetime) -> None:
        backups = [self._backup(c, now) for c in commands]
        try:
            self.store.save(*backups)
        except IntegrityError:  # a repeated TakeBackup in the batch: one by one, repeats do nothing
            for command in commands:
                with contextlib.suppress(IntegrityError):
                    self.store.save(self._backup(command, now))

    @staticmethod
    def _backup(command: TakeBackup, now: datetime) -> Backup:
        return backup_taken(command, now, executor="bench", region="r1")

    @property
    def idle(self) -> bool:
        return not self.pending and self.saved == self.tally.received

    async def stop(self) -> None:
        self.stopping = True
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                await self.consumer.stop()


# ------------------------------------------------------------------------------------ results
def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (nan when empty)."""
    if not sorted_values:
        return math.nan
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def p99_by_hour(values: array[float], hours: array[int]) -> list[float]:
    by_hour: dict[int, list[float]] = {}
    for value, hour in zip(values, hours, strict=True):
        by_hour.setdefault(hour, []).append(value)
    return [percentile(sorted(by_hour[h]), 0.99) for h in sorted(by_hour)]


@dataclass(frozen=True)
class Spread:
    p50: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: array[float]) -> Spread:
        ordered = sorted(values)
        top = ordered[-1] if ordered else math.nan
        return cls(percentile(ordered, 0.50), percentile(ordered, 0.99), top)

    def show(self, digits: int) -> str:
        return f"p50 {self.p50:.{digits}f}  p99 {self.p99:.{digits}f}  max {self.max:.{digits}f}"


@dataclass
class Result:
    clusters: int
    frequency_minutes: int
    registrations: str
    store: str
    recorder: str
    prefilled_events: int
    simulated_hours: float
    speedup: float
    clock_step_ms: float
    expected: int
    scheduled_recorded: int | None
    scheduled_received: int
    takebackup_messages: int
    full: int
    incremental: int
    duplicates: int
    missing: int
    unexpected: int
    wrong_type: int
    published_lateness_sim_s: Spread
    published_lateness_real_ms: Spread
    received_lateness_sim_s: Spread
    received_lateness_real_ms: Spread
    published_p99_sim_s_by_hour: list[float]
    clock_longest_step_gap_ms: float
    postgres_autovacuum_cancelled: int | None
    events_table_autovacuums: int | None
    events_table_autoanalyzes: int | None
    events_table_last_autovacuum_before_end_s: float | None
    events_table_rows: int | None
    events_table_mib: float | None
    postgres_settings: str
    scheduler_cpu_seconds: float
    scheduler_cpu_ms_per_backup: float
    scheduler_bootstrap_seconds: float
    scheduler_bootstrap_cpu_seconds: float
    scheduler_baseline_cores: float
    scheduler_marginal_ms_per_backup: float
    load_average: float
    scheduler_rss_mib_start: float
    scheduler_rss_mib_end: float
    kafka_cpu_seconds: float | None
    postgres_cpu_seconds: float | None
    bench_cpu_seconds: float
    machine_busy_fraction: float
    executor_save_seconds: float
    executor_save_batches: int
    executor_save_max_ms: float
    fill_seconds: float
    run_wall_seconds: float
    total_wall_seconds: float
    scheduler_reached_end: bool

    @property
    def met(self) -> tuple[bool, bool, bool]:
        """(p99 lateness, no duplicate or missing slot, the events table vacuumed during the run:
        always true on SQLite, which has no autovacuum)."""
        return (
            self.published_lateness_sim_s.p99 < 1.0,
            self.duplicates == 0
            and self.missing == 0
            and self.unexpected == 0
            and self.wrong_type == 0,
            self.events_table_autovacuums is None or self.events_table_autovacuums > 0,
        )

    def report(self) -> str:
        lat_ok, exact_ok, vacuum_ok = self.met
        n = self.scheduled_received
        yes = {True: "MET", False: "NOT MET"}

        def opt(value: float | None) -> str:
            return "n/a (external)" if value is None else f"{value:.1f} s"

        return "\n".join(
            [
                f"clusters                 {self.clusters:,} at {self.frequency_minutes}-minute frequency, "
                f"{self.registrations} registrations, event store {self.store} ({self.recorder}"
                + (
                    f", {self.prefilled_events:,} events before the run)"
                    if self.prefilled_events
                    else ")"
                ),
                f"simulated span           {self.simulated_hours:g} h, speed-up {self.speedup:g}x "
                f"(clock step {self.clock_step_ms:g} ms real; longest gap between steps "
                f"{self.clock_longest_step_gap_ms:.0f} ms)",
                f"backups scheduled        {n:,} received slots ({self.full:,} FULL, "
                f"{self.incremental:,} INCREMENTAL); BackupScheduled in store: "
                f"{'n/a' if self.scheduled_recorded is None else f'{self.scheduled_recorded:,}'}; "
                f"TakeBackup messages: {self.takebackup_messages:,}",
                f"expected                 {self.expected:,}",
                f"duplicates               {self.duplicates:,}",
                f"missing                  {self.missing:,}",
                f"unexpected               {self.unexpected:,} (off-grid slot or wrong backup id)",
                f"wrong backup type        {self.wrong_type:,} (FULL at the first slot and every "
                f"{'day' if self.frequency_minutes <= 60 else 'week'}, INCREMENTAL otherwise)",
                "lateness, slot to TakeBackup published (producer timestamp):",
                f"  simulated s            {self.published_lateness_sim_s.show(3)}",
                f"  real ms                {self.published_lateness_real_ms.show(1)}",
                "lateness, slot to TakeBackup received by the stand-in executor (+ broker hop):",
                f"  simulated s            {self.received_lateness_sim_s.show(3)}",
                f"  real ms                {self.received_lateness_real_ms.show(1)}",
                "p99 lateness published, simulated s, by simulated hour:",
                *textwrap.wrap(
                    " ".join(f"{v:.2f}" for v in self.published_p99_sim_s_by_hour),
                    width=96,
                    initial_indent="  ",
                    subsequent_indent="  ",
                ),
                f"scheduler CPU            {self.scheduler_cpu_seconds:.1f} s while the clock ran = "
                f"{self.scheduler_cpu_ms_per_backup:.3f} ms per scheduled backup "
                f"(bootstrap {self.scheduler_bootstrap_seconds:.1f} s wall, "
                f"{self.scheduler_bootstrap_cpu_seconds:.1f} s CPU)",
                f"  of which               following the clock with nothing due "
                f"{self.scheduler_baseline_cores * 100:.1f}% of a core; beyond that "
                f"{self.scheduler_marginal_ms_per_backup:.3f} ms per backup",
                f"scheduler RSS            {self.scheduler_rss_mib_start:.0f} MiB after bootstrap -> "
                f"{self.scheduler_rss_mib_end:.0f} MiB at the end",
                f"other CPU while running  kafka {opt(self.kafka_cpu_seconds)}, postgres "
                f"{'not used' if self.store == 'sqlite' else opt(self.postgres_cpu_seconds)}, this benchmark {self.bench_cpu_seconds:.1f} s "
                f"(executor: {self.executor_save_batches:,} batch saves, {self.executor_save_seconds:.1f} s "
                f"wall, longest {self.executor_save_max_ms:.0f} ms); machine busy "
                f"{self.machine_busy_fraction * 100:.0f}% of {os.cpu_count()} cores (all processes; "
                f"load average {self.load_average:.1f})",
                "postgres                 "
                + (
                    ("not used (SQLite event store)" if self.store == "sqlite" else "external")
                    if self.postgres_autovacuum_cancelled is None
                    else f"{self.postgres_autovacuum_cancelled} autovacuum tasks cancelled "
                    "(PostgreSQL cancels one that blocks another lock for deadlock_timeout)"
                )
                + (f"; settings {self.postgres_settings}" if self.postgres_settings else ""),
                *self._maintenance_lines(),
                f"wall time                {self.run_wall_seconds:.1f} s clock running + drain; "
                f"{self.total_wall_seconds:.1f} s in all (store fill {self.fill_seconds:.1f} s)",
                f"targets                  p99 lateness (published) < 1 s simulated: {yes[lat_ok]}; "
                f"no duplicate or missing slot: {yes[exact_ok]}"
                + ("" if self.scheduler_reached_end else " (the scheduler never reached the end)")
                + ("" if self.events_table_autovacuums is None else "; ")
                + ("" if self.events_table_autovacuums is None else f"vacuum: {yes[vacuum_ok]}"),
            ]
        )

    def _maintenance_lines(self) -> list[str]:
        if self.events_table_autovacuums is None:
            return []
        last = self.events_table_last_autovacuum_before_end_s
        return [
            f"events table             {self.events_table_rows:,} rows, "
            f"{self.events_table_mib:,.0f} MiB at the end; while the clock ran autovacuum "
            f"completed {self.events_table_autovacuums} vacuums and "
            f"{self.events_table_autoanalyzes} analyzes of it"
            + ("" if last is None else f" (the last vacuum {last:.0f} s before the end)")
        ]


# ---------------------------------------------------------------------------- infrastructure
@dataclass(frozen=True)
class Infra:
    kafka: str
    url: str
    kafka_pid: int | None  # None: external (not measured)
    pg_pid: int | None
    pg_log: Path | None


@contextlib.contextmanager
def infrastructure(cfg: Config, tmp: Path) -> Iterator[Infra]:
    with contextlib.ExitStack() as stack:
        kafka_pid: int | None = None
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if not bootstrap:
            print("starting Kafka ...", flush=True)
            kafka = LocalKafka(tmp / "kafka")
            bootstrap = kafka.start()
            stack.callback(kafka.stop)
            kafka_pid = kafka.pid
        pg_pid: int | None = None
        pg_log: Path | None = None
        if cfg.store == "sqlite":
            url = f"sqlite:///{tmp / 'events.sqlite'}"
        else:
            server = os.environ.get("POSTGRES_URL")
            if not server:
                print("starting PostgreSQL ...", flush=True)
                pg = LocalPostgres(settings={**PG_SETTINGS, **cfg.pg_settings})
                server = pg.start()
                stack.callback(pg.stop)
                pg_pid, pg_log = pg.pid, pg.log_path
            name = f"mb_bench_{uuid.uuid4().hex[:10]}"
            with psycopg.connect(server, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            url = url_with_database(server, name)
        yield Infra(bootstrap, url, kafka_pid, pg_pid, pg_log)


def start_scheduler(tmp: Path, url: str, kafka: str, cfg: Config) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "MANAGED_BACKUPS_DATA_DIR": str(tmp),
        "MANAGED_BACKUPS_EVENT_STORE_URL": url,
        "MANAGED_BACKUPS_KAFKA_BOOTSTRAP_SERVERS": kafka,
        "MANAGED_BACKUPS_SIMULATED_CLOCK": "true",
        "MANAGED_BACKUPS_SIMULATED_CLOCK_START": T0.isoformat(),
        "MANAGED_BACKUPS_INSTANCE": "bench-scheduler",
        "MANAGED_BACKUPS_LOG_LEVEL": "WARNING",
    }
    if cfg.scheduler_poll is not None:
        env["MANAGED_BACKUPS_POLL_INTERVAL_SECONDS"] = str(cfg.scheduler_poll)
    return subprocess.Popen(
        [sys.executable, "-m", "managed_backups.services.cli", "service", "scheduler"],
        env=env,
        stdout=(tmp / "scheduler.log").open("ab"),
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parent.parent,
    )


def count_lines(path: Path, needle: str) -> int:
    with path.open(errors="replace") as f:
        return sum(needle in line for line in f)


def scheduler_reached(db: SqlDatabase) -> datetime | None:
    rows = db.query("SELECT reached FROM mb_clock_reached WHERE service = 'scheduler'")
    return datetime.fromisoformat(rows[0][0]) if rows else None


# ------------------------------------------------------------------------------------- the run
async def run(cfg: Config) -> Result:
    began = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="bench-scheduler-"))
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    try:
        with infrastructure(cfg, tmp) as infra:
            return await _run(cfg, tmp, prefix, infra, began)
    finally:
        if cfg.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


async def _run(
    cfg: Config,
    tmp: Path,
    prefix: str,
    infra: Infra,
    began: float,
) -> Result:
    kafka, url, kafka_pid, pg_pid = infra.kafka, infra.url, infra.kafka_pid, infra.pg_pid
    await ensure_topics(kafka)
    db = SqlDatabase(url)
    SimulatedClock(db, start=T0)  # the simulated clock the scheduler follows, at T0
    store = open_event_store(url)
    recorder = type(store.recorder).__name__
    if cfg.prefill_events:
        print(f"prefilling the events table with {cfg.prefill_events:,} rows ...", flush=True)
        await asyncio.to_thread(prefill, store, url, cfg.prefill_events)
    print(f"creating {cfg.clusters:,} clusters in the store ...", flush=True)
    fill_started = time.monotonic()
    await asyncio.to_thread(fill_store, store, cfg, prefix)
    fill_seconds = time.monotonic() - fill_started

    driver = ClockDriver(url, cfg)
    executor = BatchedExecutor(kafka, store, driver, cfg, prefix)
    await executor.start()
    scheduler = start_scheduler(tmp, url, kafka, cfg)
    try:
        # Bootstrap: the scheduler has loaded every cluster and ticked once at T0.
        boot_started = time.monotonic()
        while (reached := await asyncio.to_thread(scheduler_reached, db)) is None or reached < T0:
            if scheduler.poll() is not None:
                raise RuntimeError(
                    f"the scheduler exited ({scheduler.returncode}); see {tmp}/scheduler.log"
                )
            await asyncio.sleep(0.05)
        boot_seconds = time.monotonic() - boot_started
        boot_cpu = proc_cpu(scheduler.pid)
        rss_start = rss_mib(scheduler.pid)
        print(
            f"scheduler bootstrapped in {boot_seconds:.1f} s; running {cfg.hours:g} simulated h "
            f"at {cfg.speedup:g}x (~{cfg.hours * 3600 / cfg.speedup / 60:.1f} real min) ...",
            flush=True,
        )

        maintenance0 = await asyncio.to_thread(events_table_maintenance, store, db)
        cpu0 = proc_cpu(scheduler.pid)
        kafka0 = proc_cpu(kafka_pid) if kafka_pid else None
        pg0 = tree_cpu(pg_pid) if pg_pid else None
        self0 = self_cpu()
        busy0, total0 = machine_ticks()
        run_started = time.monotonic()
        driver.start()
        # Baseline: the scheduler following the running clock before any slot is due.
        baseline_real = 0.8 * cfg.lead_seconds / cfg.speedup
        await asyncio.sleep(baseline_real)
        baseline_cores = (proc_cpu(scheduler.pid) - cpu0) / baseline_real
        expected = sum(cfg.expected_slots(i) for i in range(cfg.clusters))
        next_report = time.monotonic() + 30
        while not driver.finished.is_set():
            await asyncio.sleep(0.2)
            if scheduler.poll() is not None:
                raise RuntimeError(
                    f"the scheduler exited ({scheduler.returncode}); see {tmp}/scheduler.log"
                )
            if time.monotonic() >= next_report:
                next_report += 30
                late = sorted(executor.tally.published_sim[-20000:])
                print(
                    f"  sim +{(driver.current_us - cfg.start_us) / 3.6e9:6.2f} h  "
                    f"received {executor.tally.first_receipts:,}  backlog {len(executor.pending)}  "
                    f"recent lateness p99 {percentile(late, 0.99):.3f} s sim",
                    flush=True,
                )
        if driver.error is not None:
            raise driver.error

        # Drain: until the scheduler has processed the end and every answer is saved.
        end = from_us(cfg.end_us)
        last_progress, last_count = time.monotonic(), -1
        reached_end = False
        while time.monotonic() - last_progress < cfg.drain_seconds:
            reached = await asyncio.to_thread(scheduler_reached, db)
            reached_end = reached is not None and reached >= end
            if reached_end and executor.tally.first_receipts >= expected and executor.idle:
                break
            if executor.tally.received != last_count:
                last_count, last_progress = executor.tally.received, time.monotonic()
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # late duplicates, if any
        run_wall = time.monotonic() - run_started

        cpu = proc_cpu(scheduler.pid) - cpu0
        marginal = max(0.0, cpu - baseline_cores * run_wall)
        rss_end = rss_mib(scheduler.pid)
        kafka_cpu = proc_cpu(kafka_pid) - kafka0 if kafka_pid and kafka0 is not None else None
        pg_cpu = tree_cpu(pg_pid) - pg0 if pg_pid and pg0 is not None else None
        bench_cpu = self_cpu() - self0
        busy1, total1 = machine_ticks()
    finally:
        driver.close()
        if scheduler.poll() is None:
            scheduler.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(scheduler.wait, 30)
            except subprocess.TimeoutExpired:
                scheduler.kill()
                await asyncio.to_thread(scheduler.wait)
        await executor.stop()

    recorded = await asyncio.to_thread(count_scheduled, store, db)
    maintenance = await asyncio.to_thread(events_table_maintenance, store, db)
    ended = datetime.now(UTC)
    cancelled = None if infra.pg_log is None else count_lines(infra.pg_log, "canceling autovacuum")
    store.close()
    db.close()
    tally = executor.tally
    missing = sum(
        sum(1 for k in range(len(counts) - 1) if counts[k] == 0) for counts in tally.per_slot
    )
    return Result(
        clusters=cfg.clusters,
        frequency_minutes=cfg.frequency,
        registrations="burst (all at once)" if cfg.burst else "staggered",
        store=cfg.store,
        recorder=recorder,
        prefilled_events=cfg.prefill_events,
        simulated_hours=cfg.hours,
        speedup=cfg.speedup,
        clock_step_ms=cfg.step_ms,
        expected=expected,
        scheduled_recorded=recorded,
        scheduled_received=tally.first_receipts,
        takebackup_messages=tally.received,
        full=tally.by_type["FULL"],
        incremental=tally.by_type["INCREMENTAL"],
        duplicates=tally.duplicates,
        missing=missing,
        unexpected=tally.unexpected,
        wrong_type=tally.wrong_type,
        published_lateness_sim_s=Spread.of(tally.published_sim),
        published_lateness_real_ms=Spread.of(tally.published_real),
        received_lateness_sim_s=Spread.of(tally.received_sim),
        received_lateness_real_ms=Spread.of(tally.received_real),
        published_p99_sim_s_by_hour=p99_by_hour(tally.published_sim, tally.slot_hour),
        clock_longest_step_gap_ms=driver.longest_gap_ms(),
        postgres_autovacuum_cancelled=cancelled,
        events_table_autovacuums=(
            None
            if maintenance is None or maintenance0 is None
            else maintenance.autovacuums - maintenance0.autovacuums
        ),
        events_table_autoanalyzes=(
            None
            if maintenance is None or maintenance0 is None
            else maintenance.autoanalyzes - maintenance0.autoanalyzes
        ),
        events_table_last_autovacuum_before_end_s=(
            None
            if maintenance is None or maintenance.last_autovacuum is None
            else (ended - maintenance.last_autovacuum).total_seconds()
        ),
        events_table_rows=None if maintenance is None else maintenance.rows,
        events_table_mib=None if maintenance is None else maintenance.mib,
        postgres_settings=" ".join(f"{k}={v}" for k, v in cfg.pg_settings.items()),
        scheduler_cpu_seconds=cpu,
        scheduler_cpu_ms_per_backup=cpu * 1000 / max(1, tally.first_receipts),
        scheduler_bootstrap_seconds=boot_seconds,
        scheduler_bootstrap_cpu_seconds=boot_cpu,
        scheduler_baseline_cores=baseline_cores,
        scheduler_marginal_ms_per_backup=marginal * 1000 / max(1, tally.first_receipts),
        load_average=os.getloadavg()[0],
        scheduler_rss_mib_start=rss_start,
        scheduler_rss_mib_end=rss_end,
        kafka_cpu_seconds=kafka_cpu,
        postgres_cpu_seconds=pg_cpu,
        bench_cpu_seconds=bench_cpu,
        machine_busy_fraction=(busy1 - busy0) / max(1, total1 - total0),
        executor_save_seconds=executor.save_seconds,
        executor_save_batches=executor.save_batches,
        executor_save_max_ms=executor.save_max * 1000,
        fill_seconds=fill_seconds,
        run_wall_seconds=run_wall,
        total_wall_seconds=time.monotonic() - began,
        scheduler_reached_end=reached_end,
    )


# ---------------------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None) -> Config:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_scheduler",
        description=__doc__.split("\n")[0] if __doc__ else None,
    )
    parser.add_argument("--clusters", type=int, default=10_000)
    parser.add_argument("--frequency", type=int, default=5, help="minutes (default 5)")
    parser.add_argument("--hours", type=float, default=24.0, help="simulated hours (default 24)")
    parser.add_argument(
        "--speedup", type=float, default=10.0, help="simulated seconds per real second (default 10)"
    )
    parser.add_argument("--store", choices=("postgres", "sqlite"), default="postgres")
    spread = parser.add_mutually_exclusive_group()
    spread.add_argument(
        "--stagger",
        dest="burst",
        action="store_false",
        help="registrations spread over one period (default)",
    )
    spread.add_argument(
        "--burst",
        dest="burst",
        action="store_true",
        help="all clusters register at the same instant",
    )
    parser.add_argument(
        "--step-ms", type=float, default=10.0, help="clock step, real ms (default 10)"
    )
    parser.add_argument(
        "--save-batch", type=int, default=300, help="executor save batch (default 300)"
    )
    parser.add_argument(
        "--lead-seconds",
        type=float,
        default=None,
        help="simulated seconds before the first slot, used to measure the scheduler's "
        "baseline CPU (default: 3 real seconds' worth, at least 5)",
    )
    parser.add_argument(
        "--scheduler-poll",
        type=float,
        default=None,
        help="the scheduler's poll interval, real s (service default)",
    )
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=60.0,
        help="give up draining after this long without progress",
    )
    parser.add_argument(
        "--pg-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a server setting for the PostgreSQL this benchmark starts (repeatable), "
        "e.g. deadlock_timeout=50ms",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="also write the results as JSON here"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    parser.add_argument(
        "--prefill-events",
        type=int,
        default=0,
        metavar="N",
        help="PostgreSQL: N rows in the events table before the run, as in a store that has run "
        "for a while (a day of this benchmark at 10,000 clusters is about 8.6 million)",
    )
    parser.add_argument(
        "--recorder",
        choices=("ordered", "table-lock"),
        default="ordered",
        help="PostgreSQL: the event store's recorder (default: the product's); table-lock: the "
        "previous version's, eventsourcing's own, for an A/B",
    )
    parser.set_defaults(burst=False)
    args = parser.parse_args(argv)
    if any("=" not in item for item in args.pg_setting):
        parser.error("--pg-setting takes NAME=VALUE")
    if args.clusters < 1 or args.frequency < 1 or args.hours <= 0 or args.speedup <= 0:
        parser.error("--clusters, --frequency, --hours and --speedup must be positive")
    if args.store == "sqlite" and (args.prefill_events or args.recorder != "ordered"):
        parser.error("--prefill-events and --recorder are for the PostgreSQL event store")
    return Config(
        clusters=args.clusters,
        frequency=args.frequency,
        hours=args.hours,
        speedup=args.speedup,
        store=args.store,
        burst=args.burst,
        step_ms=args.step_ms,
        save_batch=args.save_batch,
        lead_seconds=(
            args.lead_seconds if args.lead_seconds is not None else max(5.0, 3 * args.speedup)
        ),
        scheduler_poll=args.scheduler_poll,
        drain_seconds=args.drain_seconds,
        json_path=args.json,
        keep=args.keep,
        pg_settings=dict(item.split("=", 1) for item in args.pg_setting),
        prefill_events=args.prefill_events,
        recorder=args.recorder,
    )


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    if cfg.recorder == "table-lock":
        os.environ.update(PREVIOUS_RECORDER_ENV)  # this process and the scheduler it starts
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # leader elections of new topics
    result = asyncio.run(run(cfg))
    print(result.report(), flush=True)
    if cfg.json_path is not None:
        cfg.json_path.write_text(json.dumps(asdict(result), indent=2) + "\n")
    return 0 if all(result.met) else 1


if __name__ == "__main__":
    sys.exit(main())
