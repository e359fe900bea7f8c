"""An incremental reuses the previous schema archive when nothing ``pg_dump`` reads changed.

The schema fingerprint (``read_schema_fingerprint``) must change with every kind of
definition a schema archive holds, including the names it prints from shared catalogs and
the index flags ``CREATE INDEX CONCURRENTLY`` updates in place, and must not change with what
``VACUUM`` and ``ANALYZE`` write, or the rows. An incremental with the same fingerprint runs
no ``pg_dump`` and restores the same definitions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from managed_backups.shared.dataplane import postgres
from managed_backups.shared.dataplane.engine import BackupRequest
from managed_backups.shared.dataplane.objectstore import ObjectStore
from managed_backups.shared.dataplane.postgres_catalog import (
    read_schema_fingerprint,
    read_table_states,
    read_tables,
)
from managed_backups.shared.dataplane.restore_rows import restore_database
from tests.restore_checks import table_digest

from .conftest import PgServer

pytestmark = pytest.mark.integration

_SETUP = [
    "CREATE TABLE t1 (id int PRIMARY KEY, v text)",
    "INSERT INTO t1 SELECT g, 'v' || g FROM generate_series(1, 20) g",
    "CREATE TABLE t2 (id int PRIMARY KEY, w int)",
    "INSERT INTO t2 SELECT g, g FROM generate_series(1, 20) g",
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "CREATE VIEW v0 AS SELECT id FROM t1",
]


def _fingerprint(pg: PgServer, db: str) -> str | None:
    with pg.connect(db) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        version = int(conn.info.server_version)
        large_objects = conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()
        assert large_objects is not None
        return read_schema_fingerprint(conn, int(large_objects[0]), version)


def test_the_schema_fingerprint_follows_definitions_not_rows_or_statistics(
    pg: PgServer, databases: list[str]
) -> None:
    db = pg.create_database("fp")
    databases.append(db)
    role = f"owner_{db[-8:]}"
    with pg.connect(db) as conn:
        for sql in _SETUP:
            conn.execute(sql)
        conn.execute(f"CREATE ROLE {role}")
        conn.execute(f"ALTER TABLE t2 OWNER TO {role}")
    try:
        before = _fingerprint(pg, db)
        assert before is not None
        with pg.connect(db) as conn:
            conn.execute("INSERT INTO t1 VALUES (100, 'new')")
            conn.execute("UPDATE t2 SET w = -w")
            conn.execute("DELETE FROM t1 WHERE id = 3")
            conn.execute("VACUUM ANALYZE t1")
            conn.execute("ANALYZE")
            conn.execute("VACUUM")
        assert _fingerprint(pg, db) == before

        definitions = [
            "CREATE INDEX t1_v ON t1 (v)",
            "COMMENT ON TABLE t2 IS 'a comment'",
            "CREATE VIEW v1 AS SELECT * FROM t1",
            "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 2'",
            "GRANT SELECT ON t1 TO PUBLIC",
            f"ALTER DATABASE \"{db}\" SET work_mem = '8MB'",
            f"COMMENT ON DATABASE \"{db}\" IS 'a database comment'",
            f'GRANT CREATE ON DATABASE "{db}" TO {role}',
            f'ALTER DATABASE "{db}" CONNECTION LIMIT 7',
            f'ALTER ROLE {role} IN DATABASE "{db}" SET search_path = public',
            f"ALTER ROLE {role} RENAME TO {role}_renamed",
            "DROP VIEW v1",
            "ALTER TABLE t1 ALTER COLUMN v SET DEFAULT 'x'",
            "SELECT lo_from_bytea(0, 'large object')",
            "CREATE INDEX CONCURRENTLY t2_w ON t2 (w)",
            "DROP INDEX CONCURRENTLY t2_w",
            "TRUNCATE t2",  # a false difference (a new relfilenode): it costs the dump only
        ]
        last = before
        for sql in definitions:
            with pg.connect(db) as conn:
                conn.execute(sql)
            after = _fingerprint(pg, db)
            assert after is not None and after != last, sql
            last = after
    finally:
        with pg.connect(db) as conn:
            roles = conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname LIKE %s", (f"{role}%",)
            ).fetchall()
            for (name,) in roles:
                conn.execute(f"DROP OWNED BY {name} CASCADE")
        with pg.connect() as conn:
            for (name,) in roles:
                conn.execute(f"DROP ROLE {name}")


def test_an_incremental_without_definition_changes_runs_no_schema_dump(
    pg: PgServer, tmp_path: Path, databases: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = pg.create_database("reuse")
    databases.append(db)
    with pg.connect(db) as conn:
        for sql in _SETUP:
            conn.execute(sql)
    dumped: list[str] = []
    dump_schema = postgres._BackupRun.dump_schema
    catalog_reads: list[str] = []

    def counting(self: Any, name: str, snapshot_id: str, flag: Any) -> Any:
        dumped.append(name)
        return dump_schema(self, name, snapshot_id, flag)

    def counting_reads(conn: Any) -> Any:
        catalog_reads.append(conn.info.dbname)
        return read_tables(conn)

    monkeypatch.setattr(postgres._BackupRun, "dump_schema", counting)
    monkeypatch.setattr(postgres, "read_tables", counting_reads)
    store = ObjectStore((tmp_path / "store").as_uri())
    adapter = pg.adapter()
    full = adapter.full_backup(BackupRequest(store, "c", "full"))
    assert db in dumped and full.database(db).schema_fingerprint is not None

    dumped.clear()
    catalog_reads.clear()
    with pg.connect(db) as conn:
        conn.execute("INSERT INTO t1 VALUES (100, 'new')")
        conn.execute("ANALYZE")
    inc1 = adapter.incremental_backup(BackupRequest(store, "c", "inc1"), full)
    assert db not in dumped
    assert db not in catalog_reads  # the table definitions are the full's
    assert [t.fingerprint for t in inc1.database(db).tables] == [
        t.fingerprint for t in full.database(db).tables
    ]
    assert inc1.database(db).schema_archive == full.database(db).schema_archive
    assert inc1.database(db).schema_fingerprint == full.database(db).schema_fingerprint

    with pg.connect(db) as conn:
        conn.execute("CREATE VIEW v1 AS SELECT v FROM t1 WHERE id > 10")
    inc2 = adapter.incremental_backup(BackupRequest(store, "c", "inc2"), inc1)
    assert db in dumped and db in catalog_reads
    assert inc2.database(db).schema_fingerprint != inc1.database(db).schema_fingerprint

    for head, views in ((inc1, {"v0"}), (inc2, {"v0", "v1"})):
        chain = [full, inc1] if head is inc1 else [full, inc1, inc2]
        target = pg.create_database("reuse_restored")
        databases.append(target)
        restore_database(store, chain, db, pg.dsn_for(target), password=pg.password)
        with pg.connect(target) as conn:
            names = {
                r[0]
                for r in conn.execute("SELECT viewname FROM pg_views WHERE schemaname = 'public'")
            }
            value = conn.execute("SELECT f()").fetchone()
        assert names == views and value == (1,)
        for table in ("t1", "t2"):
            restored = table_digest(pg.url_for(target), "public", table)
            assert restored == table_digest(pg.url_for(db), "public", table), table


_DEFINITIONS = [
    "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')",
    "CREATE DOMAIN positive AS int CHECK (VALUE > 0)",
    "CREATE TYPE pair AS (a int, b mood[])",
    "CREATE SCHEMA other",
    'CREATE TABLE plain (id bigint PRIMARY KEY, v text COLLATE "C", m mood, p pair)',
    "CREATE TABLE other.keyed (k uuid PRIMARY KEY, d positive, moods mood[])",
    "CREATE TABLE nokey (a int, b numeric(10, 2) NOT NULL)",
    "CREATE TABLE generated (id int PRIMARY KEY, x int, y int GENERATED ALWAYS AS (x * 2) STORED)",
    "CREATE TABLE named (id int PRIMARY KEY, r regclass)",
    "CREATE UNLOGGED TABLE fleeting (id int PRIMARY KEY)",
    "CREATE TABLE dropped_col (id int PRIMARY KEY, gone int, kept text)",
    "ALTER TABLE dropped_col DROP COLUMN gone",
    "CREATE TABLE parted (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at)",
    "CREATE TABLE parted_2024 PARTITION OF parted FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')",
    "CREATE TABLE zero_columns ()",
    "INSERT INTO plain VALUES (1, 'a', 'ok', ROW(1, ARRAY['sad']::mood[]))",
    "INSERT INTO named VALUES (1, 'plain')",
]


def test_the_previous_definitions_are_the_tables_read_again(
    pg: PgServer, tmp_path: Path, databases: list[str]
) -> None:
    """With the schema fingerprint unchanged, the tables rebuilt from the previous manifest's
    entries (:class:`TableStates`) are exactly those :func:`read_tables` reads: definitions,
    fingerprints, the ``reg*`` flag, access methods and storage; a table the previous backup
    did not record makes them unusable."""
    db = pg.create_database("defs")
    databases.append(db)
    with pg.connect(db) as conn:
        for sql in _DEFINITIONS:
            conn.execute(sql)
    store = ObjectStore((tmp_path / "store").as_uri())
    full = pg.adapter().full_backup(BackupRequest(store, "c", "full"))
    previous = full.database(db)
    with pg.connect(db) as conn:
        conn.execute("INSERT INTO plain VALUES (2, 'b', 'happy', NULL)")
        conn.execute("TRUNCATE fleeting")  # new storage: the state is read, not reused
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        conn.execute(pg.adapter().settings_sql())  # the backup's search_path: same type names
        read = read_tables(conn)
        rebuilt = read_table_states(conn).tables(previous)
        conn.execute("ROLLBACK")
    assert rebuilt is not None
    assert rebuilt == read
    names = {t.name: t for t in read[1]}
    assert names["named"].text_follows_names and not names["plain"].text_follows_names
    assert {"parted_2024", "zero_columns", "nokey", "keyed"} <= set(names)

    without = previous.model_copy(
        update={"tables": [t for t in previous.tables if t.name != "nokey"]}
    )
    with pg.connect(db) as conn:
        assert read_table_states(conn).tables(without) is None
