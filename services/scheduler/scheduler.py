"""The schedule loop: decides, for every live cluster, which backup is due and sends TakeBackup.

Exactly once: the backup for a slot gets a deterministic id (cluster, generation, slot) and is
recorded as ``BackupScheduled`` on the cluster's own stream before TakeBackup is sent. Two
scheduler instances, or a restarted one, collide on the stream version; the loser re-reads the
cluster and finds the slot taken. If the process dies between recording and sending, the next
instance finds a scheduled backup that never started and sends its TakeBackup again (the executor
ignores a TakeBackup for a backup id it already has).

At most one backup of a cluster in flight: a due slot waits while the last scheduled backup is
neither COMPLETE nor FAILED; its completion wakes the cluster up.

State comes from the event store only: the clusters (snapshotted aggregates) and the status of
their latest backups, followed from the notification log; nothing is lost across restarts.
"""

from __future__ import annotations

import asyncio
import gc
import heapq
import logging
import time
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from managed_backups.contracts.commands import TakeBackup
from managed_backups.contracts.enums import BackupReason, BackupStatus, BackupType
from managed_backups.services.scheduler.cadence import (
    ScheduleView,
    backup_type_for,
    due_slot,
    next_slot,
)
from managed_backups.shared.clock import Clock
from managed_backups.shared.domain.backup import Backup, load_backup
from managed_backups.shared.domain.backup_lifecycle import STATUS_AFTER, TERMINAL, backup_may_start
from managed_backups.shared.domain.cluster import Cluster
from managed_backups.shared.domain.ids import cluster_aggregate_id, scheduled_backup_id
from managed_backups.shared.domain.restore_rules import (
    scheduled_backup_waits_for_a_cluster_restore,
)
from managed_backups.shared.eventstore import (
    EventStore,
    IntegrityError,
    cluster_id_of,
    event_topics,
)
from managed_backups.shared.faults import FaultPoint, no_fault
from managed_backups.shared.log_follower import LogReader

log = logging.getLogger(__name__)

BACKUP_EVENTS = (Backup.BackupStarted, Backup.BackupCompleted, Backup.BackupFailed)
FOLLOWED = event_topics(
    Cluster.ClusterRegistered,
    Cluster.BackupSettingsUpdated,
    Cluster.ClusterTierChanged,
    Cluster.ClusterDeleted,
    Cluster.BackupScheduled,
    *BACKUP_EVENTS,
)


SendTakeBackup = Callable[[dict[str, Any]], Awaitable[None]]
"""Publishes a signed TakeBackup as it is (the token signs exactly these fields)."""
SignCommand = Callable[[dict[str, Any]], dict[str, Any]]
"""Adds the token of the scheduler's own principal to a command (``CommandSigner.signed``)."""
SEND_SLICE = 200
FOLLOW_BATCH = 1000


def relevant_backups(cluster: Cluster | None) -> set[UUID]:
    """The backups a scheduling decision for ``cluster`` looks at."""
    if cluster is None:
        return set()
    ids: set[UUID] = set()
    if cluster.last_scheduled is not None:
        ids.add(cluster.last_scheduled["backup_id"])
    if cluster.chain is not None:
        ids.add(cluster.chain["chain_id"])
    return ids


def schedule_view(cluster: Cluster) -> ScheduleView:
    return ScheduleView(
        enabled=cluster.enabled,
        deleted=cluster.deleted,
        frequency_minutes=cluster.frequency_minutes,
        generation=cluster.generation,
        generation_start=cluster.generation_start,
        full_backup_required=cluster.full_backup_required,
        last_scheduled=cluster.last_scheduled,
        chain=cluster.chain,
    )


@dataclass
class SchedulerStats:
    scheduled: int = 0
    conflicts: int = 0
    resent: int = 0
    lateness_seconds: array[float] = field(default_factory=lambda: array("d"))
    cpu_seconds: float = 0.0


class Scheduler:
    def __init__(
        self,
        store: EventStore,
        clock: Clock,
        send: SendTakeBackup,
        sign: SignCommand,
        name: str = "scheduler",
        poll_seconds: float = 0.05,
        resend_after_seconds: float = 30.0,
        batch_size: int = 500,
        held_exclusively: Callable[[], set[str]] = set,
        fault_point: FaultPoint = no_fault,
    ) -> None:
        self.store = store
        self.clock = clock
        self.send = send
        self.sign = sign
        self.name = name
        self.poll_seconds = poll_seconds
        self.resend_after = resend_after_seconds
        self.batch_size = batch_size
        self.held_exclusively = held_exclusively
        """The clusters an exclusive job (a CLUSTER restore) holds: read once per tick."""
        self.fault_point = fault_point
        self.clusters: dict[str, Cluster] = {}
        # Only the backups a decision still needs are remembered, per cluster: its last scheduled
        # backup and its chain's full. Everything older is forgotten, so memory (and the garbage
        # collector's work) stays flat however long the scheduler runs.
        self.status: dict[UUID, str] = {}
        self.sent_at: dict[UUID, float] = {}
        self.tracked: dict[str, set[UUID]] = {}
        self.heap: list[tuple[datetime, str]] = []
        self.dirty: set[str] = set()
        self.follower = LogReader(store, FOLLOWED, FOLLOW_BATCH)
        self.position = 0
        """How far the scheduler followed the log: in memory (its state is rebuilt from the
        store on start, :meth:`bootstrap`, so there is nothing to resume)."""
        self.stats = SchedulerStats()
        self._reported: datetime | None = None

    # -- state from the event store -----------------------------------------------------------

    def bootstrap(self) -> None:
        self.position = self.store.max_position()
        for rows in LogReader(
            self.store, event_topics(Cluster.ClusterRegistered), FOLLOW_BATCH
        ).pages():
            for row in rows:
                self._reload(cluster_id_of(self.store.domain_event(row)))

    def _reload(self, cluster_id: str) -> Cluster | None:
        cluster = self.store.get_or_none(cluster_aggregate_id(cluster_id), Cluster)
        if cluster is None:
            return None
        self.clusters[cluster_id] = cluster
        self.dirty.add(cluster_id)
        self._forget_old(cluster)
        return cluster

    def follow_once(self) -> int:
        rows = self.follower.read(self.position)
        for row in rows:
            self.position = row.id
            event = self.store.domain_event(row)
            cluster_id = cluster_id_of(event)
            if isinstance(event, BACKUP_EVENTS):
                # By the backup's id, not its stream's: a backup's stream id derives from its
                # cluster and backup ids (only 0.1's backups live at the bare backup id).
                if event.backup_id in relevant_backups(self.clusters.get(cluster_id)):
                    self._remember(cluster_id, event.backup_id, STATUS_AFTER[type(event).__name__])
                self.dirty.add(cluster_id)
                continue
            cached = self.clusters.get(cluster_id)
            if cached is None or cached.version < event.originator_version:
                self._reload(cluster_id)
        return len(rows)

    def _remember(self, cluster_id: str, backup_id: UUID, status: str) -> None:
        self.status[backup_id] = status
        self.tracked.setdefault(cluster_id, set()).add(backup_id)
        if status in TERMINAL:
            self.sent_at.pop(backup_id, None)

    def _forget_old(self, cluster: Cluster) -> None:
        tracked = self.tracked.get(cluster.cluster_id)
        if not tracked:
            return
        keep = relevant_backups(cluster)
        for backup_id in tracked - keep:
            self.status.pop(backup_id, None)
            self.sent_at.pop(backup_id, None)
        tracked &= keep

    def backup_status(self, cluster: Cluster, backup_id: UUID) -> str | None:
        """Status of a backup: the followed cache, confirmed from the store when not terminal."""
        status = self.status.get(backup_id)
        if status in TERMINAL:
            return status
        backup = load_backup(self.store, cluster.cluster_id, backup_id)
        if backup is not None:
            self._remember(cluster.cluster_id, backup_id, backup.status)
            return backup.status
        return None

    # -- decisions -----------------------------------------------------------------------------

    def _push(self, when: datetime, cluster_id: str) -> None:
        heapq.heappush(self.heap, (when, cluster_id))

    def _due_clusters(self, now: datetime) -> set[str]:
        due = set(self.dirty)
        self.dirty.clear()
        while self.heap and self.heap[0][0] <= now:
            due.add(heapq.heappop(self.heap)[1])
        return due

    def decide(
        self, cluster_id: str, now: datetime, held: set[str] | None = None
    ) -> tuple[Cluster | None, bool]:
        """Record on the cluster (not yet saved) the backup due now, if any.

        Returns (the cluster with a pending BackupScheduled, or None; whether the cluster's last
        scheduled backup never started and its TakeBackup should be sent again)."""
        cluster = self.clusters.get(cluster_id)
        if cluster is None:
            return None, False
        view = schedule_view(cluster)
        slot = due_slot(view, now)
        if slot is None:
            upcoming = next_slot(view)
            if upcoming is not None:
                self._push(upcoming, cluster_id)
            last = cluster.last_scheduled
            # A scheduled backup that never started (its TakeBackup was lost in a crash): send it
            # again now, not only when the next slot falls due. One whose start was followed
            # from the log has started: no need to ask the store.
            if (
                last is not None
                and last["backup_id"] not in self.status
                and self.backup_status(cluster, last["backup_id"]) is None
            ):
                self._push(now + timedelta(seconds=60), cluster_id)
                return None, self._resend_due(cluster, last["backup_id"])
            return None, False
        if scheduled_backup_waits_for_a_cluster_restore(cluster_id, held or set()):
            self._push(now + timedelta(seconds=30), cluster_id)
            return None, False
        last = cluster.last_scheduled
        if last is not None:
            status = self.backup_status(cluster, last["backup_id"])
            if not backup_may_start(status, last_backup_known=True):
                # Woken by the backup's completion; re-checked now and then in case it is lost.
                self._push(now + timedelta(seconds=60), cluster_id)
                return None, status is None and self._resend_due(cluster, last["backup_id"])
        chain_complete = False
        if cluster.chain is not None:
            chain_status = self.backup_status(cluster, cluster.chain["chain_id"])
            chain_complete = chain_status == BackupStatus.COMPLETE.value
        backup_type = backup_type_for(view, slot, chain_complete)
        backup_id = scheduled_backup_id(cluster_id, cluster.generation, slot)
        chain_id = backup_id if backup_type is BackupType.FULL else cluster.chain["chain_id"]  # type: ignore[index]
        cluster.schedule_backup(backup_id, backup_type, slot, chain_id, now, self.name)
        return cluster, False

    def _resend_due(self, cluster: Cluster, backup_id: UUID) -> bool:
        """A scheduled backup that never started: its TakeBackup may have been lost (a crash
        between recording and sending). Send it again once it has waited ``resend_after``."""
        self.tracked.setdefault(cluster.cluster_id, set()).add(backup_id)
        first_seen = self.sent_at.setdefault(backup_id, time.monotonic())
        if time.monotonic() - first_seen > self.resend_after:
            self.sent_at[backup_id] = time.monotonic()
            return True
        return False

    def save_decisions(self, decided: list[Cluster], now: datetime) -> list[Cluster]:
        """Save in batches (one transaction each). A batch that collides with another scheduler
        instance is dropped: its clusters are re-read and decided again on the next tick."""
        saved: list[Cluster] = []
        for i in range(0, len(decided), self.batch_size):
            batch = decided[i : i + self.batch_size]
            try:
                self.store.save_all(*batch)
            except IntegrityError:
                self.stats.conflicts += 1
                for cluster in batch:
                    self._reload(cluster.cluster_id)
                continue
            for cluster in batch:
                last = cluster.last_scheduled
                assert last is not None
                self.stats.scheduled += 1
                self.stats.lateness_seconds.append((now - last["slot"]).total_seconds())
                self._forget_old(cluster)
                upcoming = next_slot(schedule_view(cluster))
                if upcoming is not None:
                    self._push(upcoming, cluster.cluster_id)
            saved.extend(batch)
        return saved

    def _decide_all(
        self, cluster_ids: list[str], now: datetime
    ) -> tuple[list[Cluster], list[Cluster]]:
        decided: list[Cluster] = []
        resend: list[Cluster] = []
        try:
            held = self.held_exclusively()
        except Exception:  # the executor refuses such a backup anyway: schedule as usual
            log.exception("reading which clusters a CLUSTER restore holds failed")
            held = set()
        for cluster_id in cluster_ids:
            cluster, send_again = self.decide(cluster_id, now, held)
            if cluster is not None:
                decided.append(cluster)
            elif send_again:
                resend.append(self.clusters[cluster_id])
        return self.save_decisions(decided, now), resend

    async def _send(self, cluster: Cluster) -> None:
        last = cluster.last_scheduled
        assert last is not None
        backup_id = last["backup_id"]
        fields = {
            "type": "TakeBackup",
            "command_id": uuid4(),
            "cluster_id": cluster.cluster_id,
            "backup_id": backup_id,
            "backup_type": BackupType(last["backup_type"]).value,
            "reason": BackupReason.SCHEDULED.value,
            "scheduled_for": last["slot"],
            "chain_id": last["chain_id"],
            "retention_days": cluster.retention_days,
        }
        # Signed anew each time it is sent: a resend is never refused for an expired token.
        command = self.sign(fields)
        TakeBackup.model_validate(command)  # what the executor will read: a drift fails here
        await self.send(command)
        self.sent_at[backup_id] = time.monotonic()
        self.tracked.setdefault(cluster.cluster_id, set()).add(backup_id)

    # -- loop ----------------------------------------------------------------------------------

    async def tick(self) -> None:
        """Follow the log, then decide and send everything due now.

        On the simulated clock it then reports as reached the time it read *before* following
        the log, not the decision time: a report of ``T`` then says both that everything due up
        to ``T`` was decided and sent, and that every event recorded before the clock reached
        ``T`` was followed. So "record a change, move the clock to ``T``, wait until the
        scheduler reached ``T``" proves the scheduler decided on that change, and a test can
        assert on the event store that something was *not* scheduled without sleeping. (A due
        slot that waits for the cluster's backup in flight is decided when that backup ends.)"""
        started = time.process_time()
        began = self.clock.now()
        while await asyncio.to_thread(self.follow_once) == FOLLOW_BATCH:
            pass
        now = self.clock.now()
        due = sorted(self._due_clusters(now))
        if due:
            saved, resend = await asyncio.to_thread(self._decide_all, due, now)
            self.stats.resent += len(resend)
            if saved:  # recorded, not yet sent: the fault suite kills a scheduler here
                await asyncio.to_thread(self.fault_point, "scheduler-between-record-and-send")
            to_send = [*saved, *resend]
            # In slices: one gather of thousands of sends makes the producer's accumulator wake
            # every waiting send on each drained batch (quadratic in the burst size).
            for i in range(0, len(to_send), SEND_SLICE):
                await asyncio.gather(*(self._send(c) for c in to_send[i : i + SEND_SLICE]))
        if self.clock.simulated and began != self._reported:
            await asyncio.to_thread(self.clock.report_reached, self.name, began)
            self._reported = began
        self.stats.cpu_seconds += time.process_time() - started

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.to_thread(self.bootstrap)
        gc.freeze()  # the clusters loaded at start-up live on: keep them out of every collection
        while not stop.is_set():
            await self.tick()
            wake = self.heap[0][0] if self.heap else self.clock.now() + timedelta(hours=1)
            await self.clock.sleep_until(wake, self.poll_seconds)
