"""``PUT /api/v1/clusters/{cluster_id}/connection-secret``: the password the executor and the
restore service use for this cluster, and only for it.

The audit event (who changed it, never the value) is recorded first, then the encrypted secret
is stored; once the views show the event, the rule "a new secret takes the missing full backup"
(never on a cluster whose backups are disabled) may send a full ``TakeBackup`` on the caller's
behalf.
"""

import asyncio
import logging
import uuid
from uuid import UUID

from fastapi import APIRouter, HTTPException, Response, status

from managed_backups.contracts import topics
from managed_backups.services.api.dependencies import Caller, Commands, CommandsDep, Context, Views
from managed_backups.services.api.schemas import CHANGING, EMPTY_OK, ConnectionSecretBody, errors
from managed_backups.services.runtime import Runtime
from managed_backups.shared.access import load_cluster
from managed_backups.shared.domain.backup import load_backup
from managed_backups.shared.domain.cluster import Cluster
from managed_backups.shared.domain.connection_secret import (
    ConnectionSecret,
    a_new_secret_takes_the_missing_full,
)
from managed_backups.shared.domain.ids import cluster_aggregate_id, connection_secret_aggregate_id
from managed_backups.shared.eventstore import IntegrityError
from managed_backups.shared.secrets import ConnectionSecrets
from managed_backups.shared.security import Action, Principal
from managed_backups.shared.views import Page, ReadModels

log = logging.getLogger(__name__)

router = APIRouter(tags=["connection secret"])


def set_connection_secret(
    runtime: Runtime,
    secrets_store: ConnectionSecrets,
    cluster_id: str,
    password: str,
    who: Principal,
) -> int | None:
    """Record who changes the secret, then store it; returns the audit event's position."""
    load_cluster(runtime.store, who, Action.MANAGE_CLUSTERS, cluster_id)
    now = runtime.clock.now()
    audit = runtime.store.get_or_none(connection_secret_aggregate_id(cluster_id), ConnectionSecret)
    if audit is None:
        audit = ConnectionSecret(cluster_id=cluster_id, at=now, by=who.name)
    else:
        audit.change(at=now, by=who.name)
    try:
        position = runtime.store.save_all(audit)
    except IntegrityError:
        raise HTTPException(
            status.HTTP_409_CONFLICT, "the secret is being changed concurrently; retry"
        ) from None
    secrets_store.put(cluster_id, password, now.isoformat())
    return position


def missing_full(runtime: Runtime, models: ReadModels, cluster_id: str) -> bool:
    """Whether a new secret should take the cluster's missing full backup (the named rule).
    Called once the views caught up with the secret's event, so with every earlier backup."""
    cluster = runtime.store.get_or_none(cluster_aggregate_id(cluster_id), Cluster)
    if cluster is None or cluster.deleted:
        return False
    listed, _ = models.listed_backups(
        cluster_id, runtime.clock.now(), None, None, Page(page=1, limit=1, sort_desc=True)
    )
    last = cluster.last_scheduled
    backup = load_backup(runtime.store, cluster_id, UUID(str(last["backup_id"]))) if last else None
    status_ = None if backup is None else str(backup.status)
    return a_new_secret_takes_the_missing_full(cluster.enabled, bool(listed), status_)


async def take_missing_full(commands: Commands, cluster_id: str, who: Principal) -> None:
    """On the caller's behalf, as any publisher would; the secret is set whatever the
    outcome (a caller without the backup right, a backup started meanwhile)."""
    body = {
        "type": "TakeBackup",
        "cluster_id": cluster_id,
        "backup_id": str(uuid.uuid4()),
        "backup_type": "FULL",
        "reason": "MANUAL",
    }
    try:
        result = await commands.request(topics.BACKUP_COMMANDS, body, who)
    except HTTPException:
        log.warning(
            "cluster %s: the full backup after its new secret is not answered yet", cluster_id
        )
        return
    log.info(
        "cluster %s: full backup after its new secret: %s %s",
        cluster_id,
        result.code,
        result.reason or "",
    )


@router.put(
    "/api/v1/clusters/{cluster_id}/connection-secret",
    response_class=Response,
    responses={**EMPTY_OK, **errors(*CHANGING)},
)
async def put_connection_secret(
    cluster_id: str,
    body: ConnectionSecretBody,
    who: Caller,
    context: Context,
    views: Views,
    commands: CommandsDep,
) -> Response:
    """Set the password the executor uses for this cluster, and only for it. Allowed to
    whoever may manage the cluster; the audit trail records who changed it, never the
    value. Callers that may not see the cluster get 404, as if it did not exist."""
    runtime, models = context.runtime, context.models
    position = await asyncio.to_thread(
        set_connection_secret, runtime, context.secrets, cluster_id, body.password, who
    )
    await views.until(position)
    if await asyncio.to_thread(missing_full, runtime, models, cluster_id):
        await take_missing_full(commands, cluster_id, who)
    return Response(status_code=status.HTTP_200_OK)
