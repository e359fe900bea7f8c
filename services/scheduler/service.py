"""Composition root of the scheduler: cluster-commands consumer + the schedule loop."""

from __future__ import annotations

import asyncio
from typing import Any

from faststream.kafka import KafkaBroker
from faststream.kafka.publisher import DefaultPublisher
from pydantic import TypeAdapter

from managed_backups.contracts import topics
from managed_backups.contracts.commands import ClusterCommand, TakeBackup
from managed_backups.services.runtime import Runtime
from managed_backups.services.scheduler.cluster_commands import HANDLERS
from managed_backups.services.scheduler.scheduler import Scheduler
from managed_backups.shared import jobs
from managed_backups.shared.bus import (
    bind_processor,
    declare_command_subscriber,
    ensure_topics,
    make_broker,
    publish_json,
)
from managed_backups.shared.commands import CommandContext, CommandProcessor
from managed_backups.shared.faults import fault_points
from managed_backups.shared.loops import run_until_stopped
from managed_backups.shared.security import SERVICE_SUBJECT

GROUP = "managed-backups.scheduler"


def declare(broker: KafkaBroker) -> DefaultPublisher:
    """The scheduler's operations: it receives cluster commands and sends TakeBackup."""
    declare_command_subscriber(broker, topics.CLUSTER_COMMANDS, GROUP)
    return broker.publisher(
        topics.BACKUP_COMMANDS,
        title=f"{topics.BACKUP_COMMANDS}:Scheduler",
        schema=TakeBackup,
        description="Scheduled backups, sent by the scheduler to the backup-executor.",
    )


async def run(runtime: Runtime, stop: asyncio.Event) -> None:
    """The service's composition root: :func:`serve` as "scheduler"."""
    await serve(runtime, stop, "scheduler")


async def serve(runtime: Runtime, stop: asyncio.Event, name: str) -> None:
    """Serve cluster commands and run the schedule loop until ``stop``.

    ``name`` is who the instance's ``BackupScheduled`` events say decided them and the name it
    reports its reached time under on the simulated clock: every instance is "scheduler" in
    production; a test running two at once names the second to wait for each of them."""
    settings = runtime.settings
    await ensure_topics(settings.kafka_bootstrap_servers, auth=settings.kafka_auth())
    broker = make_broker(
        settings.kafka_bootstrap_servers,
        f"scheduler-{settings.instance}",
        auth=settings.kafka_auth(),
    )
    processor = CommandProcessor(
        topics.CLUSTER_COMMANDS,
        TypeAdapter(ClusterCommand),
        HANDLERS,
        CommandContext(runtime.store, runtime.clock, "scheduler"),
        runtime.verifier,
    )
    take_backups = declare(broker)
    bind_processor(broker, processor)
    await broker.start()

    async def send(command: dict[str, Any]) -> None:
        await publish_json(take_backups, command, str(command["cluster_id"]))

    signer = runtime.command_signer("scheduler")

    def sign(fields: dict[str, Any]) -> dict[str, Any]:
        """The scheduler sends TakeBackup as its own service principal, and nothing else."""
        return signer.signed(f"{SERVICE_SUBJECT}scheduler", topics.BACKUP_COMMANDS, fields)

    scheduler = Scheduler(
        runtime.store,
        runtime.clock,
        send,
        sign,
        name=name,
        poll_seconds=settings.poll_interval_seconds,
        resend_after_seconds=settings.scheduled_backup_resend_seconds,
        held_exclusively=lambda: jobs.clusters_held_exclusively(runtime.db),
        fault_point=fault_points(settings),
    )
    try:
        # The event store restarting (or paused) does not end the service: the loop starts over
        # from the store.
        await run_until_stopped(scheduler.run, stop, "the schedule loop")
    finally:
        await broker.stop()
