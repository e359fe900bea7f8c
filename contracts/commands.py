"""Commands: what a user (over HTTP, the CLI or a topic) asks the system to do.

Every command is a JSON object with a ``type`` naming it, a ``command_id`` (UUID, the idempotency
key: the same id twice changes nothing and gets the same result), a ``token`` (proof of the
sender's principal, signed for this one command: never an API key, never copied into an event)
and the command's own fields. Version 2 replaced version 1's ``credential`` (the sender's API key
itself, in clear on the topic): such a command is refused.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import urlsplit
from uuid import UUID

from pydantic import AfterValidator, Field, field_validator

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
MAX_TOKEN_LENGTH = 2048
MAX_REGIONS = 64
MAX_NAME_LENGTH = 255
MAX_RESTORE_OBJECTS = 1000
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _control_character(value: str) -> str | None:
    """A description of the first control character in ``value`` (None if it has none)."""
    found = _CONTROL.search(value)
    if found is None:
        return None
    char = found.group()
    if char == "\0":
        return "NUL (\\0): PostgreSQL cannot store it"
    return f"control character {char!r}"


def plain_text(value: str) -> str:
    """Rule: free text a command carries (names, organizations, versions, references) holds no
    control characters: PostgreSQL text cannot hold NUL, and none of them belongs in a name or
    a log line."""
    found = _control_character(value)
    if found is not None:
        raise ValueError(f"must not contain {found}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


Text = Annotated[str, AfterValidator(plain_text)]


class CommandBase(Contract):
    schema_version: Literal[2] = Field(
        default=2,
        description="Version of this command's shape (2: a signed token instead of version 1's "
        "credential).",
    )
    command_id: UUID = Field(description="Idempotency key chosen by the sender.")
    token: str = Field(
        repr=False,
        min_length=1,
        max_length=MAX_TOKEN_LENGTH,
        description=(
            "Proof of the sender's principal for this command only: a JWT (EdDSA) signed by the "
            "HTTP API (POST /api/v1/command-tokens) or by the sending service, bound to the "
            "topic, the command_id and the command's body, valid for minutes. Never an API key; "
            "checked when the command is handled, never stored in an event."
        ),
    )


class RegisterCluster(CommandBase):
    type: Literal["RegisterCluster"] = Field(
        default="RegisterCluster",
        description="Always RegisterCluster: names the message (the discriminator).",
    )
    cluster_id: ClusterId
    name: Text = Field(min_length=1, max_length=200, description="Display name of the cluster.")
    organization: Text = Field(
        min_length=1,
        max_length=200,
        examples=["acme"],
        description="Organization owning the cluster.",
    )
    tier: Tier = Field(
        description="Service tier of the cluster (sets backup frequency and retention)."
    )
    regions: list[Annotated[str, Field(max_length=63)]] = Field(
        max_length=MAX_REGIONS, description="Cloud regions of the cluster, e.g. us-east-1."
    )
    engine: Engine = Field(default=Engine.POSTGRES, description="Database engine of the cluster.")
    database_version: Text = Field(
        min_length=1,
        max_length=40,
        examples=["15.8"],
        description="PostgreSQL server version of the cluster.",
    )
    connection_ref: Text = Field(
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

    type: Literal["UpdateBackupSettings"] = Field(
        default="UpdateBackupSettings",
        description="Always UpdateBackupSettings: names the message (the discriminator).",
    )
    cluster_id: ClusterId
    enabled: bool | None = Field(
        default=None, description="Turn scheduled backups on or off; unchanged if absent."
    )
    frequency_minutes: int | None = Field(
        default=None, description="Minutes between scheduled backups; unchanged if absent."
    )
    retention_days: int | None = Field(
        default=None, description="Days a backup is kept; unchanged if absent."
    )


class ChangeClusterTier(CommandBase):
    type: Literal["ChangeClusterTier"] = Field(
        default="ChangeClusterTier",
        description="Always ChangeClusterTier: names the message (the discriminator).",
    )
    cluster_id: ClusterId
    tier: Tier = Field(description="The new tier.")


class DeleteCluster(CommandBase):
    type: Literal["DeleteCluster"] = Field(
        default="DeleteCluster",
        description="Always DeleteCluster: names the message (the discriminator).",
    )
    cluster_id: ClusterId


class TakeBackup(CommandBase):
    """Take one backup now. Sent by the scheduler for a due slot, or by a user on demand."""

    type: Literal["TakeBackup"] = Field(
        default="TakeBackup",
        description="Always TakeBackup: names the message (the discriminator).",
    )
    cluster_id: ClusterId
    backup_id: UUID = Field(description="Deterministic for a scheduled slot: cluster + slot.")
    backup_type: BackupType = Field(description="FULL starts a new chain; INCREMENTAL extends one.")
    reason: BackupReason = Field(
        default=BackupReason.MANUAL,
        description="SCHEDULED (sent by the scheduler) or MANUAL (on demand).",
    )
    scheduled_for: datetime | None = Field(default=None, description="The slot, if scheduled.")
    chain_id: UUID | None = Field(
        default=None, description="For an incremental: the complete full backup it depends on."
    )
    retention_days: int | None = Field(
        default=None, description="Retention the backup is taken with (set by the scheduler)."
    )


class VerifyBackup(CommandBase):
    type: Literal["VerifyBackup"] = Field(
        default="VerifyBackup",
        description="Always VerifyBackup: names the message (the discriminator).",
    )
    cluster_id: ClusterId
    backup_id: UUID = Field(description="The backup's id.")


MAX_IDENTIFIER = 63
"""PostgreSQL truncates identifiers to 63 bytes; a longer name cannot name an object."""
RESERVED_DATABASE_PREFIX = "mb_restore_"
"""The restore service's temporary databases are named so; no restore may name one."""


def postgres_name(value: str) -> str:
    """Rule: "a name PostgreSQL can hold". An identifier (database, schema, table) is at most
    63 bytes in UTF-8 (PostgreSQL cuts longer ones, so they would name another object), holds
    no NUL (PostgreSQL cannot store it) and no other control character (``pg_dump`` and
    ``pg_restore`` refuse names with newlines; none belongs in a name), and is valid Unicode."""
    plain_text(value)
    size = len(value.encode("utf-8"))
    if size > MAX_IDENTIFIER:
        raise ValueError(
            f"is {size} bytes in UTF-8; PostgreSQL names are at most {MAX_IDENTIFIER} bytes"
        )
    return value


def new_database_name(value: str) -> str:
    """A database a restore creates or writes into: a PostgreSQL name, and not one of the
    restore service's temporary databases."""
    postgres_name(value)
    if value.startswith(RESERVED_DATABASE_PREFIX):
        raise ValueError(
            f"names starting with {RESERVED_DATABASE_PREFIX} are reserved for the restore "
            "service's temporary databases"
        )
    return value


PostgresName = Annotated[str, AfterValidator(postgres_name)]
TargetDatabaseName = Annotated[str, AfterValidator(new_database_name)]


class RestoreObject(Contract):
    """One database, or one table (``database`` + ``schema`` + ``table``) of the backup."""

    database: PostgresName = Field(
        min_length=1, max_length=MAX_IDENTIFIER, description="Database name."
    )
    schema_: PostgresName | None = Field(
        default=None,
        alias="schema",
        min_length=1,
        max_length=MAX_IDENTIFIER,
        description="Schema name.",
    )
    table: PostgresName | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_IDENTIFIER,
        description="Table name (TABLE restore: a table, a view or a sequence of the database).",
    )


class RestoreOptions(Contract):
    new_db_name: TargetDatabaseName | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_IDENTIFIER,
        description="DATABASE or TABLE: the new database to create (default: the source name).",
    )
    into_db: TargetDatabaseName | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_IDENTIFIER,
        description="TABLE: an existing database to restore the tables into.",
    )
    skip_missing_foreign_keys: bool = Field(
        default=False,
        description="TABLE restore: leave out a foreign key to a table not restored instead of refusing.",
    )
    skip_missing_sequences: bool = Field(
        default=False,
        description="TABLE restore: drop a default using a sequence not restored instead of refusing.",
    )
    skip_missing_views: bool = Field(
        default=False,
        description="TABLE restore: skip a view reading a relation not restored instead of refusing.",
    )
    skip_localities_check: bool = Field(
        default=False,
        description="Allow a multi-region source into a single-region destination (ADVANCED).",
    )


class StartRestore(CommandBase):
    """Restore a cluster, a database or tables of a backup into ``destination_cluster_id``."""

    type: Literal["StartRestore"] = Field(
        default="StartRestore",
        description="Always StartRestore: names the message (the discriminator).",
    )
    restore_id: UUID = Field(description="The restore job's id, chosen by the sender.")
    destination_cluster_id: ClusterId
    restore_type: RestoreType = Field(
        description="What is restored: the cluster, a database or tables."
    )
    backup_id: UUID | None = Field(
        default=None, description="Default: the latest restorable backup of the source."
    )
    source_cluster_id: ClusterId | None = Field(
        default=None, description="Default: the destination cluster itself."
    )
    objects: list[RestoreObject] = Field(
        default_factory=list,
        max_length=MAX_RESTORE_OBJECTS,
        description="Databases, schemas or tables to restore (empty for a whole cluster).",
    )
    restore_opts: RestoreOptions = Field(
        default_factory=RestoreOptions, description="Options relaxing the restore's checks."
    )


class EnforceRetention(CommandBase):
    type: Literal["EnforceRetention"] = Field(
        default="EnforceRetention",
        description="Always EnforceRetention: names the message (the discriminator).",
    )
    cluster_id: ClusterId | None = Field(default=None, description="None: every cluster.")


class RotateEncryptionKeys(CommandBase):
    """Wrap every chain's data key by the cluster's current key-encryption key (after the
    platform key was rotated, or a customer key configured or replaced). Adds one key object
    per chain; nothing stored is rewritten."""

    type: Literal["RotateEncryptionKeys"] = Field(
        default="RotateEncryptionKeys",
        description="Always RotateEncryptionKeys: names the message (the discriminator).",
    )
    cluster_id: ClusterId | None = Field(
        default=None, description="None: every cluster with backups (an administrator)."
    )


ClusterCommand = Annotated[
    RegisterCluster | UpdateBackupSettings | ChangeClusterTier | DeleteCluster,
    Field(discriminator="type"),
]
BackupCommand = Annotated[TakeBackup | VerifyBackup, Field(discriminator="type")]
RestoreCommand = StartRestore
RetentionCommand = Annotated[EnforceRetention | RotateEncryptionKeys, Field(discriminator="type")]
AnyCommand = Annotated[
    RegisterCluster
    | UpdateBackupSettings
    | ChangeClusterTier
    | DeleteCluster
    | TakeBackup
    | VerifyBackup
    | StartRestore
    | EnforceRetention
    | RotateEncryptionKeys,
    Field(discriminator="type"),
]
