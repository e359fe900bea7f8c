"""``GET /api/v1/clusters/{cluster_id}/restore-destinations``: the clusters a backup of this one
may be restored into by the caller (what the console's restore dialog offers).

The answer applies the restore rules themselves to each candidate, through the function the
restore service checks StartRestore with (``check_restore_request`` in
``shared/domain/restore_rules.py``: the restore right on both clusters by the one access rule, a
deleted source only for an administrator, a live destination, cross-cluster only between
ADVANCED clusters of one organization, no older major version). Candidates are the source and the live clusters of its organization (the
cross-cluster rule allows no other). The multi-region localities check is left to the restore
itself: the dialog offers to skip it where that is allowed, and a refusal says why.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, status

from managed_backups.services.api.dependencies import Caller, Context, visible_cluster
from managed_backups.services.api.schemas import (
    VIEWING,
    RestoreDestination,
    RestoreDestinationList,
    errors,
)
from managed_backups.services.runtime import Runtime
from managed_backups.shared.domain.cluster import Cluster
from managed_backups.shared.domain.errors import Refused, not_registered
from managed_backups.shared.domain.ids import cluster_aggregate_id
from managed_backups.shared.domain.restore_rules import check_restore_request
from managed_backups.shared.security import Principal
from managed_backups.shared.views import ReadModels

router = APIRouter(tags=["restores"], responses=errors(*VIEWING))


def allowed_destinations(
    runtime: Runtime, models: ReadModels, source_id: str, who: Principal
) -> list[Cluster]:
    """The candidates the restore rules let ``who`` restore a backup of ``source_id`` into."""
    source = runtime.store.get_or_none(cluster_aggregate_id(source_id), Cluster)
    if source is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, not_registered(source_id))
    candidates = [source_id] + [
        d["id"]
        for d in models.clusters()
        if d["organization"] == source.organization and d["id"] != source_id
    ]
    allowed = []
    for candidate in candidates:
        try:
            # What StartRestore itself checks, in the same function (the localities check
            # skipped: the dialog offers to skip it, and the restore says why it refuses).
            _, destination = check_restore_request(
                runtime.store, who, candidate, source_id, skip_localities_check=True
            )
        except Refused:
            continue
        allowed.append(destination)
    return allowed


@router.get("/api/v1/clusters/{cluster_id}/restore-destinations")
async def restore_destinations(
    cluster_id: str, who: Caller, context: Context
) -> RestoreDestinationList:
    visible_cluster(context.models, cluster_id, who)
    clusters = await asyncio.to_thread(
        allowed_destinations, context.runtime, context.models, cluster_id, who
    )
    return RestoreDestinationList(
        clusters=[
            RestoreDestination(
                id=c.cluster_id,
                name=c.name,
                tier=c.tier,
                organization=c.organization,
                regions=list(c.regions),
                database_version=c.database_version,
            )
            for c in clusters
        ]
    )
