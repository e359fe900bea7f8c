"""Restore endpoints: start a restore job (a StartRestore command) and read the jobs view.

``POST /api/v1/clusters/{destination_cluster_id}/restores`` answers 200 with the job once it is
recorded (PREPARING), or the rule's 4xx ``{"code", "message"}`` before any data moves.
``GET .../restores`` (paged, newest first) and ``GET .../restores/{restore_id}`` return the
Cloud API fields plus the console's ``phase``.
"""

import uuid
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field

from managed_backups.contracts import topics
from managed_backups.contracts.commands import (
    MAX_RESTORE_OBJECTS,
    RestoreObject,
    RestoreOptions,
)
from managed_backups.contracts.enums import RestoreType
from managed_backups.services.api.backups import MAX_PAGE
from managed_backups.services.api.dependencies import (
    Caller,
    CommandsDep,
    Models,
    visible_cluster,
)
from managed_backups.services.api.schemas import (
    CHANGING,
    VIEWING,
    Pagination,
    RestoreList,
    RestoreView,
    errors,
)

CLOUD_FIELDS = (
    "id",
    "backup_id",
    "status",
    "type",
    "completion_percent",
    "created_at",
    "completed_at",
    "backup_end_time",
    "source_cluster_name",
    "destination_cluster_name",
    "objects",
    "restore_opts",
    "client_error_code",
    "client_error_message",
)


class RestoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: RestoreType
    backup_id: UUID | None = None
    source_cluster_id: str | None = Field(default=None, max_length=63)
    objects: list[RestoreObject] = Field(default_factory=list, max_length=MAX_RESTORE_OBJECTS)
    restore_opts: RestoreOptions = Field(default_factory=RestoreOptions)


def restore_view(doc: dict[str, Any]) -> RestoreView:
    """The Cloud API fields, the console's phase, and what the job knows beyond them."""
    view = {k: doc[k] for k in CLOUD_FIELDS}
    view.update(
        phase=str(doc["phase"]).capitalize(),
        phases=doc["phases"],
        bytes_done=doc["bytes_done"],
        bytes_total=doc["bytes_total"],
        source_cluster_id=doc["source_cluster_id"],
        destination_cluster_id=doc["destination_cluster_id"],
        target_database=doc["target_database"],
        failed_step=doc["failed_step"],
        destination_state=doc["destination_state"],
        restored=doc.get("restored"),
        left_out=doc.get("left_out"),
    )
    return RestoreView.model_validate(view)


router = APIRouter(
    prefix="/api/v1/clusters/{cluster_id}/restores", tags=["restores"], responses=errors(*VIEWING)
)


@router.post("", responses=errors(*CHANGING))
async def start_restore(
    cluster_id: str, body: RestoreRequest, who: Caller, models: Models, commands: CommandsDep
) -> RestoreView:
    restore_id = str(uuid.uuid4())
    await commands.send(
        topics.RESTORE_COMMANDS,
        {
            "type": "StartRestore",
            "restore_id": restore_id,
            "destination_cluster_id": cluster_id,
            "restore_type": body.type.value,
            "backup_id": str(body.backup_id) if body.backup_id else None,
            "source_cluster_id": body.source_cluster_id,
            "objects": [o.model_dump(by_alias=True, exclude_none=True) for o in body.objects],
            "restore_opts": body.restore_opts.model_dump(),
        },
        who,
    )
    doc = models.restore(cluster_id, restore_id)
    if doc is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"restore {restore_id} is recorded but not yet in the views",
        )
    return restore_view(doc)


@router.get("")
def list_restores(
    cluster_id: str,
    who: Caller,
    models: Models,
    page: Annotated[int, Query(alias="pagination.page", ge=1, le=MAX_PAGE)] = 1,
    limit: Annotated[int, Query(alias="pagination.limit", ge=1, le=1000)] = 100,
) -> RestoreList:
    visible_cluster(models, cluster_id, who)
    docs, more = models.restores(cluster_id, page, limit)
    return RestoreList(
        restores=[restore_view(d) for d in docs],
        pagination=Pagination.around(page, more),
    )


@router.get("/{restore_id}")
def get_restore(cluster_id: str, restore_id: str, who: Caller, models: Models) -> RestoreView:
    visible_cluster(models, cluster_id, who)
    doc = models.restore(cluster_id, restore_id)
    if doc is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"restore {restore_id} into cluster {cluster_id} is not known",
        )
    return restore_view(doc)
