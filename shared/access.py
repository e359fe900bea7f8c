"""Who may do this, here: the access rules every entry point applies (HTTP routes, every command
handler, the identity endpoints).

- **One rule for clusters** (:func:`require_on_cluster`): a caller who may neither see a cluster
  nor do the action on it is told it is not registered, word for word what a cluster that does
  not exist gets (404), so nobody learns that another tenant's cluster exists; a caller who may
  see it but not do the action is refused with 403; a deleted cluster is 404 "was deleted" to
  those who may see it. Such refusals are not audited (``audited = False``): the command
  processor and the API write them to the ``managed_backups.security`` log, never into the
  cluster's audit trail. Command handlers reach it through :func:`load_cluster`, the API's
  routes through ``services/api/dependencies.py``.
- **Identity** (:func:`may_manage_access`, :func:`may_grant`): an Organization Admin manages
  service accounts, keys and grants in their organization, the system administrator
  everywhere; nobody grants a role whose actions they do not hold where they grant it.
  Organizations and accounts outside the caller's reach look as if they did not exist.
"""

from __future__ import annotations

from dataclasses import dataclass

from managed_backups.contracts.enums import ResourceType, Role
from managed_backups.shared.domain.cluster import Cluster
from managed_backups.shared.domain.errors import (
    BadValue,
    Forbidden,
    Hidden,
    HiddenCluster,
    NotFound,
    WrongRecordType,
)
from managed_backups.shared.domain.roles import GRANTABLE, ROLE_ACTIONS, Action
from managed_backups.shared.eventstore import EventStore
from managed_backups.shared.security import Principal


@dataclass(frozen=True)
class ClusterRef:
    """What the access rule needs to know of a cluster, wherever it was read from (the
    ``Cluster`` aggregate for commands, the clusters view for queries)."""

    cluster_id: str
    organization: str
    deleted: bool

    @classmethod
    def of(cls, cluster: Cluster) -> ClusterRef:
        return cls(cluster.cluster_id, cluster.organization, cluster.deleted)


def require_on_cluster(
    who: Principal,
    action: Action,
    cluster_id: str,
    cluster: ClusterRef | None,
    live: bool = True,
) -> ClusterRef:
    """The one access rule for a cluster (``cluster`` is None when it is not registered)."""
    if cluster is None or not (
        who.can(Action.VIEW_BACKUPS, cluster.organization, cluster_id)
        or who.can(action, cluster.organization, cluster_id)
    ):
        raise HiddenCluster(cluster_id)
    if live and cluster.deleted:
        raise NotFound(f"cluster {cluster_id} was deleted")
    who.require(action, cluster.organization, cluster_id)
    return cluster


def registered_cluster(store: EventStore, cluster_id: str) -> Cluster | None:
    """The cluster aggregate of ``cluster_id``, or None when it is not registered. A record of
    another kind at its id (placed there by a version that let a client choose stream ids) is
    no cluster: the caller is answered as for one that does not exist, never told what is there."""
    try:
        return store.get_or_none(Cluster.create_id(cluster_id), Cluster)
    except WrongRecordType:
        return None


def load_cluster(
    store: EventStore, who: Principal, action: Action, cluster_id: str, live: bool = True
) -> Cluster:
    """The cluster aggregate ``who`` may ``action`` on (:func:`require_on_cluster`): what every
    command handler loads its cluster with."""
    cluster = registered_cluster(store, cluster_id)
    require_on_cluster(
        who, action, cluster_id, ClusterRef.of(cluster) if cluster else None, live=live
    )
    assert cluster is not None
    return cluster


class HiddenOrganization(Hidden):
    """An organization the caller may not manage: answered as one that does not exist."""

    def __init__(self, organization: str) -> None:
        super().__init__(f"organization {organization} does not exist")


def may_administer(who: Principal) -> None:
    """Installation-wide operations (organizations, metrics, the simulated clock)."""
    who.require(Action.ADMINISTER)


def may_manage_access(who: Principal, organization: str | None) -> None:
    """Service accounts, API keys and grants of ``organization`` (None: the installation's own
    accounts, the system administrator's alone)."""
    if organization is None:
        if not who.can(Action.ADMINISTER):
            raise Forbidden(f"principal {who.name} may not manage the installation's accounts")
        return
    if not who.can(Action.MANAGE_ACCESS, organization):
        raise HiddenOrganization(organization)


def sees_organization(who: Principal, organization: str) -> bool:
    """Whether ``who`` may know the organization exists: it manages it, or holds a grant in it."""
    return who.can(Action.MANAGE_ACCESS, organization) or any(
        g.scope == f"org:{organization}" for g in who.grants
    )


def may_grant(
    who: Principal,
    role: Role,
    resource_type: ResourceType,
    account_organization: str | None,
    cluster: ClusterRef | None,
    resource_id: str,
) -> None:
    """Granting (or removing) ``role`` on a resource to an account of ``account_organization``:

    - the role must be grantable at that scope (:data:`~.roles.GRANTABLE`);
    - the resource is the account's own organization, or one of its clusters;
    - the granter manages access in that organization, and holds every action of the role
      there: nobody grants more than they hold."""
    if role not in GRANTABLE.get(resource_type, frozenset()):
        allowed = ", ".join(sorted(r.value for r in GRANTABLE.get(resource_type, frozenset())))
        raise BadValue(
            f"{role.value} cannot be granted on a {resource_type.value.lower()}; one of: {allowed}"
        )
    if account_organization is None:
        raise BadValue("the installation's own accounts hold no organization or cluster roles")
    may_manage_access(who, account_organization)
    if resource_type is ResourceType.ORGANIZATION:
        if resource_id != account_organization:
            raise BadValue(
                f"an account of organization {account_organization} is granted roles in "
                f"{account_organization} only, not in {resource_id}"
            )
        cluster_id = None
    else:
        cluster = require_on_cluster(who, Action.VIEW_BACKUPS, resource_id, cluster, live=False)
        if cluster.organization != account_organization:
            raise BadValue(
                f"cluster {resource_id} belongs to organization {cluster.organization}, not to "
                f"the account's organization {account_organization}"
            )
        cluster_id = resource_id
    missing = [
        a.value for a in ROLE_ACTIONS[role] if not who.can(a, account_organization, cluster_id)
    ]
    if missing:
        raise Forbidden(
            f"principal {who.name} may not grant {role.value}: it does not hold "
            + ", ".join(sorted(missing))
        )
