"""Rule "who may do what": roles, scopes, and organization grants taking precedence."""

from __future__ import annotations

import pytest

from managed_backups.contracts.enums import Role
from managed_backups.shared.domain.errors import Forbidden
from managed_backups.shared.domain.roles import ROLE_ACTIONS, ROLES_AT_LEAST
from managed_backups.shared.security import Action, Grant, Principal


def principal(*grants: tuple[Role, str]) -> Principal:
    return Principal("p", "k", tuple(Grant(role, scope) for role, scope in grants))


@pytest.mark.parametrize(
    ("role", "view", "change", "restore"),
    [
        (Role.ORG_ADMIN, True, True, True),
        (Role.CLUSTER_ADMIN, True, True, True),
        (Role.CLUSTER_OPERATOR, True, False, True),
        (Role.CLUSTER_DEVELOPER, False, False, False),
        (Role.CLUSTER_MONITOR, False, False, False),
    ],
)
def test_the_role_table(role: Role, view: bool, change: bool, restore: bool) -> None:
    who = principal((role, "cluster:c1"))
    assert who.can(Action.VIEW_BACKUPS, "acme", "c1") is view
    assert who.can(Action.CHANGE_BACKUP_SETTINGS, "acme", "c1") is change
    assert who.can(Action.RESTORE, "acme", "c1") is restore
    assert not who.can(Action.VIEW_BACKUPS, "acme", "c2")  # another cluster


def test_scopes_and_precedence() -> None:
    org_admin = principal((Role.ORG_ADMIN, "org:acme"))
    assert org_admin.can(Action.MANAGE_CLUSTERS, "acme", "any")
    assert not org_admin.can(Action.VIEW_BACKUPS, "other", "x")
    # An organization grant decides for its organization, even against a broader cluster grant.
    monitor_in_org = principal(
        (Role.CLUSTER_MONITOR, "org:acme"), (Role.CLUSTER_ADMIN, "cluster:c1")
    )
    assert not monitor_in_org.can(Action.VIEW_BACKUPS, "acme", "c1")
    system = principal((Role.SYSTEM_ADMIN, "*"))
    assert system.can(Action.ADMINISTER) and system.can(Action.RESTORE, "any", "any")
    with pytest.raises(Forbidden, match="may not change backup settings on cluster c1"):
        principal((Role.CLUSTER_OPERATOR, "cluster:c1")).require(
            Action.CHANGE_BACKUP_SETTINGS, "acme", "c1"
        )


def test_roles_held_by_grant_scope_and_rank() -> None:
    """A rule that names a role ("only a Cluster Admin") holds for that role and those above it,
    where it is granted, with the organization's grants deciding over a cluster's."""
    admin = principal((Role.CLUSTER_ADMIN, "cluster:c1"))
    assert admin.holds_role(Role.CLUSTER_ADMIN, "acme", "c1")
    assert not admin.holds_role(Role.CLUSTER_ADMIN, "acme", "c2")
    assert not admin.holds_role(Role.ORG_ADMIN, "acme", "c1")
    assert not principal((Role.CLUSTER_OPERATOR, "cluster:c1")).holds_role(
        Role.CLUSTER_ADMIN, "acme", "c1"
    )
    assert principal((Role.ORG_ADMIN, "org:acme")).holds_role(Role.CLUSTER_ADMIN, "acme", "c1")
    assert not principal((Role.ORG_ADMIN, "org:acme")).holds_role(Role.CLUSTER_ADMIN, "other", "x")
    assert principal((Role.SYSTEM_ADMIN, "*")).holds_role(Role.CLUSTER_ADMIN, "any", "any")
    operator_in_org = principal(
        (Role.CLUSTER_OPERATOR, "org:acme"), (Role.CLUSTER_ADMIN, "cluster:c1")
    )
    assert not operator_in_org.holds_role(Role.CLUSTER_ADMIN, "acme", "c1")
    service = Principal("service:scheduler", "service:scheduler", (), None, frozenset(Action))
    assert not service.holds_role(Role.CLUSTER_ADMIN, "acme", "c1")


@pytest.mark.parametrize("role", list(Role))
def test_a_role_above_another_holds_all_its_actions(role: Role) -> None:
    for above in ROLES_AT_LEAST[role]:
        assert ROLE_ACTIONS[role] <= ROLE_ACTIONS[above], (role, above)
