"""Today's data plane restores a backup chain written by version 0.1 (schema_version 1)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from managed_backups.shared.dataplane.manifest import load_chain, read_manifest
from managed_backups.shared.dataplane.objectstore import ObjectStore
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
