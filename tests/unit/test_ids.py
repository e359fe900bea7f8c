"""Rule "no client-chosen id names a record": a restore id, backup id or command id a tenant
chooses never lands on another tenant's record or on a record of another kind, and the rows
that index them (views, retention index, leases) are keyed by cluster as the streams are.

``tests/unit/test_ids_v1_store.py`` reads what the previous version wrote."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter

from managed_backups.contracts import topics
from managed_backups.contracts.commands import ClusterCommand
from managed_backups.contracts.enums import ResourceType, Role
from managed_backups.services.projections.service import Projector
from managed_backups.services.scheduler.cluster_commands import HANDLERS
from managed_backups.shared.clock import WallClock
from managed_backups.shared.commands import CommandContext, CommandProcessor
from managed_backups.shared.domain.backup import Backup
from managed_backups.shared.domain.cluster import Cluster
from managed_backups.shared.domain.errors import WrongRecordType
from managed_backups.shared.domain.identity import (
    api_key_stream_id,
    organization_aggregate_id,
    service_account_id,
)
from managed_backups.shared.domain.ids import (
    api_key_aggregate_id,
    backup_aggregate_id,
    cluster_aggregate_id,
    command_outcome_id,
    connection_secret_aggregate_id,
    principal_command_outcome_id,
    restore_aggregate_id,
)
from managed_backups.shared.domain.restore import Restore, load_restore
from managed_backups.shared.eventstore import EventStore, open_event_store
from managed_backups.shared.jobs import JobLeases, backups_in_use, held_backups, holding
from managed_backups.shared.sqldb import SqlDatabase
from managed_backups.shared.views import ReadModels
from tests.principals import Keys

T0 = datetime(2026, 3, 2, tzinfo=UTC)


def ids_of_every_kind(key: str, chosen: UUID) -> dict[str, UUID]:
    """The record ids ``key`` (a cluster id, key id or principal) and a chosen UUID give."""
    return {
        "cluster": cluster_aggregate_id(key),
        "secret": connection_secret_aggregate_id(key),
        "api-key": api_key_aggregate_id(key),
        "api-key-of-an-account": api_key_stream_id(key),
        "organization": organization_aggregate_id(key),
        "service-account": service_account_id(key, key),
        "installation-account": service_account_id(None, key),
        "backup": backup_aggregate_id(key, chosen),
        "restore": restore_aggregate_id(key, chosen),
        "outcome": principal_command_outcome_id(key, chosen),
        "legacy-outcome": command_outcome_id(chosen),
    }


@pytest.fixture
def store() -> Iterator[EventStore]:
    store = EventStore(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    yield store
    store.close()


@pytest.fixture
def keys(store: EventStore, tmp_path: Path) -> Keys:
    return Keys(store, SqlDatabase(f"sqlite:///{tmp_path / 'shared.sqlite'}"), tmp_path / "keys")


def restore(cluster_id: str, restore_id: UUID, at: datetime = T0) -> Restore:
    return Restore(
        restore_id=restore_id,
        cluster_id=cluster_id,
        restore_type="DATABASE",
        source_cluster_id=cluster_id,
        source_cluster_name=cluster_id,
        destination_cluster_name=cluster_id,
        backup_id=uuid4(),
        chain_id=uuid4(),
        backup_end_time=at,
        objects=[{"database": "app"}],
        restore_opts={},
        target_database="app",
        worker="restore-x",
        lease_until=at,
        command_id=None,
        at=at,
        by="evil",
    )


def backup(cluster_id: str, backup_id: UUID) -> Backup:
    return Backup(
        backup_id=backup_id,
        cluster_id=cluster_id,
        backup_type="FULL",
        chain_id=backup_id,
        reason="MANUAL",
        region="r1",
        retention_days=30,
        scheduled_for=None,
        executor="x",
        lease_until=T0,
        command_id=None,
        at=T0,
        by="t",
    )


def register(keys: Keys, cluster_id: str) -> Any:
    clock = WallClock()
    key = keys.key(
        "victims",
        f"admin-{uuid4().hex[:6]}",
        (Role.ORG_ADMIN, ResourceType.ORGANIZATION, "victims"),
    )
    process = CommandProcessor(
        topics.CLUSTER_COMMANDS,
        TypeAdapter(ClusterCommand),
        HANDLERS,
        CommandContext(keys.identity.store, clock, "test"),
        keys.verifier,
    )
    command = {
        "type": "RegisterCluster",
        "command_id": str(uuid4()),
        "cluster_id": cluster_id,
        "name": cluster_id,
        "organization": "victims",
        "tier": "STANDARD",
        "regions": ["us-east-1"],
        "database_version": "15",
        "connection_ref": "postgresql://backup@db.example:5432/postgres",
    }
    signed = keys.signed(key, process.topic, command)
    return process.process(json.dumps(signed).encode()).result


def test_a_restore_id_chosen_as_a_future_clusters_id_squats_nothing(
    store: EventStore, keys: Keys
) -> None:
    """The probe's attack: a restore whose id is the record id of a cluster not yet registered,
    and of its connection secret. The cluster registers, its secret record stays free."""
    store.save_all(restore("evil-cluster", cluster_aggregate_id("victim")))
    store.save_all(restore("evil-cluster", connection_secret_aggregate_id("victim")))
    result = register(keys, "victim")
    assert (result.code, result.reason) == (200, None)
    assert store.get_or_none(cluster_aggregate_id("victim"), Cluster) is not None
    assert store.get_or_none(connection_secret_aggregate_id("victim"), Restore) is None


def test_the_same_restore_id_in_two_clusters_is_two_jobs(store: EventStore) -> None:
    chosen = uuid4()
    store.save_all(restore("a", chosen), restore("b", chosen))
    a, b = load_restore(store, "a", chosen), load_restore(store, "b", chosen)
    assert a is not None and b is not None and a.id != b.id
    assert (a.cluster_id, b.cluster_id) == ("a", "b")
    assert load_restore(store, "c", chosen) is None


def test_a_wrong_type_load_is_a_clean_not_found(store: EventStore, keys: Keys) -> None:
    store.save_all(backup("a", uuid4()))
    register(keys, "victim")
    with pytest.raises(WrongRecordType) as refused:
        store.get_or_none(cluster_aggregate_id("victim"), Restore)
    assert refused.value.code == 404 and "Cluster" not in refused.value.reason
    assert load_restore(store, "victim", cluster_aggregate_id("victim")) is None


@given(
    st.sampled_from(["restore", "backup"]),
    st.text(min_size=1, max_size=20),
    st.uuids(),
    st.text(min_size=1, max_size=20),
)
def test_no_chosen_id_names_a_record_of_another_kind_or_cluster(
    kind: str, cluster: str, chosen: UUID, key: str
) -> None:
    """Property: a job's stream id is never the id a client chose, nor any record id derived
    from another business key (cluster, secret, API key, another cluster's job)."""
    derived = ids_of_every_kind(cluster, chosen)
    mine = derived[kind]
    assert mine != chosen
    others = {v for k, v in derived.items() if k != kind}
    if key != cluster:
        others |= set(ids_of_every_kind(key, chosen).values())
    assert mine not in others


def test_views_keep_two_clusters_backups_and_restores_of_one_id_apart(tmp_path: Path) -> None:
    """Another tenant's backup or restore under the same id never changes this tenant's rows."""
    url = f"sqlite:///{tmp_path / 'views.sqlite'}"
    store = open_event_store(url)
    chosen = uuid4()
    mine = backup("mine", chosen)
    mine.complete(
        T0,
        10,
        1,
        [{"name": "payroll", "size_bytes": 1, "schemas": []}],
        "k",
        T0 + timedelta(days=30),
        T0,
        "x",
    )
    theirs = backup("theirs", chosen)
    theirs.complete(
        T0,
        99,
        1,
        [{"name": "stolen", "size_bytes": 1, "schemas": []}],
        "k2",
        T0 + timedelta(days=30),
        T0,
        "x",
    )
    store.save_all(mine, restore("mine", chosen))
    store.save_all(theirs, restore("theirs", chosen))
    views = ReadModels(SqlDatabase(url))
    Projector(store, views).catch_up()
    doc = views.backup("mine", str(chosen))
    assert doc is not None and doc["size_bytes"] == 10
    assert [d["name"] for d in doc["catalog"]] == ["payroll"]
    other = views.restore("theirs", str(chosen))
    assert other is not None and other["destination_cluster_id"] == "theirs"
    assert views.restore("mine", str(chosen)) is not None
    store.close()


def test_holds_name_the_cluster_whose_backups_they_hold(tmp_path: Path) -> None:
    """A cross-cluster restore's lease is on its destination and holds its source's backups;
    another cluster's backup of the same id is not held."""
    db = SqlDatabase(f"sqlite:///{tmp_path / 's.sqlite'}")
    leases = JobLeases(db, "restore")
    leases.take(uuid4(), "destination", "r", T0, holding(["b1"], "source"))
    assert held_backups(db) == {"source": {"b1"}}
    assert backups_in_use(db, "source") == {"b1"}
    assert backups_in_use(db, "destination") == set()
    assert backups_in_use(db, "another-tenant") == set()
    db.close()
