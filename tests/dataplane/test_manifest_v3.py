"""Today's data plane restores a chain written with schema_version 3 manifests
(``tests/data/manifest-v3``: compressed, relative to the parent, packed small tables, every
kind of table entry) and the database's own properties it recorded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from managed_backups.shared.dataplane.manifest import (
    TableMode,
    load_chain,
    read_catalog,
    read_manifest,
)
from managed_backups.shared.dataplane.objectstore import ObjectStore
from managed_backups.shared.dataplane.restore_rows import restore_database
from managed_backups.shared.dataplane.verify import verify_backup
from tests.restore_checks import table_digest

from .conftest import PgServer

pytestmark = pytest.mark.integration

FIXTURE = Path(__file__).parent.parent / "data" / "manifest-v3"
CLUSTER = "v3-cluster"
FULL = "55555555-5555-4555-8555-555555555555"
INCREMENTAL = "66666666-6666-4666-8666-666666666666"


def test_a_version_3_chain_restores_exactly(
    pg: PgServer, databases: list[str], tmp_path: Path
) -> None:
    shutil.copytree(FIXTURE / "backup-store-v3", tmp_path / "store")
    store = ObjectStore((tmp_path / "store").as_uri())
    head = read_manifest(store, CLUSTER, FULL, INCREMENTAL)
    assert head.schema_version == 3
    assert verify_backup(store, head).ok
    chain = load_chain(store, head)
    assert [m.schema_version for m in chain] == [3, 3]
    shop = head.database("shop")
    assert {t.name: t.mode for t in shop.tables}["quiet"] == TableMode.UNCHANGED
    assert "shop" in {d.name for d in read_catalog(store, CLUSTER, FULL, INCREMENTAL).databases}
    target = pg.create_database("v3")
    databases.append(target)
    restore_database(store, chain, "shop", pg.dsn_for(target), password=pg.password)
    expected = json.loads((FIXTURE / "backup-store-v3.expected.json").read_text())
    for qualified, digest in expected["tables"].items():
        schema, name = qualified.split(".")
        assert list(table_digest(pg.url_for(target), schema, name)) == digest, qualified
    with pg.connect(target) as conn:
        row = conn.execute("SELECT last_value, is_called FROM counter").fetchone()
        props = conn.execute(
            "SELECT datconnlimit, shobj_description(oid, 'pg_database') FROM pg_database"
            " WHERE datname = current_database()"
        ).fetchone()
    assert row is not None and [int(row[0]), bool(row[1])] == expected["counter"]
    assert props == (12, "written by version 3")
