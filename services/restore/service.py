"""Composition root of the restore service: restore-commands consumer, jobs, lease reaper."""

from __future__ import annotations

import asyncio

from pydantic import TypeAdapter

from managed_backups.contracts import topics
from managed_backups.contracts.commands import RestoreCommand
from managed_backups.services.restore.restorer import RestoreService
from managed_backups.services.runtime import Runtime, serve_commands
from managed_backups.shared.bus import ensure_topics

GROUP = "managed-backups.restore"


async def run(runtime: Runtime, stop: asyncio.Event) -> None:
    settings = runtime.settings
    await ensure_topics(settings.kafka_bootstrap_servers, auth=settings.kafka_auth())
    name = f"restore-{settings.instance}"
    service = RestoreService(runtime, name)
    await serve_commands(
        runtime,
        stop,
        name=name,
        group=GROUP,
        topic=topics.RESTORE_COMMANDS,
        commands=TypeAdapter(RestoreCommand),
        handlers={"StartRestore": service.start_restore},
        background=service.reap,
        on_stop=service.stop,
    )
