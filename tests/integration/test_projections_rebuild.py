"""``managed-backups projections rebuild`` on a scripted history of over 100,000 events
(``tests/history.py``): the views kept live while the history was written (applied in small
batches after every save, as the projections service does) equal the views the command rebuilds
from the log in one pass; a projector still running goes on from the rebuilt views.

On SQLite the whole history runs by default. On PostgreSQL a sixth of it does (the same code,
in CI time); ``MANAGED_BACKUPS_REBUILD_FULL=1`` runs the whole history there too.
The speed is measured by ``benchmarks/bench_projections.py``, not here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from managed_backups.services.projections.service import Projector
from managed_backups.shared.eventstore import open_event_store
from managed_backups.shared.sqldb import SqlDatabase
from managed_backups.shared.views import ReadModels
from managed_backups.shared.views.schema import SCHEMA_VERSION
from tests.history import write_history

pytestmark = pytest.mark.integration

FULL_CLUSTERS = 42  # about 103,000 events
SUBSET_CLUSTERS = 7


def clusters_for(store_url: str) -> int:
    full = store_url.startswith("sqlite") or os.environ.get("MANAGED_BACKUPS_REBUILD_FULL") == "1"
    return FULL_CLUSTERS if full else SUBSET_CLUSTERS


def rebuild_command(data_dir: Path, store_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANAGED_BACKUPS_")}
    env["MANAGED_BACKUPS_EVENT_STORE_URL"] = store_url
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "managed_backups.services.cli",
            "projections",
            "rebuild",
            "--data-dir",
            str(data_dir),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )


def test_the_rebuilt_views_equal_the_live_ones(store_url: str, tmp_path: Path) -> None:
    store = open_event_store(store_url)
    db = SqlDatabase(store_url)
    try:
        live = Projector(store, ReadModels(db), batch=50)
        clusters = clusters_for(store_url)
        written = write_history(store, clusters=clusters, after_each_save=live.catch_up)
        live.catch_up()
        if clusters == FULL_CLUSTERS:
            assert written >= 100_000
        before = ReadModels(db).dump()
        assert before["position"] == [["schema", SCHEMA_VERSION], ["views", written]]
        # Every event is in the audit trail but the identity events, which name no cluster
        # (per cluster at most an account, two grants, a key, a revocation and a grant removed;
        # four organizations).
        assert len(before["audit"]) >= written - 6 * clusters - 4

        done = rebuild_command(tmp_path / "data", store_url)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.startswith(f"rebuilt the read models up to position {written} ")
        after = ReadModels(db).dump()
        assert after.keys() == before.keys()
        for table, rows in before.items():
            assert after[table] == rows, table
        del before, after

        # A projector still running goes on from the rebuilt views (and, on the smaller
        # history, a second rebuild agrees with it).
        more = write_history(store, clusters=2, days=2, seed=11, first=clusters)
        live.catch_up()
        assert ReadModels(db).position() == written + more
        assert ReadModels(db).cluster(f"c{clusters + 1:03d}") is not None
        if clusters == SUBSET_CLUSTERS:
            followed = ReadModels(db).dump()
            again = rebuild_command(tmp_path / "data", store_url)
            assert again.returncode == 0, again.stderr
            assert ReadModels(db).dump() == followed
    finally:
        db.close()
        store.close()
