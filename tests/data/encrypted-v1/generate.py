"""Write the encryption-at-rest fixture: an encrypted full and incremental, re-wrapped once.

Run from the repository root with the code that first wrote encrypted chains::

    python tests/data/encrypted-v1/generate.py tests/data/encrypted-v1

Kept as the record of how the fixture was made; later code must read what it wrote.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import psycopg

from managed_backups.shared.dataplane.engine import BackupRequest
from managed_backups.shared.dataplane.keys import ClusterKeys, LocalKeyring
from managed_backups.shared.dataplane.objectstore import ObjectStore
from managed_backups.shared.dataplane.postgres import PostgresAdapter
from managed_backups.shared.dataplane.sealing import rewrap_chain, sealed_store
from tests.infra.postgres import LocalPostgres
from tests.restore_checks import table_digest

CLUSTER = "enc-cluster"
FULL = "55555555-5555-4555-8555-555555555555"
INCREMENTAL = "66666666-6666-4666-8666-666666666666"


def main(out: Path) -> None:
    store_dir, keys_dir = out / "backup-store", out / "platform-keys"
    shutil.rmtree(store_dir, ignore_errors=True)
    shutil.rmtree(keys_dir, ignore_errors=True)
    ring = LocalKeyring(keys_dir, label="platform", name="platform key", create_first=True)
    keys = ClusterKeys(CLUSTER, ring, (ring,))
    with LocalPostgres() as pg:
        with psycopg.connect(pg.url_for("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE shop")
        with psycopg.connect(pg.url_for("shop"), autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, card text);"
                "INSERT INTO customers SELECT g, 'customer ' || g, md5(g::text)"
                " FROM generate_series(1, 400) g;"
                "CREATE TABLE notes (body text); INSERT INTO notes VALUES ('kept whole');"
            )
        raw = ObjectStore(store_dir.as_uri())
        store = sealed_store(raw, keys)
        adapter = PostgresAdapter(pg.dsn_for("postgres"), password=pg.password)
        full = adapter.full_backup(BackupRequest(store, CLUSTER, FULL))
        with psycopg.connect(pg.url_for("shop"), autocommit=True) as conn:
            conn.execute("UPDATE customers SET name = 'renamed' WHERE id % 7 = 0")
            conn.execute("DELETE FROM customers WHERE id % 11 = 0")
            conn.execute("INSERT INTO customers VALUES (401, 'new', NULL)")
            conn.execute("INSERT INTO notes VALUES ('added')")
        inc = adapter.incremental_backup(BackupRequest(store, CLUSTER, INCREMENTAL), full)
        assert inc.schema_version == 3
        ring.rotate()  # k0002 current; the chain's data key re-wrapped by it
        assert rewrap_chain(raw, keys, FULL).added
        expected = {
            table: list(table_digest(pg.url_for("shop"), "public", table))
            for table in ("customers", "notes")
        }
        (out / "backup-store.expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
