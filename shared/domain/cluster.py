"""The Cluster aggregate: registry, backup settings, tier, and the backup schedule's decisions.

The scheduler is the only writer. Recording ``BackupScheduled`` on the cluster's own stream makes
scheduling linearizable per cluster: two scheduler instances deciding the same slot collide on the
stream version, and the loser re-reads and sees the slot taken.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from managed_backups.contracts.enums import BackupType, Tier
from managed_backups.shared.domain.backup_settings import (
    BackupSettings,
    SettingsChange,
    SettingsDecision,
    decide_settings_change,
    settings_after_tier_change,
)
from managed_backups.shared.domain.errors import NotFound
from managed_backups.shared.domain.ids import cluster_aggregate_id


class Cluster(Aggregate):
    @staticmethod
    def create_id(cluster_id: str) -> UUID:
        return cluster_aggregate_id(cluster_id)

    class ClusterRegistered(Aggregate.Created):
        cluster_id: str
        name: str
        organization: str
        tier: str
        regions: list[str]
        engine: str
        database_version: str
        connection_ref: str
        backup_region: str
        enabled: bool
        frequency_minutes: int
        retention_days: int
        command_id: UUID | None
        at: datetime
        by: str

    @event(ClusterRegistered)
    def __init__(
        self,
        cluster_id: str,
        name: str,
        organization: str,
        tier: str,
        regions: list[str],
        engine: str,
        database_version: str,
        connection_ref: str,
        backup_region: str,
        enabled: bool,
        frequency_minutes: int,
        retention_days: int,
        command_id: UUID | None,
        at: datetime,
        by: str,
    ) -> None:
        self.cluster_id = cluster_id
        self.name = name
        self.organization = organization
        self.tier = tier
        self.regions = list(regions)
        self.engine = engine
        self.database_version = database_version
        self.connection_ref = connection_ref
        self.backup_region = backup_region
        self.enabled = enabled
        self.frequency_minutes = frequency_minutes
        self.retention_days = retention_days
        self.retention_changed = False
        self.deleted = False
        self.registered_at = at
        self.deleted_at: datetime | None = None
        # Schedule state: a new generation starts at registration and at every settings change;
        # its slots are generation_start + k * frequency.
        self.generation = 0
        self.generation_start = at
        self.full_backup_required = True
        self.last_scheduled: dict[str, Any] | None = None
        self.chain: dict[str, Any] | None = None

    # -- settings ---------------------------------------------------------------------------

    @property
    def settings(self) -> BackupSettings:
        return BackupSettings(self.enabled, self.frequency_minutes, self.retention_days)

    def check_live(self) -> None:
        if self.deleted:
            raise NotFound(f"cluster {self.cluster_id} was deleted")

    def decide_settings(self, change: SettingsChange) -> SettingsDecision:
        self.check_live()
        return decide_settings_change(
            Tier(self.tier), self.settings, self.retention_changed, change
        )

    def update_backup_settings(
        self, decision: SettingsDecision, command_id: UUID | None, at: datetime, by: str
    ) -> None:
        self._backup_settings_updated(
            cluster_id=self.cluster_id,
            enabled=decision.settings.enabled,
            frequency_minutes=decision.settings.frequency_minutes,
            retention_days=decision.settings.retention_days,
            retention_changed=decision.retention_changed,
            full_backup_required=decision.full_backup_required,
            command_id=command_id,
            at=at,
            by=by,
        )

    class BackupSettingsUpdated(Aggregate.Event):
        cluster_id: str
        enabled: bool
        frequency_minutes: int
        retention_days: int
        retention_changed: bool
        full_backup_required: bool
        command_id: UUID | None
        at: datetime
        by: str

    @event(BackupSettingsUpdated)
    def _backup_settings_updated(
        self,
        cluster_id: str,
        enabled: bool,
        frequency_minutes: int,
        retention_days: int,
        retention_changed: bool,
        full_backup_required: bool,
        command_id: UUID | None,
        at: datetime,
        by: str,
    ) -> None:
        schedule_changed = (
            frequency_minutes != self.frequency_minutes
            or retention_days != self.retention_days
            or enabled != self.enabled
        )
        self.enabled = enabled
        self.frequency_minutes = frequency_minutes
        self.retention_days = retention_days
        self.retention_changed = self.retention_changed or retention_changed
        if schedule_changed:
            self._new_generation(at, full_backup_required)

    def change_tier(self, tier: Tier, command_id: UUID | None, at: datetime, by: str) -> bool:
        """Returns False when the cluster already has that tier (nothing recorded)."""
        self.check_live()
        previous = Tier(self.tier)
        if previous is tier:
            return False
        settings, full = settings_after_tier_change(previous, tier, self.settings)
        self._tier_changed(
            cluster_id=self.cluster_id,
            previous_tier=previous.value,
            tier=tier.value,
            enabled=settings.enabled,
            frequency_minutes=settings.frequency_minutes,
            retention_days=settings.retention_days,
            command_id=command_id,
            at=at,
            by=by,
            full_backup_required=full,
        )
        return True

    class ClusterTierChanged(Aggregate.Event):
        cluster_id: str
        previous_tier: str
        tier: str
        enabled: bool
        frequency_minutes: int
        retention_days: int
        command_id: UUID | None
        at: datetime
        by: str
        full_backup_required: bool = False

    @event(ClusterTierChanged)
    def _tier_changed(
        self,
        cluster_id: str,
        previous_tier: str,
        tier: str,
        enabled: bool,
        frequency_minutes: int,
        retention_days: int,
        command_id: UUID | None,
        at: datetime,
        by: str,
        full_backup_required: bool = False,
    ) -> None:
        schedule_changed = (
            frequency_minutes != self.frequency_minutes
            or retention_days != self.retention_days
            or enabled != self.enabled
        )
        self.tier = tier
        self.enabled = enabled
        self.frequency_minutes = frequency_minutes
        self.retention_days = retention_days
        if schedule_changed:
            self._new_generation(at, full_backup_required)

    def delete(self, command_id: UUID | None, at: datetime, by: str) -> None:
        self.check_live()
        self._deleted(
            cluster_id=self.cluster_id,
            retention_days=self.retention_days,
            command_id=command_id,
            at=at,
            by=by,
        )

    class ClusterDeleted(Aggregate.Event):
        cluster_id: str
        retention_days: int
        command_id: UUID | None
        at: datetime
        by: str

    @event(ClusterDeleted)
    def _deleted(
        self, cluster_id: str, retention_days: int, command_id: UUID | None, at: datetime, by: str
    ) -> None:
        self.deleted = True
        self.deleted_at = at

    # -- schedule ---------------------------------------------------------------------------

    def scheduled_retention(self, backup_id: UUID) -> int | None:
        """The retention the schedule recorded for ``backup_id`` if it is the last slot it
        scheduled (None otherwise, or for a slot recorded before this was kept)."""
        last = self.last_scheduled
        if last is None or last.get("backup_id") != backup_id:
            return None
        retention = last.get("retention_days")
        return int(retention) if retention is not None else None

    def _new_generation(self, at: datetime, full_backup_required: bool) -> None:
        self.generation += 1
        self.generation_start = at
        self.full_backup_required = self.full_backup_required or full_backup_required

    def schedule_backup(
        self,
        backup_id: UUID,
        backup_type: BackupType,
        slot: datetime,
        chain_id: UUID,
        at: datetime,
        by: str,
    ) -> None:
        self._backup_scheduled(
            cluster_id=self.cluster_id,
            backup_id=backup_id,
            backup_type=backup_type.value,
            slot=slot,
            chain_id=chain_id,
            retention_days=self.retention_days,
            region=self.backup_region,
            generation=self.generation,
            at=at,
            by=by,
        )

    class BackupScheduled(Aggregate.Event):
        cluster_id: str
        backup_id: UUID
        backup_type: str
        slot: datetime
        chain_id: UUID
        retention_days: int
        region: str
        generation: int
        at: datetime
        by: str

    @event(BackupScheduled)
    def _backup_scheduled(
        self,
        cluster_id: str,
        backup_id: UUID,
        backup_type: str,
        slot: datetime,
        chain_id: UUID,
        retention_days: int,
        region: str,
        generation: int,
        at: datetime,
        by: str,
    ) -> None:
        self.last_scheduled = {
            "backup_id": backup_id,
            "backup_type": backup_type,
            "slot": slot,
            "chain_id": chain_id,
            "generation": generation,
            "retention_days": retention_days,
            "at": at,
        }
        if backup_type == BackupType.FULL.value:
            self.chain = {"chain_id": backup_id, "slot": slot, "retention_days": retention_days}
            self.full_backup_required = False
