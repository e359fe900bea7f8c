"""Principals and what they may do (the "who may do what" rule).

A credential is an API key ``mbk_<key id>_<secret>``. The event store keeps only the SHA-256 of
the secret. Roles (what each may do: :mod:`managed_backups.shared.domain.roles`) are granted at
``*`` (the installation), ``org:<organization>`` or ``cluster:<id>`` scope; organization grants
take precedence over cluster grants.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from managed_backups.contracts.enums import Role
from managed_backups.shared.clock import Clock
from managed_backups.shared.domain.errors import Forbidden, HiddenCluster, NotAuthenticated
from managed_backups.shared.domain.ids import api_key_aggregate_id
from managed_backups.shared.domain.principal import ApiKey
from managed_backups.shared.domain.roles import ROLE_ACTIONS as ROLE_ACTIONS  # re-exported
from managed_backups.shared.domain.roles import Action as Action  # re-exported
from managed_backups.shared.eventstore import EventStore

KEY_PREFIX = "mbk"


@dataclass(frozen=True)
class Grant:
    role: Role
    scope: str


@dataclass(frozen=True)
class Principal:
    name: str
    key_id: str
    grants: tuple[Grant, ...]

    def can(
        self, action: Action, organization: str | None = None, cluster_id: str | None = None
    ) -> bool:
        def allowed(grants: list[Grant]) -> bool:
            return any(action in ROLE_ACTIONS[g.role] for g in grants)

        if allowed([g for g in self.grants if g.scope == "*"]):
            return True
        org_grants = [g for g in self.grants if organization and g.scope == f"org:{organization}"]
        if org_grants:
            # Organization grants take precedence over cluster grants.
            return allowed(org_grants)
        return allowed(
            [g for g in self.grants if cluster_id and g.scope == f"cluster:{cluster_id}"]
        )

    def require_on_cluster(self, action: Action, organization: str, cluster_id: str) -> None:
        """``require`` for an existing cluster: a caller who may not even see it is told it is
        not registered (as for a cluster that does not exist), one who may see it but not do
        ``action`` is refused with 403."""
        if not self.can(Action.VIEW_BACKUPS, organization, cluster_id) and not self.can(
            action, organization, cluster_id
        ):
            raise HiddenCluster(cluster_id)
        self.require(action, organization, cluster_id)

    def require(
        self, action: Action, organization: str | None = None, cluster_id: str | None = None
    ) -> None:
        if not self.can(action, organization, cluster_id):
            target = f"cluster {cluster_id}" if cluster_id else f"organization {organization}"
            raise Forbidden(f"principal {self.name} may not {action.value} on {target}")


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_api_key(
    store: EventStore, principal: str, grants: list[Grant], clock: Clock, by: str
) -> str:
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    key = ApiKey(
        key_id=key_id,
        principal=principal,
        grants=[{"role": g.role.value, "scope": g.scope} for g in grants],
        secret_sha256=hash_secret(secret),
        at=clock.now(),
        by=by,
    )
    store.save_all(key)
    return f"{KEY_PREFIX}_{key_id}_{secret}"


class Authenticator:
    """Checks credentials against the event store, caching verified keys for a few seconds."""

    def __init__(self, store: EventStore, ttl_seconds: float = 10.0) -> None:
        self.store = store
        self.ttl = ttl_seconds
        self._cache: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def authenticate(self, credential: str | None) -> Principal:
        if not credential:
            raise NotAuthenticated("no credential: send an API key")
        with self._lock:
            cached = self._cache.get(credential)
        if cached and time.monotonic() - cached[0] < self.ttl:
            return cached[1]
        parts = credential.split("_", 2)
        if len(parts) != 3 or parts[0] != KEY_PREFIX:
            raise NotAuthenticated("the credential is not a managed-backups API key")
        key = self.store.get_or_none(api_key_aggregate_id(parts[1]), ApiKey)
        if (
            key is None
            or key.revoked
            or not hmac.compare_digest(key.secret_sha256, hash_secret(parts[2]))
        ):
            raise NotAuthenticated("the API key is unknown, revoked or wrong")
        principal = Principal(
            name=key.principal,
            key_id=key.key_id,
            grants=tuple(Grant(Role(g["role"]), str(g["scope"])) for g in key.grants),
        )
        with self._lock:
            self._cache[credential] = (time.monotonic(), principal)
        return principal


def ensure_key_file(
    store: EventStore, path: Path, clock: Clock, principal: str = "admin"
) -> tuple[str, bool]:
    """A SYSTEM_ADMIN key kept in a file: the installation's administrator key (printed at first
    start) or the services' own key. Reused if the file holds a valid one, otherwise issued and
    written to ``path`` (mode 0600). Returns (key, created)."""
    if path.exists():
        key = path.read_text().strip()
        try:
            Authenticator(store).authenticate(key)
            return key, False
        except NotAuthenticated:
            pass
    key = new_api_key(store, principal, [Grant(Role.SYSTEM_ADMIN, "*")], clock, by="installation")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(key + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)
    return key, True
