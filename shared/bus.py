"""Kafka wiring: topics, the FastStream broker, and the thin command subscriber.

Subscribers are thin: they hand the raw bytes to a ``CommandProcessor`` (in a worker thread, the
event store is synchronous), then publish its result on ``command-results`` and, for an
unparseable message, a dead-letter entry. Offsets are committed only after that (``AckPolicy.ACK``):
a crash redelivers, and idempotency by ``command_id`` makes the redelivery harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiokafka import ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.message import StreamMessage
from faststream.types import DecodedMessage

from managed_backups.contracts import topics
from managed_backups.contracts.results import CommandResult, DeadLetter
from managed_backups.shared.commands import CommandProcessor

log = logging.getLogger(__name__)
PARTITIONS = 4
DEAD_LETTER_PAYLOAD_LIMIT = 64 * 1024


async def ensure_topics(
    bootstrap_servers: str, partitions: int = PARTITIONS, timeout: float = 60
) -> None:
    """Create the topics if missing. Events are kept forever (the store is the truth,
    but consumers may replay the topic from the beginning)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            wanted = [
                NewTopic(
                    name=name,
                    num_partitions=partitions,
                    replication_factor=1,
                    topic_configs={"retention.ms": "-1"} if name == topics.EVENTS else {},
                )
                for name in topics.ALL_TOPICS
                if name not in existing
            ]
            if wanted:
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics(wanted)
            return
        except (KafkaConnectionError, OSError) as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"Kafka at {bootstrap_servers} is not reachable: {exc}") from exc
            await asyncio.sleep(0.5)
        finally:
            await admin.close()


def make_broker(bootstrap_servers: str, client_id: str) -> KafkaBroker:
    return KafkaBroker(
        bootstrap_servers,
        client_id=client_id,
        enable_idempotence=True,
        acks="all",
        logger=None,
    )


async def publish_model(broker: KafkaBroker, topic: str, payload: Any, key: str | None) -> None:
    await broker.publish(
        payload.model_dump_json().encode(),
        topic=topic,
        key=key.encode() if key else None,
        headers={"content-type": "application/json"},
    )


async def publish_result(broker: KafkaBroker, result: CommandResult) -> None:
    key = str(result.command_id) if result.command_id else None
    await publish_model(broker, topics.COMMAND_RESULTS, result, key)


async def dead_letter(
    broker: KafkaBroker,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    raw: bytes,
    error: str,
) -> None:
    entry = DeadLetter(
        topic=topic,
        partition=partition,
        offset=offset,
        key=key.decode(errors="replace") if key else None,
        payload=raw[:DEAD_LETTER_PAYLOAD_LIMIT].decode(errors="replace"),
        error=error,
        received_at=datetime.now(UTC),
    )
    await publish_model(broker, topics.DEAD_LETTER, entry, entry.key)


async def undecoded(message: StreamMessage[Any]) -> DecodedMessage:
    """FastStream's decoder for command topics: the bytes as they are. FastStream's own decoder
    parses JSON by the message's content-type header before any handler runs, so a malformed or
    deeply nested body would raise there, be nacked and redelivered for ever; the
    ``CommandProcessor`` parses instead, with its size and depth bounds, and turns every failure
    into a rejection and a dead letter."""
    return message.body


def _printable_header(value: bytes | None) -> bytes:
    return (value or b"").decode("utf-8", errors="replace").encode()


async def lenient_headers(
    record: ConsumerRecord[Any, Any],
    original: Callable[[ConsumerRecord[Any, Any]], Awaitable[StreamMessage[Any]]],
) -> StreamMessage[Any]:
    """FastStream's parser for command topics, fed headers it can decode: it decodes every
    header value as UTF-8 and would raise (and redeliver for ever) on any other bytes."""
    headers = [(name, _printable_header(value)) for name, value in record.headers or ()]
    return await original(dataclasses.replace(record, headers=headers))


def subscribe_commands(broker: KafkaBroker, processor: CommandProcessor, group_id: str) -> None:
    """Wire ``processor`` to its topic; a bad message never stops the consumer."""

    @broker.subscriber(
        processor.topic,
        group_id=group_id,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        max_poll_records=50,
        parser=lenient_headers,
        decoder=undecoded,
    )
    async def on_command(msg: KafkaMessage) -> None:
        record: Any = msg.raw_message
        raw: bytes = msg.body
        processed = await asyncio.to_thread(processor.process, raw)
        try:
            await publish_result(broker, processed.result)
            if processed.dead_letter_error is not None:
                log.warning(
                    "dead letter: %s partition %s offset %s (%d bytes): %s",
                    record.topic,
                    record.partition,
                    record.offset,
                    len(raw),
                    processed.dead_letter_error,
                )
                await dead_letter(
                    broker,
                    record.topic,
                    record.partition,
                    record.offset,
                    record.key,
                    raw,
                    processed.dead_letter_error,
                )
            if processed.follow_up is not None:
                await processed.follow_up()
        except Exception:
            log.exception("publishing the outcome of a command on %s failed", processor.topic)
            raise
