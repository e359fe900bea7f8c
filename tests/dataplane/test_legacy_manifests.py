"""Today's data plane restores a backup chain written by version 0.1 (schema_version 1)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from managed_backups.shared.dataplane.engine import BackupRequest
from managed_backups.shared.dataplane.manifest import TableMode, load_chain, read_manifest
from managed_backups.shared.dataplane.objectstore import ObjectStore
from managed_backups.shared.dataplane.postgres_snapshots import database_whole_reason
from managed_backups.shared.dataplane.restore_rows import restore_database
from managed_backups.shared.dataplane.verify import verify_backup

from .conftest import PgServer

pytestmark = pytest.mark.integration

LEGACY = Path(__file__).parent.parent / "data" / "legacy-v0"
FULL = "11111111-1111-4111-8111-111111111111"
INCREMENTAL = "22222222-2222-4222-8222-222222222222"


def test_a_chain_written_by_version_0_1_restores_exactly(
    pg: PgServer, databases: list[str], tmp_path: Path
) -> None:
    shutil.copytree(LEGACY / "backup-store-v0", tmp_path / "store")
    store = ObjectStore((tmp_path / "store").as_uri())
    head = read_manifest(store, "legacy-one", FULL, INCREMENTAL)
    assert head.schema_version == 1
    assert verify_backup(store, head).ok
    chain = load_chain(store, head)
    target = pg.create_database("legacy")
    databases.append(target)
    restore_database(store, chain, "app", pg.dsn_for(target), password=pg.password)

    expected = json.loads((LEGACY / "backup-store-v0.expected.json").read_text())
    with pg.connect(target) as conn:
        items = [list(r) for r in conn.execute("SELECT * FROM items ORDER BY id").fetchall()]
        notes = [list(r) for r in conn.execute("SELECT * FROM notes ORDER BY body").fetchall()]
        next_value = conn.execute("SELECT nextval('counter')").fetchone()
    assert items == expected["items"]
    assert notes == expected["notes"]
    assert next_value is not None and next_value[0] == expected["counter_next"]


def test_an_incremental_on_a_version_1_parent_stores_whole_and_the_mixed_chain_restores(
    pg: PgServer, databases: list[str], tmp_path: Path
) -> None:
    """Version 1 recorded no database identity, sequence ``is_called``, large objects...: the
    first incremental of today's version (4) on top of it stores every table whole, and the
    chain mixing both versions restores what the source holds."""
    shutil.copytree(LEGACY / "backup-store-v0", tmp_path / "store")
    store = ObjectStore((tmp_path / "store").as_uri())
    head = read_manifest(store, "legacy-one", FULL, INCREMENTAL)
    legacy_db = head.database("app")
    assert legacy_db.oid is None and all(s.is_called is None for s in legacy_db.sequences)
    reason = database_whole_reason(legacy_db, legacy_db.snapshot, 1)
    assert reason == "the previous backup did not record the database's identity"

    with pg.connect() as conn:
        conn.execute("DROP DATABASE IF EXISTS app WITH (FORCE)")
        conn.execute("CREATE DATABASE app")
    databases.append("app")
    restore_database(store, load_chain(store, head), "app", pg.dsn_for("app"), password=pg.password)
    with pg.connect("app") as conn:
        conn.execute("UPDATE items SET qty = qty + 1000 WHERE id % 3 = 0")
        conn.execute("SELECT setval('counter', 500, false)")
    inc = pg.adapter().incremental_backup(BackupRequest(store, "legacy-one", "v2-inc"), head)
    assert inc.schema_version == 4 and inc.parent_id == INCREMENTAL
    app = inc.database("app")
    assert app.oid is not None and all(t.mode == TableMode.WHOLE for t in app.tables)
    chain = load_chain(store, inc)
    assert [m.schema_version for m in chain] == [1, 1, 4]
    target = pg.create_database("mixed")
    databases.append(target)
    restore_database(store, chain, "app", pg.dsn_for(target), password=pg.password)
    query = "SELECT * FROM items ORDER BY id"
    with pg.connect("app") as src, pg.connect(target) as dst:
        assert dst.execute(query).fetchall() == src.execute(query).fetchall()
        assert dst.execute("SELECT nextval('counter')").fetchone() == (500,)
