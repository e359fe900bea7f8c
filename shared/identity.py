"""The identity application: organizations, service accounts, API keys and role grants.

Each method is one change, as the eventsourcing examples shape an application: check who may
(:mod:`managed_backups.shared.access`), load one aggregate, call one method, save, and return it
with the event-store position of what it recorded (the API waits for the views to reach it). The
HTTP API (``services/api/identity.py``) is its only caller: identity changes are not commands on
a topic, and every one is an event in the store (the audit trail) without secret or hash.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Generic, TypeVar
from uuid import UUID

from eventsourcing.domain import Aggregate

from managed_backups.contracts.enums import ResourceType, Role
from managed_backups.shared.access import (
    ClusterRef,
    HiddenOrganization,
    may_administer,
    may_grant,
    may_manage_access,
    registered_cluster,
)
from managed_backups.shared.clock import Clock
from managed_backups.shared.domain.errors import (
    BadValue,
    Conflict,
    Forbidden,
    Hidden,
    NotAuthenticated,
)
from managed_backups.shared.domain.identity import (
    ADMIN_ACCOUNT,
    ApiKey,
    Organization,
    ServiceAccount,
)
from managed_backups.shared.domain.principal import LegacyApiKey
from managed_backups.shared.eventstore import EventStore, IntegrityError
from managed_backups.shared.secrets import ApiKeySecrets
from managed_backups.shared.security import (
    INSTALLATION,
    KEY_PREFIX,
    Authenticator,
    Principal,
    parse_api_key,
    wall_clock,
)
from managed_backups.shared.sqldb import SqlDatabase

A = TypeVar("A", bound=Aggregate)
INSTALLATION_BY = "installation"


@dataclass(frozen=True)
class Recorded(Generic[A]):
    aggregate: A
    position: int | None


@dataclass(frozen=True)
class IssuedKey:
    key: ApiKey
    secret: str
    """The whole API key (``mbk_<id>_<secret>``): shown once, stored nowhere."""
    position: int | None


def new_key_id() -> str:
    """16 hex digits (version 0.1's keys had 12: the two never name the same stream)."""
    return secrets.token_hex(8)


class Identity:
    def __init__(self, store: EventStore, db: SqlDatabase, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self.secrets = ApiKeySecrets(db)
        self.authenticator = Authenticator(store, db)

    def _save(self, aggregate: A) -> Recorded[A]:
        try:
            return Recorded(aggregate, self.store.save_all(aggregate))
        except IntegrityError:
            raise Conflict("changed concurrently by another request; retry") from None

    # -- organizations ---------------------------------------------------------------------------

    def organization(self, organization_id: str) -> Organization | None:
        return self.store.get_or_none(Organization.create_id(organization_id), Organization)

    def create_organization(
        self, who: Principal, organization_id: str, name: str
    ) -> Recorded[Organization]:
        may_administer(who)
        if self.organization(organization_id) is not None:
            raise Conflict(f"organization {organization_id} already exists")
        return self._save(Organization(organization_id, name, self.clock.now(), who.name))

    def _existing_organization(self, who: Principal, organization: str) -> None:
        may_manage_access(who, organization)
        if self.organization(organization) is None:
            raise HiddenOrganization(organization)

    # -- service accounts ------------------------------------------------------------------------

    def create_service_account(
        self, who: Principal, organization: str, name: str, description: str
    ) -> Recorded[ServiceAccount]:
        self._existing_organization(who, organization)
        account_id = ServiceAccount.create_id(organization, name)
        if self.store.get_or_none(account_id, ServiceAccount) is not None:
            raise Conflict(f"organization {organization} already has a service account {name}")
        account = ServiceAccount(
            account_id, organization, name, description, self.clock.now(), who.name
        )
        return self._save(account)

    def managed_account(self, who: Principal, account_id: UUID) -> ServiceAccount:
        """The account, if ``who`` manages access in its organization (else as if unknown)."""
        account = self.store.get_or_none(account_id, ServiceAccount)
        if account is None:
            raise Hidden(f"service account {account_id} does not exist")
        try:
            may_manage_access(who, account.organization)
        except (HiddenOrganization, Forbidden):
            raise Hidden(f"service account {account_id} does not exist") from None
        return account

    # -- API keys --------------------------------------------------------------------------------

    def create_api_key(
        self, who: Principal, account_id: UUID, name: str, expires_at: datetime | None
    ) -> IssuedKey:
        account = self.managed_account(who, account_id)
        now = wall_clock()
        if expires_at is not None and expires_at <= now:
            raise BadValue(f"expires_at {expires_at.isoformat()} is not in the future")
        return self._issue(account, name, expires_at, who.name)

    def _issue(
        self, account: ServiceAccount, name: str, expires_at: datetime | None, by: str
    ) -> IssuedKey:
        key_id = new_key_id()
        secret = secrets.token_urlsafe(32)
        now = self.clock.now()
        # The hash first: an event without its hash is a key that cannot authenticate, a hash
        # without its event names nothing.
        self.secrets.put(key_id, secret, now.isoformat())
        key = ApiKey(key_id, account.account_id, account.organization, name, expires_at, now, by)
        recorded = self._save(key)
        return IssuedKey(key, f"{KEY_PREFIX}_{key_id}_{secret}", recorded.position)

    def revoke_api_key(self, who: Principal, key_id: str) -> Recorded[ApiKey | LegacyApiKey]:
        """Revoked at once: every request and every command still on a topic checks it. A key
        may revoke itself; otherwise whoever manages access in its organization (a key of
        version 0.1: the system administrator)."""
        unknown = Hidden(f"API key {key_id} does not exist")
        key: ApiKey | LegacyApiKey | None = self.store.get_or_none(
            ApiKey.create_id(key_id), ApiKey
        ) or self.store.get_or_none(LegacyApiKey.create_id(key_id), LegacyApiKey)
        if key is None:
            raise unknown
        if who.key_id != key_id:
            organization = key.organization if isinstance(key, ApiKey) else None
            try:
                may_manage_access(who, organization)
            except (HiddenOrganization, Forbidden):
                raise unknown from None
        key.revoke(self.clock.now(), who.name)
        return self._save(key)

    # -- role grants -----------------------------------------------------------------------------

    def _grant_target(
        self,
        who: Principal,
        account_id: UUID,
        role: Role,
        resource_type: ResourceType,
        resource_id: str,
    ) -> ServiceAccount:
        account = self.managed_account(who, account_id)
        cluster = None
        if resource_type is ResourceType.CLUSTER:
            found = registered_cluster(self.store, resource_id)
            cluster = ClusterRef.of(found) if found else None
        may_grant(who, role, resource_type, account.organization, cluster, resource_id)
        return account

    def grant(
        self,
        who: Principal,
        account_id: UUID,
        role: Role,
        resource_type: ResourceType,
        resource_id: str,
    ) -> Recorded[ServiceAccount]:
        account = self._grant_target(who, account_id, role, resource_type, resource_id)
        account.grant(role, resource_type.value, resource_id, self.clock.now(), who.name)
        return self._save(account)

    def remove_grant(
        self,
        who: Principal,
        account_id: UUID,
        role: Role,
        resource_type: ResourceType,
        resource_id: str,
    ) -> Recorded[ServiceAccount]:
        account = self._grant_target(who, account_id, role, resource_type, resource_id)
        account.remove_grant(role, resource_type.value, resource_id, self.clock.now(), who.name)
        return self._save(account)

    # -- the installation's administrator ----------------------------------------------------------

    def ensure_admin_key(self, path: Path) -> tuple[str, bool]:
        """The installation's administrator key, kept in ``path`` (mode 0600): reused if it
        holds a key that authenticates (one issued by version 0.1 too), otherwise a new key of
        the administrator account (created with the SYSTEM_ADMIN grant if missing). Returns
        (key, created)."""
        if path.exists():
            key = path.read_text().strip()
            try:
                self.authenticator.authenticate(key)
                return key, False
            except NotAuthenticated:
                pass
        account_id = ServiceAccount.create_id(None, ADMIN_ACCOUNT)
        account = self.store.get_or_none(account_id, ServiceAccount)
        if account is None:
            now = self.clock.now()
            account = ServiceAccount(
                account_id,
                None,
                ADMIN_ACCOUNT,
                "the installation's administrator",
                now,
                INSTALLATION_BY,
            )
            account.grant(Role.SYSTEM_ADMIN, INSTALLATION, "*", now, INSTALLATION_BY)
            try:
                self.store.save_all(account)
            except IntegrityError:  # another process created it first
                account = self.store.get_or_none(account_id, ServiceAccount)
                assert account is not None
        issued = self._issue(account, "administrator", None, INSTALLATION_BY)
        write_private(path, issued.secret + "\n")
        return issued.secret, True

    def retire_legacy_service_key(self, path: Path) -> bool:
        """Version 0.1's services sent their commands with a system-administrator key kept in
        ``<data-dir>/service-api-key``, in clear on the topics. The services now sign their
        commands (``shared/command_tokens.py``): that key is revoked and its file removed."""
        if not path.exists():
            return False
        try:
            key_id, _ = parse_api_key(path.read_text().strip())
        except NotAuthenticated:
            key_id = ""
        key = self.store.get_or_none(LegacyApiKey.create_id(key_id), LegacyApiKey)
        if key is not None and not key.revoked:
            key.revoke(self.clock.now(), INSTALLATION_BY)
            self.store.save_all(key)
        path.unlink(missing_ok=True)
        return True


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by this user only, replacing it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)
