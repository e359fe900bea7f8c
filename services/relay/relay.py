"""The relay: publishes the event store's notification log to ``managed-backups.events``.

Transactional-outbox style. Events are read in notification order and sent by one idempotent
producer, keyed by cluster id (so one cluster's events land on one partition, in order); the relay's
position is saved in the database only after the broker acknowledged the whole batch. A crash
between the two republishes at most one batch: never a loss, never a reordering, and consumers
drop the repeats by ``event_id`` (or ``position``).

An event that cannot be published (larger than the topic's limit, refused by the broker as too
large, or with no contract form) never stops the relay: it is set aside with an ERROR log line
and a dead-letter entry naming its event-store position, and the relay goes on with the next.

Both are FastStream publishers (``declare``), on a broker made like every service's
(``make_broker``: one idempotent producer, ``acks=all``); the AsyncAPI export declares the same
two, so the document shows the relay's send operations on the events and dead-letter topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from datetime import UTC, datetime
from typing import Any

from aiokafka.errors import MessageSizeTooLargeError, RecordTooLargeError
from eventsourcing.persistence import Notification
from faststream.kafka import KafkaBroker
from faststream.kafka.publisher import DefaultPublisher

from managed_backups.contracts import topics
from managed_backups.contracts.events import DomainEvent
from managed_backups.contracts.results import DeadLetter
from managed_backups.shared.broker_access import KafkaAuth
from managed_backups.shared.bus import DEAD_LETTER_PAYLOAD_LIMIT, make_broker
from managed_backups.shared.eventstore import EventStore, to_wire_event
from managed_backups.shared.sqldb import SqlDatabase

log = logging.getLogger(__name__)
MAX_EVENT_BYTES = 900 * 1024
"""Below Kafka's default message limit (1 MiB) with room for the key and headers."""


@dataclasses.dataclass(frozen=True)
class RelayPublishers:
    """The relay's send operations."""

    events: DefaultPublisher
    dead_letters: DefaultPublisher


def declare(broker: KafkaBroker) -> RelayPublishers:
    """Declare the relay's publishers on ``broker`` (the running relay's, or the AsyncAPI
    export's, which is never started)."""
    return RelayPublishers(
        events=broker.publisher(
            topics.EVENTS,
            title=f"{topics.EVENTS}:Relay",
            schema=DomainEvent,
            description=(
                "Every domain event, keyed by cluster id, in event-store order per cluster."
            ),
        ),
        dead_letters=broker.publisher(
            topics.DEAD_LETTER,
            title=f"{topics.DEAD_LETTER}:Relay",
            schema=DeadLetter,
            description=(
                "An event of the store that cannot go on the events topic (too large, or with "
                "no contract form), named by its event-store position."
            ),
        ),
    )


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
        auth: KafkaAuth | None = None,
    ) -> None:
        self.auth = auth
        self.store = store
        self.db = db
        self.bootstrap_servers = bootstrap_servers
        self.name = name
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        ensure_relay_table(db)
        self.position = load_position(db, name)

    async def run(self, stop: asyncio.Event) -> None:
        """Relay batches until ``stop``. FastStream's publisher does what the outbox needs: it
        sends through the broker's one idempotent producer (``acks=all``; per-partition order
        holds across retries), and ``publish(..., no_confirm=True)`` returns the record's
        delivery future once it is enqueued, so a whole batch is enqueued first and its
        acknowledgements gathered afterwards (the barrier before the position is saved), each
        record's failure mapped on its own. No Kafka transaction is involved: the position
        saved after the acknowledgements, and consumers deduplicating by ``event_id``, give
        at-least-once without loss or reordering."""
        broker = make_broker(
            self.bootstrap_servers, f"managed-backups-{self.name}", linger_ms=2, auth=self.auth
        )
        publishers = declare(broker)
        await broker.start()
        try:
            while not stop.is_set():
                sent = await self.relay_once(publishers)
                if sent < self.batch_size:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=self.poll_seconds)
        finally:
            await broker.stop()

    async def relay_once(self, publishers: RelayPublishers) -> int:
        rows = await asyncio.to_thread(self.store.notifications, self.position, self.batch_size)
        if not rows:
            return 0
        sends: list[tuple[Notification, bytes, asyncio.Future[Any]]] = []
        for row in rows:
            try:
                wire = to_wire_event(row.id, self.store.domain_event(row))
            except Exception as exc:  # an event no contract describes: set aside, never a stop
                await self._set_aside(publishers, row, b"", f"{type(exc).__name__}: {exc}")
                continue
            value = wire.model_dump_json().encode()
            if len(value) > MAX_EVENT_BYTES:
                await self._set_aside(
                    publishers,
                    row,
                    value,
                    f"{wire.type} event of {len(value)} bytes exceeds the "
                    f"{MAX_EVENT_BYTES}-byte limit of {topics.EVENTS}",
                )
                continue
            key = (wire.cluster_id or str(wire.aggregate_id)).encode()
            future = await publishers.events.publish(
                value,
                key=key,
                headers={
                    "content-type": "application/json",
                    "type": wire.type,
                    "position": str(row.id),
                },
                correlation_id=str(wire.event_id),  # the same on a republished event
                no_confirm=True,
            )
            sends.append((row, value, future))
        outcomes = await asyncio.gather(*(f for _, _, f in sends), return_exceptions=True)
        for (row, value, _), outcome in zip(sends, outcomes, strict=True):
            if isinstance(outcome, MessageSizeTooLargeError | RecordTooLargeError):
                await self._set_aside(publishers, row, value, f"the broker refused it: {outcome}")
            elif isinstance(outcome, BaseException):
                raise outcome  # transient: the whole batch is sent again (consumers dedupe)
        self.position = rows[-1].id
        await asyncio.to_thread(save_position, self.db, self.name, self.position)
        return len(rows)

    async def _set_aside(
        self, publishers: RelayPublishers, row: Notification, value: bytes, error: str
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
        await publishers.dead_letters.publish(
            entry.model_dump_json().encode(),
            key=str(row.id).encode(),
            headers={"content-type": "application/json"},
        )
