"""Composition root of the relay: the event store's notification log → ``managed-backups.events``."""

from __future__ import annotations

import asyncio

from faststream.kafka import KafkaBroker

from managed_backups.contracts import topics
from managed_backups.contracts.events import DomainEvent
from managed_backups.services.relay.relay import Relay
from managed_backups.services.runtime import Runtime
from managed_backups.shared.bus import ensure_topics


def declare(broker: KafkaBroker) -> None:
    """The relay's send operation, for the AsyncAPI document only: the relay itself publishes
    with aiokafka directly (see ``Relay.run``)."""
    broker.publisher(
        topics.EVENTS,
        title=f"{topics.EVENTS}:Relay",
        schema=DomainEvent,
        description="Every domain event, keyed by cluster id, in event-store order per cluster.",
    )


async def run(runtime: Runtime, stop: asyncio.Event) -> None:
    await ensure_topics(runtime.settings.kafka_bootstrap_servers)
    relay = Relay(
        runtime.store,
        runtime.db,
        runtime.settings.kafka_bootstrap_servers,
        batch_size=runtime.settings.relay_batch_size,
    )
    await relay.run(stop)
