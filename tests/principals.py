"""Principals for tests without the HTTP API: service accounts, their grants and keys made through
the identity application (as the API makes them), and commands signed for a key (as the API signs
them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from managed_backups.contracts.enums import ResourceType, Role
from managed_backups.shared.clock import Clock, WallClock
from managed_backups.shared.command_tokens import CommandSigner, CommandVerifier
from managed_backups.shared.eventstore import EventStore
from managed_backups.shared.identity import Identity
from managed_backups.shared.security import Authenticator, Grant, Principal, Principals
from managed_backups.shared.sqldb import SqlDatabase

INSTALLER = Principal("test-installer", "key:none", (Grant(Role.SYSTEM_ADMIN, "*"),))
"""Acts as the system administrator towards :class:`Identity` (it only checks grants)."""


class Keys:
    """Keys, signing and verification over one store and one shared database."""

    def __init__(
        self, store: EventStore, db: SqlDatabase, keys_dir: Path, clock: Clock | None = None
    ) -> None:
        self.identity = Identity(store, db, clock or WallClock())
        self.authenticator = Authenticator(store, db)
        self.signer = CommandSigner.load_or_create("api", keys_dir, db)
        self.verifier = CommandVerifier(db, Principals(store))

    def key(self, organization: str, name: str, *grants: tuple[Role, ResourceType, str]) -> str:
        """A new API key of a new account ``name`` of ``organization`` holding ``grants``."""
        if self.identity.organization(organization) is None:
            self.identity.create_organization(INSTALLER, organization, organization)
        account = self.identity.create_service_account(INSTALLER, organization, name, "").aggregate
        for role, resource_type, resource_id in grants:
            self.identity.grant(INSTALLER, account.account_id, role, resource_type, resource_id)
        return self.identity.create_api_key(INSTALLER, account.account_id, name, None).secret

    def admin_key(self, path: Path) -> str:
        return self.identity.ensure_admin_key(path)[0]

    def signed(self, key: str, topic: str, command: dict[str, Any]) -> dict[str, Any]:
        principal = self.authenticator.authenticate(key)
        return self.signer.signed(principal.subject, topic, command)
