"""What the caller may do, as clients read it: ``GET /api/v1/me`` and the ``actions`` of a
cluster (``allowed_actions``). The console shows a control only when its action is listed; the
API still checks every request itself.

This is the one place where the API's bodies depend on how grants combine: the answer is
``Principal.can`` for each action, whatever the identity model behind it.
"""

from __future__ import annotations

from fastapi import APIRouter

from managed_backups.services.api.dependencies import Caller, RuntimeDep
from managed_backups.services.api.schemas import AUTHENTICATED, ClusterAction, Me, errors
from managed_backups.shared.security import Action, Principal
from managed_backups.shared.views import ts

CLUSTER_ACTIONS: dict[Action, ClusterAction] = {
    Action.VIEW_BACKUPS: "view_backups",
    Action.CHANGE_BACKUP_SETTINGS: "change_backup_settings",
    Action.RESTORE: "restore",
    Action.TAKE_BACKUP: "take_backup",
    Action.MANAGE_CLUSTERS: "manage_clusters",
}


def allowed_actions(who: Principal, organization: str, cluster_id: str) -> list[ClusterAction]:
    """The actions ``who`` may take on the cluster, by their names on the wire."""
    return [
        name
        for action, name in CLUSTER_ACTIONS.items()
        if who.can(action, organization, cluster_id)
    ]


router = APIRouter(prefix="/api/v1", tags=["caller"], responses=errors(*AUTHENTICATED))


@router.get("/me")
def me(who: Caller, runtime: RuntimeDep) -> Me:
    """Who the API key belongs to (the console shows it after sign-in), and the system's time
    (what "expires in" counts from)."""
    return Me(
        name=who.name,
        administrator=who.can(Action.ADMINISTER, cluster_id="*"),
        now=ts(runtime.clock.now()) or "",
    )
