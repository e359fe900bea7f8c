"""DDL that lands between a database's snapshot and its locks: the snapshot is retaken.

The differential catalogue runs concurrent DDL through the backup's ``on_snapshots`` hook
(after the locks); these tests hit the narrower window before them, by running the DDL right
after the adapter exported the snapshot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from managed_backups.shared.dataplane.engine import BackupError, BackupRequest, ErrorCode
from managed_backups.shared.dataplane.manifest import PgSnapshot
from managed_backups.shared.dataplane.objectstore import ObjectStore
from managed_backups.shared.dataplane.postgres import PostgresAdapter
from managed_backups.shared.dataplane.restore_rows import iter_table_rows, rows_digest

from .conftest import PgServer

pytestmark = pytest.mark.integration


class _DdlAfterSnapshot(PostgresAdapter):
    """Runs ``statements`` in ``db`` after each of the first ``times`` snapshots of ``db``."""

    def __init__(self, pg: PgServer, db: str, statements: list[str], times: int) -> None:
        super().__init__(pg.dsn_for(), password=pg.password)
        self.pg, self.db, self.statements, self.times = pg, db, statements, times
        self.snapshots: list[str] = []

    def _export_snapshot(self, conn: psycopg.Connection[Any], db: str) -> PgSnapshot:
        snapshot = super()._export_snapshot(conn, db)
        if db == self.db:
            self.snapshots.append(snapshot.snapshot_id)
            if len(self.snapshots) <= self.times:
                with self.pg.connect(db) as other:
                    for stmt in self.statements:
                        other.execute(stmt)  # type: ignore[call-overload]
        return snapshot


def test_dropped_and_truncated_tables_and_dropped_sequences_retake_the_snapshot(
    pg: PgServer, tmp_path: Path, databases: list[str]
) -> None:
    db = pg.create_database("ddl")
    databases.append(db)
    with pg.connect(db) as conn:
        conn.execute("CREATE TABLE kept (id int PRIMARY KEY)")
        conn.execute("INSERT INTO kept SELECT generate_series(1, 100)")
        conn.execute("CREATE TABLE dropped (id int PRIMARY KEY)")
        conn.execute("CREATE SEQUENCE gone_seq")
    adapter = _DdlAfterSnapshot(
        pg, db, ["DROP TABLE dropped", "TRUNCATE kept", "DROP SEQUENCE gone_seq"], times=1
    )
    store = ObjectStore((tmp_path / "store").as_uri())
    manifest = adapter.full_backup(BackupRequest(store, "c", "full"))
    assert len(adapter.snapshots) == 2
    backed_up = manifest.database(db)
    assert backed_up.snapshot.snapshot_id == adapter.snapshots[-1]
    assert [t.name for t in backed_up.tables] == ["kept"]
    assert backed_up.sequences == []
    assert rows_digest(iter_table_rows(store, [manifest], db, "public", "kept"))[0] == 0


def test_a_sequence_dropped_after_the_snapshot_retakes_it(
    pg: PgServer, tmp_path: Path, databases: list[str]
) -> None:
    """The sequences are read by oid (``pg_sequence_last_value``) and, when never called, by
    name: a sequence dropped since the snapshot, with no table changed, still retakes it."""
    db = pg.create_database("ddl")
    databases.append(db)
    with pg.connect(db) as conn:
        conn.execute("CREATE TABLE kept (id int PRIMARY KEY)")
        conn.execute("CREATE SEQUENCE called_seq")
        conn.execute("SELECT nextval('called_seq')")
        conn.execute("CREATE SEQUENCE uncalled_seq")
        conn.execute("CREATE SEQUENCE stays_seq START 7")
        conn.execute("SELECT setval('stays_seq', 41)")
    for dropped in ("called_seq", "uncalled_seq"):
        adapter = _DdlAfterSnapshot(pg, db, [f"DROP SEQUENCE {dropped}"], times=1)
        store = ObjectStore((tmp_path / dropped).as_uri())
        manifest = adapter.full_backup(BackupRequest(store, "c", "full"))
        assert len(adapter.snapshots) == 2, dropped
        sequences = {s.name: (s.last_value, s.is_called) for s in manifest.database(db).sequences}
        assert dropped not in sequences
        assert sequences["stays_seq"] == (41, True)
        with pg.connect(db) as conn:  # back for the next round
            conn.execute(f"CREATE SEQUENCE {dropped}")


def test_ddl_that_never_stops_fails_the_backup_clearly(
    pg: PgServer, tmp_path: Path, databases: list[str]
) -> None:
    db = pg.create_database("ddl")
    databases.append(db)
    with pg.connect(db) as conn:
        conn.execute("CREATE TABLE busy (id int PRIMARY KEY)")
    adapter = _DdlAfterSnapshot(pg, db, ["TRUNCATE busy"], times=100)
    store = ObjectStore((tmp_path / "store").as_uri())
    with pytest.raises(BackupError) as err:
        adapter.full_backup(BackupRequest(store, "c", "full"))
    assert err.value.code == ErrorCode.SNAPSHOT_FAILED
    assert "concurrent DDL kept changing database" in err.value.message
    assert "busy" in err.value.message
