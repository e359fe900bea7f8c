"""Composition root of the relay: the event store's notification log → ``managed-backups.events``."""

from __future__ import annotations

import asyncio

from managed_backups.services.relay.relay import Relay
from managed_backups.services.runtime import Runtime
from managed_backups.shared.bus import ensure_topics
from managed_backups.shared.loops import run_until_stopped


async def run(runtime: Runtime, stop: asyncio.Event) -> None:
    settings = runtime.settings
    await ensure_topics(settings.kafka_bootstrap_servers, auth=settings.kafka_auth())
    relay = Relay(
        runtime.store,
        runtime.db,
        settings.kafka_bootstrap_servers,
        batch_size=settings.relay_batch_size,
        auth=settings.kafka_auth(),
        owner=f"relay-{settings.instance}",
        lease_seconds=settings.relay_lease_seconds,
    )
    await run_until_stopped(relay.run, stop, "the relay")
