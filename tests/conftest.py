"""Fixtures for the real services the integration tests talk to.

Kafka: ``$KAFKA_BOOTSTRAP_SERVERS``, else one broker per test module (so consumer groups and
topics of one module never leak into another). PostgreSQL: ``$POSTGRES_URL``, else one server per
session. Both run as local processes (the real Kafka from the cached Maven Central jars, Debian's
postgresql) or, with ``MANAGED_BACKUPS_TEST_BACKEND=containers``, in containers
(``tests/infra/backend.py``). A service that cannot be had fails the test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.infra.backend import TestBackend, test_backend
from tests.infra.postgres import postgres_for_tests, url_with_database
from tests.infra.s3 import create_bucket, s3_store_url
from tests.infra.testing import kafka_for_tests, s3_for_tests

# The compose stack's tests need an engine and built images: only on the containers backend.
collect_ignore = [] if test_backend() is TestBackend.CONTAINERS else ["containers"]
# The API fuzz runs in .ci/run's own step, with its own budget (tests/fuzz/test_api_fuzz.py).
if os.environ.get("MANAGED_BACKUPS_FUZZ") != "1":
    collect_ignore.append("fuzz")


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with kafka_for_tests(tmp_path_factory.mktemp("kafka")) as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with postgres_for_tests(tmp_path_factory.mktemp("postgres")) as url:
        yield url


def fresh_database(server_url: str) -> str:
    name = f"mb_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url_with_database(server_url, name)


@pytest.fixture
def postgres_store_url(postgres_server: str) -> str:
    return fresh_database(postgres_server)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'events.sqlite'}"
    server: str = request.getfixturevalue("postgres_server")
    return fresh_database(server)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    with s3_for_tests() as endpoint:
        yield endpoint


@pytest.fixture(params=["local", "s3"])
def object_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh object store's URL: a local directory, or a new bucket on the local S3 server."""
    if request.param == "local":
        return (tmp_path / "objects").as_uri()
    endpoint: str = request.getfixturevalue("s3_endpoint")
    bucket = f"mb-{uuid.uuid4().hex[:12]}"
    create_bucket(endpoint, bucket)
    return s3_store_url(endpoint, bucket)
