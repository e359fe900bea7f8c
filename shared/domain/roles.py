"""Rule: "who may do what" — the actions each role allows, and what each service may do.

| role | view backups | change backup settings | restore | take a backup | manage clusters | manage access | administer |
| SYSTEM_ADMIN | yes | yes | yes | yes | yes | yes | yes |
| ORG_ADMIN | yes | yes | yes | yes | yes | yes | |
| CLUSTER_ADMIN | yes | yes | yes | yes | | | |
| CLUSTER_OPERATOR | yes | | yes | | | | |
| CLUSTER_DEVELOPER, CLUSTER_MONITOR | | | | | | | |

"Manage access" is creating service accounts and API keys, revoking keys and granting roles in
an organization (an Organization Admin in theirs, the system administrator everywhere); nobody
grants a role whose actions they do not hold (:func:`managed_backups.shared.access.may_grant`).
Where a role is granted (installation, organization, cluster) and how grants combine is
:class:`managed_backups.shared.security.Principal`; which roles can be granted where is
:data:`GRANTABLE`.

The services act under principals of their own, each with only the actions it needs
(:data:`SERVICE_ACTIONS`): the scheduler sends ``TakeBackup`` for every cluster's schedule, and
that is all any service sends.
"""

from __future__ import annotations

from enum import StrEnum

from managed_backups.contracts.enums import ResourceType, Role


class Action(StrEnum):
    VIEW_BACKUPS = "view backups"
    CHANGE_BACKUP_SETTINGS = "change backup settings"
    RESTORE = "restore"
    TAKE_BACKUP = "take a backup"
    MANAGE_CLUSTERS = "register, delete or change the tier of clusters"
    MANAGE_ACCESS = "manage service accounts, API keys and role grants"
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
            Action.MANAGE_ACCESS,
        }
    ),
    Role.CLUSTER_ADMIN: frozenset(
        {Action.VIEW_BACKUPS, Action.CHANGE_BACKUP_SETTINGS, Action.RESTORE, Action.TAKE_BACKUP}
    ),
    Role.CLUSTER_OPERATOR: frozenset({Action.VIEW_BACKUPS, Action.RESTORE}),
    Role.CLUSTER_DEVELOPER: frozenset(),
    Role.CLUSTER_MONITOR: frozenset(),
}


ROLES_AT_LEAST: dict[Role, frozenset[Role]] = {
    Role.SYSTEM_ADMIN: frozenset({Role.SYSTEM_ADMIN}),
    Role.ORG_ADMIN: frozenset({Role.SYSTEM_ADMIN, Role.ORG_ADMIN}),
    Role.CLUSTER_ADMIN: frozenset({Role.SYSTEM_ADMIN, Role.ORG_ADMIN, Role.CLUSTER_ADMIN}),
    Role.CLUSTER_OPERATOR: frozenset(
        {Role.SYSTEM_ADMIN, Role.ORG_ADMIN, Role.CLUSTER_ADMIN, Role.CLUSTER_OPERATOR}
    ),
    Role.CLUSTER_DEVELOPER: frozenset({Role.CLUSTER_DEVELOPER}),
    Role.CLUSTER_MONITOR: frozenset({Role.CLUSTER_MONITOR}),
}
"""The roles that count as holding a role where a rule names a role rather than an action
("only a Cluster Admin"): the role itself and those above it (an Organization Admin administers
every cluster of its organization, the system administrator every cluster). Each holds every
action of the roles it counts for (``tests/unit/test_security.py`` checks it)."""

GRANTABLE: dict[ResourceType, frozenset[Role]] = {
    ResourceType.ORGANIZATION: frozenset(
        {
            Role.ORG_ADMIN,
            Role.CLUSTER_ADMIN,
            Role.CLUSTER_OPERATOR,
            Role.CLUSTER_DEVELOPER,
            Role.CLUSTER_MONITOR,
        }
    ),
    ResourceType.CLUSTER: frozenset(
        {Role.CLUSTER_ADMIN, Role.CLUSTER_OPERATOR, Role.CLUSTER_DEVELOPER, Role.CLUSTER_MONITOR}
    ),
}
"""Which roles can be granted at which scope. ``SYSTEM_ADMIN`` is nobody's to grant: it is the
installation administrator account's (``managed-backups up`` issues its key)."""

SERVICE_ACTIONS: dict[str, frozenset[Action]] = {
    "scheduler": frozenset({Action.TAKE_BACKUP}),
}
"""What each service principal may do, on every cluster. A service not listed sends nothing."""
