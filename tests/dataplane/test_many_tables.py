"""Schemas of many small tables: an incremental asks about them in batches.

Small DELTA tables are probed for changed rows with one query per batch, and their integer key
sets come from one COPY per batch cut back into one key set per table. The incremental must be
exactly what one COPY per table stores (same chunks, rows, key counts), for every kind of
table a batch can hold: changed or not, emptied, with gaps, text keys (read on their own),
and int8 keys near -2^63, whose range query overflows (the batch falls back to per-table
streams).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import zstandard

from managed_backups.shared.dataplane import postgres, postgres_streams
from managed_backups.shared.dataplane.engine import BackupRequest
from managed_backups.shared.dataplane.manifest import (
    Manifest,
    ManifestError,
    TableBackup,
    TableMode,
    list_manifests,
    load_chain,
    load_manifest,
    manifest_key,
    read_catalog,
    read_manifest,
)
from managed_backups.shared.dataplane.objectstore import ObjectStore
from managed_backups.shared.dataplane.restore_rows import (
    iter_table_rows,
    restore_database,
    rows_digest,
)
from managed_backups.shared.dataplane.verify import verify_backup
from tests.restore_checks import table_digest

from .conftest import PgServer, source_rows

pytestmark = pytest.mark.integration

_MIN_INT8 = -(2**63)


def _tables(pg: PgServer, db: str) -> list[str]:
    """Creates 24 tables of every kind a batch may hold; returns their names."""
    names = []
    with pg.connect(db) as conn:
        for i in range(16):
            key = ("int4", "int8", "int2", "oid")[i % 4]
            name = f"t{i:02d}_{key}"
            names.append(name)
            conn.execute(f"CREATE TABLE {name} (id {key} PRIMARY KEY, v text)")
            conn.execute(f"INSERT INTO {name} SELECT g, 'v' || g FROM generate_series(1, 30) g")
        for i in range(4):
            name = f"txt{i}"
            names.append(name)
            conn.execute(f"CREATE TABLE {name} (id text PRIMARY KEY, v int)")
            conn.execute(f"INSERT INTO {name} SELECT 'k' || g, g FROM generate_series(1, 20) g")
        names.append("empty_from_start")
        conn.execute("CREATE TABLE empty_from_start (id int PRIMARY KEY)")
        names.append("to_empty")
        conn.execute("CREATE TABLE to_empty (id int PRIMARY KEY)")
        conn.execute("INSERT INTO to_empty SELECT generate_series(1, 5)")
        for name in ("low_int8_a", "low_int8_b"):
            names.append(name)
            conn.execute(f"CREATE TABLE {name} (id int8 PRIMARY KEY, v text)")
            conn.execute(
                f"INSERT INTO {name} VALUES ({_MIN_INT8}, 'min'), ({_MIN_INT8 + 1}, 'next'),"
                " (0, 'zero')"
            )
    return names


def _change(pg: PgServer, db: str) -> None:
    with pg.connect(db) as conn:
        conn.execute("INSERT INTO t00_int4 VALUES (100, 'appended')")
        conn.execute("UPDATE t05_int8 SET v = 'updated' WHERE id = 7")
        conn.execute("DELETE FROM t06_int2 WHERE id BETWEEN 10 AND 12")  # a gap
        conn.execute("DELETE FROM t11_oid WHERE id = 30")
        conn.execute("UPDATE txt1 SET v = -1 WHERE id = 'k3'")
        conn.execute("DELETE FROM txt2 WHERE id = 'k4'")
        conn.execute("DELETE FROM to_empty")
        conn.execute(f"UPDATE low_int8_b SET v = 'changed' WHERE id = {_MIN_INT8}")


def _entry(manifest: Manifest, db: str, name: str) -> TableBackup:
    entry = manifest.table(db, "public", name)
    assert entry is not None
    return entry


def test_small_tables_are_read_in_batches_and_store_what_one_copy_per_table_stores(
    pg: PgServer, tmp_path: Path, databases: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The probe's batches are what this test is about: on a server that summarizes its WAL
    # (17+), the unwritten tables would not be read at all (test_wal_summaries.py).
    monkeypatch.setattr(postgres, "summarizing", lambda conn, version_num: False)
    db = pg.create_database("many")
    databases.append(db)
    names = _tables(pg, db)
    store = ObjectStore((tmp_path / "store").as_uri())
    adapter = pg.adapter()
    full = adapter.full_backup(BackupRequest(store, "c", "full"))
    _change(pg, db)

    copies: list[str] = []
    blocks = postgres_streams.DbReader.psycopg_blocks

    def counting(self: Any, sql: str, step: str, flag: Any) -> Any:
        if f"in database {db}:" in step:
            copies.append(sql)
        return blocks(self, sql, step, flag)

    monkeypatch.setattr(postgres_streams.DbReader, "psycopg_blocks", counting)
    monkeypatch.setattr(postgres_streams, "_BATCH_TABLES", 5)  # several batches, one partial
    batched = adapter.incremental_backup(BackupRequest(store, "c", "batched"), full)
    batched_copies = len(copies)

    copies.clear()
    monkeypatch.setattr(postgres_streams, "_SMALL_TABLE_BYTES", -1)  # one COPY per stream
    one_by_one = adapter.incremental_backup(BackupRequest(store, "c", "one-by-one"), full)
    assert len(copies) == 2 * len(names) + 2  # the low int8 keys' ranges retried as lists

    # Changed tables' data, text key sets, the overflowing batch's key sets on their own, one
    # key-set COPY per batch: far fewer round trips than two COPYs per table.
    assert batched_copies < len(names)
    touched = {"t00_int4", "t05_int8", "t06_int2", "t11_oid", "txt1", "txt2", "to_empty"}
    touched.add("low_int8_b")
    for name in names:
        ours, reference = _entry(batched, db, name), _entry(one_by_one, db, name)
        if name in touched:
            assert ours.mode == TableMode.DELTA, name
            assert ours.model_dump(exclude={"size_bytes"}) == reference.model_dump(
                exclude={"size_bytes"}
            ), name
        else:  # no row changed or deleted: nothing read but the probe, nothing stored
            assert ours.mode == TableMode.UNCHANGED, name
            assert reference.mode == TableMode.DELTA and reference.rows == 0, name
            assert ours.data == [] and ours.key_set is None and ours.rows == 0, name
            assert ours.live_rows == reference.live_rows, name
            previous = _entry(full, db, name)
            assert ours.fingerprint == previous.fingerprint, name
            assert ours.size_bytes == previous.size_bytes, name
    assert _entry(batched, db, "t06_int2").rows == 0  # deletions only: a key set, no rows
    assert _entry(batched, db, "t06_int2").key_set is not None
    assert _entry(batched, db, "t00_int4").rows == 1
    assert _entry(batched, db, "to_empty").live_rows == 0
    assert _entry(batched, db, "low_int8_b").rows == 1

    chain = [full, batched]
    for name in names:
        expected = rows_digest(
            [b"".join(source_rows(pg, db, f"SELECT * FROM public.{name}"))], sort=True
        )
        restored = iter_table_rows(store, chain, db, "public", name)
        assert rows_digest(restored, sort=True) == expected, name


def test_each_table_is_locked_by_the_one_worker_that_reads_it(
    pg: PgServer, tmp_path: Path, databases: list[str]
) -> None:
    """The server's lock table holds about three locks per table during a backup (the
    coordinator's, the reading worker's, the schema dump's), not one per worker: a schema of
    thousands of tables fits where ``pg_dump -j`` fits."""
    db = pg.create_database("locks")
    databases.append(db)
    with pg.connect(db) as conn:
        for i in range(20):
            conn.execute(f"CREATE TABLE t{i} (id int PRIMARY KEY)")
            conn.execute(f"INSERT INTO t{i} SELECT generate_series(1, {i + 1})")
    seen: dict[str, dict[int, int]] = {}

    def holders(snapshots: Any) -> None:
        if db not in snapshots:
            return
        with pg.connect(db) as conn:
            rows = conn.execute(
                "SELECT l.relation::regclass::text, l.pid FROM pg_locks l"
                " JOIN pg_class c ON c.oid = l.relation"
                " WHERE l.database = (SELECT oid FROM pg_database WHERE datname = %s)"
                " AND l.mode = 'AccessShareLock' AND l.granted AND c.relkind = 'r'"
                " AND c.relnamespace = 'public'::regnamespace"
                " AND l.pid <> pg_backend_pid()",
                (db,),
            ).fetchall()
        for table, pid in rows:
            seen.setdefault(str(table), {})[int(pid)] = 1

    store = ObjectStore((tmp_path / "store").as_uri())
    adapter = pg.adapter(parallelism=2)
    adapter.full_backup(BackupRequest(store, "c", "full", on_snapshots=holders))
    assert sorted(seen) == sorted(f"t{i}" for i in range(20))
    per_pid: dict[int, int] = {}
    for pids in seen.values():
        assert len(pids) >= 2  # the coordinator and the worker of the table's lane
        for pid in pids:
            per_pid[pid] = per_pid.get(pid, 0) + 1
    # Only the coordinator and the schema dump hold every table; each worker holds its lane's.
    assert sum(1 for count in per_pid.values() if count == 20) <= 2
    assert sum(1 for count in per_pid.values() if count < 20) == 2


def test_unchanged_tables_are_stored_relative_to_the_parent_and_restore_exactly(
    pg: PgServer, tmp_path: Path, databases: list[str]
) -> None:
    """A chain full → incremental → incremental of many small tables, most never changed:
    unchanged tables cost a name in the stored manifest, the manifest is read with its
    parents (one by one, as a listing, as a chain), and every step restores what the source
    held at it."""
    db = pg.create_database("rel")
    databases.append(db)
    with pg.connect(db) as conn:
        for s in range(3):
            conn.execute(f"CREATE SCHEMA s{s}")
            for i in range(40):
                conn.execute(f"CREATE TABLE s{s}.t{i} (id int PRIMARY KEY, v text)")
                conn.execute(
                    f"INSERT INTO s{s}.t{i} SELECT g, md5('{s}.{i}.' || g)"
                    " FROM generate_series(1, 6) g"
                )
        for i in range(3):  # larger: their bytes span several of a pack's chunks
            conn.execute(f"CREATE TABLE s0.m{i} (id int PRIMARY KEY, v text)")
            conn.execute(
                f"INSERT INTO s0.m{i} SELECT g, md5('m{i}' || g) || md5(g::text)"
                " FROM generate_series(1, 600) g"
            )
        conn.execute("CREATE TABLE s1.nokey (v text)")  # stored whole in every backup
        conn.execute("INSERT INTO s1.nokey SELECT md5(g::text) FROM generate_series(1, 50) g")
    tables = [(f"s{s}", f"t{i}") for s in range(3) for i in range(40)]
    tables += [("s0", "m0"), ("s0", "m1"), ("s0", "m2"), ("s1", "nokey")]
    store = ObjectStore((tmp_path / "store").as_uri())
    adapter = pg.adapter()
    digests: list[dict[tuple[str, str], tuple[int, str]]] = []

    def snapshot_digests() -> None:
        digests.append({t: table_digest(pg.url_for(db), *t) for t in tables})

    full = adapter.full_backup(BackupRequest(store, "c", "full"))
    snapshot_digests()
    # Small tables share chunks: a few objects for 124 tables, tables starting inside a chunk
    # and tables spanning several.
    entries = [full.database(db).table(*t) for t in tables]
    assert all(e is not None for e in entries)
    packed = [e for e in entries if e is not None]
    assert len({ref.hash for e in packed for ref in e.data}) < len(tables) // 10
    assert sum(1 for e in packed if e.data_offset > 0) > len(tables) // 2
    assert any(len(e.data) > 1 for e in packed)
    with pg.connect(db) as conn:
        conn.execute("INSERT INTO s0.t1 VALUES (100, 'new')")
        conn.execute("DELETE FROM s1.t2 WHERE id = 3")
        conn.execute("UPDATE s1.nokey SET v = 'changed' WHERE v = md5('7')")
    inc1 = adapter.incremental_backup(BackupRequest(store, "c", "inc1"), full)
    snapshot_digests()
    with pg.connect(db) as conn:
        conn.execute("UPDATE s2.t3 SET v = 'changed' WHERE id = 2")
        conn.execute("DELETE FROM s0.t1 WHERE id = 100")
    inc2 = adapter.incremental_backup(BackupRequest(store, "c", "inc2"), inc1)
    snapshot_digests()

    modes = [
        {t: m.database(db).table(*t).mode for t in tables}  # type: ignore[union-attr]
        for m in (inc1, inc2)
    ]
    # every table but the changed ones and the one without a key (stored whole)
    assert sum(mode == TableMode.UNCHANGED for mode in modes[0].values()) == len(tables) - 3
    assert sum(mode == TableMode.UNCHANGED for mode in modes[1].values()) == len(tables) - 3
    assert modes[0][("s1", "nokey")] == modes[1][("s1", "nokey")] == TableMode.WHOLE
    assert modes[1][("s1", "t2")] == TableMode.UNCHANGED  # unchanged since inc1's delta

    # Stored relative to the parent: a name and a mode per unchanged table.
    key = manifest_key("c", "full", "inc2")
    stored = store.get(key)
    document = json.loads(zstandard.ZstdDecompressor().decompress(stored))
    stored_tables = next(d for d in document["databases"] if d["name"] == db)["tables"]
    compact = [t for t in stored_tables if set(t) == {"schema_name", "name", "mode"}]
    assert len(compact) == len(tables) - 3 and all(t["mode"] == "UNCHANGED" for t in compact)
    assert len(stored) < len(full.to_stored()) / 2
    with pytest.raises(ManifestError, match="is read with that parent"):
        load_manifest(stored)
    assert load_manifest(stored, inc1) == inc2
    assert read_manifest(store, "c", "full", "inc2") == inc2
    assert read_catalog(store, "c", "full", "inc2") == inc2.catalog  # no parent read
    assert list_manifests(store, "c", "full") == [full, inc1, inc2]
    assert load_chain(store, inc2) == [full, inc1, inc2]
    assert verify_backup(store, inc2).ok

    for step, head in enumerate((full, inc1, inc2)):
        chain = load_chain(store, read_manifest(store, "c", "full", head.backup_id))
        target = pg.create_database(f"rel{step}")
        databases.append(target)
        restore_database(store, chain, db, pg.dsn_for(target), password=pg.password)
        for t in tables:
            assert table_digest(pg.url_for(target), *t) == digests[step][t], (step, t)


_ODD_ROWS = """
INSERT INTO {t} (id, v, b, n, at, tags) VALUES
  (1, 'plain', '\\x00ff', 1.5, '2024-01-01 00:00+00', '{{a,b}}'),
  (2, E'back\\\\slash \\\\. and a tab\\there', NULL, NULL, NULL, NULL),
  (3, E'\\\\.pack:0', '\\x5c2e', -0.0001, 'infinity', '{{}}'),
  (4, E'line\\nbreak\\r\\n.starts with a dot', '\\x', 'NaN', '1999-12-31 23:59:59.999+05', '{{"\\\\.",NULL}}'),
  (5, '{accent}', '\\x0a', 12345678901234567890, '2000-02-29 12:00+00', '{{"q\\"uote"}}'),
  (6, '', '\\x', 0, '-infinity', NULL)
"""


def _database_in(pg: PgServer, databases: list[str], name: str, encoding: str) -> str:
    with pg.connect() as conn:
        conn.execute(
            f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING '{encoding}'"
            " LC_COLLATE 'C' LC_CTYPE 'C'"
        )
    databases.append(name)
    return name


@pytest.mark.parametrize("encoding", ["UTF8", "LATIN1"])
def test_a_pack_read_through_psql_stores_what_the_lane_connection_stores(
    pg: PgServer,
    tmp_path: Path,
    databases: list[str],
    monkeypatch: pytest.MonkeyPatch,
    encoding: str,
) -> None:
    """Large packs of small tables are read through one ``psql`` (rows stream in C): every
    table's bytes, rows and place in the pack are exactly those of one ``COPY`` per table on
    the lane's connection, whatever the rows hold (backslashes, a row reading like the pack's
    own table marker, line breaks, NULLs, odd names, another encoding), and restore exactly."""
    db = _database_in(pg, databases, f"pack_{encoding.lower()}_{tmp_path.name[-6:]}", encoding)
    names = []
    with pg.connect(db) as conn:
        conn.execute(f"SET client_encoding = '{encoding}'")
        for i in range(12):
            name = f"odd {i}" if i % 3 else f'We"ird_{i}'
            names.append(name)
            table = '"' + name.replace('"', '""') + '"'
            key = "id int PRIMARY KEY" if i % 4 else "id int"  # some without a key
            conn.execute(
                f"CREATE TABLE {table} ({key}, v text, b bytea, n numeric, at timestamptz,"
                " tags text[])"
            )
            if i != 5:  # one empty table
                conn.execute(_ODD_ROWS.format(t=table, accent="déjà vu"))
                conn.execute(
                    f"INSERT INTO {table} (id, v) SELECT 100 + g, md5(g::text || '{i}')"
                    " FROM generate_series(1, 40 * {i}) g".replace("{i}", str(i))
                )
    read_by: list[str] = []
    pack_psql = postgres_streams.DbReader._pack_psql

    def spying(self: Any, *args: Any) -> Any:
        read_by.append(self.name)
        return pack_psql(self, *args)

    monkeypatch.setattr(postgres_streams.DbReader, "_pack_psql", spying)
    adapter = pg.adapter()
    monkeypatch.setattr(postgres_streams, "_PSQL_PACK_BYTES", 0)
    through_psql = adapter.full_backup(
        BackupRequest(ObjectStore((tmp_path / "psql").as_uri()), "c", "full")
    )
    assert db in read_by
    read_by.clear()
    monkeypatch.setattr(postgres_streams, "_PSQL_PACK_BYTES", 1 << 62)
    store = ObjectStore((tmp_path / "lane").as_uri())
    on_the_lane = adapter.full_backup(BackupRequest(store, "c", "full"))
    assert read_by == []

    for name in names:
        ours, reference = _entry(through_psql, db, name), _entry(on_the_lane, db, name)
        assert ours.model_dump() == reference.model_dump(), name
    assert sum(_entry(through_psql, db, n).rows for n in names) > 0
    assert any(_entry(through_psql, db, n).data_offset > 0 for n in names)

    target = _database_in(pg, databases, f"{db}_restored", encoding)
    restore_database(
        ObjectStore((tmp_path / "psql").as_uri()),
        [through_psql],
        db,
        pg.dsn_for(target),
        password=pg.password,
    )
    for name in names:
        assert table_digest(pg.url_for(target), "public", name) == table_digest(
            pg.url_for(db), "public", name
        ), name
