"""The projections service: follows the event store and keeps the read models current."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from managed_backups.services.projections.read_models import ReadModels
from managed_backups.shared.eventstore import EventStore, to_wire_event
from managed_backups.shared.sqldb import SqlDatabase

log = logging.getLogger(__name__)


class Projector:
    def __init__(
        self, store: EventStore, models: ReadModels, batch: int = 500, poll: float = 0.02
    ) -> None:
        self.store = store
        self.models = models
        self.batch = batch
        self.poll = poll
        models.create()

    def catch_up_once(self) -> int:
        """Apply the next batch; returns how many events were applied."""
        position = self.models.position()
        rows = self.store.notifications(position, self.batch)
        events = [to_wire_event(row.id, self.store.domain_event(row)) for row in rows]
        self.models.apply_batch(events)
        return len(events)

    def catch_up(self) -> None:
        while self.catch_up_once() == self.batch:
            pass

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            applied = await asyncio.to_thread(self.catch_up_once)
            if applied < self.batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.poll)


def rebuild(store: EventStore, db: SqlDatabase, prefix: str = "mb_view_") -> ReadModels:
    """Drop the read models and replay the whole log into them."""
    models = ReadModels(db, prefix)
    models.drop()
    Projector(store, models).catch_up()
    return models
