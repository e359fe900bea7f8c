"""Principals: who is calling, and what their grants let them do.

A caller is a :class:`Principal`: an API key's service account with its role grants, or one of
the services (:data:`~managed_backups.shared.domain.roles.SERVICE_ACTIONS`). Roles (what each
may do: :mod:`managed_backups.shared.domain.roles`) are granted at ``*`` (the installation),
``org:<organization>`` or ``cluster:<id>`` scope; organization grants take precedence over
cluster grants.

- :class:`Authenticator` turns an API key (``mbk_<key id>_<secret>``, the HTTP API's bearer
  token) into its principal: the secret is checked against its salted hash
  (:class:`~managed_backups.shared.secrets.ApiKeySecrets`; a key of version 0.1 against the
  SHA-256 its event carries).
- :class:`Principals` finds the principal a command token names (``key:<key id>`` or
  ``service:<name>``) when the command is handled, by the services.

Both read the key, its account and its grants from the event store on every call, and refuse a
revoked or expired key: nothing caches a principal, so a revocation holds on the next request and
for every command still waiting on a topic, on every instance.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

from managed_backups.contracts.enums import ResourceType, Role
from managed_backups.shared.domain.errors import Forbidden, NotAuthenticated
from managed_backups.shared.domain.identity import ApiKey, ServiceAccount
from managed_backups.shared.domain.principal import LegacyApiKey
from managed_backups.shared.domain.roles import ROLE_ACTIONS as ROLE_ACTIONS  # re-exported
from managed_backups.shared.domain.roles import ROLES_AT_LEAST, SERVICE_ACTIONS
from managed_backups.shared.domain.roles import Action as Action  # re-exported
from managed_backups.shared.eventstore import EventStore
from managed_backups.shared.secrets import ApiKeySecrets
from managed_backups.shared.sqldb import SqlDatabase

KEY_PREFIX = "mbk"
KEY_SUBJECT = "key:"
SERVICE_SUBJECT = "service:"
INSTALLATION = "INSTALLATION"
"""The resource type of the administrator account's SYSTEM_ADMIN grant (scope ``*``)."""


def wall_clock() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Grant:
    role: Role
    scope: str

    @classmethod
    def of(cls, role: str, resource_type: str, resource_id: str) -> Grant:
        """A recorded grant (role, resource type, resource id) as a scope."""
        if resource_type == ResourceType.ORGANIZATION:
            return cls(Role(role), f"org:{resource_id}")
        if resource_type == ResourceType.CLUSTER:
            return cls(Role(role), f"cluster:{resource_id}")
        return cls(Role(role), "*")


@dataclass(frozen=True)
class Principal:
    name: str
    """How the audit trail names it (``by``), and the owner of its command ids."""
    subject: str
    """What a command token names: ``key:<key id>`` or ``service:<name>``."""
    grants: tuple[Grant, ...] = ()
    account_id: UUID | None = None
    service_actions: frozenset[Action] = frozenset()
    """A service's actions, on every cluster (services hold no role)."""

    @property
    def key_id(self) -> str | None:
        return self.subject.removeprefix(KEY_SUBJECT) if self.is_key else None

    @property
    def is_key(self) -> bool:
        return self.subject.startswith(KEY_SUBJECT)

    def grants_on(self, organization: str | None, cluster_id: str | None) -> list[Grant]:
        """The grants that decide here: the installation's, then the organization's or, if the
        principal holds none there, the cluster's (organization grants take precedence)."""
        installation = [g for g in self.grants if g.scope == "*"]
        org_grants = [g for g in self.grants if organization and g.scope == f"org:{organization}"]
        if org_grants:
            return installation + org_grants
        return installation + [
            g for g in self.grants if cluster_id and g.scope == f"cluster:{cluster_id}"
        ]

    def can(
        self, action: Action, organization: str | None = None, cluster_id: str | None = None
    ) -> bool:
        if action in self.service_actions:
            return True
        return any(action in ROLE_ACTIONS[g.role] for g in self.grants_on(organization, cluster_id))

    def holds_role(
        self, role: Role, organization: str | None = None, cluster_id: str | None = None
    ) -> bool:
        """Whether a grant that decides here is ``role`` or a role above it
        (:data:`~managed_backups.shared.domain.roles.ROLES_AT_LEAST`). Services hold no role."""
        return any(g.role in ROLES_AT_LEAST[role] for g in self.grants_on(organization, cluster_id))

    def require(
        self, action: Action, organization: str | None = None, cluster_id: str | None = None
    ) -> None:
        if not self.can(action, organization, cluster_id):
            target = (
                f"cluster {cluster_id}"
                if cluster_id
                else f"organization {organization}"
                if organization
                else "the installation"
            )
            raise Forbidden(f"principal {self.name} may not {action.value} on {target}")


def service_principal(service: str) -> Principal:
    """The principal a service acts as: only its own actions (none for a service not listed)."""
    return Principal(
        name=f"service:{service}",
        subject=f"{SERVICE_SUBJECT}{service}",
        service_actions=SERVICE_ACTIONS.get(service, frozenset()),
    )


REFUSED_KEY = "the API key is unknown, revoked, expired or wrong"


class Principals:
    """The principal behind a key id or a command token's subject, as the store says now."""

    def __init__(self, store: EventStore, now: Callable[[], datetime] = wall_clock) -> None:
        self.store = store
        self.now = now

    def of_subject(self, subject: str) -> Principal:
        if subject.startswith(SERVICE_SUBJECT):
            service = subject.removeprefix(SERVICE_SUBJECT)
            if service not in SERVICE_ACTIONS:
                raise NotAuthenticated(f"{subject} is not a service that sends commands")
            return service_principal(service)
        if subject.startswith(KEY_SUBJECT):
            return self.of_key(subject.removeprefix(KEY_SUBJECT))
        raise NotAuthenticated(f"{subject!r} names no principal")

    def of_key(self, key_id: str) -> Principal:
        key = self.store.get_or_none(ApiKey.create_id(key_id), ApiKey)
        if key is not None:
            if not key.is_usable(self.now()):
                raise NotAuthenticated(REFUSED_KEY)
            account = self.store.get_or_none(key.account_id, ServiceAccount)
            if account is None:  # a key is only ever created for an existing account
                raise NotAuthenticated(REFUSED_KEY)
            return Principal(
                name=account.principal_name,
                subject=f"{KEY_SUBJECT}{key_id}",
                grants=tuple(Grant.of(*grant) for grant in account.grants),
                account_id=account.account_id,
            )
        legacy = self.store.get_or_none(LegacyApiKey.create_id(key_id), LegacyApiKey)
        if legacy is None or legacy.revoked:
            raise NotAuthenticated(REFUSED_KEY)
        return Principal(
            name=legacy.principal,
            subject=f"{KEY_SUBJECT}{key_id}",
            grants=tuple(Grant(Role(g["role"]), str(g["scope"])) for g in legacy.grants),
        )


def parse_api_key(credential: str) -> tuple[str, str]:
    """(key id, secret) of ``mbk_<key id>_<secret>``."""
    parts = credential.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or not parts[2]:
        raise NotAuthenticated("the credential is not a managed-backups API key")
    return parts[1], parts[2]


_API_KEY_SHAPE = re.compile(rf"{KEY_PREFIX}_[0-9A-Za-z]+_[0-9A-Za-z_-]+")


def redact_api_keys(text: str) -> str:
    """``text`` with every API key in it replaced (for a dead letter of a message that could
    not be read, whatever it carries)."""
    return _API_KEY_SHAPE.sub(f"{KEY_PREFIX}_<redacted>", text)


def legacy_secret_sha256(secret: str) -> str:
    """How version 0.1 recorded a key's secret (read only, to authenticate its keys)."""
    return hashlib.sha256(secret.encode()).hexdigest()


class Authenticator:
    """API key → principal, checked against the store and the hash table on every call."""

    def __init__(
        self, store: EventStore, db: SqlDatabase, now: Callable[[], datetime] = wall_clock
    ) -> None:
        self.store = store
        self.secrets = ApiKeySecrets(db)
        self.principals = Principals(store, now)

    def authenticate(self, credential: str | None) -> Principal:
        if not credential:
            raise NotAuthenticated("no credential: send an API key")
        key_id, secret = parse_api_key(credential)
        if not self._secret_matches(key_id, secret):
            raise NotAuthenticated(REFUSED_KEY)
        return self.principals.of_key(key_id)

    def _secret_matches(self, key_id: str, secret: str) -> bool:
        if self.secrets.matches(key_id, secret):
            return True
        legacy = self.store.get_or_none(LegacyApiKey.create_id(key_id), LegacyApiKey)
        return legacy is not None and hmac.compare_digest(
            legacy.secret_sha256, legacy_secret_sha256(secret)
        )
