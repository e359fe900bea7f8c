"""Closed vocabularies shared by commands, events and views."""

from __future__ import annotations

from enum import StrEnum


class Tier(StrEnum):
    BASIC = "BASIC"
    STANDARD = "STANDARD"
    ADVANCED = "ADVANCED"


class Engine(StrEnum):
    POSTGRES = "postgres"
    COCKROACHDB = "cockroachdb"


class BackupType(StrEnum):
    FULL = "FULL"
    INCREMENTAL = "INCREMENTAL"


class BackupStatus(StrEnum):
    SCHEDULED = "SCHEDULED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"


class BackupReason(StrEnum):
    SCHEDULED = "SCHEDULED"
    MANUAL = "MANUAL"


class RestoreType(StrEnum):
    CLUSTER = "CLUSTER"
    DATABASE = "DATABASE"
    TABLE = "TABLE"


class RestorePhase(StrEnum):
    """A restore job's phase (the console shows it capitalised: Preparing, Running...)."""

    PREPARING = "PREPARING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


class CommandStatus(StrEnum):
    ACCEPTED = "ACCEPTED"
    REJECTED = "REJECTED"


class Role(StrEnum):
    """Roles of the "who may do what" table; SYSTEM_ADMIN operates the installation itself."""

    SYSTEM_ADMIN = "SYSTEM_ADMIN"
    ORG_ADMIN = "ORG_ADMIN"
    CLUSTER_ADMIN = "CLUSTER_ADMIN"
    CLUSTER_OPERATOR = "CLUSTER_OPERATOR"
    CLUSTER_DEVELOPER = "CLUSTER_DEVELOPER"
    CLUSTER_MONITOR = "CLUSTER_MONITOR"


class ResourceType(StrEnum):
    """Where a role is granted (as the Cloud API's ``resource_type``)."""

    ORGANIZATION = "ORGANIZATION"
    CLUSTER = "CLUSTER"
