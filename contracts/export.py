"""Export the contracts: one JSON Schema per message and one AsyncAPI 3.0 document for every topic.

Built from the pydantic models themselves, so the published specification cannot drift from what
the services validate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

from managed_backups.contracts import commands, events, results, topics

TOPIC_MESSAGES: dict[str, tuple[str, list[type[BaseModel]]]] = {
    topics.CLUSTER_COMMANDS: (
        "Cluster registry and backup settings commands; consumed by the scheduler.",
        [
            commands.RegisterCluster,
            commands.UpdateBackupSettings,
            commands.ChangeClusterTier,
            commands.DeleteCluster,
        ],
    ),
    topics.BACKUP_COMMANDS: (
        "TakeBackup (scheduled or on demand) and VerifyBackup; consumed by the backup-executor.",
        [commands.TakeBackup, commands.VerifyBackup],
    ),
    topics.RESTORE_COMMANDS: (
        "StartRestore; consumed by the restore service.",
        [commands.StartRestore],
    ),
    topics.RETENTION_COMMANDS: (
        "EnforceRetention (also run periodically); consumed by the retention service.",
        [commands.EnforceRetention],
    ),
    topics.EVENTS: (
        "Every domain event, keyed by cluster id, in event-store order per cluster.",
        [m for m in get_args(get_args(events.DomainEvent)[0])],
    ),
    topics.COMMAND_RESULTS: (
        "Accepted or rejected (code, reason) for every command, keyed by command id.",
        [results.CommandResult],
    ),
    topics.DEAD_LETTER: (
        "Messages that could not be processed, with the error.",
        [results.DeadLetter],
    ),
}


def all_models() -> list[type[BaseModel]]:
    seen: dict[str, type[BaseModel]] = {}
    for _, models in TOPIC_MESSAGES.values():
        for model in models:
            seen[model.__name__] = model
    return list(seen.values())


def asyncapi_document() -> dict[str, Any]:
    models = all_models()
    _, top = models_json_schema(
        [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
    )
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for topic, (description, topic_models) in TOPIC_MESSAGES.items():
        channel_id = topic.replace(".", "_").replace("-", "_")
        channel_messages = {}
        for model in topic_models:
            messages[model.__name__] = {
                "name": model.__name__,
                "title": model.__name__,
                "summary": (model.__doc__ or model.__name__).strip().splitlines()[0],
                "contentType": "application/json",
                "payload": {"$ref": f"#/components/schemas/{model.__name__}"},
            }
            channel_messages[model.__name__] = {"$ref": f"#/components/messages/{model.__name__}"}
        channels[channel_id] = {
            "address": topic,
            "description": description,
            "messages": channel_messages,
        }
        operations[f"send_{channel_id}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel_id}"},
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "managed-backups",
            "version": "1",
            "description": "Topics of managed-backups. Every message is JSON.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "kafka": {"host": "127.0.0.1:9092", "protocol": "kafka", "description": "default"}
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def export(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for model in all_models():
        path = directory / f"{model.__name__}.schema.json"
        path.write_text(json.dumps(model.model_json_schema(), indent=2, sort_keys=True) + "\n")
        written.append(path)
    unions: tuple[tuple[str, Any], ...] = (
        ("ClusterCommand", commands.ClusterCommand),
        ("BackupCommand", commands.BackupCommand),
        ("DomainEvent", events.DomainEvent),
    )
    for name, union in unions:
        path = directory / f"{name}.schema.json"
        schema = TypeAdapter(union).json_schema()
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    path = directory / "asyncapi.json"
    path.write_text(json.dumps(asyncapi_document(), indent=2, sort_keys=True) + "\n")
    written.append(path)
    return written
