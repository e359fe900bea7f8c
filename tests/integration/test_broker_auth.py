"""The broker as ``managed-backups up`` runs it requires authentication: a client without
credentials, or with a wrong password, reads nothing; each service's user reads and writes its
own topics only (ACLs from ``services/registry.py``), in its own consumer group."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
)

from managed_backups.contracts import topics
from managed_backups.services.registry import broker_users
from managed_backups.shared.broker_access import ADMIN_USER, KafkaAuth, provision
from managed_backups.shared.bus import ensure_topics
from managed_backups.shared.infra.kafka import BrokerSecurity, LocalKafka

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def passwords() -> dict[str, str]:
    return {user: secrets.token_urlsafe(16) for user in [ADMIN_USER, *broker_users()]}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, passwords: dict[str, str]) -> Iterator[str]:
    kafka = LocalKafka(
        tmp_path_factory.mktemp("kafka-sasl"), security=BrokerSecurity(passwords[ADMIN_USER])
    )
    with kafka:
        yield kafka.bootstrap_servers


@pytest.fixture(scope="module")
async def provisioned(broker: str, passwords: dict[str, str]) -> AsyncIterator[str]:
    admin = KafkaAuth(ADMIN_USER, passwords[ADMIN_USER], "PLAIN")
    await ensure_topics(broker, auth=admin)
    users = {user: (passwords[user], access) for user, access in broker_users().items()}
    await provision(broker, passwords[ADMIN_USER], users)
    await provision(broker, passwords[ADMIN_USER], users)  # idempotent: every `up` runs it
    yield broker


def login(passwords: dict[str, str], user: str) -> dict[str, Any]:
    return KafkaAuth(user, passwords[user]).client_options()


async def first_record(consumer: AIOKafkaConsumer) -> bytes | None:
    try:
        async with asyncio.timeout(30):
            await consumer.start()
            record = await consumer.getone()
            return record.value  # type: ignore[no-any-return]
    finally:
        await consumer.stop()


async def test_a_client_without_credentials_is_refused(
    provisioned: str, passwords: dict[str, str]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=provisioned, **login(passwords, "scheduler"))
    await producer.start()
    try:
        await producer.send_and_wait(topics.CLUSTER_COMMANDS, b"not for strangers")
    except TopicAuthorizationFailedError:
        pass  # the scheduler may not write there: put something there as the API
    finally:
        await producer.stop()
    api = AIOKafkaProducer(bootstrap_servers=provisioned, **login(passwords, "api"))
    await api.start()
    await api.send_and_wait(topics.CLUSTER_COMMANDS, b"not for strangers")
    await api.stop()

    anonymous = AIOKafkaConsumer(
        topics.CLUSTER_COMMANDS,
        bootstrap_servers=provisioned,
        group_id="anyone",
        auto_offset_reset="earliest",
    )
    with pytest.raises(KafkaConnectionError):
        await first_record(anonymous)
    wrong = AIOKafkaConsumer(
        topics.CLUSTER_COMMANDS,
        bootstrap_servers=provisioned,
        group_id="anyone",
        auto_offset_reset="earliest",
        **KafkaAuth("scheduler", "a-guess").client_options(),
    )
    with pytest.raises(KafkaConnectionError):
        await first_record(wrong)
    # The administrator's PLAIN login is not a way in with another name.
    plain = AIOKafkaConsumer(
        topics.CLUSTER_COMMANDS,
        bootstrap_servers=provisioned,
        group_id="anyone",
        **KafkaAuth("scheduler", passwords["scheduler"], "PLAIN").client_options(),
    )
    with pytest.raises(KafkaConnectionError):
        await first_record(plain)
    # Its owner reads it.
    scheduler = AIOKafkaConsumer(
        topics.CLUSTER_COMMANDS,
        bootstrap_servers=provisioned,
        group_id="managed-backups.scheduler",
        auto_offset_reset="earliest",
        **login(passwords, "scheduler"),
    )
    assert await first_record(scheduler) == b"not for strangers"


async def test_a_service_reads_and_writes_its_own_topics_only(
    provisioned: str, passwords: dict[str, str]
) -> None:
    # The executor's user, in its own group, on the scheduler's topic.
    stranger = AIOKafkaConsumer(
        topics.CLUSTER_COMMANDS,
        bootstrap_servers=provisioned,
        group_id="managed-backups.backup-executor",
        auto_offset_reset="earliest",
        **login(passwords, "backup-executor"),
    )
    with pytest.raises(TopicAuthorizationFailedError):
        await first_record(stranger)
    # Its own topic, in another service's group.
    borrowed_group = AIOKafkaConsumer(
        topics.BACKUP_COMMANDS,
        bootstrap_servers=provisioned,
        group_id="managed-backups.scheduler",
        auto_offset_reset="earliest",
        **login(passwords, "backup-executor"),
    )
    with pytest.raises(GroupAuthorizationFailedError):
        await first_record(borrowed_group)
    # Writing: the executor answers commands, it never forges events nor sends commands.
    producer = AIOKafkaProducer(
        bootstrap_servers=provisioned,
        enable_idempotence=True,
        **login(passwords, "backup-executor"),
    )
    await producer.start()
    try:
        await producer.send_and_wait(topics.COMMAND_RESULTS, b"{}")
        for topic in (topics.EVENTS, topics.BACKUP_COMMANDS, topics.CLUSTER_COMMANDS):
            with pytest.raises(TopicAuthorizationFailedError):
                async with asyncio.timeout(30):
                    await producer.send_and_wait(topic, b"{}")
    finally:
        await producer.stop()
    # Topics are created by the administrator only.
    admin = AIOKafkaAdminClient(bootstrap_servers=provisioned, **login(passwords, "relay"))
    await admin.start()
    try:
        response = await admin.create_topics([NewTopic("managed-backups.extra", 1, 1)])
        codes = [e["error_code"] for e in response.to_object()["topic_errors"]]
        assert codes == [29], codes  # TOPIC_AUTHORIZATION_FAILED
    finally:
        await admin.close()
