"""Foundation: the cluster registry end to end on a real broker and a real event store."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from managed_backups.contracts import topics
from managed_backups.services.projections.service import rebuild
from managed_backups.shared.domain.cluster import Cluster
from managed_backups.shared.domain.ids import cluster_aggregate_id
from managed_backups.shared.eventstore import EventStore, open_event_store
from managed_backups.shared.sqldb import SqlDatabase
from managed_backups.shared.views import ReadModels
from tests.harness import System, consume, publish_raw

pytestmark = pytest.mark.integration


@pytest.fixture
async def system(tmp_path: Path, store_url: str, kafka: str):  # type: ignore[no-untyped-def]
    system = await System.start(tmp_path, store_url, kafka)
    yield system
    await system.close()


async def test_register_then_query_then_delete(system: System) -> None:
    cluster_id = f"orders-{uuid4().hex[:8]}"
    result = await system.register(cluster_id)
    assert result.status.value == "ACCEPTED", result
    await system.wait_projection(result.position)
    assert system.http is not None
    response = await system.http.get(f"/api/v1/clusters/{cluster_id}")
    assert response.status_code == 200, response.text
    cluster = response.json()
    assert cluster["tier"] == "STANDARD"
    assert cluster["backup_region"] in ["us-east-1", "eu-west-1", "ap-south-1"]
    assert cluster["backups_config"] == {
        "enabled": True,
        "frequency_minutes": 60,
        "retention_days": 30,
    }

    deleted = await system.command(
        topics.CLUSTER_COMMANDS, {"type": "DeleteCluster", "cluster_id": cluster_id}
    )
    assert deleted.code == 200, deleted
    await system.wait_projection(deleted.position)
    assert (await system.http.get(f"/api/v1/clusters/{cluster_id}")).json()["state"] == "DELETED"

    events = (await system.http.get(f"/api/v1/clusters/{cluster_id}/events")).json()["events"]
    types = [e["type"] for e in events]
    assert types[0] == "ClusterRegistered" and types[-1] == "ClusterDeleted"
    positions = [e["position"] for e in events]
    assert positions == sorted(positions)
    assert all(e["cluster_id"] == cluster_id for e in events)
    assert all("credential" not in json.dumps(e) for e in events)

    after = await system.command(
        topics.CLUSTER_COMMANDS,
        {"type": "UpdateBackupSettings", "cluster_id": cluster_id, "frequency_minutes": 30},
    )
    assert (after.code, after.reason) == (404, f"cluster {cluster_id} was deleted")


async def test_backup_region_is_random_among_regions(system: System) -> None:
    regions = ["r-a", "r-b", "r-c", "r-d"]
    chosen = set()
    for _ in range(12):
        cluster_id = f"c-{uuid4().hex[:8]}"
        result = await system.register(cluster_id, regions=regions)
        await system.wait_projection(result.position)
        assert system.http is not None
        chosen.add(
            (await system.http.get(f"/api/v1/clusters/{cluster_id}")).json()["backup_region"]
        )
    assert chosen <= set(regions)
    assert len(chosen) > 1  # 12 draws from 4 regions all equal: probability 4 * (1/4)**12


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_invalid_commands_are_rejected_with_reasons_and_the_consumer_keeps_serving(
    system: System, kafka: str
) -> None:
    cluster_id = f"dup-{uuid4().hex[:8]}"
    assert (await system.register(cluster_id)).code == 200
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"tier": "PLATINUM"}, 400, "tier: Input should be 'BASIC', 'STANDARD' or 'ADVANCED'"),
        ({"regions": []}, 400, "regions: a cluster needs at least one region"),
        ({"regions": ["a", "b", "a"]}, 400, "region 'a' is listed more than once"),
        ({"cluster_id": cluster_id}, 409, f"cluster {cluster_id} is already registered"),
        (
            {"connection_ref": "postgresql://u:secret@h/db"},
            400,
            "connection_ref must not contain a password",
        ),
    ]
    for fields, code, reason in cases:
        result = await system.register(fields.pop("cluster_id", f"x-{uuid4().hex[:8]}"), **fields)
        assert result.code == code, (fields, result)
        assert result.reason is not None and reason in result.reason, (fields, result.reason)

    unknown = await system.command(
        topics.CLUSTER_COMMANDS, {"type": "DeleteCluster", "cluster_id": "no-such-cluster"}
    )
    assert (unknown.code, unknown.reason) == (404, "cluster no-such-cluster is not registered")

    assert system.gateway is not None
    no_credential = await system.gateway.request(
        topics.CLUSTER_COMMANDS,
        {"type": "DeleteCluster", "command_id": str(uuid4()), "cluster_id": cluster_id},
    )
    assert no_credential.code == 401 and "no token" in (no_credential.reason or "")
    unsigned = {"type": "DeleteCluster", "cluster_id": cluster_id}
    for token, reason in ((12345, "no token"), ("not-a-jwt", "the command's token is not valid")):
        refused = await system.gateway.request(
            topics.CLUSTER_COMMANDS, {**unsigned, "command_id": str(uuid4()), "token": token}
        )
        assert refused.code == 401 and reason in (refused.reason or ""), refused
    # Version 1's commands carried the sender's API key itself: refused, whatever the key.
    legacy = await system.gateway.request(
        topics.CLUSTER_COMMANDS,
        {**unsigned, "command_id": str(uuid4()), "credential": system.admin_key},
    )
    assert legacy.code == 401 and "API keys no longer travel on topics" in (legacy.reason or "")

    marker = uuid4().hex
    await publish_raw(kafka, topics.CLUSTER_COMMANDS, f'{{"type": "Regis {marker}'.encode())
    await publish_raw(kafka, topics.CLUSTER_COMMANDS, b"[1, 2, 3]")

    letters: list[dict[str, Any]] = []

    def dead(entry: dict[str, Any]) -> bool:
        if marker in entry["payload"] or entry["payload"] == "[1, 2, 3]":
            letters.append(entry)
        return len(letters) == 2

    await consume(kafka, topics.DEAD_LETTER, dead)
    by_payload = {entry["payload"]: entry for entry in letters}  # two partitions: any order
    malformed = next(e for p, e in by_payload.items() if marker in p)
    assert malformed["error"].startswith("message is not valid JSON")
    assert by_payload["[1, 2, 3]"]["error"] == "a command must be a JSON object, got list"
    assert malformed["topic"] == topics.CLUSTER_COMMANDS

    # Still serving, and the cluster is intact.
    assert (await system.register(f"ok-{uuid4().hex[:8]}")).code == 200
    assert system.http is not None
    response = await system.http.get(f"/api/v1/clusters/{cluster_id}")
    assert response.json()["state"] == "READY"


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_a_repeated_command_id_changes_nothing_and_gets_the_same_result(
    system: System,
) -> None:
    cluster_id = f"idem-{uuid4().hex[:8]}"
    assert (await system.register(cluster_id)).code == 200
    command = {
        "type": "UpdateBackupSettings",
        "command_id": str(uuid4()),
        "cluster_id": cluster_id,
        "retention_days": 7,
    }
    first = await system.command(topics.CLUSTER_COMMANDS, command)
    second = await system.command(topics.CLUSTER_COMMANDS, command)
    assert first.code == second.code == 200
    assert (first.command_id, first.reason) == (second.command_id, second.reason)
    # A second *different* retention change is refused; a repeat of the first is not.
    other = await system.command(
        topics.CLUSTER_COMMANDS,
        {"type": "UpdateBackupSettings", "cluster_id": cluster_id, "retention_days": 90},
    )
    assert other.code == 409
    await system.wait_projection(other.position)
    assert system.http is not None
    events = (await system.http.get(f"/api/v1/clusters/{cluster_id}/events")).json()["events"]
    assert [e["type"] for e in events].count("BackupSettingsUpdated") == 1


async def test_projection_dropped_and_rebuilt_equals_the_live_one(system: System) -> None:
    clusters = [f"p{i}-{uuid4().hex[:6]}" for i in range(5)]
    for cluster_id in clusters:
        await system.register(cluster_id)
        await system.command(
            topics.CLUSTER_COMMANDS,
            {"type": "UpdateBackupSettings", "cluster_id": cluster_id, "frequency_minutes": 30},
        )
    last = await system.command(
        topics.CLUSTER_COMMANDS, {"type": "DeleteCluster", "cluster_id": clusters[-1]}
    )
    await system.wait_projection(last.position)
    store = open_event_store(system.settings.store_url)
    db = SqlDatabase(system.settings.store_url)
    try:
        # The scheduler's BackupScheduled events belong in the comparison: wait until the live
        # clusters have one each, then stop the scheduler, so the store no longer grows while
        # the live views and the rebuilt ones are read.
        async with asyncio.timeout(30):
            while not all(scheduled(store, c) for c in clusters[:-1]):
                await asyncio.sleep(0.05)
        await system.stop_service("scheduler")
        await system.wait_projection(store.max_position())
        live = ReadModels(db).dump()
        rebuilt = rebuild(store, db, prefix="mb_rebuilt_").dump()
        assert rebuilt == live
        assert len(live["clusters"]) >= 5 and len(live["audit"]) > 10
        assert len(live["backups"]) >= 4
    finally:
        db.close()
        store.close()


def scheduled(store: EventStore, cluster_id: str) -> bool:
    """Whether the scheduler recorded a backup for the cluster."""
    stream = store.events.get(cluster_aggregate_id(cluster_id))
    return any(isinstance(e, Cluster.BackupScheduled) for e in stream)
