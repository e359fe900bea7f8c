"""Today's data plane restores a chain of many small tables written with schema_version 2
manifests (``tests/data/manifest-v2``), and takes its next incremental on top of it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from managed_backups.shared.dataplane.manifest import load_chain, read_manifest
from managed_backups.shared.dataplane.objectstore import ObjectStore
from managed_backups.shared.dataplane.restore_rows import restore_database
from managed_backups.shared.dataplane.verify import verify_backup
from tests.restore_checks import table_digest

from .conftest import PgServer

pytestmark = pytest.mark.integration

FIXTURE = Path(__file__).parent.parent / "data" / "manifest-v2"
CLUSTER = "v2-cluster"
FULL = "33333333-3333-4333-8333-333333333333"
INCREMENTAL = "44444444-4444-4444-8444-444444444444"


def _restored_matches(pg: PgServer, target: str, expected: dict[str, object]) -> None:
    tables = expected["tables"]
    assert isinstance(tables, dict)
    for qualified, digest in tables.items():
        schema, name = qualified.split(".")
        assert list(table_digest(pg.url_for(target), schema, name)) == digest, qualified
    with pg.connect(target) as conn:
        row = conn.execute("SELECT last_value, is_called FROM tenant_a.counter").fetchone()
    assert row is not None and [int(row[0]), bool(row[1])] == expected["counter"]


def test_a_version_2_chain_of_small_tables_restores_exactly(
    pg: PgServer, databases: list[str], tmp_path: Path
) -> None:
    shutil.copytree(FIXTURE / "backup-store-v2", tmp_path / "store")
    store = ObjectStore((tmp_path / "store").as_uri())
    head = read_manifest(store, CLUSTER, FULL, INCREMENTAL)
    assert head.schema_version == 2
    assert verify_backup(store, head).ok
    chain = load_chain(store, head)
    assert [m.schema_version for m in chain] == [2, 2]
    target = pg.create_database("v2")
    databases.append(target)
    restore_database(store, chain, "shop", pg.dsn_for(target), password=pg.password)
    expected = json.loads((FIXTURE / "backup-store-v2.expected.json").read_text())
    _restored_matches(pg, target, expected)
