"""Write the schema_version 3 fixture: a full and an incremental, every kind of table entry.

Run from the repository root with the code that writes version 3 manifests (commit
``dd09f9e``)::

    python tests/data/manifest-v3/generate.py tests/data/manifest-v3

Kept as the record of how the fixture was made; later code must read what it wrote.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import psycopg

from managed_backups.shared.dataplane.engine import BackupRequest
from managed_backups.shared.dataplane.manifest import TableMode
from managed_backups.shared.dataplane.objectstore import ObjectStore
from managed_backups.shared.dataplane.postgres import PostgresAdapter
from tests.infra.postgres import LocalPostgres
from tests.restore_checks import table_digest

CLUSTER = "v3-cluster"
FULL = "55555555-5555-4555-8555-555555555555"
INCREMENTAL = "66666666-6666-4666-8666-666666666666"
TABLES = [
    ("public", "accounts"),  # integer key, changed: DELTA
    ("public", "quiet"),  # integer key, unchanged: UNCHANGED (stored relative to the parent)
    ("public", "codes"),  # text key, changed: DELTA
    ("public", "readings"),  # timestamptz key: WHOLE in version 3 (key type not diffed)
    ("public", "days"),  # date key: WHOLE in version 3
    ("public", "log"),  # no key: WHOLE
]


def main(out: Path) -> None:
    store_dir = out / "backup-store-v3"
    shutil.rmtree(store_dir, ignore_errors=True)
    with LocalPostgres() as pg:
        with psycopg.connect(pg.url_for("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE shop TEMPLATE template0 LOCALE 'C'")
            conn.execute("COMMENT ON DATABASE shop IS 'written by version 3'")
            conn.execute("ALTER DATABASE shop CONNECTION LIMIT 12")
        with psycopg.connect(pg.url_for("shop"), autocommit=True) as conn:
            conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance numeric(12, 2))")
            conn.execute("INSERT INTO accounts SELECT g, g * 1.5 FROM generate_series(1, 400) g")
            conn.execute("CREATE TABLE quiet (id bigint PRIMARY KEY, v text)")
            conn.execute("INSERT INTO quiet SELECT g, md5(g::text) FROM generate_series(1, 50) g")
            conn.execute("CREATE TABLE codes (code text PRIMARY KEY, label text)")
            conn.execute("INSERT INTO codes VALUES ('a', 'alpha'), ('b', 'beta'), ('é', 'e')")
            conn.execute("CREATE TABLE readings (at timestamptz PRIMARY KEY, v float8)")
            conn.execute(
                "INSERT INTO readings SELECT timestamptz '2024-01-01 00:00:00.5+00'"
                " + g * interval '1 minute', g / 3.0 FROM generate_series(1, 100) g"
            )
            conn.execute("INSERT INTO readings VALUES ('infinity', 0), ('-infinity', -1)")
            conn.execute("CREATE TABLE days (day date PRIMARY KEY, n int)")
            conn.execute(
                "INSERT INTO days SELECT date '2023-12-25' + g, g FROM generate_series(1, 30) g"
            )
            conn.execute("CREATE TABLE log (at int, message text)")
            conn.execute("INSERT INTO log VALUES (1, 'started')")
            conn.execute("CREATE SEQUENCE counter")
            conn.execute("SELECT setval('counter', 41)")
        store = ObjectStore(store_dir.as_uri())
        adapter = PostgresAdapter(pg.dsn_for("postgres"), password=pg.password)
        full = adapter.full_backup(BackupRequest(store, CLUSTER, FULL))
        with psycopg.connect(pg.url_for("shop"), autocommit=True) as conn:
            conn.execute("UPDATE accounts SET balance = -balance WHERE id % 7 = 0")
            conn.execute("DELETE FROM accounts WHERE id % 11 = 0")
            conn.execute("INSERT INTO accounts VALUES (1000, 1)")
            conn.execute("UPDATE codes SET label = 'BETA' WHERE code = 'b'")
            conn.execute("DELETE FROM codes WHERE code = 'a'")
            conn.execute("UPDATE readings SET v = 99 WHERE at = 'infinity'")
            conn.execute("DELETE FROM days WHERE n = 3")
            conn.execute("INSERT INTO log VALUES (2, 'changed')")
            conn.execute("SELECT nextval('counter')")
        inc = adapter.incremental_backup(BackupRequest(store, CLUSTER, INCREMENTAL), full)
        assert full.schema_version == inc.schema_version == 3
        modes = {t.name: t.mode for t in inc.database("shop").tables}
        assert modes == {
            "accounts": TableMode.DELTA,
            "quiet": TableMode.UNCHANGED,
            "codes": TableMode.DELTA,
            "readings": TableMode.WHOLE,
            "days": TableMode.WHOLE,
            "log": TableMode.WHOLE,
        }, modes
        expected = {
            f"{schema}.{name}": list(table_digest(pg.url_for("shop"), schema, name))
            for schema, name in TABLES
        }
        with psycopg.connect(pg.url_for("shop"), autocommit=True) as conn:
            row = conn.execute("SELECT last_value, is_called FROM counter").fetchone()
        assert row is not None
        document = {"tables": expected, "counter": [int(row[0]), bool(row[1])]}
        (out / "backup-store-v3.expected.json").write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
