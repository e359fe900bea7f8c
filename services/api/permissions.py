"""What the caller may do, as clients read it: ``GET /api/v1/me`` (who the caller is in
identity's terms: its API key, service account, organization and role grants) and the
``actions`` of a cluster (``allowed_actions``). The console shows a control only when its action
is listed; the API still checks every request itself.

``allowed_actions`` asks the access rule every route and command handler applies
(:func:`managed_backups.shared.access.require_on_cluster`), with the same action and the same
"live cluster" condition as the route or handler behind each control, so the console offers
exactly what the API then allows (``tests/unit/test_console_api.py`` compares them role by
role).
"""

from __future__ import annotations

from fastapi import APIRouter

from managed_backups.services.api.dependencies import Caller, RuntimeDep
from managed_backups.services.api.schemas import (
    AUTHENTICATED,
    CallerAccount,
    CallerGrant,
    ClusterAction,
    Me,
    errors,
)
from managed_backups.shared.access import ClusterRef, require_on_cluster
from managed_backups.shared.domain.errors import Refused
from managed_backups.shared.domain.identity import ServiceAccount
from managed_backups.shared.security import Action, Principal
from managed_backups.shared.views import ts

CLUSTER_ACTIONS: dict[ClusterAction, tuple[Action, bool]] = {
    # name on the wire: (the action, whether the cluster must be live), as checked by
    "view_backups": (Action.VIEW_BACKUPS, False),  # the backup and audit queries
    "change_backup_settings": (Action.CHANGE_BACKUP_SETTINGS, True),  # UpdateBackupSettings
    "restore": (Action.RESTORE, False),  # StartRestore, on the source (check_restore_request)
    "take_backup": (Action.TAKE_BACKUP, True),  # TakeBackup (back up now)
    "manage_clusters": (Action.MANAGE_CLUSTERS, True),  # the connection secret
}


def allowed(who: Principal, action: Action, cluster: ClusterRef, live: bool) -> bool:
    try:
        require_on_cluster(who, action, cluster.cluster_id, cluster, live=live)
    except Refused:
        return False
    return True


def allowed_actions(who: Principal, cluster: ClusterRef) -> list[ClusterAction]:
    """The actions ``who`` may take on ``cluster``, by their names on the wire. A deleted
    cluster's backups are listed and restored by administrators only (``backups.py``,
    ``deleted_source_only_for_an_administrator``)."""
    names: list[ClusterAction] = []
    for name, (action, live) in CLUSTER_ACTIONS.items():
        if not allowed(who, action, cluster, live):
            continue
        if (
            cluster.deleted
            and name == "view_backups"
            and not who.can(Action.MANAGE_CLUSTERS, cluster.organization, cluster.cluster_id)
        ):
            continue
        if cluster.deleted and name == "restore" and not who.can(Action.ADMINISTER):
            continue
        names.append(name)
    return names


router = APIRouter(prefix="/api/v1", tags=["caller"], responses=errors(*AUTHENTICATED))


@router.get("/me")
def me(who: Caller, runtime: RuntimeDep) -> Me:
    """Who the API key belongs to, in identity's terms (the console shows it after sign-in):
    its key, its service account and organization, its role grants; and the system's time
    (what "expires in" counts from)."""
    account = (
        runtime.store.get_or_none(who.account_id, ServiceAccount)
        if who.account_id is not None
        else None
    )
    return Me(
        name=who.name,
        key_id=who.key_id,
        service_account=None
        if account is None
        else CallerAccount(
            id=str(account.account_id), name=account.name, organization=account.organization
        ),
        organization=account.organization if account is not None else None,
        grants=[CallerGrant.of(grant.role, grant.scope) for grant in who.grants],
        administrator=who.can(Action.ADMINISTER),
        now=ts(runtime.clock.now()) or "",
    )
