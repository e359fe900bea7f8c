"""Identity rules on an in-memory store: who may create accounts and keys and grant roles, that
nobody grants more than they hold, expiry, hashing, and what the events carry."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from managed_backups.contracts.enums import ResourceType, Role
from managed_backups.shared.access import may_grant
from managed_backups.shared.domain.errors import BadValue, Forbidden, NotAuthenticated, Refused
from managed_backups.shared.domain.roles import Action
from managed_backups.shared.eventstore import EventStore
from managed_backups.shared.secrets import ApiKeySecrets
from managed_backups.shared.security import Authenticator, Grant, Principal
from managed_backups.shared.sqldb import SqlDatabase
from tests.factories import new_cluster
from tests.principals import INSTALLER, Keys


@pytest.fixture
def store() -> Iterator[EventStore]:
    store = EventStore(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    yield store
    store.close()


@pytest.fixture
def db(tmp_path: Path) -> SqlDatabase:
    return SqlDatabase(f"sqlite:///{tmp_path / 'shared.sqlite'}")


@pytest.fixture
def keys(store: EventStore, db: SqlDatabase, tmp_path: Path) -> Keys:
    store.save_all(new_cluster("a1", organization="acme"), new_cluster("g1", organization="globex"))
    return Keys(store, db, tmp_path / "keys")


def refused(call: object, *args: object) -> Refused:
    assert callable(call)
    with pytest.raises(Refused) as info:
        call(*args)
    return info.value


def test_an_organization_admin_manages_its_own_organization_only(keys: Keys) -> None:
    identity = keys.identity
    admin = keys.authenticator.authenticate(
        keys.key("acme", "boss", (Role.ORG_ADMIN, ResourceType.ORGANIZATION, "acme"))
    )
    keys.key("globex", "other", (Role.CLUSTER_MONITOR, ResourceType.ORGANIZATION, "globex"))
    account = identity.create_service_account(admin, "acme", "ci", "builds").aggregate
    assert account.principal_name == "acme/ci"
    hidden = refused(identity.create_service_account, admin, "globex", "ci", "")
    unknown = refused(identity.create_service_account, admin, "nowhere", "ci", "")
    assert (hidden.code, hidden.reason) == (404, "organization globex does not exist")
    assert (unknown.code, unknown.reason) == (404, "organization nowhere does not exist")
    grant = identity.grant
    grant(admin, account.account_id, Role.CLUSTER_OPERATOR, ResourceType.CLUSTER, "a1")
    grant(admin, account.account_id, Role.ORG_ADMIN, ResourceType.ORGANIZATION, "acme")
    # Another organization's cluster is answered as one that is not registered.
    other = refused(
        grant, admin, account.account_id, Role.CLUSTER_ADMIN, ResourceType.CLUSTER, "g1"
    )
    assert (other.code, other.reason) == (404, "cluster g1 is not registered")
    assert (
        refused(
            grant, admin, account.account_id, Role.SYSTEM_ADMIN, ResourceType.ORGANIZATION, "acme"
        )
    ).code == 400
    assert (
        refused(grant, admin, account.account_id, Role.ORG_ADMIN, ResourceType.CLUSTER, "a1")
    ).code == 400
    assert (
        refused(
            grant,
            admin,
            account.account_id,
            Role.CLUSTER_ADMIN,
            ResourceType.ORGANIZATION,
            "globex",
        )
    ).code == 400
    # A cluster role manages nothing: the organization is hidden from it.
    operator = keys.authenticator.authenticate(
        keys.key("acme", "op", (Role.CLUSTER_ADMIN, ResourceType.CLUSTER, "a1"))
    )
    assert refused(identity.create_service_account, operator, "acme", "x", "").code == 404
    no_grant = refused(
        grant, operator, account.account_id, Role.CLUSTER_MONITOR, ResourceType.CLUSTER, "a1"
    )
    assert (no_grant.code, no_grant.reason) == (
        404,
        f"service account {account.account_id} does not exist",
    )
    # Only the system administrator creates organizations.
    assert refused(identity.create_organization, admin, "new", "New").code == 403


def test_nobody_grants_more_than_they_hold() -> None:
    # Whoever may manage access but lacks a role's actions where it grants it is refused: no
    # role has that shape today (organization admins hold every grantable action in their
    # organization), so a principal is made up for it.
    lacking = Principal("half", "key:x", service_actions=frozenset({Action.MANAGE_ACCESS}))
    with pytest.raises(Forbidden, match="does not hold restore, view backups"):
        may_grant(lacking, Role.CLUSTER_OPERATOR, ResourceType.ORGANIZATION, "acme", None, "acme")
    may_grant(lacking, Role.CLUSTER_MONITOR, ResourceType.ORGANIZATION, "acme", None, "acme")
    with pytest.raises(BadValue, match="installation's own accounts"):
        may_grant(INSTALLER, Role.CLUSTER_MONITOR, ResourceType.ORGANIZATION, None, None, "acme")


def test_grants_take_effect_and_end_at_once(keys: Keys) -> None:
    key = keys.key("acme", "ci", (Role.CLUSTER_OPERATOR, ResourceType.CLUSTER, "a1"))
    who = keys.authenticator.authenticate(key)
    assert who.can(Action.RESTORE, "acme", "a1") and not who.can(Action.RESTORE, "acme", "a2")
    assert who.account_id is not None
    keys.identity.grant(
        INSTALLER, who.account_id, Role.CLUSTER_ADMIN, ResourceType.ORGANIZATION, "acme"
    )
    assert keys.authenticator.authenticate(key).can(Action.CHANGE_BACKUP_SETTINGS, "acme", "a2")
    keys.identity.remove_grant(
        INSTALLER, who.account_id, Role.CLUSTER_ADMIN, ResourceType.ORGANIZATION, "acme"
    )
    assert not keys.authenticator.authenticate(key).can(Action.VIEW_BACKUPS, "acme", "a2")


def test_an_expired_key_is_refused_everywhere(
    keys: Keys, store: EventStore, db: SqlDatabase
) -> None:
    identity = keys.identity
    identity.create_organization(INSTALLER, "acme", "Acme")
    account = identity.create_service_account(INSTALLER, "acme", "temp", "").aggregate
    identity.grant(INSTALLER, account.account_id, Role.ORG_ADMIN, ResourceType.ORGANIZATION, "acme")
    expires = datetime.now(UTC) + timedelta(hours=1)
    key = identity.create_api_key(INSTALLER, account.account_id, "temp", expires).secret
    command = {"type": "DeleteCluster", "command_id": str(uuid4()), "cluster_id": "a1"}
    signed = keys.signed(key, "managed-backups.cluster-commands", command)
    assert keys.authenticator.authenticate(key).name == "acme/temp"
    later = Authenticator(store, db, now=lambda: expires)
    with pytest.raises(NotAuthenticated, match="expired"):
        later.authenticate(key)
    # A command it signed before is refused once handled after the expiry.
    keys.verifier.principals.now = lambda: expires
    with pytest.raises(NotAuthenticated, match="expired"):
        keys.verifier.verify(
            "managed-backups.cluster-commands", signed, UUID(str(command["command_id"]))
        )
    past = refused(identity.create_api_key, INSTALLER, account.account_id, "old", datetime.now(UTC))
    assert past.code == 400 and "not in the future" in past.reason


def test_keys_are_stored_as_salted_hashes_and_named_by_no_event(
    keys: Keys, store: EventStore, db: SqlDatabase
) -> None:
    first = keys.key("acme", "one")
    second = keys.key("acme", "two")
    rows = dict(db.query("SELECT key_id, hash FROM mb_api_key_secrets"))
    for key in (first, second):
        key_id, secret = key.split("_", 2)[1:]
        stored = rows[key_id]
        assert stored.startswith("hmac-sha256$") and secret not in stored
        assert ApiKeySecrets(db).matches(key_id, secret)
        assert not ApiKeySecrets(db).matches(key_id, secret[:-1] + "x")
    # The same secret hashes differently each time (a salt per key).
    assert ApiKeySecrets.hashed("s") != ApiKeySecrets.hashed("s")
    stored_events = " ".join(
        str(store.domain_event(n).__dict__) for n in store.notifications(0, 1000)
    )
    for key in (first, second):
        key_id, secret = key.split("_", 2)[1:]
        assert key_id in stored_events and secret not in stored_events
        assert rows[key_id].split("$")[2] not in stored_events


def test_the_administrator_key_file(keys: Keys, tmp_path: Path) -> None:
    path = tmp_path / "admin-api-key"
    key, created = keys.identity.ensure_admin_key(path)
    assert created and path.stat().st_mode & 0o777 == 0o600
    assert keys.identity.ensure_admin_key(path) == (key, False)
    admin = keys.authenticator.authenticate(key)
    assert admin.name == "admin" and admin.can(Action.ADMINISTER)
    keys.identity.revoke_api_key(admin, str(admin.key_id))  # a key may revoke itself
    again, created = keys.identity.ensure_admin_key(path)
    assert created and again != key
    assert keys.authenticator.authenticate(again).grants == (Grant(Role.SYSTEM_ADMIN, "*"),)
