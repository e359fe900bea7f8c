"""The relay: publishes the event store's notification log to ``managed-backups.events``.

Transactional-outbox style. Events are read in notification order and sent by one idempotent
producer, keyed by cluster id (so one cluster's events land on one partition, in order); the relay's
position is saved in the database only after the broker acknowledged the whole batch. A crash
between the two republishes at most one batch: never a loss, never a reordering, and consumers
drop the repeats by ``event_id`` (or ``position``).

An event that cannot be published (larger than the topic's limit, refused by the broker as too
large, or with no contract form) never stops the relay: it is set aside with an ERROR log line
and a dead-letter entry naming its event-store position, and the relay goes on with the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError, RecordTooLargeError
from eventsourcing.persistence import Notification

from managed_backups.contracts import topics
from managed_backups.contracts.results import DeadLetter
from managed_backups.shared.bus import DEAD_LETTER_PAYLOAD_LIMIT
from managed_backups.shared.eventstore import EventStore, to_wire_event
from managed_backups.shared.sqldb import SqlDatabase

log = logging.getLogger(__name__)
MAX_EVENT_BYTES = 900 * 1024
"""Below Kafka's default message limit (1 MiB) with room for the key and headers."""


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
        # Raw aiokafka on purpose: a batch is enqueued with ``send()`` (delivery futures, one
        # idempotent producer, so per-partition order holds) and its acknowledgements are
        # gathered afterwards, each record's failure mapped on its own (too large: set aside;
        # anything else: the batch again) before the position is saved. FastStream's
        # ``publish(..., no_confirm=True)`` could express this too; it is declared for the
        # AsyncAPI document in ``services/relay/service.py``.
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
        sends: list[tuple[Notification, bytes, asyncio.Future[Any]]] = []
        for row in rows:
            try:
                wire = to_wire_event(row.id, self.store.domain_event(row))
            except Exception as exc:  # an event no contract describes: set aside, never a stop
                await self._set_aside(producer, row, b"", f"{type(exc).__name__}: {exc}")
                continue
            value = wire.model_dump_json().encode()
            if len(value) > MAX_EVENT_BYTES:
                await self._set_aside(
                    producer,
                    row,
                    value,
                    f"{wire.type} event of {len(value)} bytes exceeds the "
                    f"{MAX_EVENT_BYTES}-byte limit of {topics.EVENTS}",
                )
                continue
            key = (wire.cluster_id or str(wire.aggregate_id)).encode()
            future = await producer.send(
                topics.EVENTS,
                value=value,
                key=key,
                headers=[("type", wire.type.encode()), ("position", str(row.id).encode())],
            )
            sends.append((row, value, future))
        outcomes = await asyncio.gather(*(f for _, _, f in sends), return_exceptions=True)
        for (row, value, _), outcome in zip(sends, outcomes, strict=True):
            if isinstance(outcome, MessageSizeTooLargeError | RecordTooLargeError):
                await self._set_aside(producer, row, value, f"the broker refused it: {outcome}")
            elif isinstance(outcome, BaseException):
                raise outcome  # transient: the whole batch is sent again (consumers dedupe)
        self.position = rows[-1].id
        await asyncio.to_thread(save_position, self.db, self.name, self.position)
        return len(rows)

    async def _set_aside(
        self, producer: AIOKafkaProducer, row: Notification, value: bytes, error: str
    ) -> None:
        """An event that cannot go on the events topic: the relay moves on (the store keeps it,
        readers of the store and the API still see it), and says so loudly: an ERROR log line and
        a dead-letter entry naming its position, for an operator's alert."""
        log.error(
            "event at position %s (%s) cannot be published and is set aside: %s",
            row.id,
            row.topic,
            error,
        )
        entry = DeadLetter(
            topic=topics.EVENTS,
            partition=-1,
            offset=row.id,
            key=str(row.originator_id),
            payload=value[:DEAD_LETTER_PAYLOAD_LIMIT].decode(errors="replace"),
            error=f"event-store position {row.id} ({row.topic}) not published: {error}",
            received_at=datetime.now(UTC),
        )
        await (
            await producer.send(
                topics.DEAD_LETTER,
                value=entry.model_dump_json().encode(),
                key=str(row.id).encode(),
                headers=[("content-type", b"application/json")],
            )
        )
