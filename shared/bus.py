"""Kafka wiring: topics, the FastStream broker, and the thin command subscribers.

Each command topic has one thin ``on_<topic>`` subscriber (``declare_command_subscriber``): its
parameter is the raw bytes, documented as the topic's command type so FastStream's AsyncAPI
generator shows the payload. It hands the bytes to the service's ``CommandProcessor`` (taken from
the broker's context, run in a worker thread: the event store is synchronous), then publishes the
result on ``command-results`` and, for an unreadable message, a dead-letter entry, through
publishers declared with their message types. Offsets are committed only after that
(``AckPolicy.NACK_ON_ERROR``: an exception, e.g. a failed publish, redelivers), and idempotency
by ``command_id`` makes a redelivery harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import weakref
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

from aiokafka import ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError
from faststream import AckPolicy, Context
from faststream.kafka import KafkaBroker, Topic
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.publisher import DefaultPublisher
from faststream.message import StreamMessage
from faststream.types import DecodedMessage
from pydantic import BaseModel, TypeAdapter, WithJsonSchema

from managed_backups.contracts import commands, topics
from managed_backups.contracts.results import CommandResult, DeadLetter
from managed_backups.shared.broker_access import KafkaAuth, client_options

if TYPE_CHECKING:  # loaded where a subscriber is declared: `publish` never needs it
    from managed_backups.shared.commands import CommandProcessor

log = logging.getLogger(__name__)
PARTITIONS = 4
DEAD_LETTER_PAYLOAD_LIMIT = 64 * 1024
COMMAND_PAYLOADS: dict[str, tuple[Any, str]] = {
    topics.CLUSTER_COMMANDS: (
        commands.ClusterCommand,
        "Cluster registry and backup settings commands; consumed by the scheduler.",
    ),
    topics.BACKUP_COMMANDS: (
        commands.BackupCommand,
        "TakeBackup (scheduled or on demand) and VerifyBackup; consumed by the backup-executor.",
    ),
    topics.RESTORE_COMMANDS: (
        commands.RestoreCommand,
        "StartRestore; consumed by the restore service.",
    ),
    topics.RETENTION_COMMANDS: (
        commands.RetentionCommand,
        "EnforceRetention (also run periodically) and RotateEncryptionKeys; consumed by the "
        "retention service.",
    ),
}
"""What each command topic carries (the type its subscriber is documented with)."""


async def ensure_topics(
    bootstrap_servers: str,
    partitions: int = PARTITIONS,
    timeout: float = 60,
    auth: KafkaAuth | None = None,
) -> None:
    """Create the topics if missing. Events are kept forever (the store is the truth, but
    consumers may replay the topic from the beginning).

    aiokafka's admin client, not FastStream's: FastStream creates a topic only when a subscriber
    of its own declares it (``Topic(name, num_partitions=…)``), without topic settings such as
    ``retention.ms``, and nothing in the product subscribes to the events topic; every topic is
    created here, with its partitions and settings, before any service starts its broker. On a
    broker with ACLs only its administrator may create topics (``managed-backups up`` does,
    first); a service sees them all and creates nothing."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **client_options(auth))
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


def make_broker(
    bootstrap_servers: str, client_id: str, linger_ms: int = 0, auth: KafkaAuth | None = None
) -> KafkaBroker:
    """Every service's broker: its producer is idempotent with ``acks=all``. ``linger_ms`` lets
    a batch publisher (the relay) fill larger requests. ``auth``: the service's own broker user
    (``shared/broker_access.py``)."""
    return KafkaBroker(
        bootstrap_servers,
        client_id=client_id,
        enable_idempotence=True,
        acks="all",
        linger_ms=linger_ms,
        logger=None,
        security=auth.faststream_security() if auth is not None else None,
    )


def dead_letter_entry(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    raw: bytes,
    error: str,
) -> DeadLetter:
    # Loaded here (the principals' module loads the domain): `publish` never writes a dead letter.
    from managed_backups.shared.security import redact_api_keys

    return DeadLetter(
        topic=topic,
        partition=partition,
        offset=offset,
        key=redact_api_keys(key.decode(errors="replace")) if key else None,
        # An API key never reaches the dead-letter topic, whatever a message carried.
        payload=redact_api_keys(raw[:DEAD_LETTER_PAYLOAD_LIMIT].decode(errors="replace")),
        error=error,
        received_at=datetime.now(UTC),
    )


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


def documented_as(payload: Any) -> WithJsonSchema:
    """The JSON Schema of ``payload`` (a model or a discriminated union) with every ``$ref``
    inlined, for ``Annotated[bytes, documented_as(Model)]``: the handler still receives the raw
    bytes (pydantic validates ``bytes`` as ``bytes``, nothing is parsed), while FastStream's
    AsyncAPI generator, which reads the handler's signature, documents the command model."""
    schema = TypeAdapter(payload).json_schema()
    definitions: dict[str, Any] = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                resolved = inline(definitions[ref.removeprefix("#/$defs/")])
                extra = {k: inline(v) for k, v in node.items() if k != "$ref"}
                return {**resolved, **extra}
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    return WithJsonSchema(inline(schema))


def processor_context_key(topic: str) -> str:
    """Where a service puts its ``CommandProcessor`` for ``topic`` in the broker's context."""
    return "command_processor_" + topic.rsplit(".", 1)[-1].replace("-", "_")


@dataclasses.dataclass(frozen=True)
class Outcomes:
    """The send operations of every command subscriber: its result and its dead letters."""

    results: DefaultPublisher
    dead_letters: DefaultPublisher


_OUTCOMES: weakref.WeakKeyDictionary[KafkaBroker, Outcomes] = weakref.WeakKeyDictionary()


def outcome_publishers(broker: KafkaBroker) -> Outcomes:
    """The broker's ``command-results`` and ``dead-letter`` publishers, declared once per broker
    (with their message types, so they are send operations in the AsyncAPI document)."""
    outcomes = _OUTCOMES.get(broker)
    if outcomes is None:
        outcomes = Outcomes(
            results=broker.publisher(
                topics.COMMAND_RESULTS,
                title=f"{topics.COMMAND_RESULTS}:Outcome",
                schema=CommandResult,
                description="The outcome of every command, keyed by command id.",
            ),
            dead_letters=broker.publisher(
                topics.DEAD_LETTER,
                title=f"{topics.DEAD_LETTER}:Outcome",
                schema=DeadLetter,
                description="A command message that could not be read, with the error.",
            ),
        )
        _OUTCOMES[broker] = outcomes
    return outcomes


async def publish_with(publisher: DefaultPublisher, payload: BaseModel, key: str | None) -> None:
    await publisher.publish(
        payload.model_dump_json().encode(),
        key=key.encode() if key else None,
        headers={"content-type": "application/json"},
    )


async def publish_json(
    publisher: DefaultPublisher, payload: dict[str, Any], key: str | None
) -> None:
    """Publish a JSON object as it is (a signed command: its token covers exactly these
    fields)."""
    await publisher.publish(
        json.dumps(payload).encode(),
        key=key.encode() if key else None,
        headers={"content-type": "application/json"},
    )


def declare_command_subscriber(broker: KafkaBroker, topic: str, group_id: str) -> None:
    """Declare the thin ``on_<topic>`` subscriber of a command topic, documented as carrying
    ``payload``; the ``CommandProcessor`` it hands the bytes to comes from the broker's context
    (``bind_processor``), so the same declaration serves the running service and the AsyncAPI
    export (which never starts the broker).

    The handler's parameter is the raw bytes, *documented* as ``payload`` but not validated by
    FastStream: the processor checks the size and nesting bounds before any JSON parsing, then
    authenticates (a 401 comes before a 400), then validates; FastStream validating first would
    raise before the handler and redeliver instead of answering with a rejection and a dead
    letter."""
    from managed_backups.shared.commands import CommandProcessor

    payload, description = COMMAND_PAYLOADS[topic]
    outcomes = outcome_publishers(broker)
    name = "on_" + topic.rsplit(".", 1)[-1].replace("-", "_")

    async def handler(
        raw: bytes,
        msg: KafkaMessage,
        processor: CommandProcessor = Context(processor_context_key(topic)),  # noqa: B008
    ) -> None:
        record: Any = msg.raw_message
        processed = await asyncio.to_thread(processor.process, raw)
        try:
            result = processed.result
            key = str(result.command_id) if result.command_id else None
            await publish_with(outcomes.results, result, key)
            if processed.dead_letter_error is not None:
                log.warning(
                    "dead letter: %s partition %s offset %s (%d bytes): %s",
                    record.topic,
                    record.partition,
                    record.offset,
                    len(raw),
                    processed.dead_letter_error,
                )
                entry = dead_letter_entry(
                    record.topic,
                    record.partition,
                    record.offset,
                    record.key,
                    raw,
                    processed.dead_letter_error,
                )
                await publish_with(outcomes.dead_letters, entry, entry.key)
            if processed.follow_up is not None:
                await processed.follow_up()
        except Exception:
            log.exception("publishing the outcome of a command on %s failed", topic)
            raise

    handler.__name__ = handler.__qualname__ = name
    # Real objects, not the strings ``from __future__ import annotations`` leaves: FastStream
    # reads the signature to build the payload schema.
    handler.__annotations__ = {
        "raw": Annotated[bytes, documented_as(payload)],
        "msg": KafkaMessage,
        "processor": CommandProcessor,
        "return": None,
    }
    broker.subscriber(
        # ``declare=False``: ``ensure_topics`` creates every topic, with its partitions; a
        # FastStream-declared topic would be created with one partition if it were missing.
        Topic(topic, declare=False),
        group_id=group_id,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        max_poll_records=50,
        parser=lenient_headers,
        decoder=undecoded,
        description=description,
    )(handler)


def bind_processor(broker: KafkaBroker, processor: CommandProcessor) -> None:
    """Give the declared subscriber of ``processor.topic`` its processor."""
    broker.context.set_global(processor_context_key(processor.topic), processor)


def subscribe_commands(broker: KafkaBroker, processor: CommandProcessor, group_id: str) -> None:
    """Declare ``processor``'s topic subscriber and bind it; a bad message never stops the
    consumer. Offsets are committed after the outcome is published (``NACK_ON_ERROR``: a
    failure to publish redelivers)."""
    declare_command_subscriber(broker, processor.topic, group_id)
    bind_processor(broker, processor)
