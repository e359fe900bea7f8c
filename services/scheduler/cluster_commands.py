"""Handlers of ``managed-backups.cluster-commands``: one function per command.

Rules "clusters" and "backup settings": registration (with the backup region chosen at random
from the cluster's regions, for ever), settings changes by the tier rules, tier changes, deletion.
"""

from __future__ import annotations

from managed_backups.contracts.commands import (
    ChangeClusterTier,
    DeleteCluster,
    RegisterCluster,
    UpdateBackupSettings,
)
from managed_backups.shared.access import load_cluster
from managed_backups.shared.commands import CommandContext, Handled, Handler
from managed_backups.shared.domain.backup_settings import SettingsChange, initial_settings
from managed_backups.shared.domain.cluster import Cluster
from managed_backups.shared.domain.connection_ref import parse_connection_ref
from managed_backups.shared.domain.errors import Conflict, WrongRecordType
from managed_backups.shared.domain.ids import cluster_aggregate_id
from managed_backups.shared.domain.regions import choose_backup_region
from managed_backups.shared.security import Action, Principal


def register_cluster(
    command: RegisterCluster, principal: Principal, context: CommandContext
) -> Handled:
    principal.require(Action.MANAGE_CLUSTERS, organization=command.organization)
    parse_connection_ref(command.connection_ref)
    try:
        existing = context.store.get_or_none(cluster_aggregate_id(command.cluster_id), Cluster)
    except WrongRecordType:
        raise Conflict(
            f"cluster id {command.cluster_id} cannot be registered: its record id is taken by a "
            "record an earlier version let a client place there; choose another cluster id"
        ) from None
    if existing is not None:
        detail = " and was deleted; cluster ids are never reused" if existing.deleted else ""
        raise Conflict(f"cluster {command.cluster_id} is already registered{detail}")
    settings = initial_settings(command.tier)
    cluster = Cluster(
        cluster_id=command.cluster_id,
        name=command.name,
        organization=command.organization,
        tier=command.tier.value,
        regions=list(command.regions),
        engine=command.engine.value,
        database_version=command.database_version,
        connection_ref=command.connection_ref,
        backup_region=choose_backup_region(command.regions),
        enabled=settings.enabled,
        frequency_minutes=settings.frequency_minutes,
        retention_days=settings.retention_days,
        command_id=command.command_id,
        at=context.clock.now(),
        by=principal.name,
    )
    return Handled([cluster], command.cluster_id)


def update_backup_settings(
    command: UpdateBackupSettings, principal: Principal, context: CommandContext
) -> Handled:
    cluster = load_cluster(
        context.store, principal, Action.CHANGE_BACKUP_SETTINGS, command.cluster_id
    )
    decision = cluster.decide_settings(
        SettingsChange(command.enabled, command.frequency_minutes, command.retention_days)
    )
    if not decision.changed:
        return Handled([], command.cluster_id)
    cluster.update_backup_settings(
        decision, command.command_id, context.clock.now(), principal.name
    )
    return Handled([cluster], command.cluster_id)


def change_cluster_tier(
    command: ChangeClusterTier, principal: Principal, context: CommandContext
) -> Handled:
    cluster = load_cluster(context.store, principal, Action.MANAGE_CLUSTERS, command.cluster_id)
    changed = cluster.change_tier(
        command.tier, command.command_id, context.clock.now(), principal.name
    )
    return Handled([cluster] if changed else [], command.cluster_id)


def delete_cluster(
    command: DeleteCluster, principal: Principal, context: CommandContext
) -> Handled:
    cluster = load_cluster(context.store, principal, Action.MANAGE_CLUSTERS, command.cluster_id)
    cluster.delete(command.command_id, context.clock.now(), principal.name)
    return Handled([cluster], command.cluster_id)


HANDLERS: dict[str, Handler] = {
    "RegisterCluster": register_cluster,
    "UpdateBackupSettings": update_backup_settings,
    "ChangeClusterTier": change_cluster_tier,
    "DeleteCluster": delete_cluster,
}
