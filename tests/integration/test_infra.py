"""The local service launchers really work: Kafka from Maven Central jars, S3 from moto."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from obstore.store import S3Store

from managed_backups.shared.infra.kafka import (
    KafkaSetupError,
    LocalKafka,
    LocalKafkaError,
    ensure_kafka_jars,
)
from tests.infra.s3 import LocalS3, create_bucket
from tests.infra.testing import kafka_for_tests, s3_for_tests

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def local_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    broker = LocalKafka(tmp_path_factory.mktemp("infra-kafka"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


async def _produce(servers: str, topic: str, *values: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=b"k")
    finally:
        await producer.stop()


async def _consume(servers: str, topic: str, group: str, count: int) -> list[bytes]:
    """Read ``count`` records as member of ``group`` and commit them."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=servers,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        async with asyncio.timeout(60):
            while len(values) < count:
                batch = await consumer.getmany(timeout_ms=1000)
                for records in batch.values():
                    values.extend(r.value for r in records if r.value is not None)
        await consumer.commit()
    finally:
        await consumer.stop()
    return values


async def _committed(servers: str, topic: str, group: str) -> int:
    """Sum of the group's committed offsets over the topic's partitions."""
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic)


def test_jars_are_cached() -> None:
    libs = ensure_kafka_jars()
    assert (libs / ".complete").is_file()
    names = {p.name for p in libs.glob("*.jar")}
    assert any(n.startswith("kafka_2.13-4.1.") for n in names)
    assert any(n.startswith("log4j-slf4j-impl-") for n in names)
    assert ensure_kafka_jars() == libs  # idempotent


def test_missing_java_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(KafkaSetupError, match="java was not found"):
        ensure_kafka_jars(tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


async def test_produce_consume_with_group(local_kafka: LocalKafka) -> None:
    topic = f"infra-{uuid.uuid4().hex[:8]}"
    await _produce(local_kafka.bootstrap_servers, topic, b"one", b"two")
    got = await _consume(local_kafka.bootstrap_servers, topic, "g1", 2)
    assert got == [b"one", b"two"]  # same key, same partition: ordered
    assert await _committed(local_kafka.bootstrap_servers, topic, "g1") == 2


async def test_data_survives_stop_restart_and_kill(local_kafka: LocalKafka) -> None:
    topic = f"durable-{uuid.uuid4().hex[:8]}"
    servers = local_kafka.bootstrap_servers
    await _produce(servers, topic, b"before-restart")
    assert await _consume(servers, topic, "g-durable", 1) == [b"before-restart"]

    await asyncio.to_thread(local_kafka.restart)
    assert local_kafka.bootstrap_servers == servers  # same port
    # A new group re-reads the record; the old group's commit survived too.
    assert await _consume(servers, topic, "g-fresh", 1) == [b"before-restart"]
    assert await _committed(servers, topic, "g-durable") == 1

    await _produce(servers, topic, b"before-crash")
    local_kafka.kill()
    assert not local_kafka.is_running()
    await asyncio.to_thread(local_kafka.start)
    assert await _consume(servers, topic, "g-after-crash", 2) == [
        b"before-restart",
        b"before-crash",
    ]
    assert await _consume(servers, topic, "g-durable", 1) == [b"before-crash"]


def test_start_failure_reports_log(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        broker = LocalKafka(tmp_path / "k", port=busy.getsockname()[1])
        with pytest.raises(LocalKafkaError, match=r"exited with code .*last log lines"):
            broker.start(timeout=90)
        assert not broker.is_running()


async def test_kafka_for_tests_uses_env(
    local_kafka: LocalKafka, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", local_kafka.bootstrap_servers)
    with kafka_for_tests(tmp_path) as servers:
        assert servers == local_kafka.bootstrap_servers
        topic = f"env-{uuid.uuid4().hex[:8]}"
        await _produce(servers, topic, b"x")
        assert await _consume(servers, topic, "g-env", 1) == [b"x"]
    assert not (tmp_path / "kafka").exists()  # no local broker was started


def _store(endpoint: str, bucket: str) -> S3Store:
    return S3Store(
        bucket,
        endpoint=endpoint,
        region="us-east-1",
        access_key_id="test",
        secret_access_key="test",
        client_options={"allow_http": True},
    )


@pytest.mark.parametrize("in_process", [False, True], ids=["subprocess", "thread"])
async def test_local_s3_put_get(in_process: bool) -> None:
    with LocalS3(in_process=in_process) as s3:
        assert s3.endpoint_url.startswith("http://127.0.0.1:")
        s3.create_bucket("backups")
        s3.create_bucket("backups")  # idempotent
        store = _store(s3.endpoint_url, "backups")
        payload = os.urandom(256 * 1024)
        await store.put_async("chunks/ab/abcdef", payload)
        got = await store.get_async("chunks/ab/abcdef")
        assert bytes(await got.bytes_async()) == payload
        listed = [m["path"] for batch in store.list("chunks/") for m in batch]
        assert listed == ["chunks/ab/abcdef"]
    assert not s3.is_running()


async def test_s3_for_tests() -> None:
    with s3_for_tests() as endpoint:
        create_bucket(endpoint, "tests-bucket")
        store = _store(endpoint, "tests-bucket")
        await store.put_async("k", b"v")
        assert bytes(await (await store.get_async("k")).bytes_async()) == b"v"
