"""Contracts are closed, immutable, versioned, and exported for every topic."""

from __future__ import annotations

import json
from pathlib import Path
from uuid import uuid4

import pytest
from pydantic import ValidationError

from managed_backups.contracts import topics
from managed_backups.contracts.commands import RegisterCluster
from managed_backups.contracts.export import asyncapi_document, export


def register(**kw: object) -> RegisterCluster:
    body: dict[str, object] = {
        "command_id": str(uuid4()),
        "credential": "k",
        "cluster_id": "c1",
        "name": "n",
        "organization": "o",
        "tier": "STANDARD",
        "regions": ["us-east-1"],
        "database_version": "15",
        "connection_ref": "postgresql://u@h/db",
    }
    body.update(kw)
    return RegisterCluster.model_validate(body)


def test_closed_and_immutable() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        register(colour="blue")
    command = register()
    with pytest.raises(ValidationError):
        command.name = "other"  # type: ignore[misc]
    assert command.schema_version == 1
    assert "credential" not in repr(command)


def test_region_rules() -> None:
    with pytest.raises(ValidationError, match="at least one region"):
        register(regions=[])
    with pytest.raises(ValidationError, match="listed more than once"):
        register(regions=["a", "a"])


def test_export_covers_every_topic(tmp_path: Path) -> None:
    written = export(tmp_path)
    names = {p.name for p in written}
    assert "asyncapi.json" in names and "RegisterCluster.schema.json" in names
    document = json.loads((tmp_path / "asyncapi.json").read_text())
    assert {c["address"] for c in document["channels"].values()} == set(topics.ALL_TOPICS)
    assert document == asyncapi_document()
    for channel in document["channels"].values():
        for ref in channel["messages"].values():
            name = ref["$ref"].rsplit("/", 1)[1]
            assert name in document["components"]["schemas"]


def test_every_list_and_string_of_a_command_is_bounded() -> None:
    """One accepted command can never make an event larger than the events topic takes."""
    from managed_backups.contracts.commands import AnyCommand

    schema = json.dumps(__import__("pydantic").TypeAdapter(AnyCommand).json_schema(by_alias=True))
    with pytest.raises(ValidationError, match="at most 64 items"):
        register(regions=[f"r-{i}" for i in range(15_876)])
    with pytest.raises(ValidationError, match="not a valid region name"):
        register(regions=["us-east-1\n"])  # a full match, not a prefix match
    with pytest.raises(ValidationError, match="at most 512 characters"):
        register(credential="k" * 513)

    def unbounded(node: object, path: str = "") -> list[str]:
        found: list[str] = []
        if isinstance(node, dict):
            kind = node.get("type")
            if kind == "string" and not {"maxLength", "enum", "const", "format", "pattern"} & set(
                node
            ):
                found.append(path)
            if kind == "array" and "maxItems" not in node:
                found.append(path)
            for key, value in node.items():
                found += unbounded(value, f"{path}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                found += unbounded(value, f"{path}/{i}")
        return found

    assert unbounded(json.loads(schema)) == []


def test_cluster_ids_are_matched_whole() -> None:
    with pytest.raises(ValidationError):
        register(cluster_id="c1\n")
