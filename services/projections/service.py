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

So this module keeps the part of that design that fits, through the shared
:class:`~managed_backups.shared.log_follower.LogFollower` every service uses: a position (the
``views`` row of ``mb_view_position``) committed atomically with the rows by a compare-and-set,
read back on start, and batches polled after it.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import multiprocessing
import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor

from eventsourcing.persistence import Notification
from pydantic import TypeAdapter

from managed_backups.contracts.events import DomainEvent, WireEvent
from managed_backups.services.projections.handlers import ViewProjection
from managed_backups.shared.eventstore import EventStore, open_event_store, to_wire_event
from managed_backups.shared.log_follower import LogFollower
from managed_backups.shared.sqldb import SqlDatabase
from managed_backups.shared.views import ReadModels
from managed_backups.shared.views.schema import DEFAULT_PREFIX


class Projector:
    """Applies the log after the views' position, in batches, to the tables ``views`` reads."""

    def __init__(
        self,
        store: EventStore,
        views: ReadModels,
        batch: int = 500,
        poll: float = 0.02,
        create: bool = True,
    ) -> None:
        self.store = store
        self.views = views
        self.projection = ViewProjection(views.db, views.prefix)
        self.follower = LogFollower(store, views.db, self.projection.at, batch=batch, poll=poll)
        self.batch = batch
        if create:
            views.create()

    def decode(self, row: Notification) -> WireEvent:
        """A stored event in its contract form (what the handlers and the audit trail take)."""
        return to_wire_event(row.id, self.store.domain_event(row))

    def read(self, after: int) -> tuple[int, list[WireEvent]]:
        """The batch after position ``after``: its last position and its contract events."""
        rows = self.follower.read(after)
        return (rows[-1].id if rows else after), [self.decode(row) for row in rows]

    def catch_up_once(self) -> int:
        """Apply the next batch; returns how many events were applied (0 also when another
        writer moved the views meanwhile: the next call reads where they are now)."""
        return self.follower.follow_once(self.projection.apply_in, self.decode)

    def catch_up(self) -> None:
        self.follower.catch_up(self.projection.apply_in, self.decode)

    def replay(self) -> None:
        """Catch up from the views' position to the end of the log, reading and decoding the
        next batch in a second thread while this one applies the current one (the database
        works on a batch while Python decodes the next)."""
        after = self.views.position()
        with ThreadPoolExecutor(1, thread_name_prefix="replay-read") as reader:
            coming = reader.submit(self.read, after)
            while True:
                last, events = coming.result()
                if not events:
                    return
                coming = reader.submit(self.read, last)
                if not self.projection.apply_batch(events, after=after):
                    raise RuntimeError("another writer moved the views being rebuilt")
                after = last

    async def run(self, stop: asyncio.Event) -> None:
        await self.follower.run(stop, lambda: asyncio.to_thread(self.catch_up_once))


def _decoded(url: str, first: int, last: int) -> list[str]:
    """(In a worker process.) The contract events at positions ``first``..``last`` of the
    store at ``url``, as JSON: decoding the stored events is half a replay's work, and a worker
    does it beside the process that writes the views."""
    store = _WORKER_STORES.get(url)
    if store is None:
        if not _WORKER_STORES:
            atexit.register(_close_worker_stores)
        store = _WORKER_STORES[url] = open_event_store(url)
    rows = store.recorder.select_notifications(
        start=first, limit=last - first + 1, stop=last, inclusive_of_start=True
    )
    return [
        to_wire_event(row.id, store.domain_event(row)).model_dump_json(by_alias=True)
        for row in rows
    ]


_WORKER_STORES: dict[str, EventStore] = {}


def _close_worker_stores() -> None:
    """Close and drop a worker's stores while the interpreter is whole (the library's
    finalizer fails once its modules are torn down)."""
    while _WORKER_STORES:
        _WORKER_STORES.popitem()[1].close()


_WIRE: TypeAdapter[WireEvent] = TypeAdapter(DomainEvent)


def replay_in_processes(projector: Projector, url: str, workers: int) -> None:
    """Catch ``projector`` up as ``Projector.replay`` does, the stored events decoded by
    ``workers`` processes (a few batches ahead, in order) while this one writes the views."""
    after = projector.views.position()
    end = projector.store.max_position()
    step = projector.batch
    ranges = iter((first, min(first + step - 1, end)) for first in range(after + 1, end + 1, step))
    context = multiprocessing.get_context("spawn")  # no copy of this process's connections
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        coming: deque[Future[list[str]]] = deque(
            pool.submit(_decoded, url, *r) for r in itertools.islice(ranges, 2 * workers)
        )
        while coming:
            texts = coming.popleft().result()
            if (following := next(ranges, None)) is not None:
                coming.append(pool.submit(_decoded, url, *following))
            events = [_WIRE.validate_json(text) for text in texts]
            if not events:
                continue
            if not projector.projection.apply_batch(events, after=after):
                raise RuntimeError("another writer moved the views being rebuilt")
            after = events[-1].position
    projector.replay()  # what was appended meanwhile


REBUILD_BATCH = 5000
"""Events a rebuild applies per transaction (the live service takes 500: its batches are short
anyway, and a reader waits for each)."""


def rebuild(
    store: EventStore, db: SqlDatabase, prefix: str = DEFAULT_PREFIX, batch: int = REBUILD_BATCH
) -> ReadModels:
    """Replay the whole log into side tables (``<prefix>rebuild_*``, without indexes), then put
    them in place of the views under ``prefix`` in one transaction (``Tables.replace``, which
    builds the indexes). Readers keep the old views until then; a projections service running
    meanwhile goes on from the rebuilt views' position (its next batch finds the position moved
    and rereads it). With more than one core the stored events are decoded by worker processes
    (``replay_in_processes``; started with ``spawn``, so a script calling this needs the
    ``if __name__ == "__main__":`` guard); the views live in the event store's database, so
    ``db.url`` is the store's."""
    side = ReadModels(db, f"{prefix}rebuild_")
    side.drop()
    side.tables.create(db, indexes=False)
    projector = Projector(store, side, batch=batch, create=False)
    workers = min(4, (os.cpu_count() or 1) - 1)
    if workers > 0:
        replay_in_processes(projector, db.url, workers)
    else:
        projector.replay()
    views = ReadModels(db, prefix)
    side.tables.replace(db, views.tables)
    return views
