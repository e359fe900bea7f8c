"""Identity: organizations, service accounts with their role grants, and API keys.

Every change is an event in the event store (the audit trail), and no event carries a secret or
a hash of one: an API key's secret is shown once, at creation, and only its salted HMAC is kept,
in a table of its own beside the secret store (:class:`managed_backups.shared.secrets.ApiKeySecrets`).

- An **organization** owns clusters and service accounts. Its id is the ``organization`` a
  cluster is registered with.
- A **service account** (a non-person principal, as in CockroachDB Cloud) belongs to one
  organization and holds role grants, each at the organization's or at one cluster's scope.
  The installation's administrator account (``ADMIN_ACCOUNT``) belongs to no organization and
  holds the system administrator role.
- An **API key** authenticates as one service account; it may expire, and it can be revoked.
  Keys issued by version 0.1 are :class:`~managed_backups.shared.domain.principal.LegacyApiKey`.

Who may change what is :mod:`managed_backups.shared.access`; this module only records it.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from managed_backups.contracts.enums import Role
from managed_backups.shared.domain.errors import Conflict, NotFound
from managed_backups.shared.domain.ids import NAMESPACE
from managed_backups.shared.domain.ids import service_account_id as service_account_id

ADMIN_ACCOUNT = "admin"
"""The name of the installation's administrator account (no organization)."""


def organization_aggregate_id(organization_id: str) -> UUID:
    return uuid5(NAMESPACE, f"organization:{organization_id}")


def api_key_stream_id(key_id: str) -> UUID:
    return uuid5(NAMESPACE, f"service-account-key:{key_id}")


class Organization(Aggregate):
    @staticmethod
    def create_id(organization_id: str) -> UUID:
        return organization_aggregate_id(organization_id)

    class OrganizationCreated(Aggregate.Created):
        organization_id: str
        name: str
        at: datetime
        by: str

    @event(OrganizationCreated)
    def __init__(self, organization_id: str, name: str, at: datetime, by: str) -> None:
        self.organization_id = organization_id
        self.name = name


class ServiceAccount(Aggregate):
    """A principal that is not a person. Its grants live on its own stream, so loading one
    aggregate tells what it may do."""

    @staticmethod
    def create_id(organization: str | None, name: str) -> UUID:
        return service_account_id(organization, name)

    class ServiceAccountCreated(Aggregate.Created):
        account_id: UUID
        organization: str | None
        name: str
        description: str
        at: datetime
        by: str

    @event(ServiceAccountCreated)
    def __init__(
        self,
        account_id: UUID,
        organization: str | None,
        name: str,
        description: str,
        at: datetime,
        by: str,
    ) -> None:
        self.account_id = account_id
        self.organization = organization
        self.name = name
        self.description = description
        self.grants: list[tuple[str, str, str]] = []
        """(role, resource type, resource id), in the order they were granted."""

    @property
    def principal_name(self) -> str:
        """How the account is named in the audit trail (``by``): unique in the installation."""
        return f"{self.organization}/{self.name}" if self.organization else self.name

    def holds(self, role: Role, resource_type: str, resource_id: str) -> bool:
        return (role.value, resource_type, resource_id) in self.grants

    def grant(
        self, role: Role, resource_type: str, resource_id: str, at: datetime, by: str
    ) -> None:
        if self.holds(role, resource_type, resource_id):
            raise Conflict(
                f"{self.principal_name} already holds {role.value} on {resource_type} {resource_id}"
            )
        self._granted(
            account_id=self.account_id,
            role=role.value,
            resource_type=resource_type,
            resource_id=resource_id,
            at=at,
            by=by,
        )

    class RoleGranted(Aggregate.Event):
        account_id: UUID
        role: str
        resource_type: str
        resource_id: str
        at: datetime
        by: str

    @event(RoleGranted)
    def _granted(
        self,
        account_id: UUID,
        role: str,
        resource_type: str,
        resource_id: str,
        at: datetime,
        by: str,
    ) -> None:
        self.grants.append((role, resource_type, resource_id))

    def remove_grant(
        self, role: Role, resource_type: str, resource_id: str, at: datetime, by: str
    ) -> None:
        if not self.holds(role, resource_type, resource_id):
            raise NotFound(
                f"{self.principal_name} holds no {role.value} on {resource_type} {resource_id}"
            )
        self._removed(
            account_id=self.account_id,
            role=role.value,
            resource_type=resource_type,
            resource_id=resource_id,
            at=at,
            by=by,
        )

    class RoleGrantRemoved(Aggregate.Event):
        account_id: UUID
        role: str
        resource_type: str
        resource_id: str
        at: datetime
        by: str

    @event(RoleGrantRemoved)
    def _removed(
        self,
        account_id: UUID,
        role: str,
        resource_type: str,
        resource_id: str,
        at: datetime,
        by: str,
    ) -> None:
        self.grants.remove((role, resource_type, resource_id))


class ApiKey(Aggregate):
    """One key of a service account. The event names the key, never its secret or a hash."""

    @staticmethod
    def create_id(key_id: str) -> UUID:
        return api_key_stream_id(key_id)

    class ApiKeyCreated(Aggregate.Created):
        key_id: str
        account_id: UUID
        organization: str | None
        name: str
        expires_at: datetime | None
        at: datetime
        by: str

    @event(ApiKeyCreated)
    def __init__(
        self,
        key_id: str,
        account_id: UUID,
        organization: str | None,
        name: str,
        expires_at: datetime | None,
        at: datetime,
        by: str,
    ) -> None:
        self.key_id = key_id
        self.account_id = account_id
        self.organization = organization
        self.name = name
        self.expires_at = expires_at
        self.revoked = False

    def is_usable(self, now: datetime) -> bool:
        """Neither revoked nor expired at ``now`` (the rule "a revoked or expired key is refused
        everywhere at once" reads this, and nothing caches it)."""
        return not self.revoked and (self.expires_at is None or now < self.expires_at)

    def revoke(self, at: datetime, by: str) -> None:
        if self.revoked:
            raise Conflict(f"API key {self.key_id} is already revoked")
        self._revoked(key_id=self.key_id, at=at, by=by)

    class ApiKeyRevoked(Aggregate.Event):
        key_id: str
        at: datetime
        by: str

    @event(ApiKeyRevoked)
    def _revoked(self, key_id: str, at: datetime, by: str) -> None:
        self.revoked = True
