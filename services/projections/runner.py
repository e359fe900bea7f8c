"""Composition roots of the relay and the projections service."""

from __future__ import annotations

import asyncio

from services.projections.read_models import ReadModels
from services.projections.service import Projector
from services.runtime import Runtime
from shared.bus import ensure_topics
from shared.relay import Relay


async def run_relay(runtime: Runtime, stop: asyncio.Event) -> None:
    await ensure_topics(runtime.settings.kafka_bootstrap_servers)
    relay = Relay(
        runtime.store,
        runtime.db,
        runtime.settings.kafka_bootstrap_servers,
        batch_size=runtime.settings.relay_batch_size,
    )
    await relay.run(stop)


async def run_projections(runtime: Runtime, stop: asyncio.Event) -> None:
    await Projector(runtime.store, ReadModels(runtime.db)).run(stop)
