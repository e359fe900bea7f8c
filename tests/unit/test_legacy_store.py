"""Today's code reads an event store written by version 0.1 (before the package move)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from managed_backups.contracts import topics
from managed_backups.contracts.enums import BackupStatus, ResourceType, Role
from managed_backups.services.projections.service import rebuild
from managed_backups.services.scheduler.scheduler import Scheduler
from managed_backups.shared.clock import WallClock
from managed_backups.shared.domain.backup import Backup
from managed_backups.shared.domain.cluster import Cluster
from managed_backups.shared.domain.errors import NotAuthenticated
from managed_backups.shared.domain.ids import cluster_aggregate_id
from managed_backups.shared.eventstore import (
    EventStore,
    event_topics,
    open_event_store,
    to_wire_event,
)
from managed_backups.shared.sqldb import SqlDatabase
from tests.principals import INSTALLER, Keys

LEGACY = Path(__file__).parent.parent / "data" / "legacy-v0"


@pytest.fixture
def legacy_url(tmp_path: Path) -> str:
    copy = tmp_path / "events.sqlite"
    shutil.copyfile(LEGACY / "events-v0.sqlite", copy)
    return f"sqlite:///{copy}"


@pytest.fixture
def store(legacy_url: str) -> EventStore:
    return open_event_store(legacy_url)


def test_every_stored_event_loads_and_has_its_wire_form(store: EventStore) -> None:
    rows = store.notifications(0, 1000)
    assert len(rows) == 136
    assert rows[0].topic.startswith("shared.domain.")  # written under the old module names
    types = {to_wire_event(row.id, store.domain_event(row)).type for row in rows}
    assert types == {
        "ApiKeyIssued",
        "ApiKeyRevoked",
        "ClusterRegistered",
        "BackupSettingsUpdated",
        "ClusterTierChanged",
        "ClusterDeleted",
        "BackupScheduled",
        "BackupStarted",
        "BackupCompleted",
        "BackupFailed",
        "BackupVerified",
        "CommandHandled",
    }


def test_aggregates_load_from_old_events_and_snapshots(store: EventStore) -> None:
    cluster = store.get_or_none(cluster_aggregate_id("legacy-one"), Cluster)
    assert cluster is not None
    assert (cluster.tier, cluster.frequency_minutes, cluster.retention_days) == ("ADVANCED", 5, 7)
    assert cluster.version == 123 and cluster.last_scheduled is not None
    gone = store.get_or_none(cluster_aggregate_id("legacy-two"), Cluster)
    assert gone is not None and gone.deleted
    statuses = []
    for row in store.notifications(0, 1000, event_topics(Backup.BackupStarted)):  # type: ignore[attr-defined]
        backup = store.get_or_none(row.originator_id, Backup)
        assert backup is not None
        statuses.append(backup.status)
    assert statuses == [BackupStatus.COMPLETE, BackupStatus.COMPLETE, BackupStatus.FAILED]


def test_keys_issued_before_the_move_still_authenticate(
    legacy_url: str, store: EventStore, tmp_path: Path
) -> None:
    """A key of version 0.1 (its SHA-256 in its event, its grants in the key) keeps working,
    over HTTP and for signed commands, is listed, and is revoked at once like any key."""
    keys = Keys(store, SqlDatabase(legacy_url), tmp_path / "keys")
    key = (LEGACY / "events-v0.api-key").read_text().strip()
    principal = keys.authenticator.authenticate(key)
    assert principal.name == "ops" and principal.grants[0].role is Role.ORG_ADMIN
    with pytest.raises(NotAuthenticated):
        keys.authenticator.authenticate(key[:-2] + "xx")
    command = {"type": "DeleteCluster", "command_id": str(uuid4()), "cluster_id": "legacy-one"}
    signed = keys.signed(key, topics.CLUSTER_COMMANDS, command)
    verified = keys.verifier.verify(topics.CLUSTER_COMMANDS, signed, UUID(command["command_id"]))
    assert verified == principal
    models = rebuild(store, SqlDatabase(legacy_url))
    listed = {k["id"]: k for k in models.api_keys()}
    assert listed[principal.key_id]["legacy_principal"] == "ops"
    assert len(listed) == 2 and sum(1 for k in listed.values() if k["revoked_at"]) == 1
    keys.identity.revoke_api_key(INSTALLER, str(principal.key_id))
    with pytest.raises(NotAuthenticated):
        keys.authenticator.authenticate(key)
    with pytest.raises(NotAuthenticated):  # the command signed before the revocation too
        keys.verifier.verify(topics.CLUSTER_COMMANDS, signed, UUID(command["command_id"]))


def test_readers_filtering_by_topic_see_old_events(store: EventStore) -> None:
    scheduler = Scheduler(store, WallClock(), send=_no_send, sign=_no_sign)
    scheduler.bootstrap()
    assert set(scheduler.clusters) == {"legacy-one", "legacy-two"}
    scheduler.position = 0
    # all but the three API-key events, the command outcome and the verification
    assert scheduler.follow_once() == 136 - 5


def test_views_rebuild_from_old_events(legacy_url: str, store: EventStore) -> None:
    models = rebuild(store, SqlDatabase(legacy_url))
    assert models.position() == 136
    doc = models.cluster("legacy-one")
    assert doc is not None and doc["tier"] == "ADVANCED"
    assert len(models.incomplete_backups("legacy-one")) == 118  # 117 never started, 1 failed


async def _no_send(command: object) -> None:
    raise AssertionError("nothing is sent while reading")


def _no_sign(command: dict[str, Any]) -> dict[str, Any]:
    raise AssertionError("nothing is signed while reading")


def test_backups_recorded_at_their_bare_id_load_for_their_cluster_only(store: EventStore) -> None:
    """Version 0.1 kept a Backup at the bare backup id; today's ids derive from the cluster."""
    from uuid import UUID

    from managed_backups.shared.domain.backup import load_backup
    from managed_backups.shared.domain.ids import backup_aggregate_id

    rows = store.notifications(0, 1000, event_topics(Backup.BackupStarted))  # type: ignore[attr-defined]
    assert rows
    for row in rows:
        backup_id = UUID(str(row.originator_id))
        stored = store.get_or_none(backup_id, Backup)
        assert stored is not None
        found = load_backup(store, stored.cluster_id, backup_id)
        assert found is not None and found.id == backup_id == stored.backup_id
        assert load_backup(store, "another-tenants-cluster", backup_id) is None
        # A new backup with the same backup id in another cluster gets its own stream.
        assert backup_aggregate_id("another-tenants-cluster", backup_id) != backup_id


def test_outcomes_recorded_before_body_hashes_are_honoured_for_their_sender(
    legacy_url: str, store: EventStore, tmp_path: Path
) -> None:
    from pydantic import TypeAdapter

    from managed_backups.contracts.commands import ClusterCommand
    from managed_backups.shared.commands import CommandContext, CommandProcessor, Handled

    keys = Keys(store, SqlDatabase(legacy_url), tmp_path / "keys")

    calls: list[str] = []

    def update(command: Any, principal: Any, context: Any) -> Handled:
        calls.append(principal.name)
        return Handled([], command.cluster_id)

    process = CommandProcessor(
        topics.CLUSTER_COMMANDS,
        TypeAdapter(ClusterCommand),
        {"UpdateBackupSettings": update},
        CommandContext(store, WallClock(), "test"),
        keys.verifier,
    )
    legacy_id = UUID("00000000-0000-4000-8000-000000000001")
    body = {
        "type": "UpdateBackupSettings",
        "command_id": str(legacy_id),
        "cluster_id": "legacy-one",
    }
    ops = (LEGACY / "events-v0.api-key").read_text().strip()
    topic = topics.CLUSTER_COMMANDS
    result = process.process(json.dumps(keys.signed(ops, topic, body)).encode()).result
    assert (result.code, result.command_id, calls) == (409, legacy_id, [])
    newcomer = keys.key("acme", "newcomer", (Role.ORG_ADMIN, ResourceType.ORGANIZATION, "acme"))
    fresh = process.process(json.dumps(keys.signed(newcomer, topic, body)).encode()).result
    assert fresh.code == 200 and calls == ["acme/newcomer"]
