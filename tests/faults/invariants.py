"""The invariants the fault suite (and the soak) checks after every fault, each read from its
source of truth: the event store's log, the events topic, the object stores, the read models
rebuilt from the log, the lease table.

:func:`check_all` returns a :class:`Report`: one line per invariant, held or not, with what it
counted, printed by the suite after each fault and gathered into the README's table.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from aiokafka import AIOKafkaConsumer, TopicPartition

from managed_backups.contracts import topics
from managed_backups.services.relay.relay import RELAY_ROLE
from managed_backups.shared.broker_access import KafkaAuth
from managed_backups.shared.dataplane.manifest import (
    ManifestError,
    chain_prefix,
    chunk_key,
    manifest_key,
    read_manifest,
)
from managed_backups.shared.dataplane.objectstore import ObjectStore, open_store
from managed_backups.shared.eventstore import EventStore, to_wire_event
from managed_backups.shared.sqldb import SqlDatabase

TERMINAL_BACKUP = {"COMPLETE", "FAILED", "EXPIRED"}
TERMINAL_RESTORE = {"SUCCEEDED", "FAILED"}


@dataclass
class Line:
    name: str
    held: bool
    detail: str


@dataclass
class Report:
    fault: str
    lines: list[Line] = field(default_factory=list)

    def add(self, name: str, held: bool, detail: str) -> None:
        self.lines.append(Line(name, held, detail))

    @property
    def held(self) -> bool:
        return all(line.held for line in self.lines)

    def failures(self) -> list[Line]:
        return [line for line in self.lines if not line.held]

    def render(self) -> str:
        width = max((len(line.name) for line in self.lines), default=10)
        rows = [f"== invariants after: {self.fault}"]
        for line in self.lines:
            mark = "held  " if line.held else "BROKEN"
            rows.append(f"  {mark} {line.name.ljust(width)}  {line.detail}")
        return "\n".join(rows)


@dataclass
class BackupState:
    cluster_id: str
    backup_id: str
    backup_type: str
    chain_id: str
    region: str
    reason: str
    scheduled_for: Any
    status: str = "IN_PROGRESS"
    error: str | None = None
    deleted: bool = False


@dataclass
class LogState:
    """What the log says, folded once: positions, backups, scheduled slots, restores."""

    positions: list[int] = field(default_factory=list)
    cluster_positions: dict[int, str] = field(default_factory=dict)
    """Position → cluster id, for the events the audit trail records."""
    wire_ids: dict[int, str] = field(default_factory=dict)
    backups: dict[tuple[str, str], BackupState] = field(default_factory=dict)
    scheduled: list[tuple[str, str, Any]] = field(default_factory=list)
    restores: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Restore id → (cluster id, status)."""

    def restore_status(self) -> Counter[str]:
        return Counter(status for _, status in self.restores.values())


def fold_log(store: EventStore) -> LogState:
    state = LogState()
    after = 0
    while rows := store.notifications(after, 2000):
        for row in rows:
            after = row.id
            event = store.domain_event(row)
            state.positions.append(row.id)
            wire = to_wire_event(row.id, event)
            state.wire_ids[row.id] = str(wire.event_id)
            audited = not (
                type(event).__name__ == "CommandHandled"
                and getattr(event, "status", None) == "ACCEPTED"
            )
            if wire.cluster_id is not None and audited:
                state.cluster_positions[row.id] = wire.cluster_id
            _apply(state, type(event).__name__, event.__dict__)
    return state


def _apply(state: LogState, name: str, f: dict[str, Any]) -> None:
    if name == "BackupScheduled":
        state.scheduled.append((f["cluster_id"], str(f["backup_id"]), f["slot"]))
        return
    if name.startswith("Backup") and "backup_id" in f and "cluster_id" in f:
        key = (f["cluster_id"], str(f["backup_id"]))
        if name == "BackupStarted":
            state.backups[key] = BackupState(
                f["cluster_id"],
                str(f["backup_id"]),
                f["backup_type"],
                str(f["chain_id"]),
                f["region"],
                f["reason"],
                f.get("scheduled_for"),
            )
            return
        backup = state.backups.get(key)
        if backup is None:
            return
        if name == "BackupCompleted":
            backup.status = "COMPLETE"
        elif name == "BackupFailed":
            backup.status = "FAILED"
            backup.error = f"{f['error_code']}: {f['error_message']}"[:200]
        elif name == "BackupExpired":
            backup.status = "EXPIRED"
        elif name == "BackupDeleted":
            backup.deleted = True
        return
    if name.startswith("Restore") and "restore_id" in f:
        status = {
            "RestoreRequested": "PREPARING",
            "RestoreRunning": "RUNNING",
            "RestoreSucceeded": "SUCCEEDED",
            "RestoreFailed": "FAILED",
        }.get(name)
        rid = str(f["restore_id"])
        if status is not None:
            state.restores[rid] = (f["cluster_id"], status)


# -- the invariants -----------------------------------------------------------------------------


def slots_ended_once(state: LogState, report: Report) -> None:
    """Every scheduled slot ended in exactly one COMPLETE or FAILED backup."""
    missing, running, duplicates = [], [], []
    for cluster_id, backup_id, _ in state.scheduled:
        backup = state.backups.get((cluster_id, backup_id))
        if backup is None:
            missing.append(backup_id)
        elif backup.status not in TERMINAL_BACKUP:
            running.append(backup_id)
    # A slot is a scheduled backup id (cluster, settings generation, slot time: a change of
    # settings starts a new grid whose slot 0 may fall at the same time as the old grid's).
    scheduled_ids = Counter((c, b) for c, b, _ in state.scheduled)
    duplicates = [slot for slot, n in scheduled_ids.items() if n > 1]
    duplicates += [
        (b.cluster_id, f"{b.backup_id} (SCHEDULED, for no recorded slot)")
        for b in state.backups.values()
        if b.reason == "SCHEDULED" and (b.cluster_id, b.backup_id) not in scheduled_ids
    ]
    outcomes = Counter(
        state.backups[(c, b)].status for c, b, _ in state.scheduled if (c, b) in state.backups
    )
    report.add(
        "every scheduled slot ended in exactly one COMPLETE or FAILED backup",
        not missing and not running and not duplicates,
        f"{len(state.scheduled)} slots: {dict(outcomes)}"
        + (f"; never started {missing[:3]}" if missing else "")
        + (f"; still running {running[:3]}" if running else "")
        + (f"; two backups for {duplicates[:3]}" if duplicates else ""),
    )


def no_job_running(state: LogState, db: SqlDatabase, report: Report) -> None:
    backups = [b.backup_id for b in state.backups.values() if b.status == "IN_PROGRESS"]
    restores = [r for r, (_, s) in state.restores.items() if s not in TERMINAL_RESTORE]
    # The active relay's lease is not a job: it is held for as long as a relay runs.
    leases = db.query(
        "SELECT kind, job_id, owner FROM mb_job_leases WHERE kind <> ?", (RELAY_ROLE,)
    )
    report.add(
        "no job left running (backups, restores, leases)",
        not backups and not restores and not leases,
        f"{len(state.backups)} backups, {len(state.restores)} restores "
        f"{dict(state.restore_status())}, {len(leases)} leases"
        + (f"; running backups {backups[:3]}" if backups else "")
        + (f"; running restores {restores[:3]}" if restores else "")
        + (f"; leases {leases[:3]}" if leases else ""),
    )


async def behind(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    """Whether ``consumer`` has not yet read up to ``ends`` on some partition."""
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return True
    return False


async def topic_events(bootstrap: str, auth: KafkaAuth | None) -> list[dict[str, Any]]:
    """Every record of the events topic, from the beginning to its end now."""
    options = auth.client_options() if auth is not None else {}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None, **options
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topics.EVENTS, p)
            for p in sorted(consumer.partitions_for_topic(topics.EVENTS) or [])
        ]
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = [
                TopicPartition(topics.EVENTS, p)
                for p in sorted(consumer.partitions_for_topic(topics.EVENTS) or [])
            ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[dict[str, Any]] = []
        async with asyncio.timeout(120):
            while await behind(consumer, ends):
                batch = await consumer.getmany(timeout_ms=500)
                for items in batch.values():
                    records.extend(json.loads(r.value) for r in items)
        return records
    finally:
        await consumer.stop()


def events_once_everywhere(
    state: LogState,
    records: list[dict[str, Any]],
    db: SqlDatabase,
    report: Report,
    set_aside: Iterable[int] = (),
) -> None:
    """No event missing or duplicated between the event store, the events topic (after the
    consumers' de-duplication by event id, in store order per cluster) and the views."""
    expected = {p: state.wire_ids[p] for p in state.positions if p not in set(set_aside)}
    seen: dict[str, int] = {}
    repeats = 0
    disorder = 0
    last: dict[str, int] = {}
    for record in records:
        if record["event_id"] in seen:
            repeats += 1
            continue
        seen[record["event_id"]] = record["position"]
        key = record.get("cluster_id") or record.get("aggregate_id")
        if record["position"] <= last.get(key, 0):
            disorder += 1
        last[key] = record["position"]
    missing_topic = [p for p, e in expected.items() if e not in seen]
    extra_topic = [p for e, p in seen.items() if p not in expected]
    audit = [int(r[0]) for r in db.query("SELECT position FROM mb_view_audit")]
    audit_counts = Counter(audit)
    wanted_audit = set(state.cluster_positions)
    missing_views = sorted(wanted_audit - set(audit))
    extra_views = sorted(set(audit) - wanted_audit)
    views_position = db.query("SELECT position FROM mb_view_position WHERE name = 'views'")
    at = int(views_position[0][0]) if views_position else 0
    top = max(state.positions, default=0)
    report.add(
        "no event missing or duplicated: store, events topic, views",
        not missing_topic
        and not extra_topic
        and not disorder
        and not missing_views
        and not extra_views
        and max(audit_counts.values(), default=1) == 1
        and at == top,
        f"store {len(state.positions)} events, topic {len(records)} records "
        f"({repeats} redelivered, dropped by event id), views at {at}/{top}"
        + (f"; missing on topic {missing_topic[:5]}" if missing_topic else "")
        + (f"; unknown on topic {extra_topic[:5]}" if extra_topic else "")
        + (f"; out of order {disorder}" if disorder else "")
        + (f"; missing in views {missing_views[:5]}" if missing_views else "")
        + (f"; extra in views {extra_views[:5]}" if extra_views else ""),
    )


def views_equal_rebuild(store: EventStore, db: SqlDatabase, report: Report) -> None:
    """Every projection equal to a rebuild from the store."""
    from managed_backups.services.projections.service import rebuild
    from managed_backups.shared.views import ReadModels

    live = ReadModels(db).dump()
    rebuilt_models = rebuild(store, db, "mb_faultcheck_")
    rebuilt = rebuilt_models.dump()
    rebuilt_models.drop()
    differing = [t for t in live if live[t] != rebuilt.get(t)]
    report.add(
        "every projection equal to a rebuild from the store",
        not differing,
        f"{sum(len(v) for v in live.values())} rows in {len(live)} tables"
        + (f"; differ: {differing}" if differing else ""),
    )


def stores_match_backups(
    state: LogState,
    stores: dict[str, ObjectStore],
    report: Report,
    after_retention: bool,
    sealed: Callable[[str, str], ObjectStore] | None = None,
) -> None:
    """No listed backup without its objects; after retention, no orphan object (a chunk or a
    manifest no live backup needs). ``sealed(region, cluster_id)``: the region's store as the
    services read it for the cluster (manifests are stored encrypted)."""
    wanted: dict[str, set[str]] = defaultdict(set)
    missing: list[str] = []
    live = [
        b for b in state.backups.values() if b.status in ("COMPLETE", "EXPIRED") and not b.deleted
    ]
    for backup in live:
        store = stores[backup.region]
        mkey = manifest_key(backup.cluster_id, backup.chain_id, backup.backup_id)
        wanted[backup.region].add(mkey)
        reader = sealed(backup.region, backup.cluster_id) if sealed is not None else store
        try:
            manifest = read_manifest(reader, backup.cluster_id, backup.chain_id, backup.backup_id)
        except (ManifestError, Exception) as exc:
            missing.append(f"{backup.backup_id}: manifest {type(exc).__name__}")
            continue
        for ref in manifest.chunk_refs():
            wanted[backup.region].add(chunk_key(backup.cluster_id, backup.chain_id, ref.hash))
    orphans: list[str] = []
    counted = 0
    for region, store in stores.items():
        present = {
            info.key
            for info in store.list("clusters")
            if "/chunks/" in info.key or "/manifests/" in info.key
        }
        counted += len(present)
        missing += sorted(wanted[region] - present)[:5]
        if after_retention:
            orphans += sorted(present - wanted[region])[:5]
    report.add(
        "no listed backup without its objects"
        + ("; no orphan object after retention" if after_retention else ""),
        not missing and not orphans,
        f"{len(live)} backups kept, {counted} objects stored"
        + (f"; missing {missing[:5]}" if missing else "")
        + (f"; orphans {orphans[:5]}" if orphans else ""),
    )


def chain_of(cluster_id: str, chain_id: str) -> str:
    return chain_prefix(cluster_id, chain_id)


def open_stores(urls: dict[str, str]) -> dict[str, ObjectStore]:
    return {region: open_store(url) for region, url in urls.items()}


async def check_all(
    fault: str,
    store: EventStore,
    db: SqlDatabase,
    bootstrap: str,
    auth: KafkaAuth | None,
    stores: dict[str, ObjectStore],
    after_retention: bool = True,
    sealed: Callable[[str, str], ObjectStore] | None = None,
) -> tuple[Report, LogState]:
    report = Report(fault)
    state = await asyncio.to_thread(fold_log, store)
    slots_ended_once(state, report)
    records = await topic_events(bootstrap, auth)
    events_once_everywhere(state, records, db, report)
    await asyncio.to_thread(no_job_running, state, db, report)
    await asyncio.to_thread(stores_match_backups, state, stores, report, after_retention, sealed)
    await asyncio.to_thread(views_equal_rebuild, store, db, report)
    return report, state


def uuid_or_none(value: str | None) -> UUID | None:
    return None if value is None else UUID(value)
