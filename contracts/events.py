"""Domain events as they travel on ``managed-backups.events``, keyed by cluster id.

Each wire event is the envelope (where it sits in the event store, which aggregate, when, who)
plus the fields of the stored domain event of the same name. The relay builds them from the
event store; ``extra="forbid"`` makes any drift between a stored event and its contract an error
in the tests instead of a silent loss.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import Field

from managed_backups.contracts.base import Contract
from managed_backups.contracts.commands import RestoreObject, RestoreOptions
from managed_backups.contracts.enums import (
    BackupReason,
    BackupType,
    CommandStatus,
    Engine,
    RestoreType,
    Role,
    Tier,
)


class CatalogTable(Contract):
    name: str
    row_count: int
    size_bytes: int


class CatalogSchema(Contract):
    name: str
    tables: list[CatalogTable]


class CatalogDatabase(Contract):
    name: str
    schemas: list[CatalogSchema] = Field(
        description="Its schemas and tables; empty when the event summarises a large catalog "
        "(table_count says how many there are; the backup's manifest lists them)."
    )
    size_bytes: int = 0
    table_count: int | None = Field(
        default=None, description="Tables in the database (absent in events of version 0.1)."
    )


class Grant(Contract):
    role: Role
    scope: str = Field(description='"*" (everything), "org:<organization>" or "cluster:<id>".')


class EventBase(Contract):
    schema_version: Literal[1] = 1
    event_id: UUID = Field(description="Stable id of the event: a consumer dedupes on it.")
    position: int = Field(description="Position in the event store's notification log.")
    cluster_id: str | None = Field(description="Partition key; None for installation events.")
    aggregate_id: UUID
    aggregate_version: int
    occurred_at: datetime = Field(description="When it happened, on the system's clock.")
    recorded_at: datetime = Field(description="When the event store recorded it (wall clock).")
    by: str = Field(description="The principal or service that caused it.")


class ClusterRegistered(EventBase):
    type: Literal["ClusterRegistered"] = "ClusterRegistered"
    name: str
    organization: str
    tier: Tier
    regions: list[str]
    engine: Engine
    database_version: str
    connection_ref: str
    backup_region: str
    enabled: bool
    frequency_minutes: int
    retention_days: int
    command_id: UUID | None


class BackupSettingsUpdated(EventBase):
    type: Literal["BackupSettingsUpdated"] = "BackupSettingsUpdated"
    enabled: bool
    frequency_minutes: int
    retention_days: int
    retention_changed: bool
    full_backup_required: bool
    command_id: UUID | None


class ClusterTierChanged(EventBase):
    type: Literal["ClusterTierChanged"] = "ClusterTierChanged"
    previous_tier: Tier
    tier: Tier
    enabled: bool
    frequency_minutes: int
    retention_days: int
    full_backup_required: bool
    command_id: UUID | None


class ClusterDeleted(EventBase):
    type: Literal["ClusterDeleted"] = "ClusterDeleted"
    retention_days: int
    command_id: UUID | None


class BackupScheduled(EventBase):
    type: Literal["BackupScheduled"] = "BackupScheduled"
    backup_id: UUID
    backup_type: BackupType
    slot: datetime
    chain_id: UUID = Field(description="The full backup this one belongs to (itself if full).")
    retention_days: int
    region: str
    generation: int = Field(description="Settings generation the slot belongs to.")


class BackupStarted(EventBase):
    type: Literal["BackupStarted"] = "BackupStarted"
    backup_id: UUID
    backup_type: BackupType
    chain_id: UUID
    reason: BackupReason
    region: str
    retention_days: int
    scheduled_for: datetime | None
    executor: str
    lease_until: datetime
    command_id: UUID | None


class BackupCompleted(EventBase):
    type: Literal["BackupCompleted"] = "BackupCompleted"
    backup_id: UUID
    as_of_time: datetime = Field(description='"Data from": the consistent point it holds.')
    size_bytes: int
    database_count: int
    catalog: list[CatalogDatabase]
    manifest_key: str
    expires_at: datetime


class BackupFailed(EventBase):
    type: Literal["BackupFailed"] = "BackupFailed"
    backup_id: UUID
    error_code: str
    error_message: str
    failed_step: str = Field(description="The statement or step that failed.")


class BackupVerified(EventBase):
    type: Literal["BackupVerified"] = "BackupVerified"
    backup_id: UUID
    ok: bool
    chunks_checked: int
    missing_chunks: list[str]
    corrupt_chunks: list[str]
    command_id: UUID | None


class BackupExpired(EventBase):
    """A COMPLETE backup's chain reached its expiry: it is no longer listed nor restorable."""

    type: Literal["BackupExpired"] = "BackupExpired"
    backup_id: UUID
    chain_id: UUID
    reason: str = Field(description="Why it expired (which retention rule, in words).")
    chain_expires_at: datetime = Field(description="When its chain expired under that rule.")


class BackupDeleted(EventBase):
    """A backup's stored objects were deleted with its chain (its region store's chain prefix).
    The chain's full carries the chain's totals; its other backups carry zeros."""

    type: Literal["BackupDeleted"] = "BackupDeleted"
    backup_id: UUID
    chain_id: UUID
    objects_deleted: int
    bytes_freed: int = Field(description="Stored bytes the deletion freed.")
    reason: str


class ApiKeyIssued(EventBase):
    type: Literal["ApiKeyIssued"] = "ApiKeyIssued"
    key_id: str
    principal: str
    grants: list[Grant]


class ApiKeyRevoked(EventBase):
    type: Literal["ApiKeyRevoked"] = "ApiKeyRevoked"
    key_id: str


class CommandHandled(EventBase):
    """The outcome of an authenticated command, kept so a repeated ``command_id`` gets the same
    result, and for the audit trail (who tried what, and why it was refused)."""

    type: Literal["CommandHandled"] = "CommandHandled"
    command_id: UUID
    command_type: str
    status: CommandStatus
    code: int
    reason: str | None
    body_sha256: str | None = Field(
        default=None,
        description="SHA-256 of the command without its credential (absent before version 2): "
        "a repeated command_id with another body is refused.",
    )


class ConnectionSecretSet(EventBase):
    """A cluster's connection secret was set for the first time (the value is never recorded)."""

    type: Literal["ConnectionSecretSet"] = "ConnectionSecretSet"


class ConnectionSecretChanged(EventBase):
    """A cluster's connection secret was replaced (the value is never recorded)."""

    type: Literal["ConnectionSecretChanged"] = "ConnectionSecretChanged"


# -- restore jobs: PREPARING → RUNNING → SUCCEEDED | FAILED, keyed by the destination cluster --


class RestoreRequested(EventBase):
    """A restore job was accepted (phase PREPARING); its worker holds a lease until
    ``lease_until`` and renews it while it runs."""

    type: Literal["RestoreRequested"] = "RestoreRequested"
    restore_id: UUID
    restore_type: RestoreType
    source_cluster_id: str
    source_cluster_name: str
    destination_cluster_name: str
    backup_id: UUID
    chain_id: UUID
    backup_end_time: datetime = Field(description='The backup\'s "taken on" (data from) time.')
    objects: list[RestoreObject]
    restore_opts: RestoreOptions
    target_database: str | None = Field(
        description="The database the restore creates or writes into (None for CLUSTER)."
    )
    worker: str
    lease_until: datetime
    command_id: UUID | None


class RestoreRunning(EventBase):
    """Data started moving; ``bytes_total`` is what the restore will write."""

    type: Literal["RestoreRunning"] = "RestoreRunning"
    restore_id: UUID
    bytes_total: int


class RestoreProgressed(EventBase):
    type: Literal["RestoreProgressed"] = "RestoreProgressed"
    restore_id: UUID
    bytes_done: int
    completion: float = Field(ge=0, le=1, description="0..1, by bytes.")


class RestoreSucceeded(EventBase):
    type: Literal["RestoreSucceeded"] = "RestoreSucceeded"
    restore_id: UUID
    bytes_done: int
    restored: list[str] = Field(description="What the destination now holds from the backup.")


class RestoreFailed(EventBase):
    type: Literal["RestoreFailed"] = "RestoreFailed"
    restore_id: UUID
    error_code: str
    error_message: str
    failed_step: str
    destination_state: str = Field(description="What the destination holds after the failure.")


DomainEvent = Annotated[
    ClusterRegistered
    | BackupSettingsUpdated
    | ClusterTierChanged
    | ClusterDeleted
    | BackupScheduled
    | BackupStarted
    | BackupCompleted
    | BackupFailed
    | BackupVerified
    | BackupExpired
    | BackupDeleted
    | ApiKeyIssued
    | ApiKeyRevoked
    | CommandHandled
    | ConnectionSecretSet
    | ConnectionSecretChanged
    | RestoreRequested
    | RestoreRunning
    | RestoreProgressed
    | RestoreSucceeded
    | RestoreFailed,
    Field(discriminator="type"),
]
