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
    name: str = Field(description="Table name.")
    row_count: int = Field(description="Rows in the table.")
    size_bytes: int = Field(description="Size of the table in bytes.")


class CatalogSchema(Contract):
    name: str = Field(description="Schema name.")
    tables: list[CatalogTable] = Field(description="Tables of the schema.")


class CatalogDatabase(Contract):
    name: str = Field(description="Database name.")
    schemas: list[CatalogSchema] = Field(
        description="Its schemas and tables; empty when the event summarises a large catalog "
        "(table_count says how many there are; the backup's manifest lists them)."
    )
    size_bytes: int = Field(default=0, description="Size of the database in bytes.")
    table_count: int | None = Field(
        default=None, description="Tables in the database (absent in events of version 0.1)."
    )


class Grant(Contract):
    role: Role = Field(description="The role granted.")
    scope: str = Field(description='"*" (everything), "org:<organization>" or "cluster:<id>".')


class EventBase(Contract):
    schema_version: Literal[1] = Field(default=1, description="Version of this message's shape.")
    event_id: UUID = Field(description="Stable id of the event: a consumer dedupes on it.")
    position: int = Field(description="Position in the event store's notification log.")
    cluster_id: str | None = Field(description="Partition key; None for installation events.")
    aggregate_id: UUID = Field(
        description="Id of the event-sourced aggregate the event belongs to."
    )
    aggregate_version: int = Field(
        description="Version of that aggregate after this event (1 for its first event)."
    )
    occurred_at: datetime = Field(description="When it happened, on the system's clock.")
    recorded_at: datetime = Field(description="When the event store recorded it (wall clock).")
    by: str = Field(description="The principal or service that caused it.")


class ClusterRegistered(EventBase):
    type: Literal["ClusterRegistered"] = Field(
        default="ClusterRegistered",
        description="Always ClusterRegistered: names the message (the discriminator).",
    )
    name: str = Field(description="Display name of the cluster.")
    organization: str = Field(description="Organization owning the cluster.")
    tier: Tier = Field(
        description="Service tier of the cluster (sets backup frequency and retention)."
    )
    regions: list[str] = Field(description="Cloud regions of the cluster, e.g. us-east-1.")
    engine: Engine = Field(description="Database engine of the cluster.")
    database_version: str = Field(description="PostgreSQL server version of the cluster.")
    connection_ref: str = Field(
        description="How the executor reaches the cluster: a libpq URL without a password."
    )
    backup_region: str = Field(description="Region whose object store holds the cluster's backups.")
    enabled: bool = Field(description="Whether scheduled backups are on.")
    frequency_minutes: int = Field(description="Minutes between scheduled backups.")
    retention_days: int = Field(description="Days a backup is kept.")
    command_id: UUID | None = Field(
        description="Id of the command that caused it; None when no command did (e.g. the scheduler)."
    )


class BackupSettingsUpdated(EventBase):
    type: Literal["BackupSettingsUpdated"] = Field(
        default="BackupSettingsUpdated",
        description="Always BackupSettingsUpdated: names the message (the discriminator).",
    )
    enabled: bool = Field(description="Whether scheduled backups are on.")
    frequency_minutes: int = Field(description="Minutes between scheduled backups.")
    retention_days: int = Field(description="Days a backup is kept.")
    retention_changed: bool = Field(description="Whether retention_days changed.")
    full_backup_required: bool = Field(
        description="Whether the next backup must be a full one (the settings change breaks the chain)."
    )
    command_id: UUID | None = Field(
        description="Id of the command that caused it; None when no command did (e.g. the scheduler)."
    )


class ClusterTierChanged(EventBase):
    type: Literal["ClusterTierChanged"] = Field(
        default="ClusterTierChanged",
        description="Always ClusterTierChanged: names the message (the discriminator).",
    )
    previous_tier: Tier = Field(description="The tier before the change.")
    tier: Tier = Field(description="The new tier.")
    enabled: bool = Field(description="Whether scheduled backups are on.")
    frequency_minutes: int = Field(description="Minutes between scheduled backups.")
    retention_days: int = Field(description="Days a backup is kept.")
    full_backup_required: bool = Field(
        description="Whether the next backup must be a full one (the settings change breaks the chain)."
    )
    command_id: UUID | None = Field(
        description="Id of the command that caused it; None when no command did (e.g. the scheduler)."
    )


class ClusterDeleted(EventBase):
    type: Literal["ClusterDeleted"] = Field(
        default="ClusterDeleted",
        description="Always ClusterDeleted: names the message (the discriminator).",
    )
    retention_days: int = Field(description="Days a backup is kept.")
    command_id: UUID | None = Field(
        description="Id of the command that caused it; None when no command did (e.g. the scheduler)."
    )


class BackupScheduled(EventBase):
    type: Literal["BackupScheduled"] = Field(
        default="BackupScheduled",
        description="Always BackupScheduled: names the message (the discriminator).",
    )
    backup_id: UUID = Field(description="The backup's id.")
    backup_type: BackupType = Field(description="FULL or INCREMENTAL.")
    slot: datetime = Field(description="The schedule slot the backup is for.")
    chain_id: UUID = Field(description="The full backup this one belongs to (itself if full).")
    retention_days: int = Field(description="Days a backup is kept.")
    region: str = Field(description="Region whose object store receives the backup.")
    generation: int = Field(description="Settings generation the slot belongs to.")


class BackupStarted(EventBase):
    type: Literal["BackupStarted"] = Field(
        default="BackupStarted",
        description="Always BackupStarted: names the message (the discriminator).",
    )
    backup_id: UUID = Field(description="The backup's id.")
    backup_type: BackupType = Field(description="FULL or INCREMENTAL.")
    chain_id: UUID = Field(
        description="Id of the backup chain (a full backup and its incrementals)."
    )
    reason: BackupReason = Field(description="SCHEDULED or MANUAL.")
    region: str = Field(description="Region whose object store receives the backup.")
    retention_days: int = Field(description="Days a backup is kept.")
    scheduled_for: datetime | None = Field(description="The schedule slot, if scheduled.")
    executor: str = Field(description="The backup-executor instance running the backup.")
    lease_until: datetime = Field(
        description="Until when the worker holds the job; after that another may take it over."
    )
    command_id: UUID | None = Field(
        description="Id of the command that caused it; None when no command did (e.g. the scheduler)."
    )


class BackupCompleted(EventBase):
    type: Literal["BackupCompleted"] = Field(
        default="BackupCompleted",
        description="Always BackupCompleted: names the message (the discriminator).",
    )
    backup_id: UUID = Field(description="The backup's id.")
    as_of_time: datetime = Field(description='"Data from": the consistent point it holds.')
    size_bytes: int = Field(description="Bytes stored for the backup.")
    database_count: int = Field(description="Databases in the backup.")
    catalog: list[CatalogDatabase] = Field(
        description="What the backup contains: its databases, schemas and tables."
    )
    manifest_key: str = Field(description="Object-store key of the backup's manifest.")
    expires_at: datetime = Field(description="When retention will expire the backup.")
    encrypted: bool | None = Field(
        default=None,
        description="Whether its chain is stored encrypted at rest (absent before encryption).",
    )


class BackupFailed(EventBase):
    type: Literal["BackupFailed"] = Field(
        default="BackupFailed",
        description="Always BackupFailed: names the message (the discriminator).",
    )
    backup_id: UUID = Field(description="The backup's id.")
    error_code: str = Field(description="Machine-readable kind of failure.")
    error_message: str = Field(description="The failure, for a human.")
    failed_step: str = Field(description="The statement or step that failed.")


class BackupVerified(EventBase):
    type: Literal["BackupVerified"] = Field(
        default="BackupVerified",
        description="Always BackupVerified: names the message (the discriminator).",
    )
    backup_id: UUID = Field(description="The backup's id.")
    ok: bool = Field(description="Whether every chunk is present and intact.")
    chunks_checked: int = Field(description="Chunks whose presence and checksum were checked.")
    missing_chunks: list[str] = Field(
        description="Chunks the manifest lists that are missing from the object store."
    )
    corrupt_chunks: list[str] = Field(
        description="Chunks whose content does not match their checksum."
    )
    command_id: UUID | None = Field(
        description="Id of the command that caused it; None when no command did (e.g. the scheduler)."
    )


class BackupExpired(EventBase):
    """A COMPLETE backup's chain reached its expiry: it is no longer listed nor restorable."""

    type: Literal["BackupExpired"] = Field(
        default="BackupExpired",
        description="Always BackupExpired: names the message (the discriminator).",
    )
    backup_id: UUID = Field(description="The backup's id.")
    chain_id: UUID = Field(
        description="Id of the backup chain (a full backup and its incrementals)."
    )
    reason: str = Field(description="Why it expired (which retention rule, in words).")
    chain_expires_at: datetime = Field(description="When its chain expired under that rule.")


class BackupDeleted(EventBase):
    """A backup's stored objects were deleted: with its chain (its region store's chain prefix;
    the chain's full carries the chain's totals, its other backups zeros), or, for a failed
    backup of a chain that lives on, its leftovers swept (the chain's objects no kept manifest
    references; the first failed backup swept carries the totals)."""

    type: Literal["BackupDeleted"] = Field(
        default="BackupDeleted",
        description="Always BackupDeleted: names the message (the discriminator).",
    )
    backup_id: UUID = Field(description="The backup's id.")
    chain_id: UUID = Field(
        description="Id of the backup chain (a full backup and its incrementals)."
    )
    objects_deleted: int = Field(description="Objects removed from the object store.")
    bytes_freed: int = Field(description="Stored bytes the deletion freed.")
    reason: str = Field(description="Why its objects were deleted, in words.")


class ApiKeyIssued(EventBase):
    """A key of version 0.1 (with its grants; today's keys are ``ApiKeyCreated``)."""

    type: Literal["ApiKeyIssued"] = Field(
        default="ApiKeyIssued",
        description="Always ApiKeyIssued: names the message (the discriminator).",
    )
    key_id: str = Field(description="Id of the API key (never the key itself).")
    principal: str = Field(description="Name of the principal the key authenticates.")
    grants: list[Grant] = Field(description="Roles the key grants, each with its scope.")


class ApiKeyRevoked(EventBase):
    type: Literal["ApiKeyRevoked"] = Field(
        default="ApiKeyRevoked",
        description="Always ApiKeyRevoked: names the message (the discriminator).",
    )
    key_id: str = Field(description="Id of the API key (never the key itself).")


class OrganizationCreated(EventBase):
    type: Literal["OrganizationCreated"] = Field(
        default="OrganizationCreated",
        description="Always OrganizationCreated: names the message (the discriminator).",
    )
    organization_id: str = Field(description="The organization's id (clusters name it).")
    name: str = Field(description="Its display name.")


class ServiceAccountCreated(EventBase):
    type: Literal["ServiceAccountCreated"] = Field(
        default="ServiceAccountCreated",
        description="Always ServiceAccountCreated: names the message (the discriminator).",
    )
    account_id: UUID = Field(description="The service account's id.")
    organization: str | None = Field(
        description="Its organization; None for the installation's administrator account."
    )
    name: str = Field(description="Its name, unique in its organization.")
    description: str = Field(description="What it is for.")


class RoleGranted(EventBase):
    type: Literal["RoleGranted"] = Field(
        default="RoleGranted",
        description="Always RoleGranted: names the message (the discriminator).",
    )
    account_id: UUID = Field(description="The service account granted the role.")
    role: Role = Field(description="The role.")
    resource_type: str = Field(
        description="ORGANIZATION or CLUSTER (INSTALLATION: the administrator's SYSTEM_ADMIN)."
    )
    resource_id: str = Field(description="The organization's or the cluster's id.")


class RoleGrantRemoved(EventBase):
    type: Literal["RoleGrantRemoved"] = Field(
        default="RoleGrantRemoved",
        description="Always RoleGrantRemoved: names the message (the discriminator).",
    )
    account_id: UUID = Field(description="The service account the role is taken from.")
    role: Role = Field(description="The role.")
    resource_type: str = Field(description="ORGANIZATION or CLUSTER.")
    resource_id: str = Field(description="The organization's or the cluster's id.")


class ApiKeyCreated(EventBase):
    type: Literal["ApiKeyCreated"] = Field(
        default="ApiKeyCreated",
        description="Always ApiKeyCreated: names the message (the discriminator).",
    )
    key_id: str = Field(description="Id of the API key (never the key, nor a hash of it).")
    account_id: UUID = Field(description="The service account the key authenticates as.")
    organization: str | None = Field(description="The account's organization.")
    name: str = Field(description="The key's name.")
    expires_at: datetime | None = Field(description="When it stops working; None: never.")


class CommandHandled(EventBase):
    """The outcome of an authenticated command, kept so a repeated ``command_id`` gets the same
    result, and for the audit trail (who tried what, and why it was refused)."""

    type: Literal["CommandHandled"] = Field(
        default="CommandHandled",
        description="Always CommandHandled: names the message (the discriminator).",
    )
    command_id: UUID = Field(description="The command's id.")
    command_type: str = Field(description="The command's type.")
    status: CommandStatus = Field(description="ACCEPTED or REJECTED.")
    code: int = Field(description="HTTP-like status of the outcome (see CommandResult.code).")
    reason: str | None = Field(description="Why it was rejected, for a human; None if accepted.")
    body_sha256: str | None = Field(
        default=None,
        description="SHA-256 of the command without its token (absent before version 2): "
        "a repeated command_id with another body is refused.",
    )


class ConnectionSecretSet(EventBase):
    """A cluster's connection secret was set for the first time (the value is never recorded)."""

    type: Literal["ConnectionSecretSet"] = Field(
        default="ConnectionSecretSet",
        description="Always ConnectionSecretSet: names the message (the discriminator).",
    )


class ConnectionSecretChanged(EventBase):
    """A cluster's connection secret was replaced (the value is never recorded)."""

    type: Literal["ConnectionSecretChanged"] = Field(
        default="ConnectionSecretChanged",
        description="Always ConnectionSecretChanged: names the message (the discriminator).",
    )


class ConnectionSecretRemoved(EventBase):
    """A deleted cluster's connection secret was removed from the secret store."""

    type: Literal["ConnectionSecretRemoved"] = Field(
        default="ConnectionSecretRemoved",
        description="Always ConnectionSecretRemoved: names the message (the discriminator).",
    )
    reason: str = Field(description="Why, in words.")


# -- encryption at rest: a cluster's customer key and rotation jobs (no key material, ever) --


class CustomerKeyConfigured(EventBase):
    """A customer-managed key was configured for an ADVANCED cluster: new chains' data keys are
    wrapped by it. Carries the key's name and id (a fingerprint), never the key."""

    type: Literal["CustomerKeyConfigured"] = Field(
        default="CustomerKeyConfigured",
        description="Always CustomerKeyConfigured: names the message (the discriminator).",
    )
    key_name: str = Field(description="The key's name (its file in the customer keys directory).")
    key_id: str = Field(description="The key's id: name and fingerprint, never key material.")


class CustomerKeyChanged(EventBase):
    """Another customer key replaced the cluster's (older chains keep theirs until rotated)."""

    type: Literal["CustomerKeyChanged"] = Field(
        default="CustomerKeyChanged",
        description="Always CustomerKeyChanged: names the message (the discriminator).",
    )
    key_name: str = Field(description="The new key's name.")
    key_id: str = Field(description="The new key's id: name and fingerprint.")
    previous_key_id: str | None = Field(description="The key it replaces (None: the platform's).")


class CustomerKeyRemoved(EventBase):
    """The cluster's customer key was removed: new chains use the platform key."""

    type: Literal["CustomerKeyRemoved"] = Field(
        default="CustomerKeyRemoved",
        description="Always CustomerKeyRemoved: names the message (the discriminator).",
    )
    previous_key_id: str | None = Field(description="The key removed.")


class KeyRotationStarted(EventBase):
    """A rotation job started: every chain's data key is to be wrapped by ``key_id`` too."""

    type: Literal["KeyRotationStarted"] = Field(
        default="KeyRotationStarted",
        description="Always KeyRotationStarted: names the message (the discriminator).",
    )
    rotation_id: UUID = Field(description="The rotation job's id.")
    key_id: str = Field(description="The key-encryption key the chains are re-wrapped by.")
    worker: str = Field(description="The retention service instance running the job.")
    lease_until: datetime = Field(description="Until when the worker holds the job.")
    command_id: UUID | None = Field(description="Id of the command that caused it.")


class KeyRotationCompleted(EventBase):
    """Every chain of the cluster is wrapped by ``key_id``; no stored object was rewritten."""

    type: Literal["KeyRotationCompleted"] = Field(
        default="KeyRotationCompleted",
        description="Always KeyRotationCompleted: names the message (the discriminator).",
    )
    rotation_id: UUID = Field(description="The rotation job's id.")
    key_id: str = Field(description="The key-encryption key the chains are now wrapped by.")
    chains_rewrapped: int = Field(description="Chains that got a key object for key_id.")
    chains_already_wrapped: int = Field(description="Chains that had one already.")
    chains_unencrypted: int = Field(
        description="Chains stored before encryption at rest (nothing to wrap)."
    )


class KeyRotationFailed(EventBase):
    """A rotation job failed (the chains re-wrapped so far stay so; a new one resumes)."""

    type: Literal["KeyRotationFailed"] = Field(
        default="KeyRotationFailed",
        description="Always KeyRotationFailed: names the message (the discriminator).",
    )
    rotation_id: UUID = Field(description="The rotation job's id.")
    error_code: str = Field(description="Machine-readable kind of failure.")
    error_message: str = Field(description="The failure, for a human.")


# -- restore jobs: PREPARING → RUNNING → SUCCEEDED | FAILED, keyed by the destination cluster --


class RestoreRequested(EventBase):
    """A restore job was accepted (phase PREPARING); its worker holds a lease until
    ``lease_until`` and renews it while it runs."""

    type: Literal["RestoreRequested"] = Field(
        default="RestoreRequested",
        description="Always RestoreRequested: names the message (the discriminator).",
    )
    restore_id: UUID = Field(description="The restore job's id.")
    restore_type: RestoreType = Field(
        description="What is restored: the cluster, a database or tables."
    )
    source_cluster_id: str = Field(description="Cluster whose backup is restored.")
    source_cluster_name: str = Field(description="Name of that cluster.")
    destination_cluster_name: str = Field(description="Name of the cluster restored into.")
    backup_id: UUID = Field(description="The backup's id.")
    chain_id: UUID = Field(
        description="Id of the backup chain (a full backup and its incrementals)."
    )
    backup_end_time: datetime = Field(description='The backup\'s "taken on" (data from) time.')
    objects: list[RestoreObject] = Field(
        description="Databases, schemas or tables to restore (empty for a whole cluster)."
    )
    restore_opts: RestoreOptions = Field(description="Options relaxing the restore's checks.")
    target_database: str | None = Field(
        description="The database the restore creates or writes into (None for CLUSTER)."
    )
    worker: str = Field(description="The restore service instance running the job.")
    lease_until: datetime = Field(
        description="Until when the worker holds the job; after that another may take it over."
    )
    command_id: UUID | None = Field(
        description="Id of the command that caused it; None when no command did (e.g. the scheduler)."
    )


class RestoreRunning(EventBase):
    """Data started moving; ``bytes_total`` is what the restore will write."""

    type: Literal["RestoreRunning"] = Field(
        default="RestoreRunning",
        description="Always RestoreRunning: names the message (the discriminator).",
    )
    restore_id: UUID = Field(description="The restore job's id.")
    bytes_total: int = Field(description="Bytes the restore will read in all.")


class RestoreProgressed(EventBase):
    type: Literal["RestoreProgressed"] = Field(
        default="RestoreProgressed",
        description="Always RestoreProgressed: names the message (the discriminator).",
    )
    restore_id: UUID = Field(description="The restore job's id.")
    bytes_done: int = Field(description="Bytes restored so far.")
    completion: float = Field(ge=0, le=1, description="0..1, by bytes.")


class RestoreSucceeded(EventBase):
    type: Literal["RestoreSucceeded"] = Field(
        default="RestoreSucceeded",
        description="Always RestoreSucceeded: names the message (the discriminator).",
    )
    restore_id: UUID = Field(description="The restore job's id.")
    bytes_done: int = Field(description="Bytes restored so far.")
    restored: list[str] = Field(description="What the destination now holds from the backup.")
    left_out: list[str] = Field(
        default_factory=list,
        description=(
            "What of the backup the restore left out, each with the reason (an owner or grant "
            "whose role does not exist, a foreign key or default skipped by an option, an "
            "object of the destination used instead of the backup's); empty before version 2."
        ),
    )


class RestoreFailed(EventBase):
    type: Literal["RestoreFailed"] = Field(
        default="RestoreFailed",
        description="Always RestoreFailed: names the message (the discriminator).",
    )
    restore_id: UUID = Field(description="The restore job's id.")
    error_code: str = Field(description="Machine-readable kind of failure.")
    error_message: str = Field(description="The failure, for a human.")
    failed_step: str = Field(description="The statement or step that failed.")
    destination_state: str = Field(description="What the destination holds after the failure.")


WireEvent = (
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
    | OrganizationCreated
    | ServiceAccountCreated
    | RoleGranted
    | RoleGrantRemoved
    | ApiKeyCreated
    | CommandHandled
    | ConnectionSecretSet
    | ConnectionSecretChanged
    | ConnectionSecretRemoved
    | CustomerKeyConfigured
    | CustomerKeyChanged
    | CustomerKeyRemoved
    | KeyRotationStarted
    | KeyRotationCompleted
    | KeyRotationFailed
    | RestoreRequested
    | RestoreRunning
    | RestoreProgressed
    | RestoreSucceeded
    | RestoreFailed
)
"""Any event on the topic (a plain union: every member has its ``type``)."""
DomainEvent = Annotated[WireEvent, Field(discriminator="type")]
