"""The views' handlers, one per event class, on SQLite: what each event does to the rows the API
reads, that a batch and its position commit together, and that a replay applies nothing twice."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, get_args
from uuid import UUID, uuid4

import pytest

from managed_backups.contracts.commands import RestoreObject, RestoreOptions
from managed_backups.contracts.enums import BackupReason, BackupType, CommandStatus, Tier
from managed_backups.contracts.events import (
    ApiKeyRevoked,
    BackupCompleted,
    BackupDeleted,
    BackupExpired,
    BackupFailed,
    BackupScheduled,
    BackupSettingsUpdated,
    BackupStarted,
    BackupVerified,
    ClusterDeleted,
    ClusterRegistered,
    ClusterTierChanged,
    CommandHandled,
    DomainEvent,
    EventBase,
    RestoreFailed,
    RestoreProgressed,
    RestoreRequested,
    RestoreRunning,
    RestoreSucceeded,
)
from managed_backups.services.projections.handlers import AUDIT_ONLY, ViewProjection
from managed_backups.services.projections.service import Projector, rebuild
from managed_backups.shared.eventstore import open_event_store
from managed_backups.shared.sqldb import SqlDatabase
from managed_backups.shared.views import Page, ReadModels

E = TypeVar("E", bound=EventBase)
T0 = datetime(2026, 3, 1, tzinfo=UTC)
CLUSTER = "c-1"
LEGACY = Path(__file__).parent.parent / "data" / "legacy-v0"


class Log:
    """Wire events of one cluster, numbered as the notification log would number them."""

    def __init__(self) -> None:
        self.position = 0
        self.aggregate = uuid4()

    def __call__(self, cls: type[E], at: datetime = T0, **fields: Any) -> E:
        self.position += 1
        base: dict[str, Any] = {
            "event_id": uuid4(),
            "position": self.position,
            "cluster_id": CLUSTER,
            "aggregate_id": self.aggregate,
            "aggregate_version": self.position,
            "occurred_at": at,
            "recorded_at": at,
            "by": "test",
        }
        return cls.model_validate({**base, **fields})


@pytest.fixture
def db(tmp_path: Path) -> SqlDatabase:
    return SqlDatabase(f"sqlite:///{tmp_path / 'views.sqlite'}")


@pytest.fixture
def views(db: SqlDatabase) -> ReadModels:
    models = ReadModels(db)
    models.create()
    return models


@pytest.fixture
def projection(db: SqlDatabase, views: ReadModels) -> ViewProjection:
    return ViewProjection(db)


@pytest.fixture
def log() -> Log:
    return Log()


SETTINGS = {"enabled": True, "frequency_minutes": 60, "retention_days": 7}


def registered(log: Log) -> ClusterRegistered:
    return log(
        ClusterRegistered,
        name="one",
        organization="acme",
        tier=Tier.STANDARD,
        regions=["us-east-1"],
        engine="postgres",
        database_version="15",
        connection_ref="secret-ref:c-1",
        backup_region="us-east-1",
        command_id=None,
        **SETTINGS,
    )


def scheduled(log: Log, backup_id: UUID, chain_id: UUID, kind: BackupType) -> BackupScheduled:
    return log(
        BackupScheduled,
        backup_id=backup_id,
        backup_type=kind,
        slot=T0,
        chain_id=chain_id,
        retention_days=7,
        region="us-east-1",
        generation=1,
    )


def started(log: Log, backup_id: UUID, chain_id: UUID, kind: BackupType) -> BackupStarted:
    return log(
        BackupStarted,
        at=T0 + timedelta(minutes=1),
        backup_id=backup_id,
        backup_type=kind,
        chain_id=chain_id,
        reason=BackupReason.SCHEDULED,
        region="us-east-1",
        retention_days=7,
        scheduled_for=T0,
        executor="executor-1",
        lease_until=T0 + timedelta(hours=1),
        command_id=None,
    )


def completed(log: Log, backup_id: UUID, size: int, as_of: datetime) -> BackupCompleted:
    return log(
        BackupCompleted,
        at=as_of,
        backup_id=backup_id,
        as_of_time=as_of,
        size_bytes=size,
        database_count=1,
        catalog=[{"name": "app", "schemas": [], "size_bytes": size}],
        manifest_key=f"manifests/{backup_id}",
        expires_at=as_of + timedelta(days=7),
    )


def test_cluster_events_shape_the_cluster_view(
    projection: ViewProjection, views: ReadModels, log: Log
) -> None:
    projection.apply_batch([registered(log)])
    doc = views.cluster(CLUSTER)
    assert doc is not None
    assert (doc["state"], doc["tier"], doc["version"]) == ("READY", "STANDARD", 1)
    assert doc["backups_config"] == SETTINGS

    changed = {**SETTINGS, "retention_days": 14}
    projection.apply_batch(
        [
            log(
                BackupSettingsUpdated,
                retention_changed=True,
                full_backup_required=False,
                command_id=None,
                **changed,
            ),
            log(
                ClusterTierChanged,
                previous_tier=Tier.STANDARD,
                tier=Tier.ADVANCED,
                full_backup_required=True,
                command_id=None,
                **changed,
            ),
        ]
    )
    doc = views.cluster(CLUSTER)
    assert doc is not None
    assert (doc["tier"], doc["retention_changed"], doc["version"]) == ("ADVANCED", True, 3)
    assert doc["backups_config"] == changed
    assert [c["id"] for c in views.clusters()] == [CLUSTER]

    deleted_at = T0 + timedelta(days=1)
    projection.apply_batch([log(ClusterDeleted, at=deleted_at, retention_days=14, command_id=None)])
    doc = views.cluster(CLUSTER)
    assert doc is not None
    assert doc["state"] == "DELETED"
    assert doc["backups_kept_until"] == "2026-03-16T00:00:00.000000Z"
    assert views.clusters() == []
    assert [c["id"] for c in views.clusters(include_deleted=True)] == [CLUSTER]
    assert views.position() == 4


def test_events_of_an_unknown_cluster_change_no_cluster(
    projection: ViewProjection, views: ReadModels, log: Log
) -> None:
    projection.apply_batch(
        [
            log(
                ClusterTierChanged,
                previous_tier="BASIC",
                tier="STANDARD",
                full_backup_required=False,
                command_id=None,
                **SETTINGS,
            )
        ]
    )
    assert views.cluster(CLUSTER) is None
    assert views.position() == 1


def test_a_backup_from_schedule_to_deletion(
    projection: ViewProjection, views: ReadModels, log: Log
) -> None:
    full, incremental = uuid4(), uuid4()
    day = T0 + timedelta(hours=2)
    projection.apply_batch(
        [
            registered(log),
            scheduled(log, full, full, BackupType.FULL),
            started(log, full, full, BackupType.FULL),
            completed(log, full, 1000, day),
            started(log, incremental, full, BackupType.INCREMENTAL),
            completed(log, incremental, 10, day + timedelta(hours=1)),
        ]
    )
    doc = views.backup(CLUSTER, str(full))
    assert doc is not None
    assert (doc["status"], doc["size_bytes"], doc["reason"]) == ("COMPLETE", 1000, "SCHEDULED")
    assert doc["description"].startswith("scheduled full backup of cluster c-1")
    inc = views.backup(CLUSTER, str(incremental))
    assert inc is not None
    assert inc["expires_at"] == doc["expires_at"]  # an incremental expires with its full
    listed, more = views.listed_backups(CLUSTER, day, None, None, Page(1, 10, True))
    assert [b["id"] for b in listed] == [str(incremental), str(full)] and not more
    window = views.recoverability(CLUSTER, day + timedelta(hours=2))
    assert window["stored_bytes"] == 1010
    assert window["restorable_backups"] == 2

    projection.apply_batch(
        [
            log(
                BackupVerified,
                backup_id=full,
                ok=True,
                chunks_checked=3,
                missing_chunks=[],
                corrupt_chunks=[],
                command_id=None,
            ),
            log(BackupExpired, backup_id=full, chain_id=full, reason="r", chain_expires_at=day),
            log(
                BackupDeleted,
                backup_id=full,
                chain_id=full,
                objects_deleted=4,
                bytes_freed=1000,
                reason="r",
            ),
        ]
    )
    doc = views.backup(CLUSTER, str(full))
    assert doc is not None
    assert doc["verification"]["chunks_checked"] == 3
    assert (doc["status"], doc["bytes_freed"], doc["objects_deleted"]) == ("EXPIRED", 1000, 4)
    window = views.recoverability(CLUSTER, day + timedelta(hours=2))
    assert (window["stored_bytes"], window["expired_backups"], window["deleted_backups"]) == (
        10,
        1,
        1,
    )
    assert window["bytes_freed"] == 1000


def test_a_failed_backup_is_incomplete_not_listed(
    projection: ViewProjection, views: ReadModels, log: Log
) -> None:
    backup = uuid4()
    projection.apply_batch(
        [
            registered(log),
            started(log, backup, backup, BackupType.FULL),  # no schedule: made on start
            log(
                BackupFailed,
                backup_id=backup,
                error_code="E",
                error_message="disk full",
                failed_step="COPY",
            ),
        ]
    )
    assert [b["status"] for b in views.incomplete_backups(CLUSTER)] == ["FAILED"]
    doc = views.incomplete_backups(CLUSTER)[0]
    assert doc["error"] == {"code": "E", "message": "disk full"}
    assert views.listed_backups(CLUSTER, T0, None, None, Page(1, 10, True)) == ([], False)
    assert views.backup_metrics() == [(CLUSTER, "FAILED", 1, None)]


def test_a_restore_job_through_its_phases(
    projection: ViewProjection, views: ReadModels, log: Log
) -> None:
    restore_id = uuid4()
    projection.apply_batch(
        [
            log(
                RestoreRequested,
                restore_id=restore_id,
                restore_type="DATABASE",
                source_cluster_id="c-0",
                source_cluster_name="zero",
                destination_cluster_name="one",
                backup_id=uuid4(),
                chain_id=uuid4(),
                backup_end_time=T0,
                objects=[RestoreObject(database="app")],
                restore_opts=RestoreOptions(),
                target_database="app",
                worker="w",
                lease_until=T0 + timedelta(hours=1),
                command_id=None,
            ),
            log(RestoreRunning, restore_id=restore_id, bytes_total=100),
            log(RestoreProgressed, restore_id=restore_id, bytes_done=50, completion=0.5),
        ]
    )
    doc = views.restore(CLUSTER, str(restore_id))
    assert doc is not None
    assert (doc["status"], doc["phase"], doc["completion_percent"]) == ("PENDING", "RUNNING", 0.5)
    projection.apply_batch(
        [log(RestoreSucceeded, restore_id=restore_id, bytes_done=100, restored=["app"])]
    )
    jobs, more = views.restores(CLUSTER, 1, 10)
    assert not more
    assert [(j["status"], j["completion_percent"]) for j in jobs] == [("SUCCESS", 1.0)]
    assert [p["phase"] for p in jobs[0]["phases"]] == ["PREPARING", "RUNNING", "SUCCEEDED"]

    failed = uuid4()
    projection.apply_batch(
        [
            log(
                RestoreFailed,
                restore_id=failed,  # never requested: nothing to show
                error_code="E",
                error_message="m",
                failed_step="s",
                destination_state="untouched",
            )
        ]
    )
    assert views.restore(CLUSTER, str(failed)) is None


def test_the_audit_trail_leaves_out_accepted_command_bookkeeping(
    projection: ViewProjection, views: ReadModels, log: Log
) -> None:
    def handled(status: CommandStatus) -> CommandHandled:
        return log(
            CommandHandled,
            command_id=uuid4(),
            command_type="UpdateBackupSettings",
            status=status,
            code=202 if status == CommandStatus.ACCEPTED else 403,
            reason=None,
        )

    projection.apply_batch(
        [
            registered(log),
            handled(CommandStatus.ACCEPTED),
            handled(CommandStatus.REJECTED),
            log(ApiKeyRevoked, cluster_id=None, key_id="k"),
        ]
    )
    assert [e["type"] for e in views.audit(CLUSTER)] == ["ClusterRegistered", "CommandHandled"]
    assert views.audit(CLUSTER)[1]["status"] == "REJECTED"
    assert views.audit(CLUSTER, after=1) == views.audit(CLUSTER)[1:]  # after position 1
    assert views.position() == 4  # an event no view shows still moves the position


def test_a_failing_batch_commits_neither_rows_nor_position(
    db: SqlDatabase, projection: ViewProjection, views: ReadModels, log: Log
) -> None:
    backup = uuid4()
    projection.apply_batch([registered(log), started(log, backup, backup, BackupType.FULL)])
    db.execute(f"DROP TABLE {views.tables.retention}")  # the completion's counters cannot be kept
    tier = log(
        ClusterTierChanged,
        previous_tier=Tier.STANDARD,
        tier=Tier.BASIC,
        full_backup_required=False,
        command_id=None,
        **SETTINGS,
    )
    with pytest.raises(Exception, match="retention"):
        projection.apply_batch([tier, completed(log, backup, 5, T0)])
    assert views.position() == 2
    doc = views.cluster(CLUSTER)
    assert doc is not None and doc["tier"] == "STANDARD"
    assert len(views.audit(CLUSTER)) == 2


def test_a_caught_up_projector_applies_nothing_twice(tmp_path: Path) -> None:
    copy = tmp_path / "events.sqlite"
    shutil.copyfile(LEGACY / "events-v0.sqlite", copy)
    url = f"sqlite:///{copy}"
    store = open_event_store(url)
    db = SqlDatabase(url)
    views = rebuild(store, db)
    before = views.dump()
    projector = Projector(store, views)
    assert projector.catch_up_once() == 0
    assert views.dump() == before
    # A rebuild into other tables holds the same rows as the live ones.
    assert rebuild(store, db, prefix="mb_other_").dump() == before


def test_every_event_class_has_a_handler_or_is_declared_audit_only() -> None:
    contract_classes = set(get_args(get_args(DomainEvent)[0]))
    handled = set(vars(ViewProjection)["handle"].dispatcher.registry) - {object, EventBase}
    assert handled.isdisjoint(AUDIT_ONLY)
    assert handled | set(AUDIT_ONLY) == contract_classes


def test_a_batch_two_instances_read_is_applied_once(
    db: SqlDatabase, views: ReadModels, log: Log
) -> None:
    """Two instances of the projections read the same batch: the second finds the position
    already past it and drops it, so the retention counters are not added twice."""
    first, second = ViewProjection(db), ViewProjection(db)
    backup = uuid4()
    batch = [
        registered(log),
        started(log, backup, backup, BackupType.FULL),
        completed(log, backup, 5000, T0),
    ]
    applied = (first.apply_batch(batch, after=0), second.apply_batch(batch, after=0))
    rows = db.query("SELECT stored_bytes FROM mb_view_retention WHERE cluster_id = ?", (CLUSTER,))
    assert [int(r[0]) for r in rows] == [5000]
    assert views.position() == 3 and applied == (True, False)
