"""The HTTP API's bodies as pydantic models, so the OpenAPI document describes every one.

Requests are strict (``extra="forbid"``). Responses are built from the read models' documents,
whose times are already fixed-width UTC text (``2026-01-01T00:00:00.000000Z``): they are typed
``str`` here, never ``datetime``, so the wire format stays exactly the one the views store. Field
order is the order on the wire. A key that the view only sets in some states (a cluster's
``backups_kept_until`` once deleted) has a default and its route uses
``response_model_exclude_unset``, so it stays absent rather than becoming ``null``; every other
``null`` is kept. Nested documents whose shape belongs to a message contract (an audit event,
a restore's objects and options) are passed through as JSON objects. Closed vocabularies use
the contracts' enums, so the document lists their values.
"""

from typing import Any, Literal, Self

from fastapi import status
from pydantic import BaseModel, ConfigDict, Field

from managed_backups.contracts.enums import (
    BackupStatus,
    BackupType,
    Engine,
    RestorePhase,
    RestoreType,
    Role,
    Tier,
)
from managed_backups.shared.domain.encryption_key import KEY_NAME_PATTERN
from managed_backups.shared.secrets import MAX_SECRET_LENGTH

# -- requests -------------------------------------------------------------------------------------


class BackupsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool
    frequency_minutes: int
    retention_days: int


class BackupsConfigPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool | None = None
    frequency_minutes: int | None = None
    retention_days: int | None = None


class ClockAdvance(BaseModel):
    model_config = ConfigDict(extra="forbid")
    advance_seconds: float = Field(gt=0, le=10 * 365 * 86400)


class ConnectionSecretBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    password: str = Field(
        min_length=1, max_length=MAX_SECRET_LENGTH, repr=False, description="Kept encrypted."
    )


class CustomerKeyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key_name: str = Field(
        pattern=KEY_NAME_PATTERN,
        description="The key file's name, without .key, in the customer keys directory's "
        "folder of the cluster.",
    )


# -- errors ---------------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    """Every error answer: the HTTP status again and a human-readable reason."""

    code: int
    message: str


ERROR_DESCRIPTIONS = {
    status.HTTP_400_BAD_REQUEST: "invalid body or query parameters",
    status.HTTP_401_UNAUTHORIZED: "missing, unknown or revoked bearer token",
    status.HTTP_403_FORBIDDEN: "the caller's grants do not allow it",
    status.HTTP_404_NOT_FOUND: "not known (or not visible to the caller)",
    status.HTTP_409_CONFLICT: "refused in the current state",
    status.HTTP_413_CONTENT_TOO_LARGE: "the request body is too large",
    status.HTTP_503_SERVICE_UNAVAILABLE: "recorded, but the views have not caught up yet",
    status.HTTP_504_GATEWAY_TIMEOUT: "the command was not answered in time",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, all with the :class:`ErrorBody`."""
    return {c: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[c]} for c in codes}


AUTHENTICATED = (status.HTTP_400_BAD_REQUEST, status.HTTP_401_UNAUTHORIZED)
"""What any authenticated route may answer (validation is a 400 here, not FastAPI's 422)."""
VIEWING = (*AUTHENTICATED, status.HTTP_403_FORBIDDEN, status.HTTP_404_NOT_FOUND)
CHANGING = (
    *VIEWING,
    status.HTTP_409_CONFLICT,
    status.HTTP_413_CONTENT_TOO_LARGE,
    status.HTTP_503_SERVICE_UNAVAILABLE,
    status.HTTP_504_GATEWAY_TIMEOUT,
)

EMPTY_OK: dict[int | str, dict[str, Any]] = {
    status.HTTP_200_OK: {"description": "recorded; the body is empty", "content": {}}
}
"""A change answered with an empty 200 once the views show it."""

# -- responses ------------------------------------------------------------------------------------


class Pagination(BaseModel):
    next_page: str | None
    previous_page: str | None

    @classmethod
    def around(cls, page: int, more: bool) -> Self:
        """The links of ``page`` (1-based); ``more``: a page follows it."""
        return cls(
            next_page=str(page + 1) if more else None,
            previous_page=str(page - 1) if page > 1 else None,
        )


class Recoverability(BaseModel):
    oldest_restorable: str | None = Field(description="The window's start (data-from time).")
    newest_restorable: str | None = Field(description="The window's end (data-from time).")
    restorable_backups: int
    last_successful_backup: str | None
    stored_bytes: int
    expired_backups: int
    deleted_backups: int
    bytes_freed: int
    kept_past_retention: bool


class ClusterView(BaseModel):
    id: str
    name: str
    organization: str
    tier: Tier
    regions: list[str]
    engine: Engine
    database_version: str
    connection_ref: str
    backup_region: str
    state: Literal["READY", "DELETED"]
    backups_config: BackupsConfig
    retention_changed: bool
    created_at: str | None
    deleted_at: str | None
    version: int
    backups_kept_until: str | None = Field(
        default=None, description="Only once deleted: when its backups are deleted."
    )


class AuditTrail(BaseModel):
    events: list[dict[str, Any]] = Field(
        description="The cluster's events in order, each as its message contract."
    )


class ListedBackup(BaseModel):
    id: str
    as_of_time: str | None = Field(description='"Taken on": the time the data is from.')
    type: BackupType
    status: BackupStatus
    expires_at: str | None = Field(description="The chain's expiry.")
    kept_past_retention: bool
    retention_note: str | None
    region: str
    size_bytes: int
    database_count: int


class BackupList(BaseModel):
    backups: list[ListedBackup]
    pagination: Pagination


class BackupFailure(BaseModel):
    code: str
    message: str


class LastBackup(BaseModel):
    id: str
    type: BackupType
    status: BackupStatus
    at: str | None = Field(description="Its data-from time when complete, else when it started.")
    error: BackupFailure | None


class SettingsChoices(BaseModel):
    """What the backup settings may be set to on this cluster (its tier's rule)."""

    configurable: bool = Field(description="False on BASIC: the settings are fixed.")
    frequency_minutes: list[int]
    retention_days: list[int]


ClusterAction = Literal[
    "view_backups", "change_backup_settings", "restore", "take_backup", "manage_clusters"
]


class ClusterDetail(ClusterView):
    recoverability: Recoverability
    last_backup: LastBackup | None = Field(
        description="The newest backup that ended (COMPLETE or FAILED), if any."
    )
    settings_choices: SettingsChoices
    actions: list[ClusterAction] = Field(
        description="What the caller may do on this cluster (the console shows only these)."
    )


class ClusterList(BaseModel):
    clusters: list[ClusterDetail | ClusterView] = Field(
        description="With detail=true, each with its recoverability, last backup, settings "
        "choices and the caller's actions."
    )


class IncompleteBackup(BaseModel):
    id: str
    type: BackupType
    started: str | None
    duration_seconds: float
    status: BackupStatus
    error: BackupFailure | None
    failed_step: str | None
    description: str


class IncompleteBackupList(BaseModel):
    backups: list[IncompleteBackup]


class BackupDatabase(BaseModel):
    name: str
    table_count: int


class BackupDatabaseList(BaseModel):
    databases: list[BackupDatabase]


class BackupTable(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    # ``schema`` would shadow a BaseModel attribute: the wire name is the alias.
    schema_name: str = Field(alias="schema")
    name: str
    row_count: int
    size_bytes: int


class BackupTableList(BaseModel):
    tables: list[BackupTable]


class PhaseAt(BaseModel):
    phase: RestorePhase
    at: str | None


class RestoreView(BaseModel):
    """The Cloud API fields, the console's ``phase``, and what the job knows beyond them."""

    id: str
    backup_id: str
    status: Literal["PENDING", "SUCCESS", "FAILED"]
    type: RestoreType
    completion_percent: float = Field(description="0..1 by bytes.")
    created_at: str
    completed_at: str | None
    backup_end_time: str | None
    source_cluster_name: str | None
    destination_cluster_name: str | None
    objects: list[dict[str, Any]]
    restore_opts: dict[str, Any]
    client_error_code: str | None
    client_error_message: str | None
    phase: Literal["Preparing", "Running", "Succeeded", "Failed"] = Field(
        description="The console's phase."
    )
    phases: list[PhaseAt]
    bytes_done: int
    bytes_total: int
    source_cluster_id: str | None
    destination_cluster_id: str
    target_database: str | None
    failed_step: str | None
    destination_state: str | None
    restored: list[str] | None
    left_out: list[str] | None = Field(
        default=None, description="What of the backup the restore left out, with the reasons."
    )


class RestoreList(BaseModel):
    restores: list[RestoreView]
    pagination: Pagination


class ClockView(BaseModel):
    simulated: bool
    now: str
    services: dict[str, str] = Field(description="The time each service has reached.")


class ClockAdvanced(BaseModel):
    simulated: bool
    now: str


class Health(BaseModel):
    status: str
    projection_position: int


class CallerAccount(BaseModel):
    id: str = Field(description="The service account's id.")
    name: str
    organization: str | None = Field(description="None: one of the installation's own accounts.")


class CallerGrant(BaseModel):
    role_name: Role
    resource_type: Literal["INSTALLATION", "ORGANIZATION", "CLUSTER"]
    resource_id: str = Field(description="The organization's or cluster's id; * for all.")

    @classmethod
    def of(cls, role: Role, scope: str) -> Self:
        """A principal's grant (``*``, ``org:<id>`` or ``cluster:<id>``), as the wire says it."""
        kind, _, resource = scope.partition(":")
        if kind == "org":
            return cls(role_name=role, resource_type="ORGANIZATION", resource_id=resource)
        if kind == "cluster":
            return cls(role_name=role, resource_type="CLUSTER", resource_id=resource)
        return cls(role_name=role, resource_type="INSTALLATION", resource_id="*")


class Me(BaseModel):
    name: str = Field(description="The principal, as the audit trail names it (``by``).")
    key_id: str | None = Field(description="The id of the API key the request was made with.")
    service_account: CallerAccount | None = Field(
        description="The key's service account (None for a key of version 0.1)."
    )
    organization: str | None = Field(description="The service account's organization.")
    grants: list[CallerGrant] = Field(description="The roles the account holds, and where.")
    administrator: bool = Field(description="Whether it administers the installation.")
    now: str = Field(description="The system's time (the simulated clock's, when it runs on one).")


class BackupDay(BaseModel):
    date: str = Field(description="A UTC day, YYYY-MM-DD.")
    backups: int = Field(description="Listed backups whose data is from that day.")


class BackupDays(BaseModel):
    days: list[BackupDay]


class Verification(BaseModel):
    ok: bool
    verified_at: str | None
    chunks_checked: int
    missing_chunks: list[str]
    corrupt_chunks: list[str]
    command_id: str | None = Field(description="The VerifyBackup command that asked for it.")


class BackupDetail(BaseModel):
    id: str
    cluster_id: str
    chain_id: str
    type: BackupType
    status: BackupStatus
    as_of_time: str | None
    started_at: str | None
    ended_at: str | None
    expires_at: str | None = Field(
        description="The backup's own expiry (its full's for an incremental)."
    )
    region: str
    size_bytes: int
    database_count: int
    error: BackupFailure | None
    verification: Verification | None


class TakeBackupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: BackupType = Field(
        default=BackupType.FULL,
        description="FULL, or INCREMENTAL on the chain of the newest restorable backup.",
    )


class VerifyStarted(BaseModel):
    backup_id: str
    command_id: str = Field(
        description="The verification's result carries it (the backup's ``verification``)."
    )


class RestoreDestination(BaseModel):
    id: str
    name: str
    tier: Tier
    organization: str
    regions: list[str]
    database_version: str


class RestoreDestinationList(BaseModel):
    clusters: list[RestoreDestination] = Field(
        description="Clusters a backup of this one may be restored into by the caller."
    )


class EncryptionKeyView(BaseModel):
    """Which key-encryption key wraps the data keys of a cluster's new backups."""

    provider: Literal["platform", "customer"]
    key_name: str | None = Field(description="The customer key configured (None: none).")
    key_id: str | None = Field(
        description="The current key's id (name and fingerprint, never key material); None "
        "when it is not available."
    )
    available: bool = Field(description="Whether backups can be taken with it now.")
    reason: str | None = Field(description="Why it is not available.")
    customer_key_applies: bool = Field(
        description="A customer key is configured and the cluster is ADVANCED."
    )
    changed_at: str | None
    changed_by: str | None
