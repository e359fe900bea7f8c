"""The command gateway's results subscriber: every partition, no consumer group, from the end."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from uuid import uuid4

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from managed_backups.contracts import topics
from managed_backups.contracts.enums import CommandStatus
from managed_backups.contracts.results import CommandResult
from managed_backups.shared.bus import PARTITIONS, ensure_topics
from managed_backups.shared.gateway import CommandGateway

pytestmark = pytest.mark.integration


async def topic_names(kafka: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def test_the_gateway_reads_each_result_on_every_partition(kafka: str) -> None:
    """Before the topics exist the gateway refuses to start, and creates nothing (the broker
    auto-creates topics on a metadata request naming them). Once they exist, a result answering
    a request is read on whichever partition it lands, right after ``start`` returned, and
    messages that are not results (not JSON, a header that is not UTF-8) are skipped without
    stopping the reader. No consumer group is created."""
    early = CommandGateway(kafka, "test-gateway-early")
    with pytest.raises(RuntimeError, match="does not exist"):
        await early.start()
    await early.stop()
    assert topics.COMMAND_RESULTS not in await topic_names(kafka)

    await ensure_topics(kafka)
    gateway = CommandGateway(kafka, "test-gateway")
    producer = AIOKafkaProducer(bootstrap_servers=kafka)
    await gateway.start()
    await producer.start()
    try:
        for partition in range(PARTITIONS):
            command_id = uuid4()
            command = {
                "type": "EnforceRetention",
                "command_id": str(command_id),
                "cluster_id": f"gateway-{partition}",
                "token": "t",
            }
            request = asyncio.create_task(
                gateway.request(topics.RETENTION_COMMANDS, command, timeout=30)
            )
            await producer.send_and_wait(
                topics.COMMAND_RESULTS, b"not a result", partition=partition
            )
            await producer.send_and_wait(
                topics.COMMAND_RESULTS, b"{}", partition=partition, headers=[("h", b"\xff")]
            )
            answer = CommandResult(
                command_id=command_id,
                command_type="EnforceRetention",
                status=CommandStatus.REJECTED,
                code=401,
                reason="answered by the test",
                handled_at=datetime.now(UTC),
            )
            await producer.send_and_wait(
                topics.COMMAND_RESULTS, answer.model_dump_json().encode(), partition=partition
            )
            assert await request == answer
    finally:
        await producer.stop()
        await gateway.stop()

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        assert await admin.list_consumer_groups() == []
    finally:
        await admin.close()
