"""Request/response over the topics: publish a command and wait for its result.

Used by the HTTP API (the command gateway) and ``managed-backups publish``. Both directions are
FastStream endpoints on the gateway's own broker, declared by ``declare`` (which the AsyncAPI
export calls too, so the document shows exactly what the gateway sends and receives):

- one publisher per command topic; it forwards the caller's JSON object as given (the consuming
  service validates it, after its size bounds and authentication);
- one subscriber on ``command-results`` *without a consumer group*: with no group, the client
  library assigns it every partition of the topic (and any added later), nothing is committed,
  and, having no committed offset, it starts from the end. Each gateway thus sees every result,
  whichever partition it lands on. ``CommandGateway.start`` waits until every partition's
  starting offset is resolved before anything can be published, so no result can be missed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Annotated, Any
from uuid import UUID

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, Topic
from faststream.kafka.publisher import DefaultPublisher
from faststream.kafka.subscriber.usecase import DefaultSubscriber

from managed_backups.contracts import topics
from managed_backups.contracts.results import CommandResult
from managed_backups.shared.broker_access import KafkaAuth, client_options
from managed_backups.shared.bus import (
    COMMAND_PAYLOADS,
    documented_as,
    lenient_headers,
    make_broker,
    undecoded,
)

Waiters = dict[UUID, asyncio.Future[CommandResult]]
"""The requests waiting for their result, by command id."""


class CommandTimeout(TimeoutError):
    pass


@dataclasses.dataclass(frozen=True)
class GatewayEndpoints:
    """The gateway's send operations (one per command topic) and its receive operation."""

    commands: dict[str, DefaultPublisher]
    results: DefaultSubscriber


def declare(broker: KafkaBroker, waiters: Waiters | None = None) -> GatewayEndpoints:
    """Declare the gateway's publishers and its ``command-results`` subscriber on ``broker``.
    The subscriber completes the future in ``waiters`` of each result's command id; the AsyncAPI
    export, which never starts the broker, passes none.

    The subscriber is documented as receiving ``CommandResult`` but takes the raw bytes
    (``undecoded``, ``lenient_headers``) and parses them itself: anyone may write to the topic,
    and a message that is not a result must be skipped, never fail the handler. It has no group,
    so nothing is acknowledged (``AckPolicy.MANUAL``: there is no offset to commit, and a failed
    message must not be sought back to). The topic is ``declare=False``: ``ensure_topics`` owns
    its creation, with the partitions and settings of every topic."""
    pending: Waiters = {} if waiters is None else waiters
    commands = {
        topic: broker.publisher(
            topic,
            title=f"{topic}:Gateway",
            schema=payload,
            description="Commands sent by the HTTP API and `managed-backups publish`.",
        )
        for topic, (payload, _) in COMMAND_PAYLOADS.items()
    }

    async def on_command_results(raw: bytes) -> None:
        try:
            result = CommandResult.model_validate_json(raw)
        except ValueError:  # not a result (pydantic's errors are ValueErrors): skip it
            return
        if result.command_id is None:
            return
        waiter = pending.get(result.command_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(result)

    # Real objects, not the strings ``from __future__ import annotations`` leaves: FastStream
    # reads the signature to build the payload schema.
    on_command_results.__annotations__ = {
        "raw": Annotated[bytes, documented_as(CommandResult)],
        "return": None,
    }
    results = broker.subscriber(
        Topic(topics.COMMAND_RESULTS, declare=False),
        group_id=None,
        auto_offset_reset="latest",
        ack_policy=AckPolicy.MANUAL,
        parser=lenient_headers,
        decoder=undecoded,
        title=f"{topics.COMMAND_RESULTS}:Gateway",
        description=(
            "Results read by the HTTP API and `managed-backups publish`: every partition, "
            "without a consumer group, from the end, each matched to its waiting request by "
            "command id."
        ),
    )
    results(on_command_results)
    return GatewayEndpoints(commands, results)


class CommandGateway:
    def __init__(
        self,
        bootstrap_servers: str,
        client_id: str = "managed-backups-gateway",
        auth: KafkaAuth | None = None,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.client_id = client_id
        self.auth = auth
        self._waiters: Waiters = {}
        self._broker = make_broker(bootstrap_servers, client_id, auth=auth)
        self._endpoints = declare(self._broker, self._waiters)
        self._started = False

    async def start(self) -> None:
        """Start the broker, then wait until the results subscriber knows where it starts on
        every partition (the end, as it was then): a result published after ``start`` returns is
        always read. A missing ``command-results`` topic is an error, checked first."""
        partitions = await self._result_partitions()
        self._started = True  # from here on, ``stop`` stops whatever did start
        await self._broker.start()
        consumer = self._endpoints.results.consumer
        assert consumer is not None, "the broker starts its subscribers"
        for partition in partitions:
            await consumer.position(TopicPartition(topics.COMMAND_RESULTS, partition))

    async def _result_partitions(self, attempts: int = 100) -> list[int]:
        """The partition ids of ``command-results``, through the admin client's public
        ``describe_topics``. It is asked for *all* topics on purpose: a metadata request naming
        the topic would let a broker with ``auto.create.topics.enable`` create it with the
        broker's defaults, whereas a missing topic must stay an error (``ensure_topics`` owns
        its creation). Retried for a while: a freshly created topic may not have its partitions
        (leaders) in the metadata yet."""
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers,
            client_id=f"{self.client_id}-admin",
            **client_options(self.auth),
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
        if self._started:
            await self._broker.stop()
            self._started = False

    async def send(self, topic: str, command: dict[str, Any], key: str | None) -> None:
        """Publish ``command`` on ``topic`` (a command topic) as JSON, as given."""
        publisher = self._endpoints.commands.get(topic)
        if publisher is None:
            raise ValueError(f"{topic} is not a command topic")
        assert self._started, "start() the gateway first"
        await publisher.publish(
            json.dumps(command, default=str).encode(),
            key=key.encode() if key else None,
            headers={"content-type": "application/json"},
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
