"""Today's code reads what the version before derived restore ids wrote (``tests/data/ids-v1``):
restores at their bare ids, outcomes, read models and a retention index keyed by bare ids,
and the leases of jobs whose workers died."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest
from pydantic import TypeAdapter

from managed_backups.contracts import topics
from managed_backups.contracts.commands import ClusterCommand
from managed_backups.services.executor.executor import BackupExecutor
from managed_backups.services.projections.service import Projector
from managed_backups.services.restore.restorer import RestoreService
from managed_backups.services.retention.retention import RetentionIndex
from managed_backups.services.runtime import Runtime, open_runtime
from managed_backups.services.scheduler.cluster_commands import HANDLERS
from managed_backups.shared.commands import CommandContext, CommandProcessor
from managed_backups.shared.domain.backup import load_backup
from managed_backups.shared.domain.cluster import Cluster
from managed_backups.shared.domain.errors import WrongRecordType
from managed_backups.shared.domain.ids import cluster_aggregate_id
from managed_backups.shared.domain.outcome import CommandOutcome
from managed_backups.shared.domain.restore import load_restore
from managed_backups.shared.settings import Settings
from managed_backups.shared.views import ReadModels
from tests.principals import Keys

DATA = Path(__file__).parent.parent / "data" / "ids-v1"
FULL = UUID("aaaaaaaa-0000-4000-8000-000000000001")
RUNNING_BACKUP = UUID("aaaaaaaa-0000-4000-8000-000000000002")
DONE = UUID("bbbbbbbb-0000-4000-8000-000000000001")
STUCK = UUID("bbbbbbbb-0000-4000-8000-000000000002")
COMMAND = UUID("cccccccc-0000-4000-8000-000000000001")


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    copy = tmp_path / "events.sqlite"
    shutil.copyfile(DATA / "events-v1.sqlite", copy)
    runtime = open_runtime(
        Settings(data_dir=tmp_path / "data", event_store_url=f"sqlite:///{copy}")
    )
    yield runtime
    runtime.close()


def test_restores_at_their_bare_id_load_for_their_cluster_only(runtime: Runtime) -> None:
    store = runtime.store
    done = load_restore(store, "ids-one", DONE)
    assert done is not None and done.id == DONE and done.phase == "SUCCEEDED"
    assert load_restore(store, "another-tenant", DONE) is None
    # The squatting restore is a restore of its own cluster, never a cluster.
    squat = cluster_aggregate_id("squatted")
    assert load_restore(store, "ids-one", squat) is not None
    with pytest.raises(WrongRecordType) as refused:
        store.get_or_none(squat, Cluster)
    assert refused.value.code == 404 and "Restore" not in refused.value.reason


def test_the_outcome_of_the_recorded_start_restore_is_still_found(runtime: Runtime) -> None:
    known = runtime.store.get_or_none(CommandOutcome.create_id(COMMAND, "ops"), CommandOutcome)
    assert known is not None and (known.command_type, known.code) == ("StartRestore", 200)


def test_a_cluster_id_squatted_before_is_refused_with_its_reason(
    runtime: Runtime, tmp_path: Path
) -> None:
    store, clock = runtime.store, runtime.clock
    # The version's own key (an API key of version 0.1's kind): the API signs for it.
    key = (DATA / "events-v1.api-key").read_text().strip()
    keys = Keys(store, runtime.db, tmp_path / "signing-keys", clock)
    process = CommandProcessor(
        topics.CLUSTER_COMMANDS,
        TypeAdapter(ClusterCommand),
        HANDLERS,
        CommandContext(store, clock, "test"),
        keys.verifier,
    )
    command = {
        "type": "RegisterCluster",
        "command_id": "dddddddd-0000-4000-8000-000000000001",
        "cluster_id": "squatted",
        "name": "s",
        "organization": "acme",
        "tier": "STANDARD",
        "regions": ["us-east-1"],
        "database_version": "15",
        "connection_ref": "postgresql://backup@db.example:5432/postgres",
    }
    signed = keys.signed(key, process.topic, command)
    result = process.process(json.dumps(signed).encode()).result
    assert result.code == 409, result.reason
    assert result.reason is not None and "choose another cluster id" in result.reason
    # Any other command on that id is answered as for a cluster that does not exist (the one
    # access rule), never naming the record that sits there.
    change = {
        "type": "UpdateBackupSettings",
        "command_id": "dddddddd-0000-4000-8000-000000000002",
        "cluster_id": "squatted",
        "retention_days": 7,
    }
    signed = keys.signed(key, process.topic, change)
    refused = process.process(json.dumps(signed).encode()).result
    assert (refused.code, refused.reason) == (404, "cluster squatted is not registered")


def test_views_and_the_retention_index_of_the_old_shape_are_rebuilt(runtime: Runtime) -> None:
    views = ReadModels(runtime.db)
    Projector(runtime.store, views).catch_up()  # opening them drops the old shape
    assert views.position() == runtime.store.max_position()
    docs, _ = views.restores("ids-one", 1, 10)
    assert {d["id"] for d in docs} == {str(DONE), str(STUCK), str(cluster_aggregate_id("squatted"))}
    assert views.backup("ids-one", str(FULL)) is not None
    index = RetentionIndex(runtime.store, runtime.db)
    index.catch_up()
    assert {b.backup_id for b in index.backups_of(["ids-one"])["ids-one"]} == {
        str(FULL),
        str(RUNNING_BACKUP),
    }


def test_leases_keyed_by_bare_ids_are_reaped(runtime: Runtime) -> None:
    """The jobs running when the previous version stopped: their leases name bare ids."""
    executor = BackupExecutor(runtime, "reaper")
    assert executor.reap_once() == 1
    failed = load_backup(runtime.store, "ids-one", RUNNING_BACKUP)
    assert failed is not None and failed.error is not None
    assert failed.error["code"] == "LEASE_EXPIRED"
    restores = RestoreService(runtime, "reaper")
    # The restore is failed; dropping its temporary databases needs its cluster's server
    # (not here), so its lease is kept for the next pass.
    restores.reap_once()
    stuck = load_restore(runtime.store, "ids-one", STUCK)
    assert stuck is not None and stuck.error is not None
    assert stuck.error["code"] == "LEASE_EXPIRED"
