"""The projections service: follows the event store's notification log and keeps the views current.

Why not ``eventsourcing``'s ``ProjectionRunner`` (9.5) with a tracking recorder, and what this
loop does instead:

- ``ProjectionRunner`` follows the log through ``ApplicationRecorder.subscribe()``; the SQLite
  recorder does not implement it (``NotImplementedError``), and our store is SQLite in development,
  in the tests and in single-machine installs.
- It constructs a second ``Application`` and a view through its own infrastructure factory, i.e.
  its own connection (pool) to the database, while the views must be written through
  :class:`~managed_backups.shared.sqldb.SqlDatabase`, the connection the readers share.
- A tracking recorder records its position in the library's own table (``tracking`` on SQLite,
  ``notification_tracking`` on PostgreSQL), keyed by application name; the views keep theirs in
  ``mb_view_position`` in the same transaction as the rows (and existing databases, rebuilds
  into prefixed tables and ``/healthz`` read it there). ``TrackingRecorder.wait()`` polls that
  table from a blocking call with a 100-800 ms backoff, slower than the API's 10 ms poll of ours.
- ``Projection.process_event`` gets one event and one tracking object per call, so each event
  would be one transaction; here a batch of up to ``batch`` events is one transaction, which is
  what keeps a full replay (``projections rebuild``) fast.
- Its runner processes events on its own threads; this service is an ``asyncio`` task stopped by
  the runtime's stop event.

So this module keeps the part of that design that fits: a position committed atomically with the
rows, read back on start, and a follower that polls ``select_notifications`` after it.
"""

from __future__ import annotations

import asyncio
import contextlib

from managed_backups.services.projections.handlers import ViewProjection
from managed_backups.shared.eventstore import EventStore, to_wire_event
from managed_backups.shared.sqldb import SqlDatabase
from managed_backups.shared.views import ReadModels


class Projector:
    """Applies the log after the views' position, in batches, to the tables ``views`` reads."""

    def __init__(
        self, store: EventStore, views: ReadModels, batch: int = 500, poll: float = 0.02
    ) -> None:
        self.store = store
        self.views = views
        self.projection = ViewProjection(views.db, views.prefix)
        self.batch = batch
        self.poll = poll
        views.create()

    def catch_up_once(self) -> int:
        """Apply the next batch; returns how many events were applied."""
        rows = self.store.notifications(self.views.position(), self.batch)
        self.projection.apply_batch(
            [to_wire_event(row.id, self.store.domain_event(row)) for row in rows]
        )
        return len(rows)

    def catch_up(self) -> None:
        while self.catch_up_once() == self.batch:
            pass

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if await asyncio.to_thread(self.catch_up_once) < self.batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.poll)


def rebuild(store: EventStore, db: SqlDatabase, prefix: str = "mb_view_") -> ReadModels:
    """Drop the views and replay the whole log into them."""
    views = ReadModels(db, prefix)
    views.drop()
    Projector(store, views).catch_up()
    return views
