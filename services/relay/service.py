"""Composition root of the relay: the event store's notification log → ``managed-backups.events``."""

from __future__ import annotations

import asyncio

from managed_backups.services.relay.relay import Relay
from managed_backups.services.runtime import Runtime
from managed_backups.shared.bus import ensure_topics


async def run(runtime: Runtime, stop: asyncio.Event) -> None:
    await ensure_topics(runtime.settings.kafka_bootstrap_servers)
    relay = Relay(
        runtime.store,
        runtime.db,
        runtime.settings.kafka_bootstrap_servers,
        batch_size=runtime.settings.relay_batch_size,
    )
    await relay.run(stop)
