"""The event store: the ``eventsourcing`` library's application recorder on PostgreSQL or SQLite.

Every service opens the same store (one events table, one notification log) and appends its
aggregates' events to it; the relay publishes the notification log to Kafka, projections and the
scheduler follow it. Stored events are forever: each event class keeps its name and module path
(``eventsourcing`` records it as the event's topic) and is versioned with ``class_version`` and
``upcast_vN_vN+1`` methods when its shape changes, so new code reads old events.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit
from uuid import UUID, uuid5

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate, DomainEventProtocol
from eventsourcing.persistence import IntegrityError, Notification
from eventsourcing.utils import get_topic, register_topic
from pydantic import TypeAdapter

import managed_backups.shared
from managed_backups.contracts.events import DomainEvent, WireEvent
from managed_backups.shared.domain.cluster import Cluster
from managed_backups.shared.domain.errors import WrongRecordType
from managed_backups.shared.domain.ids import NAMESPACE
from managed_backups.shared.domain.principal import LegacyApiKey
from managed_backups.shared.sqldb import sqlite_path

A = TypeVar("A", bound=Aggregate)
_WIRE: TypeAdapter[WireEvent] = TypeAdapter(DomainEvent)
# Stored fields that never travel on the wire (a hash of an API key's secret).
_PRIVATE_FIELDS = {"secret_sha256"}

__all__ = ["EventStore", "IntegrityError", "open_event_store", "to_wire_event"]

# Events recorded before the code moved under the ``managed_backups`` package carry topics such
# as ``shared.domain.cluster:Cluster.ClusterRegistered``. Registering the old top-level module
# name makes every such topic (events, aggregates, snapshots) resolve to today's classes.
PACKAGE_PREFIX = "managed_backups."
register_topic("shared", managed_backups.shared)
# Version 0.1's API keys were ``principal:ApiKey``; today's ``ApiKey`` is a service account's key.
for _module in ("managed_backups.shared.domain.principal", "shared.domain.principal"):
    register_topic(f"{_module}:ApiKey", LegacyApiKey)


def event_store_env(url: str) -> dict[str, str]:
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = sqlite_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        return {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(path),
            "SQLITE_LOCK_TIMEOUT": "60",
            "CREATE_TABLE": "y",
        }
    if parts.scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        return {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": parts.path.lstrip("/") or "postgres",
            "POSTGRES_HOST": parts.hostname or "127.0.0.1",
            "POSTGRES_PORT": str(parts.port or 5432),
            "POSTGRES_USER": unquote(parts.username or "postgres"),
            "POSTGRES_PASSWORD": unquote(parts.password or ""),
            "POSTGRES_POOL_SIZE": "4",
            "POSTGRES_MAX_OVERFLOW": "4",
            "POSTGRES_CONN_MAX_AGE": "600",
            "POSTGRES_LOCK_TIMEOUT": "30",
            "CREATE_TABLE": "y",
        }
    raise ValueError(f"unsupported event store URL {url!r}: use sqlite:/// or postgresql://")


class EventStore(Application[UUID]):
    """One application name for every service, so all share one events table and one log."""

    name = "ManagedBackups"
    # Clusters accumulate one BackupScheduled per slot; snapshots keep loading them cheap.
    snapshotting_intervals = {Cluster: 100}

    def get_or_none(self, aggregate_id: UUID, cls: type[A]) -> A | None:
        try:
            aggregate: Aggregate = self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None
        if not isinstance(aggregate, cls):
            raise WrongRecordType(aggregate_id, cls.__name__)
        return aggregate

    def save_all(self, *aggregates: Aggregate) -> int | None:
        """Save atomically; returns the position of the last event recorded (None if none)."""
        recordings = self.save(*aggregates)
        positions = [r.notification.id for r in recordings]
        return max(positions) if positions else None

    def max_position(self) -> int:
        return self.recorder.max_notification_id() or 0

    def notifications(
        self, after: int, limit: int, topics: Sequence[str] = ()
    ) -> list[Notification]:
        return list(
            self.recorder.select_notifications(
                start=after + 1, limit=limit, topics=topics, inclusive_of_start=True
            )
        )

    def domain_event(self, notification: Notification) -> DomainEventProtocol[UUID]:
        return self.mapper.to_domain_event(notification)


def open_event_store(url: str, attempts: int = 20) -> EventStore:
    """Open the store; retries while another process is creating the tables."""
    for attempt in range(attempts):
        try:
            return EventStore(env=event_store_env(url))
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(0.25)
    raise AssertionError("unreachable")


def event_topics(*classes: type[Any]) -> list[str]:
    """The stored topics of ``classes``: today's, and the one written before the package move
    (a reader filtering the log by topic must match events of both ages)."""
    topics: list[str] = []
    for cls in classes:
        topic = get_topic(cls)
        topics += [topic, topic.removeprefix(PACKAGE_PREFIX)]
    return topics


def event_id(aggregate_id: UUID, version: int) -> UUID:
    return uuid5(NAMESPACE, f"event:{aggregate_id}:{version}")


def to_wire_event(position: int, event: DomainEventProtocol[UUID]) -> WireEvent:
    """The contract form of a stored domain event (validated: a drift fails loudly)."""
    fields: dict[str, Any] = dict(event.__dict__)
    aggregate_id = fields.pop("originator_id")
    version = fields.pop("originator_version")
    recorded_at = fields.pop("timestamp")
    fields.pop("originator_topic", None)
    for private in _PRIVATE_FIELDS:
        fields.pop(private, None)
    payload = {
        **fields,
        "type": type(event).__name__,
        "event_id": event_id(aggregate_id, version),
        "position": position,
        "cluster_id": fields.get("cluster_id"),
        "aggregate_id": aggregate_id,
        "aggregate_version": version,
        "occurred_at": fields.pop("at"),
        "recorded_at": recorded_at,
    }
    payload.pop("at", None)
    return _WIRE.validate_python(payload)


def cluster_id_of(event: object) -> str:
    """The cluster an event belongs to: every event of a cluster's, backup's or restore's stream
    names it (``cluster_id``); anything else is a programming error, said as such."""
    cluster_id = getattr(event, "cluster_id", None)
    if not isinstance(cluster_id, str):
        raise TypeError(f"{type(event).__qualname__} names no cluster")
    return cluster_id
