"""Composition root of the restore service: restore-commands consumer, jobs, lease reaper."""

from __future__ import annotations

import asyncio

from pydantic import TypeAdapter

from managed_backups.contracts import topics
from managed_backups.contracts.commands import RestoreCommand
from managed_backups.services.restore.restorer import RestoreService
from managed_backups.services.runtime import Runtime
from managed_backups.shared.bus import ensure_topics, make_broker, subscribe_commands
from managed_backups.shared.commands import CommandContext, CommandProcessor

GROUP = "managed-backups.restore"


async def run(runtime: Runtime, stop: asyncio.Event) -> None:
    settings = runtime.settings
    await ensure_topics(settings.kafka_bootstrap_servers, auth=settings.kafka_auth())
    name = f"restore-{settings.instance}"
    service = RestoreService(runtime, name)
    broker = make_broker(settings.kafka_bootstrap_servers, name, auth=settings.kafka_auth())
    processor = CommandProcessor(
        topics.RESTORE_COMMANDS,
        TypeAdapter(RestoreCommand),
        {"StartRestore": service.start_restore},
        CommandContext(runtime.store, runtime.clock, name),
        runtime.verifier,
    )
    subscribe_commands(broker, processor, GROUP)
    await broker.start()
    try:
        await service.reap(stop)
    finally:
        await broker.stop()
        await service.stop()
