"""Cluster endpoints: the clusters view, a cluster's audit trail, and its backup settings
(read from the view; changed by an ``UpdateBackupSettings`` command)."""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status

from managed_backups.contracts import topics
from managed_backups.services.api.dependencies import (
    Caller,
    CommandsDep,
    Models,
    RuntimeDep,
    live_cluster,
    visible_cluster,
)
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
from managed_backups.shared.security import Action

MAX_POSITION = 2**62

router = APIRouter(prefix="/api/v1/clusters", tags=["clusters"], responses=errors(*VIEWING))


@router.get("", response_model_exclude_unset=True)
def list_clusters(who: Caller, models: Models, show_deleted: bool = False) -> ClusterList:
    docs = [
        d
        for d in models.clusters(include_deleted=show_deleted)
        if who.can(Action.VIEW_BACKUPS, d["organization"], d["id"])
    ]
    return ClusterList.model_validate({"clusters": docs})


@router.get("/{cluster_id}", response_model_exclude_unset=True)
def get_cluster(cluster_id: str, who: Caller, models: Models, runtime: RuntimeDep) -> ClusterDetail:
    doc = visible_cluster(models, cluster_id, who)
    window = models.recoverability(cluster_id, runtime.clock.now())
    return ClusterDetail.model_validate({**doc, "recoverability": window})


@router.get("/{cluster_id}/events")
def cluster_events(
    cluster_id: str,
    who: Caller,
    models: Models,
    after: Annotated[int, Query(ge=0, le=MAX_POSITION)] = 0,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> AuditTrail:
    visible_cluster(models, cluster_id, who)
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
