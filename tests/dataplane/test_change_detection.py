"""Incremental change detection against the cases that break naive approaches.

- transactions (and a subtransaction) in flight when the previous backup's snapshot was taken,
  committing afterwards; one aborting;
- the 32-bit transaction counter wrapping around between backups (a real wrap: the cluster's
  counter is moved to just below 2^32, in epoch 5, with pg_resetwal);
- a previous backup whose snapshot cannot be trusted (counter went backwards, another cluster).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from managed_backups.shared.dataplane.engine import BackupRequest
from managed_backups.shared.dataplane.manifest import Manifest, TableMode
from managed_backups.shared.dataplane.objectstore import ObjectStore
from managed_backups.shared.dataplane.postgres import PostgresAdapter
from managed_backups.shared.dataplane.restore_rows import iter_table_rows, rows_digest
from tests.infra.postgres import LocalPostgres

from .conftest import PgServer, source_rows

pytestmark = pytest.mark.integration


def _digest(pg: PgServer, db: str, table: str) -> tuple[int, str]:
    lines = source_rows(pg, db, f"SELECT * FROM public.{table} ORDER BY id")
    return rows_digest([b"".join(lines)])


def test_transactions_in_flight_at_the_previous_snapshot(
    pg: PgServer, tmp_path: Path, databases: list[str]
) -> None:
    db = pg.create_database("inflight")
    databases.append(db)
    with pg.connect(db) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO t SELECT g, 'orig' FROM generate_series(1, 1000) g")
    store = ObjectStore((tmp_path / "store").as_uri())
    adapter = pg.adapter()

    writer = psycopg.connect(pg.url_for(db))  # not autocommit: holds its transaction open
    loser = psycopg.connect(pg.url_for(db))
    other = pg.connect(db)
    try:
        # A top-level xid, then a subtransaction (its xid is not in pg_snapshot_xip) ...
        writer.execute("UPDATE t SET v = 'top' WHERE id <= 10")
        writer.execute("SAVEPOINT s1")
        writer.execute("UPDATE t SET v = 'sub' WHERE id BETWEEN 11 AND 20")
        writer.execute("INSERT INTO t VALUES (5001, 'sub-insert')")
        loser.execute("UPDATE t SET v = 'aborted' WHERE id BETWEEN 21 AND 30")
        # ... and a later transaction that commits, so the subtransaction's xid is below the
        # snapshot's xmax without being listed as running.
        other.execute("UPDATE t SET v = 'committed-before' WHERE id = 999")
        full = adapter.full_backup(BackupRequest(store, "c", "full"))
        snap = full.database(db).snapshot
        sub_xid = int(writer.execute("SELECT xmin::text FROM t WHERE id = 5001").fetchone()[0])  # type: ignore[index]
        assert snap.xmin <= sub_xid % (1 << 32) < snap.xmax % (1 << 32)
        assert all(x % (1 << 32) != sub_xid for x in snap.xip)
        writer.execute("RELEASE SAVEPOINT s1")
        writer.commit()
        loser.rollback()
    finally:
        writer.close()
        loser.close()
        other.close()
    expected = _digest(pg, db, "t")
    inc = adapter.incremental_backup(BackupRequest(store, "c", "inc"), full)
    entry = inc.table(db, "public", "t")
    assert entry is not None and entry.mode == TableMode.DELTA
    # 10 rows of the top-level transaction, 10 + 1 of its subtransaction, and the row of the
    # transaction that committed before the snapshot but after its xmin (included again: the
    # test is "xmin >= previous snapshot's xmin", conservative by design).
    assert entry.rows == 22
    got = rows_digest(iter_table_rows(store, [full, inc], db, "public", "t"))
    assert got == expected
    # the full did not see the in-flight changes, the incremental brings them
    rows = b"".join(iter_table_rows(store, [full], db, "public", "t"))
    assert b"sub" not in rows and b"aborted" not in rows and b"committed-before" in rows
    rows = b"".join(iter_table_rows(store, [full, inc], db, "public", "t"))
    assert rows.count(b"\tsub\n") == 10 and b"sub-insert" in rows and b"aborted" not in rows


@pytest.fixture
def wrapping_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPostgres]:
    with LocalPostgres() as server:
        server.set_next_xid((1 << 32) - 1500, epoch=5)
        yield server


def test_incrementals_across_a_real_xid_wraparound(
    wrapping_pg: LocalPostgres, tmp_path: Path
) -> None:
    pg = PgServer(wrapping_pg.url)
    with pg.connect() as conn:
        start = int(conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0])  # type: ignore[index]
        assert start >> 32 == 5 and (1 << 32) - (start & 0xFFFFFFFF) < 2000
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
        for i in range(1, 601):  # one transaction per row: 600 xids just below 2^32
            conn.execute("INSERT INTO t VALUES (%s, 0)", (i,))
    store = ObjectStore((tmp_path / "store").as_uri())
    adapter = PostgresAdapter(pg.dsn_for(), password=pg.password)
    full = adapter.full_backup(BackupRequest(store, "w", "full"))
    assert full.database("postgres").snapshot.xmax >> 32 == 5

    with pg.connect() as conn:
        for i in range(1, 1201):  # 1200 more transactions: the 32-bit counter wraps
            if i % 4 == 0:
                conn.execute("UPDATE t SET v = %s WHERE id = %s", (i, i // 4))
            else:
                conn.execute("INSERT INTO t VALUES (%s, %s)", (1000 + i, i))
        xids = conn.execute("SELECT min(xmin::text::int8), max(xmin::text::int8) FROM t").fetchone()
        now = int(conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0])  # type: ignore[index]
    assert xids is not None and xids[0] < 1000 < (1 << 32) - 3000 < xids[1]  # both sides of 2^32
    assert now >> 32 == 6
    inc1 = adapter.incremental_backup(BackupRequest(store, "w", "inc1"), full)
    entry = inc1.table("postgres", "public", "t")
    assert entry is not None and entry.mode == TableMode.DELTA
    assert entry.rows == 1200  # exactly the 900 inserted and 300 updated rows
    assert rows_digest(iter_table_rows(store, [full, inc1], "postgres", "public", "t")) == _digest(
        pg, "postgres", "t"
    )

    with pg.connect() as conn:
        conn.execute("UPDATE t SET v = -1 WHERE id IN (1, 2, 1001)")  # pre- and post-wrap rows
        conn.execute("DELETE FROM t WHERE id IN (3, 1002)")
    inc2 = adapter.incremental_backup(BackupRequest(store, "w", "inc2"), inc1)
    entry2 = inc2.table("postgres", "public", "t")
    assert entry2 is not None and entry2.rows == 3
    chain = [full, inc1, inc2]
    assert rows_digest(iter_table_rows(store, chain, "postgres", "public", "t")) == _digest(
        pg, "postgres", "t"
    )


def _with_db_snapshot(manifest: Manifest, db: str, **changes: int) -> Manifest:
    dbs = [
        d.model_copy(update={"snapshot": d.snapshot.model_copy(update=changes)})
        if d.name == db
        else d
        for d in manifest.databases
    ]
    return manifest.model_copy(update={"databases": dbs})


def test_untrustworthy_previous_snapshot_stores_tables_whole(
    pg: PgServer, tmp_path: Path, databases: list[str]
) -> None:
    db = pg.create_database("trust")
    databases.append(db)
    with pg.connect(db) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 100) g")
    store = ObjectStore((tmp_path / "store").as_uri())
    adapter = pg.adapter()
    full = adapter.full_backup(BackupRequest(store, "c", "full"))
    snap = full.database(db).snapshot
    cases = {
        "backwards": (
            _with_db_snapshot(full, db, xmin=snap.xmin + 10**6, xmax=snap.xmax + 10**6),
            "transaction counter went backwards since the previous backup",
        ),
        "far": (
            _with_db_snapshot(full, db, xmin=snap.xmin - (1 << 31), xmax=snap.xmax - (1 << 31)),
            "more than 2^31 transactions since the previous backup",
        ),
        "other-cluster": (
            full.model_copy(update={"system_identifier": 12345}),
            "cluster system identifier changed since the previous backup",
        ),
    }
    for name, (previous, reason) in cases.items():
        inc = adapter.incremental_backup(BackupRequest(store, "c", f"inc-{name}"), previous)
        entry = inc.table(db, "public", "t")
        assert entry is not None and entry.mode == TableMode.WHOLE and entry.reason == reason
        assert entry.rows == 100
