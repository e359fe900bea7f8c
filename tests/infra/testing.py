"""Context managers behind the test suite's service fixtures.

Each yields a connection string and cleans up after itself. Resolution order for Kafka:
``$KAFKA_BOOTSTRAP_SERVERS`` (an already running broker) → Docker (``apache/kafka`` via
testcontainers) when an engine answers → :class:`~shared.infra.kafka.LocalKafka` from the cached
Maven Central jars. For S3: ``$S3_ENDPOINT_URL`` → :class:`~tests.infra.s3.LocalS3` (moto).

A service that cannot be had raises: the integration tests fail rather than skip.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from managed_backups.shared.infra.kafka import LocalKafka, free_ports
from tests.infra.docker import docker_available
from tests.infra.s3 import LocalS3

__all__ = ["KAFKA_IMAGE", "kafka_for_tests", "s3_for_tests"]

KAFKA_IMAGE = os.environ.get("MANAGED_BACKUPS_KAFKA_IMAGE", "apache/kafka:4.1.0")


@contextlib.contextmanager
def _kafka_container(timeout: float = 180) -> Iterator[str]:
    """A single-node KRaft ``apache/kafka`` container (testcontainers' ``KafkaContainer``
    targets Confluent images, so this is a generic container)."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.docker_client import DockerClient
    from testcontainers.core.waiting_utils import wait_for_logs

    # Kafka must advertise an address the host can reach, which is only known for a fixed
    # host port: bind container 9092 to a port that is free here.
    host = DockerClient().host()
    host_port = free_ports(1)[0]
    container = (
        DockerContainer(KAFKA_IMAGE)
        .with_bind_ports(9092, host_port)
        .with_envs(
            KAFKA_NODE_ID="1",
            KAFKA_PROCESS_ROLES="broker,controller",
            KAFKA_LISTENERS="PLAINTEXT://0.0.0.0:9092,CONTROLLER://0.0.0.0:9093",
            KAFKA_ADVERTISED_LISTENERS=f"PLAINTEXT://{host}:{host_port}",
            KAFKA_CONTROLLER_LISTENER_NAMES="CONTROLLER",
            KAFKA_LISTENER_SECURITY_PROTOCOL_MAP="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            KAFKA_INTER_BROKER_LISTENER_NAME="PLAINTEXT",
            KAFKA_CONTROLLER_QUORUM_VOTERS="1@localhost:9093",
            KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR="1",
            KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS="1",
            KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR="1",
            KAFKA_TRANSACTION_STATE_LOG_MIN_ISR="1",
            KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR="1",
            KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR="1",
            KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS="0",
            KAFKA_NUM_PARTITIONS="4",
            KAFKA_AUTO_CREATE_TOPICS_ENABLE="true",
            KAFKA_HEAP_OPTS="-Xmx512m -Xms128m",
        )
    )
    with container:
        wait_for_logs(container, "Kafka Server started", timeout=timeout, raise_on_exit=True)
        yield f"{host}:{host_port}"


@contextlib.contextmanager
def kafka_for_tests(tmp: Path) -> Iterator[str]:
    """Yield bootstrap servers of a Kafka broker for the test session.

    ``tmp`` holds the broker's data and log (``tmp/kafka.log``) when it runs locally.
    """
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if env:
        yield env
        return
    if docker_available():
        with _kafka_container() as servers:
            yield servers
        return
    with LocalKafka(Path(tmp) / "kafka", log_file=Path(tmp) / "kafka.log") as kafka:
        yield kafka.bootstrap_servers


@contextlib.contextmanager
def s3_for_tests() -> Iterator[str]:
    """Yield an S3-compatible endpoint URL (credentials "test"/"test", region us-east-1)."""
    env = os.environ.get("S3_ENDPOINT_URL", "").strip()
    if env:
        yield env
        return
    with LocalS3() as s3:
        yield s3.endpoint_url
