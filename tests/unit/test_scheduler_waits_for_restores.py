"""The schedule waits for a CLUSTER restore: a slot due while the cluster is held exclusively is
not scheduled, and is once the hold is gone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

from managed_backups.services.scheduler.scheduler import Scheduler
from managed_backups.shared import jobs
from managed_backups.shared.clock import WallClock
from managed_backups.shared.eventstore import open_event_store
from managed_backups.shared.sqldb import SqlDatabase
from tests.factories import new_cluster

NOW = datetime(2026, 3, 1, tzinfo=UTC)


async def _no_send(command: object) -> None:
    raise AssertionError("decisions only")


def test_a_due_slot_waits_while_a_cluster_restore_holds_the_cluster(tmp_path: Path) -> None:
    db = SqlDatabase(f"sqlite:///{tmp_path / 'shared.sqlite'}")
    leases = jobs.JobLeases(db, "restore")
    restore = uuid4()
    leases.take(restore, "shop", "restore-a", NOW + timedelta(minutes=5), {jobs.EXCLUSIVE: True})
    leases.take(uuid4(), "other", "restore-a", NOW + timedelta(minutes=5), {jobs.EXCLUSIVE: False})
    scheduler = Scheduler(
        open_event_store(f"sqlite:///{tmp_path / 'events.sqlite'}"),
        WallClock(),
        send=_no_send,
        sign=lambda command: command,
        held_exclusively=lambda: jobs.clusters_held_exclusively(db),
    )
    for cluster_id in ("shop", "other"):
        scheduler.clusters[cluster_id] = new_cluster(cluster_id, at=NOW)
    due = NOW + timedelta(minutes=61)
    decided, _ = scheduler._decide_all(["shop", "other"], due)
    assert [c.cluster_id for c in decided] == ["other"]  # a non-exclusive job holds nothing back
    leases.release(restore)
    decided, _ = scheduler._decide_all(["shop"], due + timedelta(seconds=30))
    assert [c.cluster_id for c in decided] == ["shop"]
    last = decided[0].last_scheduled
    assert last is not None and last["backup_type"] == "FULL"
    db.close()
