"""The relay: publishes the event store's notification log to ``managed-backups.events``.

Transactional-outbox style. Events are read in notification order and sent by one idempotent
producer, keyed by cluster id (so one cluster's events land on one partition, in order); the relay's
position is saved in the database only after the broker acknowledged the whole batch. A crash
between the two republishes at most one batch: never a loss, never a reordering, and consumers
drop the repeats by ``event_id`` (or ``position``). The reading, the position (a row of
``mb_relay_position``) and its compare-and-set commit are the shared
:class:`~managed_backups.shared.log_follower.LogFollower`'s.

One relay publishes at a time: of several relay processes on one store (two instances of every
service), the one holding the relay's lease (:class:`~managed_backups.shared.log_follower.OneActive`)
publishes and the others stand by; when it dies or pauses longer than the lease, a standby takes
over from the stored position. A deposed relay that resumes mid-batch cannot move the position
back (its commit is a compare-and-set from where its batch began): at most that batch is sent
twice, and consumers drop the repeats.

An event that cannot be published (larger than the topic's limit, refused by the broker as too
large, or with no contract form) never stops the relay: it is set aside with an ERROR log line
and a dead-letter entry naming its event-store position, and the relay goes on with the next.

Both are FastStream publishers (``declare``), on a broker made like every service's
(``make_broker``: one idempotent producer, ``acks=all``); the AsyncAPI export declares the same
two, so the document shows the relay's send operations on the events and dead-letter topics.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

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
from managed_backups.shared.log_follower import LogFollower, OneActive, PositionRow
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


RELAY_POSITIONS = "mb_relay_position"
"""The relay's position table (one row per relay name), as every release has written it."""
RELAY_ROLE = "relay"
"""The ``mb_job_leases`` kind of the active relay's lease (:class:`OneActive`)."""
RELAY_LEASE_SECONDS = 5.0


class Relay:
    """Publishes the log after its position, batch by batch (a :class:`LogFollower` on
    ``mb_relay_position``), while it is the active relay of its name (:class:`OneActive`): of
    two or more relay processes on one store, one publishes and the others stand by, so each
    event is sent once; a standby takes over when the active one's lease expires."""

    def __init__(
        self,
        store: EventStore,
        db: SqlDatabase,
        bootstrap_servers: str,
        name: str = "relay",
        batch_size: int = 500,
        poll_seconds: float = 0.02,
        auth: KafkaAuth | None = None,
        owner: str | None = None,
        lease_seconds: float = RELAY_LEASE_SECONDS,
    ) -> None:
        self.auth = auth
        self.store = store
        self.bootstrap_servers = bootstrap_servers
        self.name = name
        self.batch_size = batch_size
        at = PositionRow(RELAY_POSITIONS, name)
        with db.transaction() as cursor:
            at.create_table(cursor)
        self.follower = LogFollower(store, db, at, batch=batch_size, poll=poll_seconds)
        self.active = OneActive(
            db, RELAY_ROLE, name, owner or f"{name}-{uuid4().hex[:12]}", lease_seconds
        )

    @property
    def position(self) -> int:
        return self.follower.position()

    async def run(self, stop: asyncio.Event) -> None:
        """Relay batches until ``stop`` while this instance is the active relay.

        FastStream's publisher does what the outbox needs: it sends through the broker's one
        idempotent producer (``acks=all``; per-partition order holds across retries), and
        ``publish(..., no_confirm=True)`` returns the record's delivery future once it is
        enqueued, so a whole batch is enqueued first and its acknowledgements gathered
        afterwards (the barrier before the position is saved), each record's failure mapped on
        its own. No Kafka transaction is involved: the position saved after the
        acknowledgements (a compare-and-set, so a deposed relay never moves it back), and
        consumers deduplicating by ``event_id``, give at-least-once without loss or
        reordering."""
        broker = make_broker(
            self.bootstrap_servers, f"managed-backups-{self.name}", linger_ms=2, auth=self.auth
        )
        publishers = declare(broker)
        await broker.start()
        try:
            await self.active.run(
                stop,
                lambda stopping: self.follower.run(stopping, lambda: self.relay_once(publishers)),
            )
        finally:
            await broker.stop()

    async def relay_once(self, publishers: RelayPublishers) -> int:
        return await self.follower.follow_once_then_commit(
            lambda rows: self._publish(publishers, rows)
        )

    async def _publish(self, publishers: RelayPublishers, rows: list[Notification]) -> None:
        """Send ``rows`` and wait for every acknowledgement (raises on a transient failure:
        the whole batch is sent again, consumers dedupe)."""
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
