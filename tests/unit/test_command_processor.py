"""The command processor on an in-memory event store: whatever arrives, an answer comes back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from pydantic import TypeAdapter

from managed_backups.contracts import topics
from managed_backups.contracts.commands import ClusterCommand
from managed_backups.contracts.enums import ResourceType, Role
from managed_backups.shared.clock import WallClock
from managed_backups.shared.commands import (
    MAX_COMMAND_BYTES,
    CommandContext,
    CommandProcessor,
    Handled,
    json_depth_exceeds,
)
from managed_backups.shared.eventstore import EventStore
from managed_backups.shared.security import Principal
from managed_backups.shared.sqldb import SqlDatabase
from tests.principals import Keys


@pytest.fixture
def store() -> Iterator[EventStore]:
    store = EventStore(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    yield store
    store.close()


@pytest.fixture
def keys(store: EventStore, tmp_path: Path) -> Keys:
    return Keys(store, SqlDatabase(f"sqlite:///{tmp_path / 'shared.sqlite'}"), tmp_path / "keys")


def processor(keys: Keys, handler: Any) -> tuple[CommandProcessor, str]:
    clock = WallClock()
    key = keys.key("acme", "admin", (Role.ORG_ADMIN, ResourceType.ORGANIZATION, "acme"))
    return (
        CommandProcessor(
            topics.CLUSTER_COMMANDS,
            TypeAdapter(ClusterCommand),
            {"DeleteCluster": handler},
            CommandContext(keys.identity.store, clock, "test"),
            keys.verifier,
        ),
        key,
    )


def send(keys: Keys, process: CommandProcessor, key: str, body: dict[str, Any]) -> dict[str, Any]:
    return keys.signed(key, process.topic, body)


def never(command: Any, principal: Principal, context: CommandContext) -> Handled:
    raise AssertionError("a poison message reached a handler")


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b'{"type": "Regi', "not valid JSON"),
        (b"[" * 1100 + b"]" * 1100, "nested deeper"),
        (b'{"a": "' + b"[" * 5000 + b'"}', "has no valid command_id"),  # brackets in a string
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b" " * (MAX_COMMAND_BYTES + 1), "exceeds"),
    ],
)
def test_poison_is_rejected_and_dead_lettered(keys: Keys, raw: bytes, error: str) -> None:
    process, _ = processor(keys, never)
    processed = process.process(raw)
    assert processed.result.code == 422 and error in (processed.result.reason or "")
    assert processed.dead_letter_error is not None and error in processed.dead_letter_error


def test_an_unreadable_command_that_names_its_id_is_answered(keys: Keys) -> None:
    process, _ = processor(keys, never)
    command_id = uuid4()
    raw = f'{{"command_id": "{command_id}", "x": '.encode() + b"[" * 100 + b"]" * 100 + b"}"
    processed = process.process(raw)
    assert processed.result.command_id == command_id and processed.result.code == 422


def test_the_500_path_carries_the_command_id(keys: Keys) -> None:
    def broken(command: Any, principal: Principal, context: CommandContext) -> Handled:
        raise RuntimeError("a bug")

    process, key = processor(keys, broken)
    command_id = uuid4()
    body = {"type": "DeleteCluster", "command_id": str(command_id), "cluster_id": "c1"}
    processed = process.process(json.dumps(send(keys, process, key, body)).encode())
    assert processed.result.code == 500 and processed.result.command_id == command_id


def test_depth_scan() -> None:
    assert not json_depth_exceeds(b'{"a": [1, {"b": "[[[[["}]}', 3)
    assert json_depth_exceeds(b'{"a": [1, {"b": [[]]}]}', 3)
    assert not json_depth_exceeds(b'{"a": "\\"[[[[["}', 1)


def test_idempotency_is_keyed_by_sender_and_body(keys: Keys) -> None:
    calls: list[str] = []

    def delete(command: Any, principal: Principal, context: CommandContext) -> Handled:
        calls.append(principal.name)
        return Handled([], command.cluster_id)

    process, admin = processor(keys, delete)
    other = keys.key("acme", "other", (Role.ORG_ADMIN, ResourceType.ORGANIZATION, "acme"))
    command_id = str(uuid4())

    def deliver(key: str, cluster_id: str = "c1") -> Any:
        body = {"type": "DeleteCluster", "command_id": command_id, "cluster_id": cluster_id}
        return process.process(json.dumps(send(keys, process, key, body)).encode()).result

    first = deliver(admin)
    assert first.code == 200 and calls == ["acme/admin"]
    again = deliver(admin)
    assert again.code == 200 and again.command_id == first.command_id and calls == ["acme/admin"]
    mismatch = deliver(admin, "c2")
    assert mismatch.code == 409 and "another command" in (mismatch.reason or "")
    assert calls == ["acme/admin"]
    # Another principal's use of the same id is its own command: it cannot be pre-empted.
    assert deliver(other).code == 200 and calls == ["acme/admin", "acme/other"]
