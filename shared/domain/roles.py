"""Rule: "who may do what" — the actions each role allows.

| role | view backups | change backup settings | restore | take a backup | manage clusters | administer |
| SYSTEM_ADMIN | yes | yes | yes | yes | yes | yes |
| ORG_ADMIN | yes | yes | yes | yes | yes | |
| CLUSTER_ADMIN | yes | yes | yes | yes | | |
| CLUSTER_OPERATOR | yes | | yes | | | |
| CLUSTER_DEVELOPER, CLUSTER_MONITOR | | | | | | |

Where a role is granted (installation, organization, cluster) and how grants combine is
:class:`managed_backups.shared.security.Principal`.
"""

from __future__ import annotations

from enum import StrEnum

from managed_backups.contracts.enums import Role


class Action(StrEnum):
    VIEW_BACKUPS = "view backups"
    CHANGE_BACKUP_SETTINGS = "change backup settings"
    RESTORE = "restore"
    TAKE_BACKUP = "take a backup"
    MANAGE_CLUSTERS = "register, delete or change the tier of clusters"
    ADMINISTER = "administer the installation"


ROLE_ACTIONS: dict[Role, frozenset[Action]] = {
    Role.SYSTEM_ADMIN: frozenset(Action),
    Role.ORG_ADMIN: frozenset(
        {
            Action.VIEW_BACKUPS,
            Action.CHANGE_BACKUP_SETTINGS,
            Action.RESTORE,
            Action.TAKE_BACKUP,
            Action.MANAGE_CLUSTERS,
        }
    ),
    Role.CLUSTER_ADMIN: frozenset(
        {Action.VIEW_BACKUPS, Action.CHANGE_BACKUP_SETTINGS, Action.RESTORE, Action.TAKE_BACKUP}
    ),
    Role.CLUSTER_OPERATOR: frozenset({Action.VIEW_BACKUPS, Action.RESTORE}),
    Role.CLUSTER_DEVELOPER: frozenset(),
    Role.CLUSTER_MONITOR: frozenset(),
}
