"""The Restore aggregate: one restore job's life, PREPARING → RUNNING → SUCCEEDED | FAILED.

Its stream id derives from the destination cluster and the ``restore_id`` the sender chose
(:func:`~managed_backups.shared.domain.ids.restore_aggregate_id`), so a repeated StartRestore
collides with the stream that already exists and starts nothing, and no chosen id can name
another record. The job's own id (its lease, its temporary databases) is that stream id;
users see the ``restore_id`` they chose. Restores recorded before the id was derived live at
the bare ``restore_id`` and are found by :func:`load_restore`, for their cluster only. Every phase change is an event (the audit trail);
progress is recorded as ``RestoreProgressed`` at most once per percent. A terminal job never
changes again: a late outcome and the lease reaper race on the stream version, and exactly one
of them is recorded.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from managed_backups.contracts.enums import RestorePhase
from managed_backups.shared.domain.errors import WrongRecordType
from managed_backups.shared.domain.ids import restore_aggregate_id

if TYPE_CHECKING:
    from managed_backups.shared.eventstore import EventStore


class Restore(Aggregate):
    @staticmethod
    def create_id(cluster_id: str, restore_id: UUID) -> UUID:
        return restore_aggregate_id(cluster_id, restore_id)

    class RestoreRequested(Aggregate.Created):
        restore_id: UUID
        cluster_id: str
        restore_type: str
        source_cluster_id: str
        source_cluster_name: str
        destination_cluster_name: str
        backup_id: UUID
        chain_id: UUID
        backup_end_time: datetime
        objects: list[dict[str, Any]]
        restore_opts: dict[str, Any]
        target_database: str | None
        worker: str
        lease_until: datetime
        command_id: UUID | None
        at: datetime
        by: str

    @event(RestoreRequested)
    def __init__(
        self,
        restore_id: UUID,
        cluster_id: str,
        restore_type: str,
        source_cluster_id: str,
        source_cluster_name: str,
        destination_cluster_name: str,
        backup_id: UUID,
        chain_id: UUID,
        backup_end_time: datetime,
        objects: list[dict[str, Any]],
        restore_opts: dict[str, Any],
        target_database: str | None,
        worker: str,
        lease_until: datetime,
        command_id: UUID | None,
        at: datetime,
        by: str,
    ) -> None:
        self.restore_id = restore_id
        self.cluster_id = cluster_id
        self.restore_type = restore_type
        self.source_cluster_id = source_cluster_id
        self.backup_id = backup_id
        self.chain_id = chain_id
        self.backup_end_time = backup_end_time
        self.objects = list(objects)
        self.restore_opts = dict(restore_opts)
        self.target_database = target_database
        self.worker = worker
        self.phase = RestorePhase.PREPARING.value
        self.created_at = at
        self.ended_at: datetime | None = None
        self.bytes_total = 0
        self.bytes_done = 0
        self.completion = 0.0
        self.error: dict[str, str] | None = None

    @property
    def is_terminal(self) -> bool:
        return self.phase in (RestorePhase.SUCCEEDED.value, RestorePhase.FAILED.value)

    def start_running(self, bytes_total: int, at: datetime, by: str) -> None:
        self._running(
            cluster_id=self.cluster_id,
            restore_id=self.restore_id,
            bytes_total=bytes_total,
            at=at,
            by=by,
        )

    class RestoreRunning(Aggregate.Event):
        cluster_id: str
        restore_id: UUID
        bytes_total: int
        at: datetime
        by: str

    @event(RestoreRunning)
    def _running(
        self, cluster_id: str, restore_id: UUID, bytes_total: int, at: datetime, by: str
    ) -> None:
        self.phase = RestorePhase.RUNNING.value
        self.bytes_total = bytes_total

    def progress(self, bytes_done: int, at: datetime, by: str) -> bool:
        """Record progress if it moved by at least one percent; returns whether it did."""
        completion = min(1.0, bytes_done / self.bytes_total) if self.bytes_total else 0.0
        if completion - self.completion < 0.01:
            return False
        self._progressed(
            cluster_id=self.cluster_id,
            restore_id=self.restore_id,
            bytes_done=bytes_done,
            completion=round(completion, 4),
            at=at,
            by=by,
        )
        return True

    class RestoreProgressed(Aggregate.Event):
        cluster_id: str
        restore_id: UUID
        bytes_done: int
        completion: float
        at: datetime
        by: str

    @event(RestoreProgressed)
    def _progressed(
        self,
        cluster_id: str,
        restore_id: UUID,
        bytes_done: int,
        completion: float,
        at: datetime,
        by: str,
    ) -> None:
        self.bytes_done = bytes_done
        self.completion = completion

    def succeed(
        self, bytes_done: int, restored: list[str], left_out: list[str], at: datetime, by: str
    ) -> None:
        self._succeeded(
            cluster_id=self.cluster_id,
            restore_id=self.restore_id,
            bytes_done=bytes_done,
            restored=restored,
            left_out=left_out,
            at=at,
            by=by,
        )

    class RestoreSucceeded(Aggregate.Event):
        class_version = 2
        cluster_id: str
        restore_id: UUID
        bytes_done: int
        restored: list[str]
        left_out: list[str]
        at: datetime
        by: str

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            """Version 1 had no ``left_out``: what such a job left out is in ``restored``
            (a DATABASE restore's note on owners and privileges), or nothing."""
            state["left_out"] = []

    @event(RestoreSucceeded)
    def _succeeded(
        self,
        cluster_id: str,
        restore_id: UUID,
        bytes_done: int,
        restored: list[str],
        left_out: list[str],
        at: datetime,
        by: str,
    ) -> None:
        self.phase = RestorePhase.SUCCEEDED.value
        self.bytes_done = bytes_done
        self.completion = 1.0
        self.ended_at = at

    def fail(
        self,
        error_code: str,
        error_message: str,
        failed_step: str,
        destination_state: str,
        at: datetime,
        by: str,
    ) -> None:
        self._failed(
            cluster_id=self.cluster_id,
            restore_id=self.restore_id,
            error_code=error_code,
            error_message=error_message,
            failed_step=failed_step,
            destination_state=destination_state,
            at=at,
            by=by,
        )

    class RestoreFailed(Aggregate.Event):
        cluster_id: str
        restore_id: UUID
        error_code: str
        error_message: str
        failed_step: str
        destination_state: str
        at: datetime
        by: str

    @event(RestoreFailed)
    def _failed(
        self,
        cluster_id: str,
        restore_id: UUID,
        error_code: str,
        error_message: str,
        failed_step: str,
        destination_state: str,
        at: datetime,
        by: str,
    ) -> None:
        self.phase = RestorePhase.FAILED.value
        self.error = {"code": error_code, "message": error_message, "step": failed_step}
        self.ended_at = at


def load_restore(store: EventStore, cluster_id: str, restore_id: UUID) -> Restore | None:
    """The restore job ``restore_id`` into ``cluster_id``, or None. A job recorded before the id
    was derived (stream id = the bare ``restore_id``) is found too, but only for its own
    cluster; a bare id that names another kind of record is no restore."""
    restore = store.get_or_none(restore_aggregate_id(cluster_id, restore_id), Restore)
    if restore is not None:
        return restore
    try:
        legacy = store.get_or_none(restore_id, Restore)
    except WrongRecordType:
        return None
    return legacy if legacy is not None and legacy.cluster_id == cluster_id else None


def load_job(store: EventStore, job_id: UUID) -> Restore | None:
    """The restore job whose lease is ``job_id`` (its stream id), or None when no restore is
    recorded there (an orphan lease, or an id that names another kind of record)."""
    try:
        return store.get_or_none(job_id, Restore)
    except WrongRecordType:
        return None
