"""Composition root of the backup-executor: backup-commands consumer, backups, lease reaper."""

from __future__ import annotations

import asyncio
import os

from pydantic import TypeAdapter

from managed_backups.contracts import topics
from managed_backups.contracts.commands import BackupCommand
from managed_backups.services.executor.executor import BackupExecutor
from managed_backups.services.runtime import Runtime, serve_commands
from managed_backups.shared.bus import ensure_topics
from managed_backups.shared.domain.connection_ref import libpq_environment_refusal

GROUP = "managed-backups.backup-executor"


async def run(runtime: Runtime, stop: asyncio.Event) -> None:
    settings = runtime.settings
    refusal = libpq_environment_refusal(os.environ)
    if refusal:
        raise RuntimeError(f"the backup-executor refuses to start: {refusal}")
    await ensure_topics(settings.kafka_bootstrap_servers, auth=settings.kafka_auth())
    name = f"backup-executor-{settings.instance}"
    executor = BackupExecutor(runtime, name)
    await serve_commands(
        runtime,
        stop,
        name=name,
        group=GROUP,
        topic=topics.BACKUP_COMMANDS,
        commands=TypeAdapter(BackupCommand),
        handlers={"TakeBackup": executor.take_backup, "VerifyBackup": executor.verify},
        background=executor.reap,
        on_stop=executor.stop,
    )
