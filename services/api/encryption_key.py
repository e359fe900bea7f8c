"""``/api/v1/clusters/{cluster_id}/encryption-key``: which key wraps a cluster's backups.

Every cluster's backups are encrypted at rest (``shared/dataplane/sealing.py``); by default
their data keys are wrapped by the platform key. An ADVANCED cluster may bring its own key
(customer-managed): a key file the customer places at
``<customer keys directory>/<cluster id>/<key name>.key`` and names here. Configuring it
records ``CustomerKeyConfigured`` (or ``CustomerKeyChanged``: the key's name and id, never the
key) and starts a rotation job that wraps every existing chain's data key by it too;
``DELETE`` goes back to the platform key for new chains; ``POST .../rotate`` starts a rotation
(after the platform key was rotated, say). Who may: whoever may change the cluster's backup
settings (``GET``: whoever may view its backups), decided by the one access rule
(:func:`managed_backups.shared.access.require_on_cluster`): callers who may not see the cluster
get 404, as for a cluster that does not exist, and their refusal goes to the security log. The
rotation is a ``RotateEncryptionKeys`` command signed for the caller, as every command the API
sends on someone's behalf.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, Response, status

from managed_backups.contracts import topics
from managed_backups.services.api.dependencies import (
    Caller,
    Commands,
    CommandsDep,
    Context,
    Views,
)
from managed_backups.services.api.schemas import (
    CHANGING,
    EMPTY_OK,
    VIEWING,
    CustomerKeyBody,
    EncryptionKeyView,
    errors,
)
from managed_backups.services.runtime import Runtime
from managed_backups.shared.access import load_cluster
from managed_backups.shared.dataplane.keys import KeyUnavailable
from managed_backups.shared.domain.cluster import Cluster
from managed_backups.shared.domain.encryption_key import (
    ClusterEncryptionKey,
    customer_key_applies,
    customer_keys_need_advanced,
)
from managed_backups.shared.domain.errors import BadValue
from managed_backups.shared.encryption import ClusterEncryption, customer_keyring
from managed_backups.shared.eventstore import IntegrityError
from managed_backups.shared.security import Action, Principal

router = APIRouter(prefix="/api/v1/clusters", tags=["encryption key"])


def _cluster(runtime: Runtime, cluster_id: str, who: Principal, action: Action) -> Cluster:
    """The live cluster ``who`` may ``action`` on (the one access rule)."""
    return load_cluster(runtime.store, who, action, cluster_id)


def key_view(encryption: ClusterEncryption, cluster: Cluster) -> EncryptionKeyView:
    configured = encryption.configured_key(cluster.cluster_id)
    name = configured.key_name if configured is not None else None
    applies = customer_key_applies(cluster.tier, name)
    reason = None
    try:
        current: str | None = encryption.keys_for(cluster).current_key_id()
    except KeyUnavailable as exc:
        current, reason = None, str(exc)
    return EncryptionKeyView(
        provider="customer" if applies else "platform",
        key_name=name,
        key_id=current,
        available=current is not None,
        reason=reason,
        customer_key_applies=applies,
        changed_at=None if configured is None else configured.changed_at.isoformat(),
        changed_by=None if configured is None else configured.changed_by,
    )


def configure_customer_key(
    runtime: Runtime, encryption: ClusterEncryption, cluster_id: str, key_name: str, who: Principal
) -> int | None:
    """Record the cluster's customer key (ADVANCED only; its file must hold a usable key)."""
    cluster = _cluster(runtime, cluster_id, who, Action.CHANGE_BACKUP_SETTINGS)
    customer_keys_need_advanced(cluster_id, cluster.tier)
    try:
        key_id = customer_keyring(runtime.settings, cluster_id, key_name).current_key_id()
    except KeyUnavailable as exc:
        raise BadValue(
            f"{exc}: place the key (32 random bytes, base64) in the customer keys directory as "
            f"{cluster_id}/{key_name}.key first"
        ) from None
    now = runtime.clock.now()
    configured = encryption.configured_key(cluster_id)
    if configured is None:
        configured = ClusterEncryptionKey(
            cluster_id=cluster_id, key_name=key_name, key_id=key_id, at=now, by=who.name
        )
    elif not configured.change(key_name, key_id, now, who.name):
        return None
    return _save(runtime, configured)


def remove_customer_key(
    runtime: Runtime, encryption: ClusterEncryption, cluster_id: str, who: Principal
) -> int | None:
    _cluster(runtime, cluster_id, who, Action.CHANGE_BACKUP_SETTINGS)
    configured = encryption.configured_key(cluster_id)
    if configured is None or not configured.remove(runtime.clock.now(), who.name):
        return None
    return _save(runtime, configured)


def _save(runtime: Runtime, configured: ClusterEncryptionKey) -> int | None:
    try:
        return runtime.store.save_all(configured)
    except IntegrityError:
        raise HTTPException(
            status.HTTP_409_CONFLICT, "the cluster's key is being changed concurrently; retry"
        ) from None


@router.get("/{cluster_id}/encryption-key", responses=errors(*VIEWING))
def get_encryption_key(cluster_id: str, who: Caller, context: Context) -> EncryptionKeyView:
    """Which key wraps the data keys of the cluster's new backups, and whether it is usable."""
    cluster = _cluster(context.runtime, cluster_id, who, Action.VIEW_BACKUPS)
    return key_view(context.encryption, cluster)


@router.put("/{cluster_id}/encryption-key", responses=errors(*CHANGING))
async def put_encryption_key(
    cluster_id: str,
    body: CustomerKeyBody,
    who: Caller,
    context: Context,
    views: Views,
    commands: CommandsDep,
) -> EncryptionKeyView:
    """Configure the cluster's customer-managed key (ADVANCED clusters only), then re-wrap
    every existing chain's data key by it (a rotation job: the audit trail shows its end)."""
    position = await asyncio.to_thread(
        configure_customer_key,
        context.runtime,
        context.encryption,
        cluster_id,
        body.key_name,
        who,
    )
    await views.until(position)
    await _rotate(commands, cluster_id, who)
    cluster = _cluster(context.runtime, cluster_id, who, Action.VIEW_BACKUPS)
    return await asyncio.to_thread(key_view, context.encryption, cluster)


@router.delete(
    "/{cluster_id}/encryption-key",
    response_class=Response,
    responses={**EMPTY_OK, **errors(*CHANGING)},
)
async def delete_encryption_key(
    cluster_id: str, who: Caller, context: Context, views: Views
) -> Response:
    """Back to the platform key for the cluster's new chains (older chains keep the keys that
    wrap them: a rotation wraps them by the platform key too)."""
    position = await asyncio.to_thread(
        remove_customer_key, context.runtime, context.encryption, cluster_id, who
    )
    await views.until(position)
    return Response(status_code=status.HTTP_200_OK)


@router.post(
    "/{cluster_id}/encryption-key/rotate",
    response_class=Response,
    responses={**EMPTY_OK, **errors(*CHANGING)},
)
async def rotate_encryption_keys(cluster_id: str, who: Caller, commands: CommandsDep) -> Response:
    """Start a rotation job: every chain's data key wrapped by the cluster's current key, in
    new objects (nothing stored is rewritten). Answered once the job is recorded."""
    await _rotate(commands, cluster_id, who)
    return Response(status_code=status.HTTP_200_OK)


async def _rotate(commands: Commands, cluster_id: str, who: Principal) -> None:
    """``RotateEncryptionKeys`` for the cluster, signed for the caller (the retention service
    decides with the caller's rights, never with a service's)."""
    await commands.send(
        topics.RETENTION_COMMANDS, {"type": "RotateEncryptionKeys", "cluster_id": cluster_id}, who
    )
