"""A database's own properties come back with it: an ICU database (locale provider, ICU
locale, hence its default sort order and its indexes' order) after a DATABASE and a CLUSTER
restore, and a template database's flag after a DATABASE restore. On the local PostgreSQL 15
(Debian's build has ICU); how other majors are handled is ``tests/unit/test_database_properties.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from managed_backups.shared.dataplane.engine import BackupRequest
from managed_backups.shared.dataplane.manifest import DatabaseLocale, Manifest
from managed_backups.shared.dataplane.objectstore import ObjectStore
from managed_backups.shared.dataplane.postgres import PostgresAdapter
from managed_backups.shared.dataplane.restore_plan import ClusterAccess, RestorePlan, execute_plan
from tests.infra.postgres import LocalPostgres

pytestmark = pytest.mark.integration

ICU_DB = "numeric order"
ICU_LOCALE = "en-u-kn-true"  # numeric collation: '9' before '10'
WORDS = ["10", "9", "a", "B", "b", "ä", "Z", "100"]


@dataclass
class Source:
    pg: LocalPostgres
    access: ClusterAccess
    chain: list[Manifest]
    store: ObjectStore
    order: list[str]
    """``WORDS`` in the ICU database's own order."""

    def connect(self, db: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(self.pg.url_for(db), autocommit=True)

    def locale(self, db: str) -> tuple[Any, ...]:
        with self.connect() as conn:
            row = conn.execute(
                "SELECT datlocprovider, daticulocale, datcollate, datctype, datconnlimit"
                " FROM pg_database WHERE datname = %s",
                (db,),
            ).fetchone()
        assert row is not None
        return tuple(row)

    def sorted_words(self, db: str) -> list[str]:
        with self.connect(db) as conn:
            by_query = [str(r[0]) for r in conn.execute("SELECT w FROM words ORDER BY w")]
            conn.execute("SET enable_seqscan = off")  # the primary key's index order too
            by_index = [str(r[0]) for r in conn.execute("SELECT w FROM words ORDER BY w")]
        assert by_query == by_index
        return by_query


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    tmp = tmp_path_factory.mktemp("database-properties")
    with LocalPostgres() as pg:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute(
                f"CREATE DATABASE \"{ICU_DB}\" TEMPLATE template0 ENCODING 'UTF8'"
                f" LOCALE_PROVIDER icu ICU_LOCALE '{ICU_LOCALE}' LC_COLLATE 'C' LC_CTYPE 'C'"
                " CONNECTION LIMIT 7"
            )
            conn.execute("CREATE DATABASE seed")
            conn.execute("ALTER DATABASE seed IS_TEMPLATE true")
        with psycopg.connect(pg.url_for(ICU_DB), autocommit=True) as conn:
            conn.execute("CREATE TABLE words (w text PRIMARY KEY)")
            conn.execute("INSERT INTO words SELECT unnest(%s::text[])", (WORDS,))
        with psycopg.connect(pg.url_for("seed"), autocommit=True) as conn:
            conn.execute("CREATE TABLE s (id int PRIMARY KEY)")
        store = ObjectStore((tmp / "store").as_uri())
        full = PostgresAdapter(pg.dsn_for(), password=pg.password).full_backup(
            BackupRequest(store, "c1", "full")
        )
        src = Source(pg, ClusterAccess(pg.dsn_for(), password=pg.password), [full], store, [])
        src.order = src.sorted_words(ICU_DB)
        assert src.order[:3] == ["9", "10", "100"]  # not the byte order libc's C would give
        yield src


def plan(kind: str, source_db: str = "", target: str = "") -> RestorePlan:
    return RestorePlan(kind, source_db, target, uuid.uuid4())


def test_the_manifest_records_the_locale(source: Source) -> None:
    db = source.chain[0].database(ICU_DB)
    assert db.locale is not None
    assert (db.locale.provider, db.locale.locale) == ("icu", ICU_LOCALE)
    assert db.locale.collation_version  # recorded, not given to CREATE DATABASE
    assert source.chain[0].database("postgres").locale == DatabaseLocale(provider="libc")
    assert db.properties is not None and db.properties.tablespace == "pg_default"


def test_a_database_restore_keeps_the_icu_provider_and_its_order(source: Source) -> None:
    outcome = execute_plan(
        source.store,
        source.chain,
        plan("DATABASE", ICU_DB, "icu copy"),
        source.access,
        lambda n: None,
    )
    assert outcome.restored == ["database icu copy"]
    assert source.locale("icu copy") == ("i", ICU_LOCALE, "C", "C", 7)
    assert source.sorted_words("icu copy") == source.order


def test_a_database_restore_of_a_template_is_a_template(source: Source) -> None:
    execute_plan(
        source.store,
        source.chain,
        plan("DATABASE", "seed", "seed copy"),
        source.access,
        lambda n: None,
    )
    with source.connect() as conn:
        row = conn.execute(
            "SELECT datistemplate FROM pg_database WHERE datname = 'seed copy'"
        ).fetchone()
        assert row == (True,)
        conn.execute('ALTER DATABASE "seed copy" IS_TEMPLATE false')


def test_a_cluster_restore_keeps_the_icu_provider_and_its_order(source: Source) -> None:
    """Last: it replaces every database."""
    execute_plan(source.store, source.chain, plan("CLUSTER"), source.access, lambda n: None)
    assert source.locale(ICU_DB) == ("i", ICU_LOCALE, "C", "C", 7)
    assert source.sorted_words(ICU_DB) == source.order
