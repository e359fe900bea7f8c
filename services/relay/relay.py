"""The relay: publishes the event store's notification log to ``managed-backups.events``.

Transactional-outbox style. Events are read in notification order and sent by one idempotent
producer, keyed by cluster id (so one cluster's events land on one partition, in order); the relay's
position is saved in the database only after the broker acknowledged the whole batch. A crash
between the two republishes at most one batch: never a loss, never a reordering, and consumers
drop the repeats by ``event_id`` (or ``position``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaProducer

from managed_backups.contracts import topics
from managed_backups.shared.eventstore import EventStore, to_wire_event
from managed_backups.shared.sqldb import SqlDatabase

log = logging.getLogger(__name__)


def ensure_relay_table(db: SqlDatabase) -> None:
    db.execute(
        "CREATE TABLE IF NOT EXISTS mb_relay_position (name TEXT PRIMARY KEY, position BIGINT NOT NULL)"
    )


def load_position(db: SqlDatabase, name: str) -> int:
    rows = db.query("SELECT position FROM mb_relay_position WHERE name = ?", (name,))
    return int(rows[0][0]) if rows else 0


def save_position(db: SqlDatabase, name: str, position: int) -> None:
    db.execute(
        "INSERT INTO mb_relay_position (name, position) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
        (name, position),
    )


class Relay:
    def __init__(
        self,
        store: EventStore,
        db: SqlDatabase,
        bootstrap_servers: str,
        name: str = "relay",
        batch_size: int = 500,
        poll_seconds: float = 0.02,
    ) -> None:
        self.store = store
        self.db = db
        self.bootstrap_servers = bootstrap_servers
        self.name = name
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        ensure_relay_table(db)
        self.position = load_position(db, name)

    async def run(self, stop: asyncio.Event) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            enable_idempotence=True,
            acks="all",
            linger_ms=2,
            client_id=f"managed-backups-{self.name}",
        )
        await producer.start()
        try:
            while not stop.is_set():
                sent = await self.relay_once(producer)
                if sent < self.batch_size:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=self.poll_seconds)
        finally:
            await producer.stop()

    async def relay_once(self, producer: AIOKafkaProducer) -> int:
        rows = await asyncio.to_thread(self.store.notifications, self.position, self.batch_size)
        if not rows:
            return 0
        futures = []
        for row in rows:
            wire = to_wire_event(row.id, self.store.domain_event(row))
            key = (wire.cluster_id or str(wire.aggregate_id)).encode()
            futures.append(
                await producer.send(
                    topics.EVENTS,
                    value=wire.model_dump_json().encode(),
                    key=key,
                    headers=[("type", wire.type.encode()), ("position", str(row.id).encode())],  # type: ignore[attr-defined]
                )
            )
        await asyncio.gather(*futures)
        self.position = rows[-1].id
        await asyncio.to_thread(save_position, self.db, self.name, self.position)
        return len(rows)
