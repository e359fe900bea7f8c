"""Kafka and PostgreSQL in containers, for the ``containers`` test backend (testcontainers).

Both context managers start one container, wait until it serves, yield a connection string the
host can use, and remove the container when the block ends (also on failure). Image names come
from the environment so registry users keep the public images and machines without a registry
use the ones ``scripts/docker-local`` builds:

- ``MANAGED_BACKUPS_KAFKA_IMAGE`` (default ``apache/kafka:4.1.0``): any image configured by
  ``KAFKA_*`` environment variables the way ``apache/kafka`` is, logging "Kafka Server started".
- ``MANAGED_BACKUPS_POSTGRES_IMAGE`` (default ``postgres:15``): any image initialised by
  ``POSTGRES_USER``/``POSTGRES_PASSWORD``/``POSTGRES_DB`` the way ``postgres`` is, with ``psql``
  inside. Any supported major (13 to 18): the data-plane tests back it up from the host, with
  the host's client tools chosen for its server.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator

from managed_backups.shared.infra.kafka import free_ports

__all__ = ["kafka_container", "kafka_image", "postgres_container", "postgres_image"]

DEFAULT_KAFKA_IMAGE = "apache/kafka:4.1.0"
DEFAULT_POSTGRES_IMAGE = "postgres:15"


def kafka_image() -> str:
    return os.environ.get("MANAGED_BACKUPS_KAFKA_IMAGE", "").strip() or DEFAULT_KAFKA_IMAGE


def postgres_image() -> str:
    return os.environ.get("MANAGED_BACKUPS_POSTGRES_IMAGE", "").strip() or DEFAULT_POSTGRES_IMAGE


@contextlib.contextmanager
def kafka_container(timeout: float = 180) -> Iterator[str]:
    """A single-node KRaft broker; yields its bootstrap servers as seen from the host.

    testcontainers' ``KafkaContainer`` targets Confluent's images, so this is a generic container.
    Kafka must advertise an address the host can reach, which is only known for a fixed host
    port: container port 9092 is bound to a port that is free here.
    """
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.docker_client import DockerClient
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    host = DockerClient().host()
    host_port = free_ports(1)[0]
    container = (
        DockerContainer(kafka_image())
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
        .waiting_for(
            LogMessageWaitStrategy("Kafka Server started").with_startup_timeout(int(timeout))
        )
    )
    with container:
        yield f"{host}:{host_port}"


@contextlib.contextmanager
def postgres_container() -> Iterator[str]:
    """A PostgreSQL server; yields a superuser URL (``postgresql://postgres:PW@HOST:PORT/postgres``)."""
    from testcontainers.community.postgres import PostgresContainer

    container = PostgresContainer(
        postgres_image(),
        username="postgres",
        password=secrets.token_urlsafe(18),
        dbname="postgres",
        driver=None,
    )
    with container:
        yield str(container.get_connection_url())
