"""Cluster endpoints: the clusters view, a cluster's audit trail, and its backup settings
(read from the view; changed by an ``UpdateBackupSettings`` command)."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status

from managed_backups.contracts import topics
from managed_backups.contracts.enums import Tier
from managed_backups.services.api.dependencies import (
    Caller,
    CommandsDep,
    Models,
    RuntimeDep,
    cluster_ref,
    live_cluster,
    visible_cluster,
)
from managed_backups.services.api.permissions import allowed_actions
from managed_backups.services.api.schemas import (
    CHANGING,
    EMPTY_OK,
    VIEWING,
    AuditTrail,
    BackupsConfig,
    BackupsConfigPatch,
    ClusterDetail,
    ClusterList,
    errors,
)
from managed_backups.shared.access import ClusterRef
from managed_backups.shared.domain.backup_settings import settings_choices
from managed_backups.shared.security import Action, Principal
from managed_backups.shared.views import ReadModels

MAX_POSITION = 2**62


def cluster_ref_of(doc: dict[str, Any]) -> ClusterRef:
    ref = cluster_ref(doc)
    assert ref is not None
    return ref


router = APIRouter(prefix="/api/v1/clusters", tags=["clusters"], responses=errors(*VIEWING))


def cluster_detail(
    doc: dict[str, Any], who: Principal, models: ReadModels, now: datetime
) -> ClusterDetail:
    """A cluster's view with its recoverability window, its last backup, the settings its tier
    allows and what the caller may do on it."""
    last = models.last_finished_backup(doc["id"])
    choices = settings_choices(Tier(doc["tier"]))
    return ClusterDetail.model_validate(
        {
            **doc,
            "recoverability": models.recoverability(doc["id"], now),
            "last_backup": None
            if last is None
            else {
                "id": last["id"],
                "type": last["type"],
                "status": last["status"],
                "at": last["as_of_time"] or last["started_at"] or last["scheduled_for"],
                "error": last["error"],
            },
            "settings_choices": {
                "configurable": choices.configurable,
                "frequency_minutes": list(choices.frequency_minutes),
                "retention_days": list(choices.retention_days),
            },
            "actions": allowed_actions(who, cluster_ref_of(doc)),
        }
    )


@router.get("", response_model_exclude_unset=True)
def list_clusters(
    who: Caller,
    models: Models,
    runtime: RuntimeDep,
    show_deleted: bool = False,
    detail: Annotated[
        bool,
        Query(description="Each cluster with its recoverability, last backup and actions."),
    ] = False,
) -> ClusterList:
    docs = [
        d
        for d in models.clusters(include_deleted=show_deleted)
        if who.can(Action.VIEW_BACKUPS, d["organization"], d["id"])
    ]
    if detail:
        now = runtime.clock.now()
        return ClusterList(clusters=[cluster_detail(d, who, models, now) for d in docs])
    return ClusterList.model_validate({"clusters": docs})


@router.get("/{cluster_id}", response_model_exclude_unset=True)
def get_cluster(cluster_id: str, who: Caller, models: Models, runtime: RuntimeDep) -> ClusterDetail:
    doc = visible_cluster(models, cluster_id, who)
    return cluster_detail(doc, who, models, runtime.clock.now())


@router.get("/{cluster_id}/events")
def cluster_events(
    cluster_id: str,
    who: Caller,
    models: Models,
    after: Annotated[int, Query(ge=0, le=MAX_POSITION)] = 0,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    before: Annotated[
        int | None,
        Query(
            ge=1,
            le=MAX_POSITION,
            description="Instead of after: the `limit` events just before this position, "
            f"still in order ({MAX_POSITION} for the latest page).",
        ),
    ] = None,
) -> AuditTrail:
    visible_cluster(models, cluster_id, who)
    if before is not None:
        return AuditTrail(events=models.audit_before(cluster_id, before, limit))
    return AuditTrail(events=models.audit(cluster_id, after, limit))


# -- backup settings ------------------------------------------------------------------------------


def _config(models: Models, cluster_id: str, who: Caller) -> BackupsConfig:
    return BackupsConfig.model_validate(live_cluster(models, cluster_id, who)["backups_config"])


async def _change_config(
    commands: CommandsDep, cluster_id: str, who: Caller, change: dict[str, Any]
) -> Response:
    await commands.send(
        topics.CLUSTER_COMMANDS,
        {"type": "UpdateBackupSettings", "cluster_id": cluster_id, **change},
        who,
    )
    return Response(status_code=status.HTTP_200_OK)


@router.get("/{cluster_id}/backups/config")
def get_backups_config(cluster_id: str, who: Caller, models: Models) -> BackupsConfig:
    return _config(models, cluster_id, who)


@router.get("/{cluster_id}/backups-config")
def get_backups_config_alias(cluster_id: str, who: Caller, models: Models) -> BackupsConfig:
    return _config(models, cluster_id, who)


@router.put(
    "/{cluster_id}/backups/config",
    response_class=Response,
    responses={**EMPTY_OK, **errors(*CHANGING)},
)
async def put_backups_config(
    cluster_id: str, body: BackupsConfig, who: Caller, commands: CommandsDep
) -> Response:
    return await _change_config(commands, cluster_id, who, body.model_dump())


@router.patch(
    "/{cluster_id}/backups-config",
    response_class=Response,
    responses={**EMPTY_OK, **errors(*CHANGING)},
)
async def patch_backups_config(
    cluster_id: str, body: BackupsConfigPatch, who: Caller, commands: CommandsDep
) -> Response:
    return await _change_config(commands, cluster_id, who, body.model_dump(exclude_none=True))
