"""Write the schema_version 2 fixture: a full and an incremental of many small tables.

Run from the repository root with the code that writes version 2 manifests (commit
``e61a99f``)::

    python tests/data/manifest-v2/generate.py tests/data/manifest-v2

Kept as the record of how the fixture was made; later code must read what it wrote.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import psycopg

from managed_backups.shared.dataplane.engine import BackupRequest
from managed_backups.shared.dataplane.objectstore import ObjectStore
from managed_backups.shared.dataplane.postgres import PostgresAdapter
from tests.infra.postgres import LocalPostgres
from tests.restore_checks import table_digest

CLUSTER = "v2-cluster"
FULL = "33333333-3333-4333-8333-333333333333"
INCREMENTAL = "44444444-4444-4444-8444-444444444444"
TABLES = [(f"tenant_{s}", f"t{i}") for s in ("a", "b", "c") for i in range(6)]


def main(out: Path) -> None:
    store_dir = out / "backup-store-v2"
    shutil.rmtree(store_dir, ignore_errors=True)
    with LocalPostgres() as pg:
        with psycopg.connect(pg.url_for("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE shop")
        with psycopg.connect(pg.url_for("shop"), autocommit=True) as conn:
            for schema in ("tenant_a", "tenant_b", "tenant_c"):
                conn.execute(f"CREATE SCHEMA {schema}")
            for schema, name in TABLES:
                conn.execute(
                    f"CREATE TABLE {schema}.{name} (id int PRIMARY KEY, name text NOT NULL,"
                    " amount numeric(10, 2))"
                )
                conn.execute(
                    f"INSERT INTO {schema}.{name} SELECT g, md5('{schema}.{name}' || g), g * 1.25"
                    " FROM generate_series(1, 8) g"
                )
            conn.execute("CREATE TABLE tenant_a.codes (code text PRIMARY KEY, label text)")
            conn.execute("INSERT INTO tenant_a.codes VALUES ('a', 'alpha'), ('b', 'beta')")
            conn.execute("CREATE TABLE tenant_a.log (at int, message text)")  # no key: whole
            conn.execute("INSERT INTO tenant_a.log VALUES (1, 'started')")
            conn.execute("CREATE SEQUENCE tenant_a.counter")
            conn.execute("SELECT setval('tenant_a.counter', 41)")
        store = ObjectStore(store_dir.as_uri())
        adapter = PostgresAdapter(pg.dsn_for("postgres"), password=pg.password)
        full = adapter.full_backup(BackupRequest(store, CLUSTER, FULL))
        with psycopg.connect(pg.url_for("shop"), autocommit=True) as conn:
            conn.execute("INSERT INTO tenant_a.t1 VALUES (9, 'appended', 9)")
            conn.execute("UPDATE tenant_b.t2 SET amount = -1 WHERE id = 3")
            conn.execute("DELETE FROM tenant_c.t5 WHERE id IN (4, 5)")
            conn.execute("UPDATE tenant_a.codes SET label = 'BETA' WHERE code = 'b'")
            conn.execute("INSERT INTO tenant_a.log VALUES (2, 'changed')")
            conn.execute("SELECT nextval('tenant_a.counter')")
        inc = adapter.incremental_backup(BackupRequest(store, CLUSTER, INCREMENTAL), full)
        assert full.schema_version == inc.schema_version == 2
        expected = {
            f"{schema}.{name}": list(table_digest(pg.url_for("shop"), schema, name))
            for schema, name in [*TABLES, ("tenant_a", "codes"), ("tenant_a", "log")]
        }
        with psycopg.connect(pg.url_for("shop"), autocommit=True) as conn:
            row = conn.execute("SELECT last_value, is_called FROM tenant_a.counter").fetchone()
        assert row is not None
        document = {"tables": expected, "counter": [int(row[0]), bool(row[1])]}
        (out / "backup-store-v2.expected.json").write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
