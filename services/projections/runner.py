"""Composition root of the projections service."""

from __future__ import annotations

import asyncio

from managed_backups.services.projections.read_models import ReadModels
from managed_backups.services.projections.service import Projector
from managed_backups.services.runtime import Runtime


async def run_projections(runtime: Runtime, stop: asyncio.Event) -> None:
    await Projector(runtime.store, ReadModels(runtime.db)).run(stop)
