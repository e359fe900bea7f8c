"""A message no consumer can use never stops its partition.

Whatever its headers, encoding or nesting depth, an undecodable or invalid message becomes a
rejection (when it names a command id) and a dead-letter entry, is logged, and the consumer moves
on to the next message of the same partition.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from managed_backups.contracts import topics
from tests.harness import System, consume, publish_raw

pytestmark = pytest.mark.integration

JSON = [("content-type", b"application/json")]


@pytest.fixture
async def system(tmp_path: Path, kafka: str):  # type: ignore[no-untyped-def]
    system = await System.start(
        tmp_path, f"sqlite:///{tmp_path / 'events.sqlite'}", kafka, services=("scheduler",)
    )
    yield system
    await system.close()


@pytest.mark.parametrize("topic", [topics.CLUSTER_COMMANDS])
async def test_poison_messages_are_dead_lettered_and_the_partition_moves_on(
    system: System, kafka: str, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    key = f"poison-{uuid4().hex[:6]}".encode()
    marker = uuid4().hex
    poisons: list[tuple[bytes, list[tuple[str, bytes]] | None]] = [
        (f'{{"type": "Regi{marker}'.encode(), JSON),  # malformed JSON said to be JSON
        (f'{{"m": "{marker}", "x": '.encode() + b"[" * 1100 + b"]" * 1100 + b"}", JSON),
        (f'{{"m": "{marker}", "x": '.encode() + b"[" * 100_000 + b"]" * 100_000 + b"}", None),
        (b"\xff\xfe" + marker.encode(), [("content-type", b"text/plain")]),
        (marker.encode(), [("content-type", b"application/x-unknown"), ("x", b"\xff")]),
    ]
    for payload, headers in poisons:
        await publish_raw(kafka, topic, payload, key=key, headers=headers)
    # A command with a command id but a body too deep to decode is answered, not just dropped.
    deep_id = str(uuid4())
    deep = f'{{"command_id": "{deep_id}", "type": "DeleteCluster", "x": '
    await publish_raw(kafka, topic, deep.encode() + b"[" * 5000 + b"]" * 5000 + b"}", key=key)
    # The next command on the same partition is handled.
    cluster_id = f"after-{uuid4().hex[:6]}"
    command_id = str(uuid4())
    command = {
        "type": "RegisterCluster",
        "command_id": command_id,
        "cluster_id": cluster_id,
        "name": "after",
        "organization": "acme",
        "tier": "STANDARD",
        "regions": ["us-east-1"],
        "database_version": "15",
        "connection_ref": "postgresql://backup@db.internal:5432/postgres",
    }
    command = await system.signed(topic, command)
    await publish_raw(kafka, topic, json.dumps(command).encode(), key=key, headers=JSON)

    results: dict[str, dict[str, Any]] = {}

    def answered(result: dict[str, Any]) -> bool:
        if result.get("command_id") in (command_id, deep_id):
            results[result["command_id"]] = result
        return len(results) == 2

    await consume(kafka, topics.COMMAND_RESULTS, answered)
    assert results[command_id]["code"] == 200, results[command_id]
    assert results[deep_id]["code"] == 422 and "nested" in results[deep_id]["reason"]

    letters: list[dict[str, Any]] = []

    def dead(entry: dict[str, Any]) -> bool:
        if marker in entry["payload"] or deep_id in entry["payload"]:
            letters.append(entry)
        return len(letters) == len(poisons) + 1

    await consume(kafka, topics.DEAD_LETTER, dead)
    assert all(entry["topic"] == topic and entry["error"] for entry in letters)
    assert sum("nested" in entry["error"] for entry in letters) == 3
    assert any("dead letter" in r.getMessage() for r in caplog.records)
