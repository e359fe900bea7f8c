"""Context managers behind the test suite's service fixtures.

Each yields a connection string and cleans up after itself. Kafka: ``$KAFKA_BOOTSTRAP_SERVERS``
(an already running broker), else by the test backend (:mod:`tests.infra.backend`): a container
(:func:`~tests.infra.containers.kafka_container`) or
:class:`~managed_backups.shared.infra.kafka.LocalKafka` from the cached Maven Central jars.
S3: ``$S3_ENDPOINT_URL``, else :class:`~tests.infra.s3.LocalS3` (moto) on either backend.

A service that cannot be had raises: the integration tests fail rather than skip.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from managed_backups.shared.infra.kafka import LocalKafka
from tests.infra.backend import TestBackend, require_docker, test_backend
from tests.infra.containers import kafka_container
from tests.infra.s3 import LocalS3

__all__ = ["kafka_for_tests", "s3_for_tests"]


@contextlib.contextmanager
def kafka_for_tests(tmp: Path) -> Iterator[str]:
    """Yield bootstrap servers of a Kafka broker for the test session.

    ``tmp`` holds the broker's data and log (``tmp/kafka.log``) when it runs locally.
    """
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if env:
        yield env
        return
    if test_backend() is TestBackend.CONTAINERS:
        require_docker()
        with kafka_container() as servers:
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
