"""Full and incremental backups of a real PostgreSQL cluster into both object stores.

One scenario per store: several databases (one without tables), tables with integer, text,
composite and uuid keys, a table without a primary key, a partitioned table, a table whose
definition changes. A full backup, then incrementals after appends, 1% random updates,
deletes, and deleted-and-re-inserted keys / rows updated twice / a cross-partition move / an
``ADD COLUMN``. After every backup the source's rows are recorded; at the end every table is
rebuilt from every chain prefix and compared (row count and md5), and databases are really
restored with pg_restore + COPY and compared again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import pytest

from managed_backups.shared.dataplane.engine import BackupRequest
from managed_backups.shared.dataplane.manifest import (
    BackupType,
    KeySetFormat,
    Manifest,
    TableMode,
    chain_prefix,
    list_manifests,
    load_chain,
)
from managed_backups.shared.dataplane.objectstore import ObjectStore
from managed_backups.shared.dataplane.restore_rows import (
    iter_table_rows,
    restore_database,
    rows_digest,
)
from managed_backups.shared.dataplane.verify import verify_backup

from .conftest import PgServer, source_rows, store_bytes

pytestmark = pytest.mark.integration

BIG = 200_000  # rows in app.accounts: the table whose incrementals are measured

APP_SCHEMA = f"""
CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL, note text);
INSERT INTO accounts SELECT g, (g * 7919) % 10007, md5(g::text) FROM generate_series(1, {BIG}) g;
CREATE TABLE tags (k text PRIMARY KEY, v int);
INSERT INTO tags SELECT 'k' || g, g FROM generate_series(1, 3000) g;
INSERT INTO tags VALUES (E'tab\\there', 1), (E'new\\nline', 2), ('ünïcode', 3), ('Zed', 4),
                        (E'back\\\\slash', 5), ('a', 6), ('B', 7);
CREATE TABLE pairs (a int, b text, payload jsonb, PRIMARY KEY (a, b));
INSERT INTO pairs SELECT g % 100, 'b' || (g / 100), jsonb_build_object('g', g)
FROM generate_series(1, 5000) g;
CREATE TABLE events (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), at timestamptz, kind text);
INSERT INTO events (at, kind)
SELECT timestamptz '2024-01-01 00:00+00' - g * interval '1 minute', 'k' || (g % 7)
FROM generate_series(1, 2000) g;
CREATE TABLE nokey (a int, b text);
INSERT INTO nokey SELECT g % 50, 'x' || g FROM generate_series(1, 3000) g;
CREATE TABLE evolving (id bigint PRIMARY KEY, v text);
INSERT INTO evolving SELECT g, 'v' || g FROM generate_series(1, 2000) g;
CREATE TABLE readings (id bigserial, zone int, val double precision, PRIMARY KEY (zone, id))
  PARTITION BY LIST (zone);
CREATE TABLE readings_a PARTITION OF readings FOR VALUES IN (1, 2);
CREATE TABLE readings_b PARTITION OF readings FOR VALUES IN (3, 4);
INSERT INTO readings (zone, val) SELECT 1 + g % 4, g / 3.0 FROM generate_series(1, 4000) g;
CREATE VIEW rich AS SELECT id, balance FROM accounts WHERE balance > 10000;
"""

SHOP_SCHEMA = """
CREATE SCHEMA sales;
CREATE TABLE sales.customers (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO sales.customers SELECT g, 'customer ' || g FROM generate_series(1, 300) g;
CREATE TABLE sales.orders (id serial PRIMARY KEY,
                           customer_id int NOT NULL REFERENCES sales.customers(id),
                           total numeric(10, 2), placed date);
INSERT INTO sales.orders (customer_id, total, placed)
SELECT 1 + g % 300, (g % 997) / 7.0, date '2024-01-01' + g % 365 FROM generate_series(1, 3000) g;
"""

EMPTY_SCHEMA = """
CREATE SCHEMA reporting;
CREATE VIEW reporting.now AS SELECT now() AS at;
"""

# (database role, schema, table, order by) — order by None: compare as a sorted multiset.
TABLES: list[tuple[str, str, str, str | None]] = [
    ("app", "public", "accounts", "id"),
    ("app", "public", "tags", 'k COLLATE "C"'),
    ("app", "public", "pairs", 'a, b COLLATE "C"'),
    ("app", "public", "events", "id"),
    ("app", "public", "nokey", None),
    ("app", "public", "evolving", "id"),
    ("app", "public", "readings_a", "zone, id"),
    ("app", "public", "readings_b", "zone, id"),
    ("shop", "sales", "customers", "id"),
    ("shop", "sales", "orders", "id"),
]


def digest_lines(lines: list[bytes], ordered: bool) -> tuple[int, str]:
    md5 = hashlib.md5(usedforsecurity=False)
    for line in lines if ordered else sorted(lines):
        md5.update(line)
    return len(lines), md5.hexdigest()


@dataclass
class Scenario:
    pg: PgServer
    store: ObjectStore
    dbs: dict[str, str]
    cluster: str = "cluster-1"
    manifests: list[Manifest] = field(default_factory=list)
    expected: list[dict[tuple[str, str, str], tuple[int, str]]] = field(default_factory=list)
    stored: list[int] = field(default_factory=list)

    def sql(self, role: str, statements: str) -> None:
        with self.pg.connect(self.dbs[role]) as conn:
            conn.execute(statements)

    def snapshot_source(self) -> None:
        state: dict[tuple[str, str, str], tuple[int, str]] = {}
        for role, schema, table, order in TABLES:
            query = f'SELECT * FROM "{schema}"."{table}"' + (f" ORDER BY {order}" if order else "")
            lines = source_rows(self.pg, self.dbs[role], query)
            state[(role, schema, table)] = digest_lines(lines, order is not None)
        self.expected.append(state)

    def backup(self, adapter_kwargs: dict[str, int]) -> Manifest:
        adapter = self.pg.adapter(**adapter_kwargs)
        backup_id = f"b{len(self.manifests)}"
        before = store_bytes(self.store, f"clusters/{self.cluster}")
        request = BackupRequest(self.store, self.cluster, backup_id)
        if self.manifests:
            manifest = adapter.incremental_backup(request, self.manifests[-1])
        else:
            manifest = adapter.full_backup(request)
        self.stored.append(store_bytes(self.store, f"clusters/{self.cluster}") - before)
        self.manifests.append(manifest)
        self.snapshot_source()
        return manifest

    def table(self, manifest: Manifest, role: str, schema: str, table: str) -> object:
        entry = manifest.table(self.dbs[role], schema, table)
        assert entry is not None, f"{role}.{schema}.{table} missing from {manifest.backup_id}"
        return entry


@pytest.mark.timeout(900)
def test_full_then_incrementals_store_only_changes_and_rebuild_exactly(
    pg: PgServer, store: ObjectStore, databases: list[str]
) -> None:
    dbs = {role: pg.create_database(role) for role in ("app", "shop", "empty")}
    databases.extend(dbs.values())
    sc = Scenario(pg, store, dbs)
    sc.sql("app", APP_SCHEMA)
    sc.sql("shop", SHOP_SCHEMA)
    sc.sql("empty", EMPTY_SCHEMA)
    for db in dbs.values():
        with pg.connect(db) as conn:
            conn.execute("VACUUM ANALYZE")
    live = {d.name: d for d in pg.adapter().catalog().databases}
    assert live[dbs["empty"]].table_count == 0 and live[dbs["app"]].table_count == 8
    assert {t.name for s in live[dbs["shop"]].schemas for t in s.tables} == {"customers", "orders"}

    # Both transports in each run: the local store reads every table through psycopg, the S3
    # store streams tables of 1 MiB and more through psql.
    kwargs = {"psql_min_bytes": 1 << 40} if store.kind == "local" else {"psql_min_bytes": 1 << 20}

    # ---------------------------------------------------------------- full
    full = sc.backup(kwargs)
    assert full.type == BackupType.FULL and full.parent_id is None
    assert full.chain_id == full.backup_id
    full_bytes = sc.stored[0]
    assert full_bytes == full.totals.new_stored_bytes + len(full.to_stored())
    accounts = full.table(dbs["app"], "public", "accounts")
    assert accounts is not None and accounts.mode == TableMode.FULL and accounts.rows == BIG
    assert accounts.ordered and [k.name for k in accounts.key_columns] == ["id"]

    # catalog: every database, the one without tables flagged by table_count 0
    catalog = {d.name: d for d in full.catalog.databases}
    assert catalog[dbs["empty"]].table_count == 0
    assert {s.name for s in catalog[dbs["empty"]].schemas} >= {"public", "reporting"}
    assert catalog[dbs["app"]].table_count == 8
    assert catalog[dbs["shop"]].table_count == 2
    shop_schemas = {s.name: s for s in catalog[dbs["shop"]].schemas}
    assert {t.name: t.rows for t in shop_schemas["sales"].tables} == {
        "customers": 300,
        "orders": 3000,
    }
    app_tables = {t.name: t for s in catalog[dbs["app"]].schemas for t in s.tables}
    assert app_tables["accounts"].rows == BIG and app_tables["accounts"].size_bytes > 0
    assert "rich" not in app_tables  # views are schema, not data
    assert full.catalog.database_count == sum(1 for d in full.catalog.databases if d.table_count)
    assert catalog[dbs["app"]].size_bytes > 0

    # ---------------------------------------------------------------- 1% appended
    sc.sql(
        "app",
        f"""
        INSERT INTO accounts SELECT g, g % 1000, md5(g::text)
        FROM generate_series({BIG + 1}, {BIG + BIG // 100}) g;
        INSERT INTO tags SELECT 'n' || g, g FROM generate_series(1, 30) g;
        INSERT INTO readings (zone, val) SELECT 1 + g % 4, g FROM generate_series(1, 40) g;
        """,
    )
    inc1 = sc.backup(kwargs)
    acc1 = inc1.table(dbs["app"], "public", "accounts")
    assert acc1 is not None and acc1.mode == TableMode.DELTA and acc1.rows == BIG // 100
    assert acc1.key_set is not None and acc1.key_set.format == KeySetFormat.RANGES
    assert acc1.key_set.keys == acc1.live_rows == BIG + BIG // 100
    tags1 = inc1.table(dbs["app"], "public", "tags")
    assert tags1 is not None and tags1.mode == TableMode.DELTA and tags1.rows == 30
    assert tags1.key_set is not None and tags1.key_set.format == KeySetFormat.KEYS
    nokey1 = inc1.table(dbs["app"], "public", "nokey")
    assert (
        nokey1 is not None and nokey1.mode == TableMode.WHOLE and nokey1.reason == "no primary key"
    )
    customers1 = inc1.table(dbs["shop"], "sales", "customers")
    # no row changed or deleted: nothing stored, the full's entry stands
    assert customers1 is not None and customers1.mode == TableMode.UNCHANGED
    assert customers1.rows == 0 and customers1.data == [] and customers1.key_set is None
    assert customers1.live_rows == 300
    assert sc.stored[1] <= 0.03 * full_bytes, (sc.stored[1], full_bytes)

    # ---------------------------------------------------------------- 1% random updates
    sc.sql(
        "app",
        f"""
        UPDATE accounts SET balance = balance + 1, note = 'u' || note
        WHERE id IN (SELECT (hashint4(g) & {2**31 - 1}) % {BIG} + 1
                     FROM generate_series(1, {BIG // 100}) g);
        UPDATE events SET kind = 'changed' WHERE id IN (SELECT id FROM events LIMIT 20);
        UPDATE pairs SET payload = '{{"u": 1}}' WHERE a = 7;
        """,
    )
    sc.sql("shop", "UPDATE sales.orders SET total = total + 1 WHERE id % 100 = 0")
    inc2 = sc.backup(kwargs)
    acc2 = inc2.table(dbs["app"], "public", "accounts")
    assert acc2 is not None and acc2.mode == TableMode.DELTA
    assert 0.009 * BIG <= acc2.rows <= 0.01 * BIG
    assert sc.stored[2] <= 0.05 * full_bytes, (sc.stored[2], full_bytes)

    # ---------------------------------------------------------------- deletes
    sc.sql(
        "app",
        f"""
        DELETE FROM accounts WHERE id IN (SELECT (hashint4(g + 7) & {2**31 - 1}) % {BIG} + 1
                                          FROM generate_series(1, {BIG // 100}) g);
        DELETE FROM tags WHERE k LIKE 'k1%';
        DELETE FROM nokey WHERE a = 3;
        DELETE FROM readings WHERE id % 9 = 0;
        """,
    )
    sc.sql("shop", "DELETE FROM sales.orders WHERE id % 7 = 0")
    inc3 = sc.backup(kwargs)
    acc3 = inc3.table(dbs["app"], "public", "accounts")
    assert acc3 is not None and acc3.mode == TableMode.DELTA and acc3.rows == 0
    with pg.connect(dbs["app"]) as conn:
        row = conn.execute("SELECT count(*) FROM accounts").fetchone()
    assert row is not None and acc3.live_rows == row[0] < BIG + BIG // 100
    assert sc.stored[3] <= 0.05 * full_bytes, (sc.stored[3], full_bytes)

    # ------------------------------------- re-inserted keys, updated twice, moved, new column
    sc.sql(
        "app",
        """
        BEGIN;
        DELETE FROM accounts WHERE id BETWEEN 500 AND 599;
        INSERT INTO accounts SELECT g, -g, 'reborn' FROM generate_series(500, 599) g;
        UPDATE tags SET v = v + 100 WHERE k LIKE 'k2%';
        UPDATE tags SET v = v + 100 WHERE k LIKE 'k2%';
        COMMIT;
        UPDATE tags SET v = -1 WHERE k = 'Zed';
        UPDATE tags SET v = -2 WHERE k = 'Zed';
        DELETE FROM tags WHERE k = 'a';
        INSERT INTO tags VALUES ('a', 600);
        UPDATE readings SET zone = 4 WHERE zone = 1 AND id % 10 = 1;
        ALTER TABLE evolving ADD COLUMN extra int DEFAULT 7;
        """,
    )
    inc4 = sc.backup(kwargs)
    acc4 = inc4.table(dbs["app"], "public", "accounts")
    assert acc4 is not None and acc4.mode == TableMode.DELTA and acc4.rows == 100
    evolving4 = inc4.table(dbs["app"], "public", "evolving")
    assert evolving4 is not None and evolving4.mode == TableMode.WHOLE
    assert evolving4.reason == "definition changed" and evolving4.columns[-1] == "extra"
    tags4 = inc4.table(dbs["app"], "public", "tags")
    assert tags4 is not None and tags4.mode == TableMode.DELTA

    # ---------------------------------------------------------------- the chain as stored
    listed = list_manifests(store, sc.cluster, full.backup_id)
    assert [m.backup_id for m in listed] == [m.backup_id for m in sc.manifests]
    assert load_chain(store, sc.manifests[-1]) == sc.manifests
    assert all(m.data_from <= m.completed_at for m in sc.manifests)
    assert [m.data_from for m in sc.manifests] == sorted(m.data_from for m in sc.manifests)

    # ---------------------------------------------------------------- rebuild every backup
    for k, manifest in enumerate(sc.manifests):
        chain = sc.manifests[: k + 1]
        for role, schema, table, order in TABLES:
            blocks = iter_table_rows(store, chain, dbs[role], schema, table)
            got = rows_digest(blocks, sort=order is None)
            want = sc.expected[k][(role, schema, table)]
            assert got == want, f"{manifest.backup_id} {role}.{schema}.{table}: {got} != {want}"
        report = verify_backup(store, manifest)
        assert report.ok and report.chunks_checked > 0, report

    # ---------------------------------------------------------------- real restores
    for k in (2, len(sc.manifests) - 1):
        chain = sc.manifests[: k + 1]
        restored = {role: pg.create_database(f"restored_{role}") for role in ("app", "shop")}
        databases.extend(restored.values())
        for role, target in restored.items():
            restore_database(store, chain, dbs[role], pg.dsn_for(target), password=pg.password)
        for role, schema, table, order in TABLES:
            query = f'SELECT * FROM "{schema}"."{table}"' + (f" ORDER BY {order}" if order else "")
            got = digest_lines(source_rows(pg, restored[role], query), order is not None)
            assert got == sc.expected[k][(role, schema, table)], (k, role, table)
        with pg.connect(restored["shop"]) as conn:
            # post-data ran: the foreign key and the serial's sequence are back
            fk = conn.execute(
                "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conname LIKE 'orders%'"
            ).fetchone()
            seq = conn.execute("SELECT last_value FROM sales.orders_id_seq").fetchone()
        assert fk == (1,) and seq == (3000,)

    # physical bytes of the whole chain = what the manifests account for
    total = store_bytes(store, chain_prefix(sc.cluster, full.backup_id))
    assert total == sum(sc.stored)
