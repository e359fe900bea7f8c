"""Request/response over the topics: publish a command and wait for its result.

Used by the HTTP API (the command gateway) and ``managed-backups publish``. The results consumer
reads every partition of ``command-results`` from its end (no consumer group: each gateway sees
every result) and is started before anything is published, so no result can be missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any
from uuid import UUID

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from faststream.kafka import KafkaBroker

from managed_backups.contracts import topics
from managed_backups.contracts.results import CommandResult
from managed_backups.shared.bus import COMMAND_PAYLOADS


class CommandTimeout(TimeoutError):
    pass


def declare(broker: KafkaBroker) -> None:
    """The gateway's send operations, for the AsyncAPI document only. The gateway itself uses
    aiokafka directly: it forwards the caller's JSON object as given (the consuming service
    validates it, after its bounds and authentication), and it reads every partition of
    ``command-results`` from its end without a consumer group, which a FastStream subscriber
    (group-managed, or a fixed partition list without the seek) does not express."""
    for topic, (payload, _) in COMMAND_PAYLOADS.items():
        broker.publisher(
            topic,
            title=f"{topic}:Gateway",
            schema=payload,
            description="Commands sent by the HTTP API and `managed-backups publish`.",
        )


class CommandGateway:
    def __init__(self, bootstrap_servers: str, client_id: str = "managed-backups-gateway") -> None:
        self.bootstrap_servers = bootstrap_servers
        self.client_id = client_id
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._waiters: dict[UUID, asyncio.Future[CommandResult]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            enable_idempotence=True,
            acks="all",
            client_id=self.client_id,
        )
        await self._producer.start()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            enable_auto_commit=False,
            client_id=f"{self.client_id}-results",
        )
        await consumer.start()
        partitions = await self._result_partitions()
        assigned = [TopicPartition(topics.COMMAND_RESULTS, p) for p in partitions]
        consumer.assign(assigned)
        await consumer.seek_to_end(*assigned)
        for tp in assigned:  # resolve the end offsets now, before anything is published
            await consumer.position(tp)
        self._consumer = consumer
        self._task = asyncio.create_task(self._read_results(), name="command-results")

    async def _result_partitions(self, attempts: int = 100) -> list[int]:
        """The partition ids of ``command-results``, through the admin client's public
        ``describe_topics``. It is asked for *all* topics on purpose: a metadata request naming
        the topic would let a broker with ``auto.create.topics.enable`` create it with the
        broker's defaults, whereas a missing topic must stay an error (``ensure_topics`` owns
        its creation). Retried for a while: a freshly created topic may not have its partitions
        (leaders) in the metadata yet."""
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers, client_id=f"{self.client_id}-admin"
        )
        await admin.start()
        try:
            for _ in range(attempts):
                described = await admin.describe_topics()
                partitions = sorted(
                    int(partition["partition"])
                    for topic in described
                    if topic["topic"] == topics.COMMAND_RESULTS and topic["error_code"] == 0
                    for partition in topic["partitions"]
                )
                if partitions:
                    return partitions
                await asyncio.sleep(0.1)
        finally:
            await admin.close()
        raise RuntimeError(f"topic {topics.COMMAND_RESULTS} does not exist")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    async def _read_results(self) -> None:
        assert self._consumer is not None
        async for record in self._consumer:
            try:
                result = CommandResult.model_validate_json(record.value or b"")
            except ValueError:  # not a result (pydantic's errors are ValueErrors): skip it
                continue
            if result.command_id is None:
                continue
            waiter = self._waiters.get(result.command_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(result)

    async def send(self, topic: str, command: dict[str, Any], key: str | None) -> None:
        assert self._producer is not None, "start() the gateway first"
        await self._producer.send_and_wait(
            topic, json.dumps(command, default=str).encode(), key=key.encode() if key else None
        )

    async def request(
        self, topic: str, command: dict[str, Any], timeout: float = 30.0
    ) -> CommandResult:
        command_id = UUID(str(command["command_id"]))
        waiter: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        self._waiters[command_id] = waiter
        try:
            key = command.get("cluster_id") or command.get("destination_cluster_id")
            await self.send(topic, command, str(key) if key else None)
            try:
                return await asyncio.wait_for(waiter, timeout)
            except TimeoutError as exc:
                raise CommandTimeout(
                    f"no result for command {command_id} on {topics.COMMAND_RESULTS} "
                    f"within {timeout:.0f} s: is the service consuming {topic} running? The "
                    "command may still be applied later; send it again with the same "
                    "command_id to learn its outcome without applying it twice"
                ) from exc
        finally:
            self._waiters.pop(command_id, None)
