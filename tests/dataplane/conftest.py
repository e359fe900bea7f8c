"""Fixtures for the data-plane tests: a real PostgreSQL and both object stores.

PostgreSQL: ``$POSTGRES_URL``, else (by ``MANAGED_BACKUPS_TEST_BACKEND``) a container or a
throw-away cluster from Debian's binaries (one per session, dedicated to these tests because a
backup covers every database of the cluster); a server of 17 or later (the version matrix's
``MANAGED_BACKUPS_TEST_PG_MAJOR``) summarizes its WAL, so every incremental of these tests takes
the WAL-summary path (``MANAGED_BACKUPS_TEST_SUMMARIZE_WAL=off``: the probe alone). S3: ``$S3_ENDPOINT_URL``, else moto's server
started locally (``tests.infra.testing.s3_for_tests``), a fresh bucket per test. Nothing here skips: a service that
cannot be started fails the tests.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from managed_backups.shared.dataplane.objectstore import ObjectStore
from managed_backups.shared.dataplane.postgres import PostgresAdapter
from managed_backups.shared.dataplane.sql import SESSION_SETTINGS
from managed_backups.shared.dataplane.tools import client_tools_for
from tests.infra.postgres import postgres_for_tests, test_pg_major, url_with_database
from tests.infra.s3 import create_bucket, s3_store_url


@dataclass(frozen=True)
class PgServer:
    """A superuser URL split the way the adapter wants it: DSN without password + password."""

    url: str

    @property
    def password(self) -> str:
        return str(conninfo_to_dict(self.url).get("password") or "")

    def dsn_for(self, dbname: str = "postgres", user: str | None = None) -> str:
        params: dict[str, Any] = {
            k: v for k, v in conninfo_to_dict(self.url).items() if k != "password"
        }
        params["dbname"] = dbname
        if user is not None:
            params["user"] = user
        return make_conninfo(**params)

    def url_for(self, dbname: str) -> str:
        return url_with_database(self.url, dbname)

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(self.url_for(dbname), autocommit=True)

    def tool(self, name: str) -> str:
        """Client tool ``name`` of the set the services choose for this server (a ``pg_restore``
        newer than the server sends settings the server refuses)."""
        with self.connect() as conn:
            version = conn.info.server_version
        return client_tools_for(version, step=f"locate {name}").path(name)

    def adapter(self, **kwargs: Any) -> PostgresAdapter:
        return PostgresAdapter(self.dsn_for(), password=self.password, **kwargs)

    def create_database(self, prefix: str) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


SUMMARIZE_WAL_ENV = "MANAGED_BACKUPS_TEST_SUMMARIZE_WAL"


def server_settings() -> dict[str, str]:
    """``summarize_wal = on`` for a server of 17 or later, unless ``$SUMMARIZE_WAL_ENV`` is
    ``off`` (older servers have no such setting)."""
    major = test_pg_major()
    if major is not None and major >= 17 and os.environ.get(SUMMARIZE_WAL_ENV, "on") != "off":
        return {"summarize_wal": "on"}
    return {}


@pytest.fixture(scope="session")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    with postgres_for_tests(tmp_path_factory.mktemp("dataplane-pg"), server_settings()) as url:
        yield PgServer(url)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """A fresh object store: a local directory, or a new bucket on the local S3 server."""
    if request.param == "local":
        return ObjectStore((tmp_path / "store").as_uri())
    endpoint: str = request.getfixturevalue("s3_endpoint")
    bucket = f"mb-{uuid.uuid4().hex[:12]}"
    create_bucket(endpoint, bucket)
    return ObjectStore(s3_store_url(endpoint, bucket))


@pytest.fixture
def databases(pg: PgServer) -> Iterator[list[str]]:
    """Names of databases a test creates (append to it); all are dropped afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        pg.drop_database(name)


def copy_settings(conn: psycopg.Connection[Any]) -> None:
    for name, value in SESSION_SETTINGS:
        conn.execute(f"SET {name} = '{value}'")


def source_rows(pg: PgServer, db: str, query: str) -> list[bytes]:
    """The COPY text lines of ``query`` on the source, with the backup's session settings."""
    with pg.connect(db) as conn:
        copy_settings(conn)
        out = bytearray()
        with conn.cursor() as cur, cur.copy(f"COPY ({query}) TO STDOUT") as copy:
            for block in copy:
                out += block
    return bytes(out).splitlines(keepends=True)


def store_bytes(store: ObjectStore, prefix: str) -> int:
    """Bytes physically stored under ``prefix`` (listing the store, not trusting manifests)."""
    return sum(info.size for info in store.list(prefix))
