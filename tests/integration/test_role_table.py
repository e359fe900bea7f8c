"""The role table, generated: every role by every HTTP endpoint and every command type, on a cluster
the role is granted on ("own"), another cluster of the same organization, a cluster of another
organization, and an id that names nothing. What each case should answer is computed from
``ROLE_ACTIONS`` (the table of PRODUCT.md's "Who may do what") and where the role is granted,
written here independently of the code that enforces it:

- the role holds its actions on a cluster when it is the system administrator's, when it is
  granted on the cluster's organization, or when it is granted on that very cluster;
- a caller holding neither the action nor the right to view backups there is told the cluster
  "is not registered", word for word what an unknown id gets (``hidden``); one who may view it
  but not do the action gets 403 (``forbidden``); anything else means the access check let the
  request through (``allowed``: the answer is then the request's own, e.g. 400 for a value the
  case sends on purpose so that nothing changes).

The HTTP matrix runs in process (the API over ASGI, its commands handed to the real command
processors of the services, tokens signed and verified): the broker adds nothing to an access
decision. The command matrix crosses a real Kafka broker to the real services. Each observed
answer is compared with the expected one and every mismatch is listed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
from pydantic import TypeAdapter

from managed_backups.contracts import topics
from managed_backups.contracts.commands import (
    BackupCommand,
    ClusterCommand,
    RestoreCommand,
    RetentionCommand,
)
from managed_backups.contracts.enums import ResourceType, Role
from managed_backups.contracts.results import CommandResult
from managed_backups.services.api.app import create_app
from managed_backups.services.executor.executor import BackupExecutor
from managed_backups.services.projections.service import Projector
from managed_backups.services.restore.restorer import RestoreService
from managed_backups.services.retention.key_rotation import KeyRotations, rotate_handler
from managed_backups.services.retention.retention import Retention
from managed_backups.services.retention.service import enforce_handler
from managed_backups.services.runtime import Runtime, open_runtime
from managed_backups.services.scheduler.cluster_commands import HANDLERS
from managed_backups.shared.commands import CommandContext, CommandProcessor
from managed_backups.shared.domain.identity import ServiceAccount
from managed_backups.shared.domain.roles import ROLE_ACTIONS, Action
from managed_backups.shared.encryption import ClusterEncryption
from managed_backups.shared.settings import Settings
from managed_backups.shared.views import ReadModels
from tests.factories import new_cluster
from tests.harness import System, run_cluster_commands_only
from tests.principals import INSTALLER

pytestmark = pytest.mark.integration

ORG, OTHER_ORG = "acme", "globex"
ROLES = tuple(Role)
TARGETS = ("own", "same-org", "other-org", "unknown")
HIDDEN, FORBIDDEN, ALLOWED = "hidden", "forbidden", "allowed"


# -- what the table says ------------------------------------------------------------------------


def holds_on(role: Role, target: str) -> bool:
    """Whether ``role``, granted as :func:`grant_of` grants it, applies to ``target``."""
    if target == "unknown":
        return role is Role.SYSTEM_ADMIN
    if role is Role.SYSTEM_ADMIN:
        return True
    if role is Role.ORG_ADMIN:
        return target in ("own", "same-org")
    return target == "own"


def expected_on_cluster(role: Role, action: Action, target: str) -> str:
    if target == "unknown":
        return HIDDEN
    actions = ROLE_ACTIONS[role] if holds_on(role, target) else frozenset()
    if action in actions:
        return ALLOWED
    return FORBIDDEN if Action.VIEW_BACKUPS in actions else HIDDEN


def expected_on_organization(role: Role, action: Action, target: str) -> str:
    """Identity changes in an organization: outside the caller's reach it does not exist."""
    if target == "unknown":
        return HIDDEN
    actions = ROLE_ACTIONS[role] if holds_on(role, target) and role in ORG_WIDE else frozenset()
    return ALLOWED if action in actions else HIDDEN


def expected_installation(role: Role, action: Action) -> str:
    return ALLOWED if action in ROLE_ACTIONS[role] and role is Role.SYSTEM_ADMIN else FORBIDDEN


def expected_for_organization_command(role: Role, action: Action, target: str) -> str:
    """RegisterCluster names an organization: a right there or a 403 (no cluster to hide)."""
    allowed = action in ROLE_ACTIONS[role] and (
        role is Role.SYSTEM_ADMIN or (role is Role.ORG_ADMIN and target in ("own", "same-org"))
    )
    return ALLOWED if allowed else FORBIDDEN


ORG_WIDE = (Role.SYSTEM_ADMIN, Role.ORG_ADMIN)


def observed(code: int, message: str, target_id: str) -> str:
    hidden = {
        f"cluster {target_id} is not registered",
        f"organization {target_id} does not exist",
        f"service account {target_id} does not exist",
        f"API key {target_id} does not exist",
    }
    if code == 404 and message in hidden:
        return HIDDEN
    if code == 403:
        return FORBIDDEN
    return ALLOWED


# -- the world: per role, clusters, accounts and keys to aim at --------------------------------------


@dataclass
class World:
    """One role's caller and what its cases aim at."""

    role: Role
    key: str
    clusters: dict[str, str]
    """own / same-org / other-org / unknown → cluster id."""
    organizations: dict[str, str]
    accounts: dict[str, str]
    """Service accounts to give keys and grants to, by target (ids)."""
    victim_keys: dict[str, str]
    """Keys to revoke, by target (ids)."""


def build_worlds(runtime: Runtime, admin_key: str) -> dict[Role, World]:
    """Clusters, organizations, accounts and keys, made the way the API makes them, each role's
    own, so that a destructive case (a deletion, a revocation) of one role touches no other's."""
    from managed_backups.shared.identity import Identity

    identity = Identity(runtime.store, runtime.db, runtime.clock)
    for organization in (ORG, OTHER_ORG):
        if identity.organization(organization) is None:
            identity.create_organization(INSTALLER, organization, organization)
    worlds: dict[Role, World] = {}
    for role in ROLES:
        tag = role.value.lower().replace("_", "-")
        clusters = {
            "own": f"own-{tag}",
            "same-org": f"same-{tag}",
            "other-org": f"other-{tag}",
            "unknown": f"none-{tag}",
        }
        runtime.store.save_all(
            new_cluster(clusters["own"], organization=ORG),
            new_cluster(clusters["same-org"], organization=ORG),
            new_cluster(clusters["other-org"], organization=OTHER_ORG),
        )
        accounts: dict[str, str] = {"unknown": str(uuid4())}
        victims: dict[str, str] = {"unknown": "0123456789abcdef"}
        for target, organization in (("own", ORG), ("other-org", OTHER_ORG)):
            account = identity.create_service_account(
                INSTALLER, organization, f"target-{tag}", ""
            ).aggregate
            identity.grant(
                INSTALLER,
                account.account_id,
                Role.CLUSTER_MONITOR,
                ResourceType.ORGANIZATION,
                organization,
            )
            accounts[target] = str(account.account_id)
            victims[target] = identity.create_api_key(
                INSTALLER, account.account_id, "victim", None
            ).key.key_id
        accounts["same-org"], victims["same-org"] = accounts["own"], victims["own"]
        if role is Role.SYSTEM_ADMIN:
            key = admin_key
        else:
            caller = identity.create_service_account(INSTALLER, ORG, f"caller-{tag}", "")
            resource = (
                (ResourceType.ORGANIZATION, ORG)
                if role is Role.ORG_ADMIN
                else (ResourceType.CLUSTER, clusters["own"])
            )
            identity.grant(INSTALLER, caller.aggregate.account_id, role, *resource)
            key = identity.create_api_key(
                INSTALLER, caller.aggregate.account_id, "caller", None
            ).secret
        worlds[role] = World(
            role,
            key,
            clusters,
            {"own": ORG, "same-org": ORG, "other-org": OTHER_ORG, "unknown": "no-such-org"},
            accounts,
            victims,
        )
    return worlds


# -- the HTTP endpoints ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    action: Action | None
    """None: any authenticated caller."""
    scope: str
    """cluster | organization | installation | list | any"""
    body: Callable[[World, str], Any] | None = None
    last: bool = False
    """Destructive for its target: run after the role's other cases."""

    def url(self, world: World, target: str) -> str:
        return self.path.format(
            cluster_id=world.clusters[target],
            backup_id=uuid4(),
            database="db",
            restore_id=uuid4(),
            key_id=world.victim_keys[target],
            service_account_id=world.accounts[target],
            resource_type="ORGANIZATION",
            resource_id=world.organizations[target],
            role_name="CLUSTER_MONITOR",
        )

    def target_id(self, world: World, target: str) -> str:
        if self.scope == "cluster":
            return world.clusters[target]
        if "api-keys/{key_id}" in self.path:
            return world.victim_keys[target]
        if "service_account_id" in self.path or self.path.endswith(("api-keys", "role-grants")):
            return world.accounts[target]
        return world.organizations[target]


C = "/api/v1/clusters/{cluster_id}"
ENDPOINTS = (
    Endpoint("GET", "/api/v1/clusters", None, "list"),
    Endpoint("GET", C, Action.VIEW_BACKUPS, "cluster"),
    Endpoint("GET", C + "/events", Action.VIEW_BACKUPS, "cluster"),
    Endpoint("GET", C + "/backups/config", Action.VIEW_BACKUPS, "cluster"),
    Endpoint("GET", C + "/backups-config", Action.VIEW_BACKUPS, "cluster"),
    Endpoint(  # a frequency no tier allows: refused after the access check, nothing changes
        "PUT",
        C + "/backups/config",
        Action.CHANGE_BACKUP_SETTINGS,
        "cluster",
        lambda w, t: {"enabled": True, "frequency_minutes": 7, "retention_days": 30},
    ),
    Endpoint(
        "PATCH",
        C + "/backups-config",
        Action.CHANGE_BACKUP_SETTINGS,
        "cluster",
        lambda w, t: {"frequency_minutes": 7},
    ),
    Endpoint("GET", C + "/backups", Action.VIEW_BACKUPS, "cluster"),
    Endpoint("GET", C + "/backups/incomplete", Action.VIEW_BACKUPS, "cluster"),
    Endpoint("GET", C + "/backups/days", Action.VIEW_BACKUPS, "cluster"),
    Endpoint(  # back up now: an incremental without a full to extend is refused after the check
        "POST",
        C + "/backups",
        Action.TAKE_BACKUP,
        "cluster",
        lambda w, t: {"type": "INCREMENTAL"},
    ),
    Endpoint("GET", C + "/backups/{backup_id}", Action.VIEW_BACKUPS, "cluster"),
    Endpoint(  # an unknown backup: 404 "not known" after the access check
        "POST", C + "/backups/{backup_id}/verify", Action.VIEW_BACKUPS, "cluster"
    ),
    Endpoint("GET", C + "/restore-destinations", Action.VIEW_BACKUPS, "cluster"),
    Endpoint("GET", "/api/v1/backups/{backup_id}", None, "any"),
    Endpoint("GET", "/api/v1/me", None, "any"),
    Endpoint("GET", C + "/backups/{backup_id}/databases", Action.VIEW_BACKUPS, "cluster"),
    Endpoint(
        "GET",
        C + "/backups/{backup_id}/databases/{database}/tables",
        Action.VIEW_BACKUPS,
        "cluster",
    ),
    Endpoint(  # no backup to restore: refused after the access check
        "POST",
        C + "/restores",
        Action.RESTORE,
        "cluster",
        lambda w, t: {"type": "DATABASE", "objects": [{"database": "db"}]},
    ),
    Endpoint("GET", C + "/restores", Action.VIEW_BACKUPS, "cluster"),
    Endpoint("GET", C + "/restores/{restore_id}", Action.VIEW_BACKUPS, "cluster"),
    Endpoint(
        "PUT",
        C + "/connection-secret",
        Action.MANAGE_CLUSTERS,
        "cluster",
        lambda w, t: {"password": "role-table"},
    ),
    Endpoint("GET", C + "/encryption-key", Action.VIEW_BACKUPS, "cluster"),
    Endpoint(  # the clusters are STANDARD: refused (400, ADVANCED only) after the access check
        "PUT",
        C + "/encryption-key",
        Action.CHANGE_BACKUP_SETTINGS,
        "cluster",
        lambda w, t: {"key_name": "role-table"},
    ),
    Endpoint(  # no customer key configured: nothing changes
        "DELETE", C + "/encryption-key", Action.CHANGE_BACKUP_SETTINGS, "cluster"
    ),
    Endpoint(  # a RotateEncryptionKeys signed for the caller (no chain to re-wrap)
        "POST", C + "/encryption-key/rotate", Action.CHANGE_BACKUP_SETTINGS, "cluster"
    ),
    Endpoint("GET", "/metrics", Action.ADMINISTER, "installation"),
    Endpoint("GET", "/admin/clock", Action.ADMINISTER, "installation"),
    Endpoint(
        "POST",
        "/admin/clock",
        Action.ADMINISTER,
        "installation",
        lambda w, t: {"advance_seconds": 1},
    ),
    Endpoint(
        "POST",
        "/api/v1/organizations",
        Action.ADMINISTER,
        "installation",
        lambda w, t: {"id": f"org-{uuid4().hex[:8]}", "name": "new"},
    ),
    Endpoint("GET", "/api/v1/organizations", None, "list"),
    Endpoint(
        "POST",
        "/api/v1/service-accounts",
        Action.MANAGE_ACCESS,
        "organization",
        lambda w, t: {"name": f"sa-{uuid4().hex[:8]}", "organization": w.organizations[t]},
    ),
    Endpoint("GET", "/api/v1/service-accounts", None, "list"),
    Endpoint(
        "POST",
        "/api/v1/api-keys",
        Action.MANAGE_ACCESS,
        "organization",
        lambda w, t: {"name": "k", "service_account_id": w.accounts[t]},
    ),
    Endpoint("GET", "/api/v1/api-keys", None, "list"),
    Endpoint(
        "DELETE", "/api/v1/api-keys/{key_id}", Action.MANAGE_ACCESS, "organization", last=True
    ),
    Endpoint("GET", "/api/v1/role-grants", None, "list"),
    Endpoint(  # the account already holds it: 409 once allowed, nothing changes
        "POST",
        "/api/v1/role-grants",
        Action.MANAGE_ACCESS,
        "organization",
        lambda w, t: {
            "service_account_id": w.accounts[t],
            "role_name": "CLUSTER_MONITOR",
            "resource_type": "ORGANIZATION",
            "resource_id": w.organizations[t],
        },
    ),
    Endpoint(
        "DELETE",
        "/api/v1/role-grants/{service_account_id}/{resource_type}/{resource_id}/{role_name}",
        Action.MANAGE_ACCESS,
        "organization",
        last=True,
    ),
    Endpoint(
        "POST",
        "/api/v1/command-tokens",
        None,
        "any",
        lambda w, t: {
            "topic": topics.BACKUP_COMMANDS,
            "command": {"command_id": str(uuid4()), "type": "VerifyBackup"},
        },
    ),
)
UNAUTHENTICATED = {("GET", "/healthz")}


def expected_http(endpoint: Endpoint, role: Role, target: str) -> str:
    if endpoint.scope == "cluster":
        assert endpoint.action is not None
        return expected_on_cluster(role, endpoint.action, target)
    if endpoint.scope == "organization":
        assert endpoint.action is not None
        return expected_on_organization(role, endpoint.action, target)
    if endpoint.scope == "installation":
        assert endpoint.action is not None
        return expected_installation(role, endpoint.action)
    return ALLOWED


def listed(endpoint: Endpoint, answer: dict[str, Any], world: World) -> set[str]:
    """Which of the world's targets a list shows (lists show, never refuse)."""
    if endpoint.path == "/api/v1/clusters":
        ids = {c["id"] for c in answer["clusters"]}
        return {t for t in TARGETS if world.clusters[t] in ids}
    if endpoint.path == "/api/v1/organizations":
        ids = {o["id"] for o in answer["organizations"]}
        return {t for t in TARGETS if world.organizations[t] in ids}
    if endpoint.path == "/api/v1/service-accounts":
        ids = {a["id"] for a in answer["service_accounts"]}
    elif endpoint.path == "/api/v1/api-keys":
        ids = {k["service_account_id"] for k in answer["api_keys"]}
    else:
        ids = {g["service_account_id"] for g in answer["role_grants"]}
    return {t for t in TARGETS if world.accounts[t] in ids}


def expected_listed(endpoint: Endpoint, role: Role) -> set[str]:
    if endpoint.path == "/api/v1/clusters":
        return {t for t in TARGETS if expected_on_cluster(role, Action.VIEW_BACKUPS, t) == ALLOWED}
    if endpoint.path == "/api/v1/organizations":  # managed, or granted a role there
        return {t for t in TARGETS if holds_on(role, t) and role in ORG_WIDE and t != "unknown"}
    return {
        t for t in TARGETS if expected_on_organization(role, Action.MANAGE_ACCESS, t) == ALLOWED
    }


# -- in process: the API, its commands handed to the services' processors -------------------------


class LocalGateway:
    """The command gateway without a broker: each command goes to the processor its topic's
    service runs (the real handlers, the real token verification); follow-ups are not run."""

    def __init__(self, runtime: Runtime) -> None:
        context = CommandContext(runtime.store, runtime.clock, "role-table")
        executor = BackupExecutor(runtime, "role-table")
        restore = RestoreService(runtime, "role-table")
        encryption = ClusterEncryption(runtime.settings, runtime.store)
        retention = Retention(
            runtime.store, runtime.db, runtime.settings.region_store_url, encryption=encryption
        )
        lock = asyncio.Lock()
        rotations = KeyRotations(retention, encryption, "role-table", lock, runtime.clock.now)
        handlers: dict[str, tuple[TypeAdapter[Any], dict[str, Any]]] = {
            topics.CLUSTER_COMMANDS: (TypeAdapter(ClusterCommand), HANDLERS),
            topics.BACKUP_COMMANDS: (
                TypeAdapter(BackupCommand),
                {"TakeBackup": executor.take_backup, "VerifyBackup": executor.verify},
            ),
            topics.RESTORE_COMMANDS: (
                TypeAdapter(RestoreCommand),
                {"StartRestore": restore.start_restore},
            ),
            topics.RETENTION_COMMANDS: (
                TypeAdapter(RetentionCommand),
                {
                    "EnforceRetention": enforce_handler(retention, lock),
                    "RotateEncryptionKeys": rotate_handler(rotations),
                },
            ),
        }
        self.processors = {
            topic: CommandProcessor(topic, adapter, table, context, runtime.verifier)
            for topic, (adapter, table) in handlers.items()
        }

    async def request(
        self, topic: str, command: dict[str, Any], timeout: float = 30
    ) -> CommandResult:
        raw = json.dumps(command).encode()
        return (await asyncio.to_thread(self.processors[topic].process, raw)).result


@contextlib.asynccontextmanager
async def following(runtime: Runtime) -> AsyncIterator[None]:
    """The projections, as their service keeps them, while the block runs."""
    stop = asyncio.Event()
    task = asyncio.create_task(
        Projector(runtime.store, ReadModels(runtime.db), poll=0.01).run(stop)
    )
    try:
        yield
    finally:
        stop.set()
        await task


async def test_every_role_on_every_endpoint(tmp_path: Path) -> None:
    from managed_backups.shared.identity import Identity

    runtime = open_runtime(Settings(data_dir=tmp_path / "data"))
    admin_key, _ = Identity(runtime.store, runtime.db, runtime.clock).ensure_admin_key(
        runtime.settings.admin_key_path
    )
    app = create_app(runtime, LocalGateway(runtime))  # type: ignore[arg-type]
    routes = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    assert routes == {(e.method, e.path) for e in ENDPOINTS} | UNAUTHENTICATED
    worlds = build_worlds(runtime, admin_key)
    mismatches: list[str] = []
    cases = 0
    async with (
        following(runtime),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client,
    ):
        await ReadModels(runtime.db).wait_until(runtime.store.max_position(), 30)
        for role, world in worlds.items():
            headers = {"Authorization": f"Bearer {world.key}"}
            for endpoint in sorted(ENDPOINTS, key=lambda e: e.last):
                for target in (
                    TARGETS if endpoint.scope in ("cluster", "organization") else ("own",)
                ):
                    cases += 1
                    body = endpoint.body(world, target) if endpoint.body else None
                    response = await client.request(
                        endpoint.method, endpoint.url(world, target), json=body, headers=headers
                    )
                    text = f"{response.status_code} {response.text[:200]}"
                    if response.status_code >= 500:
                        mismatches.append(
                            f"{role} {endpoint.method} {endpoint.path} {target}: {text}"
                        )
                        continue
                    if endpoint.scope == "list":
                        assert response.status_code == 200, text
                        seen, want = (
                            listed(endpoint, response.json(), world),
                            expected_listed(endpoint, role),
                        )
                        if seen != want:
                            mismatches.append(
                                f"{role} {endpoint.method} {endpoint.path}: lists {sorted(seen)}, "
                                f"expected {sorted(want)}"
                            )
                        continue
                    message = ""
                    if response.headers.get("content-type") == "application/json":
                        message = response.json().get("message", "")
                    got = observed(response.status_code, message, endpoint.target_id(world, target))
                    want = expected_http(endpoint, role, target)
                    if got != want:
                        mismatches.append(
                            f"{role} {endpoint.method} {endpoint.path} on {target}: {got}, "
                            f"expected {want} ({text})"
                        )
        # What the console offers on a cluster (its ``actions``) is what the table allows.
        for role, world in worlds.items():
            headers = {"Authorization": f"Bearer {world.key}"}
            for target in TARGETS:
                want_actions = [
                    name
                    for name, action in CONSOLE_ACTIONS.items()
                    if expected_on_cluster(role, action, target) == ALLOWED
                ]
                answer = await client.get(
                    f"/api/v1/clusters/{world.clusters[target]}", headers=headers
                )
                got_actions = answer.json().get("actions", []) if answer.status_code == 200 else []
                cases += 1
                if got_actions != want_actions:
                    mismatches.append(
                        f"{role} actions on {target}: {got_actions}, expected {want_actions}"
                    )
    runtime.close()
    assert not mismatches, f"{len(mismatches)} of {cases} cases:\n" + "\n".join(mismatches)


CONSOLE_ACTIONS = {
    "view_backups": Action.VIEW_BACKUPS,
    "change_backup_settings": Action.CHANGE_BACKUP_SETTINGS,
    "restore": Action.RESTORE,
    "take_backup": Action.TAKE_BACKUP,
    "manage_clusters": Action.MANAGE_CLUSTERS,
}
"""A cluster's ``actions`` (what the console shows controls for) and the action each names."""


# -- over the topics: a real broker, the real services ------------------------------------------------


@dataclass(frozen=True)
class CommandCase:
    topic: str
    action: Action
    body: Callable[[World, str], dict[str, Any]]
    scope: str = "cluster"
    last: bool = False


COMMANDS = {
    "RegisterCluster": CommandCase(
        topics.CLUSTER_COMMANDS,
        Action.MANAGE_CLUSTERS,
        lambda w, t: {
            "type": "RegisterCluster",
            "cluster_id": f"reg-{uuid4().hex[:8]}",
            "name": "n",
            "organization": w.organizations[t],
            "tier": "STANDARD",
            "regions": ["us-east-1"],
            "database_version": "15",
            "connection_ref": "postgresql://u@h/postgres",
        },
        scope="organization",
    ),
    "UpdateBackupSettings": CommandCase(
        topics.CLUSTER_COMMANDS,
        Action.CHANGE_BACKUP_SETTINGS,
        lambda w, t: {
            "type": "UpdateBackupSettings",
            "cluster_id": w.clusters[t],
            "frequency_minutes": 7,
        },
    ),
    "ChangeClusterTier": CommandCase(  # to the tier it has: nothing changes
        topics.CLUSTER_COMMANDS,
        Action.MANAGE_CLUSTERS,
        lambda w, t: {"type": "ChangeClusterTier", "cluster_id": w.clusters[t], "tier": "STANDARD"},
    ),
    "DeleteCluster": CommandCase(
        topics.CLUSTER_COMMANDS,
        Action.MANAGE_CLUSTERS,
        lambda w, t: {"type": "DeleteCluster", "cluster_id": w.clusters[t]},
        last=True,
    ),
    "TakeBackup": CommandCase(  # a retention no tier allows: refused after the access check
        topics.BACKUP_COMMANDS,
        Action.TAKE_BACKUP,
        lambda w, t: {
            "type": "TakeBackup",
            "cluster_id": w.clusters[t],
            "backup_id": str(uuid4()),
            "backup_type": "FULL",
            "retention_days": 36_500,
        },
    ),
    "VerifyBackup": CommandCase(
        topics.BACKUP_COMMANDS,
        Action.VIEW_BACKUPS,
        lambda w, t: {
            "type": "VerifyBackup",
            "cluster_id": w.clusters[t],
            "backup_id": str(uuid4()),
        },
    ),
    "StartRestore": CommandCase(
        topics.RESTORE_COMMANDS,
        Action.RESTORE,
        lambda w, t: {
            "type": "StartRestore",
            "restore_id": str(uuid4()),
            "destination_cluster_id": w.clusters[t],
            "restore_type": "DATABASE",
            "objects": [{"database": "db"}],
        },
    ),
    "EnforceRetention": CommandCase(
        topics.RETENTION_COMMANDS,
        Action.CHANGE_BACKUP_SETTINGS,
        lambda w, t: {"type": "EnforceRetention", "cluster_id": w.clusters[t]},
    ),
    "EnforceRetention (every cluster)": CommandCase(
        topics.RETENTION_COMMANDS,
        Action.ADMINISTER,
        lambda w, t: {"type": "EnforceRetention"},
        scope="installation",
    ),
    "RotateEncryptionKeys": CommandCase(  # no chain to re-wrap: the job adds nothing
        topics.RETENTION_COMMANDS,
        Action.CHANGE_BACKUP_SETTINGS,
        lambda w, t: {"type": "RotateEncryptionKeys", "cluster_id": w.clusters[t]},
    ),
    "RotateEncryptionKeys (every cluster)": CommandCase(
        topics.RETENTION_COMMANDS,
        Action.ADMINISTER,
        lambda w, t: {"type": "RotateEncryptionKeys"},
        scope="installation",
    ),
}


def expected_command(case: CommandCase, role: Role, target: str) -> str:
    if case.scope == "organization":
        return expected_for_organization_command(role, case.action, target)
    if case.scope == "installation":
        return expected_installation(role, case.action)
    return expected_on_cluster(role, case.action, target)


async def test_every_role_on_every_command_over_the_topics(tmp_path: Path, kafka: str) -> None:
    from managed_backups.contracts.commands import AnyCommand

    command_types = set(TypeAdapter(AnyCommand).json_schema()["discriminator"]["mapping"])
    assert {name.split(" ")[0] for name in COMMANDS} == command_types
    system = await System.start(
        tmp_path / "data",
        f"sqlite:///{tmp_path / 'events.sqlite'}",
        kafka,
        services=("projections",),
    )
    try:
        await system.start_service("scheduler", run_cluster_commands_only)
        for name in ("backup-executor", "restore", "retention"):
            await system.start_service(name)
        assert system.api_runtime is not None
        worlds = await asyncio.to_thread(build_worlds, system.api_runtime, system.admin_key)
        await system.wait_projection(system.api_runtime.store.max_position())

        async def one(role: Role, name: str, target: str) -> str | None:
            case, world = COMMANDS[name], worlds[role]
            result = await system.command(case.topic, case.body(world, target), world.key, 60)
            target_id = world.clusters[target] if case.scope == "cluster" else ""
            got = observed(result.code, result.reason or "", target_id)
            want = expected_command(case, role, target)
            if result.code >= 500 or got != want:
                return f"{role} {name} on {target}: {got}, expected {want} ({result.code} {result.reason})"
            return None

        cases = [
            (role, name, target)
            for role in ROLES
            for name, case in COMMANDS.items()
            for target in (TARGETS if case.scope != "installation" else ("own",))
        ]
        mismatches: list[str | None] = []
        for last in (False, True):  # deletions after everything else aimed at their clusters
            batch = [c for c in cases if COMMANDS[c[1]].last is last]
            mismatches += await asyncio.gather(*(one(*c) for c in batch))
        found = [m for m in mismatches if m]
        assert not found, f"{len(found)} of {len(cases)} cases:\n" + "\n".join(found)
    finally:
        await system.close()


def test_service_accounts_are_named_by_organization_and_name() -> None:
    """The CLI names an account ORGANIZATION/NAME: its id derives from them, nothing else."""
    assert ServiceAccount.create_id(ORG, "ci") == ServiceAccount.create_id(ORG, "ci")
    assert ServiceAccount.create_id(ORG, "ci") != ServiceAccount.create_id(OTHER_ORG, "ci")
