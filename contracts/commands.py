"""Commands: what a user (over HTTP, the CLI or a topic) asks the system to do.

Every command is a JSON object with a ``type`` naming it, a ``command_id`` (UUID, the idempotency
key: the same id twice changes nothing and gets the same result), the caller's ``credential`` (an
API key; never copied into an event) and the command's own fields.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import urlsplit
from uuid import UUID

from pydantic import Field, field_validator

from managed_backups.contracts.base import Contract
from managed_backups.contracts.enums import BackupReason, BackupType, Engine, RestoreType, Tier

CLUSTER_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
ClusterId = Annotated[
    str,
    Field(
        pattern=CLUSTER_ID_PATTERN,
        description="Cluster id: lower-case letters, digits and dashes, at most 63 characters.",
        examples=["orders-prod"],
    ),
]
_REGION = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
# Bounds of every list and string a command may carry: a command never makes an event larger
# than the events topic accepts.
MAX_CREDENTIAL_LENGTH = 512
MAX_REGIONS = 64
MAX_NAME_LENGTH = 255
MAX_RESTORE_OBJECTS = 1000


class CommandBase(Contract):
    schema_version: Literal[1] = Field(default=1, description="Version of this command's shape.")
    command_id: UUID = Field(description="Idempotency key chosen by the sender.")
    credential: str = Field(
        repr=False,
        min_length=1,
        max_length=MAX_CREDENTIAL_LENGTH,
        description="The caller's API key. Checked, never stored in an event.",
    )


class RegisterCluster(CommandBase):
    type: Literal["RegisterCluster"] = "RegisterCluster"
    cluster_id: ClusterId
    name: str = Field(min_length=1, max_length=200)
    organization: str = Field(min_length=1, max_length=200, examples=["acme"])
    tier: Tier
    regions: list[Annotated[str, Field(max_length=63)]] = Field(
        max_length=MAX_REGIONS, description="Cloud regions of the cluster, e.g. us-east-1."
    )
    engine: Engine = Engine.POSTGRES
    database_version: str = Field(min_length=1, max_length=40, examples=["15.8"])
    connection_ref: str = Field(
        min_length=1,
        max_length=500,
        description=(
            "How the executor reaches the cluster: a libpq URL without a password "
            "(postgresql://user@host:port/db). Passwords come from the secret store."
        ),
    )

    @field_validator("regions")
    @classmethod
    def _regions_valid(cls, regions: list[str]) -> list[str]:
        if not regions:
            raise ValueError("a cluster needs at least one region")
        seen: set[str] = set()
        for region in regions:
            if not _REGION.fullmatch(region):
                raise ValueError(f"region {region!r} is not a valid region name")
            if region in seen:
                raise ValueError(f"region {region!r} is listed more than once")
            seen.add(region)
        return regions

    @field_validator("connection_ref")
    @classmethod
    def _no_password(cls, ref: str) -> str:
        parts = urlsplit(ref)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("connection_ref must be a postgresql:// URL")
        if parts.password is not None or "password=" in parts.query.lower():
            raise ValueError(
                "connection_ref must not contain a password: events are kept forever; "
                "put the password in the secret store"
            )
        return ref


class UpdateBackupSettings(CommandBase):
    """Change some of a cluster's backup settings; fields left out stay as they are."""

    type: Literal["UpdateBackupSettings"] = "UpdateBackupSettings"
    cluster_id: ClusterId
    enabled: bool | None = None
    frequency_minutes: int | None = None
    retention_days: int | None = None


class ChangeClusterTier(CommandBase):
    type: Literal["ChangeClusterTier"] = "ChangeClusterTier"
    cluster_id: ClusterId
    tier: Tier


class DeleteCluster(CommandBase):
    type: Literal["DeleteCluster"] = "DeleteCluster"
    cluster_id: ClusterId


class TakeBackup(CommandBase):
    """Take one backup now. Sent by the scheduler for a due slot, or by a user on demand."""

    type: Literal["TakeBackup"] = "TakeBackup"
    cluster_id: ClusterId
    backup_id: UUID = Field(description="Deterministic for a scheduled slot: cluster + slot.")
    backup_type: BackupType
    reason: BackupReason = BackupReason.MANUAL
    scheduled_for: datetime | None = Field(default=None, description="The slot, if scheduled.")
    chain_id: UUID | None = Field(
        default=None, description="For an incremental: the complete full backup it depends on."
    )
    retention_days: int | None = Field(
        default=None, description="Retention the backup is taken with (set by the scheduler)."
    )


class VerifyBackup(CommandBase):
    type: Literal["VerifyBackup"] = "VerifyBackup"
    cluster_id: ClusterId
    backup_id: UUID


MAX_IDENTIFIER = 63
"""PostgreSQL truncates identifiers to 63 bytes; a longer name cannot name an object."""


class RestoreObject(Contract):
    """One database, or one table (``database`` + ``schema`` + ``table``) of the backup."""

    database: str = Field(min_length=1, max_length=MAX_IDENTIFIER)
    schema_: str | None = Field(
        default=None, alias="schema", min_length=1, max_length=MAX_IDENTIFIER
    )
    table: str | None = Field(default=None, min_length=1, max_length=MAX_IDENTIFIER)


class RestoreOptions(Contract):
    new_db_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_IDENTIFIER,
        description="DATABASE or TABLE: the new database to create (default: the source name).",
    )
    into_db: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_IDENTIFIER,
        description="TABLE: an existing database to restore the tables into.",
    )
    skip_missing_foreign_keys: bool = False
    skip_missing_sequences: bool = False
    skip_missing_views: bool = False
    skip_localities_check: bool = False


class StartRestore(CommandBase):
    """Restore a cluster, a database or tables of a backup into ``destination_cluster_id``."""

    type: Literal["StartRestore"] = "StartRestore"
    restore_id: UUID = Field(description="The restore job's id, chosen by the sender.")
    destination_cluster_id: ClusterId
    restore_type: RestoreType
    backup_id: UUID | None = Field(
        default=None, description="Default: the latest restorable backup of the source."
    )
    source_cluster_id: ClusterId | None = Field(
        default=None, description="Default: the destination cluster itself."
    )
    objects: list[RestoreObject] = Field(default_factory=list, max_length=MAX_RESTORE_OBJECTS)
    restore_opts: RestoreOptions = Field(default_factory=RestoreOptions)


class EnforceRetention(CommandBase):
    type: Literal["EnforceRetention"] = "EnforceRetention"
    cluster_id: ClusterId | None = Field(default=None, description="None: every cluster.")


ClusterCommand = Annotated[
    RegisterCluster | UpdateBackupSettings | ChangeClusterTier | DeleteCluster,
    Field(discriminator="type"),
]
BackupCommand = Annotated[TakeBackup | VerifyBackup, Field(discriminator="type")]
RestoreCommand = StartRestore
RetentionCommand = EnforceRetention
AnyCommand = Annotated[
    RegisterCluster
    | UpdateBackupSettings
    | ChangeClusterTier
    | DeleteCluster
    | TakeBackup
    | VerifyBackup
    | StartRestore
    | EnforceRetention,
    Field(discriminator="type"),
]
