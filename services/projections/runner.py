"""Composition root of the projections service."""

from __future__ import annotations

import asyncio

from managed_backups.services.projections.service import Projector
from managed_backups.services.runtime import Runtime
from managed_backups.shared.loops import run_until_stopped
from managed_backups.shared.views import ReadModels


async def run_projections(runtime: Runtime, stop: asyncio.Event) -> None:
    projector = Projector(runtime.store, ReadModels(runtime.db))
    await run_until_stopped(projector.run, stop, "the projections")
